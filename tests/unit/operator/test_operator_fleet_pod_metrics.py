"""FleetState.pods(): PodMetrics rebuilt per pod only when what they show changed."""

from __future__ import annotations

import dataclasses

from wsgauge_contract import StatsDocument
from wsgauge_operator.model.fleet import EndpointKey, FleetState, PodRecord


def test_pod_metrics_follow_documents_heartbeats_labels_and_endpoints() -> None:
    fleet = FleetState()
    a = PodRecord(namespace="ns", name="a", uid="u-a", labels={"app": "chat"}, ip="127.0.80.1")
    b = PodRecord(namespace="ns", name="b", uid="u-b", labels={"app": "chat"}, ip="127.0.80.2")
    fleet.upsert_pod(a)
    fleet.upsert_pod(b)
    key_a = EndpointKey("ns", "a", "u-a", a.ip, 9090)
    key_b = EndpointKey("ns", "b", "u-b", b.ip, 9090)
    fleet.add_endpoint(key_b)
    fleet.add_endpoint(key_a)
    assert [(m.name, m.reachable) for m in fleet.pods("ns")] == [("a", False), ("b", False)]

    fleet.report(key_a, StatsDocument(pod="a", connections=2, topics={"t": 2}, seq=1), now=10.0)
    first = fleet.pods("ns")[0]
    assert (first.connections, first.reachable, dict(first.topics)) == (2, True, {"t": 2})
    assert fleet.pods("ns")[0] is first  # nothing changed: the same object

    fleet.heartbeat(key_a, now=20.0)
    beat = fleet.pods("ns")[0]
    assert beat.observed_at is not None
    assert beat.observed_at.timestamp() == 20.0

    fleet.report(key_a, StatsDocument(pod="a", connections=5, topics={"t": 5}, seq=2), now=21.0)
    assert fleet.pods("ns")[0].connections == 5
    fleet.upsert_pod(dataclasses.replace(a, labels={"app": "chat", "v": "2"}))
    assert fleet.pods("ns")[0].labels == {"app": "chat", "v": "2"}
    fleet.mark_unreachable(key_a, "down")
    assert (fleet.pods("ns")[0].connections, fleet.pods("ns")[0].reachable) == (0, False)

    fleet.upsert_pod(dataclasses.replace(b, uid="u-b2"))  # re-created: old endpoint not shown
    assert [m.name for m in fleet.pods("ns")] == ["a"]
    fleet.remove_endpoint(key_a)
    fleet.remove_endpoint(key_b)
    assert fleet.pods("ns") == []
    assert fleet.pods("other") == []


def test_pod_metrics_lookup_answers_what_the_listing_lists() -> None:
    fleet = FleetState()
    records = [
        PodRecord(namespace="ns", name=f"p{i}", uid=f"u{i}", ip=f"127.0.81.{i + 1}")
        for i in range(4)
    ]
    for record in records:
        fleet.upsert_pod(record)
    keys = [EndpointKey("ns", r.name, r.uid, r.ip, 9090) for r in records[:3]]
    for key in keys:
        fleet.add_endpoint(key)
    fleet.report(keys[0], StatsDocument(pod="p0", connections=3, seq=1), now=5.0)
    fleet.mark_unreachable(keys[1], "down")
    fleet.upsert_pod(dataclasses.replace(records[2], uid="u-new"))  # endpoint of the old uid
    listed = {m.name: m for m in fleet.pods("ns")}
    for name in ["p0", "p1", "p2", "p3", "missing"]:
        assert fleet.pod_metrics("ns", name) == listed.get(name)
    assert fleet.pod_metrics("ns", "p0") is listed["p0"]
    assert fleet.pod_metrics("other", "p0") is None
