"""The controller's incremental rounds (only changed pods observed again) give the same status
and totals as observing and aggregating every selected pod from scratch, over random sequences
of pod events and sidecar reports (in memory, no Kubernetes API)."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from wsgauge_contract import StatsDocument
from wsgauge_operator.control.controller import Controller
from wsgauge_operator.model.aggregation import AggregationLimits, aggregate, render_status
from wsgauge_operator.model.fleet import EndpointKey
from wsgauge_operator.model.observation import observe_all
from wsgauge_operator.model.settings import OperatorSettings, StatusSettings

NAMES = [f"p{i}" for i in range(6)]
KEY = ("ns", "chat")


def pod_body(
    name: str, labels: dict[str, str], phase: str, terminating: bool, ready: bool
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": "ns",
        "uid": f"u-{name}",
        "labels": labels,
    }
    if terminating:
        metadata["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {
        "metadata": metadata,
        "spec": {
            "nodeName": f"node-{len(name) % 2}",
            "containers": [{"name": "s", "ports": [{"name": "admin", "containerPort": 9090}]}],
        },
        "status": {
            "phase": phase,
            "podIP": f"127.0.90.{NAMES.index(name) + 1}",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def endpoint(name: str) -> EndpointKey:
    return EndpointKey("ns", name, f"u-{name}", f"127.0.90.{NAMES.index(name) + 1}", 9090)


pod_events = st.tuples(
    st.just("pod"),
    st.sampled_from(NAMES),
    st.sampled_from(["ADDED", "MODIFIED", "DELETED"]),
    st.sampled_from([{"app": "chat"}, {"app": "other"}]),
    st.sampled_from(["Running", "Pending", "Succeeded"]),
    st.booleans(),
    st.booleans(),
)
reports = st.tuples(
    st.just("report"),
    st.sampled_from(NAMES),
    st.dictionaries(st.sampled_from(["a", "b", "c"]), st.integers(0, 9), max_size=3),
    st.integers(0, 3),
)
sidecar_changes = st.tuples(st.sampled_from(["unreachable", "unfollow"]), st.sampled_from(NAMES))
steps = st.lists(st.one_of(pod_events, reports, sidecar_changes, st.just(("round",))), max_size=40)


def apply(controller: Controller, step: tuple[Any, ...], seq: list[int]) -> None:
    fleet = controller.fleet
    kind = step[0]
    if kind == "pod":
        _, name, event, labels, phase, terminating, ready = step
        controller.pod_event(event, pod_body(name, labels, phase, terminating, ready))
    elif kind == "report":
        _, name, topics, started = step
        if fleet.pod("ns", name) is None:
            return
        fleet.add_endpoint(endpoint(name))
        seq[0] += 1
        document = StatsDocument(
            pod=name,
            connections=sum(topics.values()),
            topics=topics,
            seq=seq[0],
            started_at=f"2026-01-01T00:00:0{started}Z",
        )
        fleet.report(endpoint(name), document, now=1_700_000_000.0 + seq[0])
    elif kind == "unreachable":
        fleet.mark_unreachable(endpoint(step[1]), "down")
    elif kind == "unfollow":
        fleet.remove_endpoint(endpoint(step[1]))


def from_scratch(controller: Controller, limits: AggregationLimits) -> dict[str, Any]:
    record = controller.records()[0]
    assert record.spec is not None
    names = sorted(controller.selection.members(KEY))
    pods = [p for p in (controller.fleet.pod("ns", n) for n in names) if p is not None]
    observed, _ = observe_all(pods, record.spec, {}, controller.fleet, {})
    return render_status(aggregate((o for o, _, _, _ in observed), limits))


@settings(max_examples=150, deadline=None)
@given(steps=steps)
def test_incremental_rounds_equal_from_scratch(steps: list[tuple[Any, ...]]) -> None:
    async def run() -> None:
        status = StatusSettings(top_topics=2, busiest_pods=2, max_nodes=1)
        controller = Controller(OperatorSettings(status=status), None)
        limits = AggregationLimits(top_topics=2, busiest_pods=2, max_nodes=1)
        controller.connectionstats_event(
            None,
            {
                "metadata": {"name": "chat", "namespace": "ns", "uid": "u-cs", "generation": 1},
                "spec": {
                    "selector": {"matchLabels": {"app": "chat"}},
                    "sidecarPort": "admin",
                    "capacity": {"maxConnectionsPerPod": 8},
                },
            },
        )
        seq = [0]
        for step in [*steps, ("round",)]:
            if step[0] != "round":
                apply(controller, step, seq)
                continue
            await controller.reconcile(KEY)
            summary = controller.summaries[KEY]
            expected = from_scratch(controller, limits)
            assert {k: summary[k] for k in expected} == expected

    asyncio.run(run())
