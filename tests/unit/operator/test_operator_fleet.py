"""Unit tests of the in-memory fleet state and its MetricsSource view."""

from __future__ import annotations

from typing import Any

from wsgauge_contract import StatsDocument
from wsgauge_operator.model.fleet import EndpointKey, FleetState, PodRecord, SidecarState
from wsgauge_operator.model.metrics_source import MetricsSource

GATE = "wsgauge.dev/connections-ok"


def pod_body(
    name: str, *, ip: str = "127.0.10.1", gate: str | None = "True", **labels: str
) -> dict[str, Any]:
    conditions = [
        {"type": "Ready", "status": "True"},
        {"type": "ContainersReady", "status": "True"},
    ]
    if gate is not None:
        conditions.append({"type": GATE, "status": gate})
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": f"uid-{name}",
            "labels": labels or {"app": "chat"},
        },
        "spec": {
            "nodeName": "node-1",
            "readinessGates": [{"conditionType": GATE}],
            "containers": [
                {"name": "app"},
                {"name": "sidecar", "ports": [{"name": "wsgauge-admin", "containerPort": 9090}]},
            ],
        },
        "status": {"phase": "Running", "podIP": ip, "conditions": conditions},
    }


def test_pod_record_from_body() -> None:
    record = PodRecord.from_body(pod_body("a"), GATE)
    assert (record.name, record.namespace, record.uid, record.ip, record.node) == (
        "a",
        "ns",
        "uid-a",
        "127.0.10.1",
        "node-1",
    )
    assert record.has_gate
    assert record.gate_status is True
    assert record.ready
    assert record.containers_ready
    assert record.resolve_port("wsgauge-admin") == 9090
    assert record.resolve_port("nope") is None
    assert record.resolve_port(9191) == 9191
    assert record.followable
    unset = PodRecord.from_body(pod_body("b", gate=None, ip=""), GATE)
    assert unset.gate_status is None
    assert not unset.followable


def test_listeners_hear_changes_only() -> None:
    fleet = FleetState()
    heard: list[str] = []
    fleet.add_listener(heard.append)
    record = PodRecord.from_body(pod_body("a"), GATE)
    assert fleet.upsert_pod(record)
    assert not fleet.upsert_pod(record)
    assert fleet.remove_pod("ns", "a")
    assert not fleet.remove_pod("ns", "a")
    assert heard == ["ns", "ns"]


def test_reports_restarts_and_metrics_source() -> None:
    fleet = FleetState()
    assert isinstance(fleet, MetricsSource)
    fleet.upsert_pod(PodRecord.from_body(pod_body("a"), GATE))
    key = EndpointKey("ns", "a", "uid-a", "127.0.10.1", 9090)
    fleet.add_endpoint(key)
    assert fleet.pods("ns")[0].reachable is False
    first = StatsDocument(pod="a", connections=3, topics={"x": 3}, started_at="T1", seq=5)
    fleet.report(key, first, now=1_000_000.0)
    stats = fleet.endpoint(key)
    assert stats is not None
    assert stats.state is SidecarState.REPORTING
    metrics = fleet.pods("ns")
    assert [(m.name, m.connections, dict(m.topics), m.reachable) for m in metrics] == [
        ("a", 3, {"x": 3}, True)
    ]
    assert metrics[0].namespace == "ns"
    assert metrics[0].observed_at is not None
    fleet.report(
        key, StatsDocument(pod="a", connections=1, started_at="T1", seq=6), now=1_000_001.0
    )
    assert stats.restarts == 0
    fleet.report(
        key, StatsDocument(pod="a", connections=0, started_at="T2", seq=0), now=1_000_002.0
    )
    assert stats.restarts == 1
    assert fleet.pods("ns")[0].connections == 0  # replaced, never summed
    fleet.mark_unreachable(key, "refused")
    unreachable = fleet.pods("ns")[0]
    assert (unreachable.reachable, unreachable.connections) == (False, 0)
    assert fleet.pods("other") == []


def test_stale_endpoint_of_a_recreated_pod_is_not_listed() -> None:
    fleet = FleetState()
    fleet.upsert_pod(PodRecord.from_body(pod_body("a"), GATE))
    old = EndpointKey("ns", "a", "uid-OLD", "127.0.10.1", 9090)
    fleet.add_endpoint(old)
    fleet.report(old, StatsDocument(pod="a", connections=9), now=1.0)
    assert fleet.pods("ns") == []
