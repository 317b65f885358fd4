"""Unit tests of the pure aggregation: pods in, a bounded status out."""

from __future__ import annotations

import json

from wsgauge_operator.model.aggregation import (
    AggregationLimits,
    PodObservation,
    PodState,
    aggregate,
    fold_topics,
    invalid_spec_conditions,
    merge_conditions,
    render_status,
    spec_conditions,
)


def reporting(
    name: str, node: str, topics: dict[str, int], *, ready: bool = True
) -> PodObservation:
    return PodObservation(
        name=name,
        state=PodState.REPORTING,
        node=node,
        connections=sum(topics.values()),
        topics=topics,
        ready=ready,
    )


def test_totals_topics_nodes_and_busiest() -> None:
    pods = [
        reporting("a", "n1", {"stream": 10, "stats": 2}),
        reporting("b", "n1", {"stream": 5}),
        reporting("c", "n2", {"stats": 7}),
        PodObservation("d", PodState.UNREACHABLE, node="n2", connections=99, topics={"x": 99}),
        PodObservation("e", PodState.STARTING, node="n2"),
    ]
    result = aggregate(pods, AggregationLimits(busiest_pods=2, max_connections_per_pod=9))
    assert result.connections == 24  # the unreachable pod's stale counts do not count
    assert result.topics == {"stream": 15, "stats": 9}
    assert (result.matched, result.reporting, result.unreachable, result.starting) == (5, 3, 1, 1)
    assert result.ready == 3
    assert result.average_per_pod == 8
    assert [dict(n) for n in result.nodes] == [
        {"name": "n1", "pods": 2, "connections": 17},
        {"name": "n2", "pods": 1, "connections": 7},
    ]
    assert [dict(p) for p in result.busiest_pods] == [
        {"name": "a", "connections": 12},
        {"name": "c", "connections": 7},
    ]
    assert result.over_capacity == ("a",)
    assert result.unreachable_pods == ("d",)


def test_topics_fold_into_other_keeping_the_largest() -> None:
    totals = {f"t{i:03d}": i for i in range(1, 201)}
    totals["_other"] = 5
    folded = fold_topics(totals, keep=3)
    assert folded == {"t200": 200, "t199": 199, "t198": 198, "_other": sum(range(1, 198)) + 5}
    assert sum(folded.values()) == sum(totals.values())
    assert fold_topics({"a": 1, "b": 1}, keep=1) == {"a": 1, "_other": 1}
    assert fold_topics({"a": 0}, keep=5) == {}


def test_status_stays_small_for_a_huge_fleet() -> None:
    pods = [
        reporting(f"chat-{i:05d}", f"node-{i % 500}", {f"topic-{i}": 3, "shared": 1})
        for i in range(5000)
    ]
    limits = AggregationLimits(
        top_topics=20, busiest_pods=10, max_nodes=50, max_connections_per_pod=2
    )
    result = aggregate(pods, limits)
    status = render_status(result)
    status["conditions"] = merge_conditions(
        [],
        spec_conditions(result, selector="app=chat", port=9090, max_per_pod=2),
        now="2026-11-26T10:00:00Z",
        generation=1,
    )
    assert result.connections == 20000
    assert len(status["topics"]) == 21
    assert status["topics"]["shared"] == 5000
    assert sum(status["topics"].values()) == 20000
    assert len(status["busiestPods"]) == 10
    assert len(status["nodes"]) == 50
    assert len(json.dumps(status)) < 16_000
    over = next(c for c in status["conditions"] if c["type"] == "CapacityExceeded")
    assert over["status"] == "True"
    assert "and 4995 more" in over["message"]


def test_conditions_for_no_pods_and_port_missing() -> None:
    empty = aggregate([], AggregationLimits())
    ready = spec_conditions(empty, selector="app=x", port=9090, max_per_pod=None)[0]
    assert (ready["status"], ready["reason"]) == ("False", "NoPodsMatched")

    missing = aggregate(
        [PodObservation("a", PodState.PORT_MISSING), PodObservation("b", PodState.PORT_MISSING)],
        AggregationLimits(),
    )
    by_type = {
        c["type"]: c
        for c in spec_conditions(missing, selector="app=x", port="admin", max_per_pod=None)
    }
    assert by_type["Ready"]["reason"] == "SidecarPortMissing"
    assert by_type["Degraded"]["status"] == "True"
    assert by_type["CapacityExceeded"]["reason"] == "NoLimit"

    some = aggregate(
        [reporting("a", "n", {"x": 1}), PodObservation("b", PodState.UNREACHABLE)],
        AggregationLimits(),
    )
    by_type = {c["type"]: c for c in spec_conditions(some, selector="s", port=1, max_per_pod=10)}
    assert by_type["Ready"]["status"] == "True"
    assert (by_type["Degraded"]["status"], by_type["Degraded"]["reason"]) == (
        "True",
        "PodsUnreachable",
    )
    assert by_type["CapacityExceeded"]["status"] == "False"


def test_terminating_pods_are_counted_apart_and_never_unreachable() -> None:
    """A scale-down: pods being deleted do not degrade the resource; the sockets of a
    draining sidecar that still answers are real and still counted."""
    pods = [
        reporting("a", "n1", {"x": 4}),
        reporting("b", "n1", {"x": 2}),
        PodObservation(
            "c", PodState.REPORTING, node="n2", connections=3, topics={"x": 1, "y": 2},
            draining=True, terminating=True,
        ),
        PodObservation(
            "d", PodState.UNREACHABLE, node="n2", connections=9, topics={"x": 9}, terminating=True
        ),
        PodObservation("e", PodState.STARTING, terminating=True),
    ]  # fmt: skip
    result = aggregate(pods, AggregationLimits(max_connections_per_pod=2))
    assert (result.matched, result.reporting, result.unreachable, result.starting) == (2, 2, 0, 0)
    assert (result.terminating, result.counted) == (3, 3)
    assert result.unreachable_pods == ()
    assert result.connections == 9  # c's draining sockets count; d's stale counts do not
    assert result.topics == {"x": 7, "y": 2}
    assert result.average_per_pod == 4  # 9 sockets for the 2 pods that stay
    assert {n["name"]: n["connections"] for n in result.nodes} == {"n1": 6, "n2": 3}
    assert result.over_capacity == ("a",)  # the terminating pod is not asked to shed load
    status = render_status(result)
    assert status["pods"]["summary"] == "2/2"
    assert status["pods"]["terminating"] == 3
    by_type = {c["type"]: c for c in spec_conditions(result, selector="s", port=1, max_per_pod=2)}
    assert (by_type["Degraded"]["status"], by_type["Degraded"]["reason"]) == (
        "False",
        "AllReachable",
    )
    assert (by_type["Ready"]["status"], by_type["Ready"]["message"]) == (
        "True",
        "2 of 2 matched pods report connections",
    )

    # the last pods are going away: nothing matched, nothing unreachable
    leaving = aggregate([pods[3], pods[4]], AggregationLimits())
    assert (leaving.matched, leaving.unreachable, leaving.terminating) == (0, 0, 2)
    assert leaving.connections == 0


def test_merge_conditions_keeps_transition_time_and_foreign_types() -> None:
    previous = [
        {
            "type": "Ready",
            "status": "True",
            "reason": "PodsReporting",
            "message": "old",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        },
        {
            "type": "AutoscalingActive",
            "status": "True",
            "reason": "HPA",
            "message": "",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        },
        {
            "type": "Degraded",
            "status": "False",
            "reason": "AllReachable",
            "message": "",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        },
    ]
    current = invalid_spec_conditions("spec.selector: bad")
    merged = {c["type"]: c for c in merge_conditions(previous, current, now="NOW", generation=4)}
    assert merged["Ready"]["lastTransitionTime"] == "NOW"  # True -> False
    assert merged["Ready"]["observedGeneration"] == 4
    assert merged["Degraded"]["lastTransitionTime"] == "NOW"
    assert merged["AutoscalingActive"]["lastTransitionTime"] == "2026-01-01T00:00:00Z"

    same = merge_conditions(
        merged.values(), invalid_spec_conditions("other message"), now="LATER", generation=5
    )
    assert {c["type"]: c["lastTransitionTime"] for c in same}["Ready"] == "NOW"


def test_render_status_shape() -> None:
    status = render_status(aggregate([reporting("a", "n", {"x": 3})], AggregationLimits()))
    assert status["pods"] == {
        "matched": 1,
        "reporting": 1,
        "unreachable": 0,
        "ready": 1,
        "terminating": 0,
        "summary": "1/1",
    }
    assert status["averagePerPod"] == 3
    assert set(status) == {"connections", "topics", "pods", "averagePerPod", "nodes", "busiestPods"}
