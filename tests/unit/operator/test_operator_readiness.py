"""Unit tests of the readiness-gate policy and its write bookkeeping."""

from __future__ import annotations

from wsgauge_operator.model.aggregation import PodState
from wsgauge_operator.model.readiness import (
    ConditionWrites,
    ReadinessDecision,
    ReadinessInput,
    decide_readiness,
)


def pod(
    name: str, connections: int = 0, state: PodState = PodState.REPORTING, **extra: object
) -> ReadinessInput:
    return ReadinessInput(name=name, has_gate=True, state=state, connections=connections, **extra)  # type: ignore[arg-type]


def statuses(decisions: dict[str, ReadinessDecision]) -> dict[str, tuple[bool, str]]:
    return {name: (d.ok, d.reason) for name, d in decisions.items()}


def test_over_capacity_draining_and_unreachable_are_false() -> None:
    decisions = decide_readiness(
        [
            pod("ok", 10),
            pod("full", 101),
            pod("at-limit", 100),
            pod("drain", 1, draining=True),
            pod("gone", state=PodState.UNREACHABLE),
        ],
        max_per_pod=100,
        min_ready_pods=1,
    )
    assert statuses(decisions) == {
        "ok": (True, "ConnectionsOk"),
        "full": (False, "OverCapacity"),
        "at-limit": (True, "ConnectionsOk"),
        "drain": (False, "Draining"),
        "gone": (False, "SidecarUnreachable"),
    }


def test_unseen_pods_and_pods_without_the_gate_are_left_alone() -> None:
    decisions = decide_readiness(
        [
            pod("new", state=PodState.STARTING),
            pod("pending", state=PodState.PENDING),
            ReadinessInput("nogate", has_gate=False, state=PodState.REPORTING, connections=999),
        ],
        max_per_pod=10,
        min_ready_pods=0,
    )
    assert decisions == {}


def test_min_ready_pods_keeps_the_least_loaded_over_capacity_pods() -> None:
    pods = [pod("a", 150), pod("b", 120), pod("c", 300), pod("d", state=PodState.UNREACHABLE)]
    decisions = decide_readiness(pods, max_per_pod=100, min_ready_pods=2)
    assert statuses(decisions) == {
        "a": (True, "MinReadyPods"),
        "b": (True, "MinReadyPods"),
        "c": (False, "OverCapacity"),
        "d": (False, "SidecarUnreachable"),
    }
    ready = sum(1 for d in decisions.values() if d.ok)
    assert ready == 2


def test_min_ready_pods_counts_ready_pods_without_gate_and_unseen_ready_ones() -> None:
    pods = [
        pod("hot", 500),
        ReadinessInput("plain", has_gate=False, state=PodState.REPORTING, ready=True),
        pod("unseen", state=PodState.STARTING, gate_status=True),
    ]
    decisions = decide_readiness(pods, max_per_pod=100, min_ready_pods=2)
    assert statuses(decisions) == {"hot": (False, "OverCapacity")}
    decisions = decide_readiness(pods, max_per_pod=100, min_ready_pods=3)
    assert statuses(decisions) == {"hot": (True, "MinReadyPods")}


def test_min_ready_pods_falls_back_to_unreachable_but_never_draining_or_not_running() -> None:
    pods = [
        pod("drain", 1, draining=True),
        pod("gone", state=PodState.UNREACHABLE),
        pod("crashed", state=PodState.UNREACHABLE, containers_ready=False),
        pod("deleting", 500, terminating=True),
    ]
    decisions = decide_readiness(pods, max_per_pod=100, min_ready_pods=5)
    assert statuses(decisions) == {
        "drain": (False, "Draining"),
        "gone": (True, "MinReadyPods"),
        "crashed": (False, "SidecarUnreachable"),
        "deleting": (False, "Draining"),
    }


def test_no_limit_means_only_reachability_matters() -> None:
    decisions = decide_readiness([pod("a", 10**9)], max_per_pod=None, min_ready_pods=0)
    assert statuses(decisions) == {"a": (True, "ConnectionsOk")}


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_condition_writes_only_when_different_and_not_repeated_too_soon() -> None:
    clock = FakeClock()
    writes = ConditionWrites(repatch_after=5.0, clock=clock)
    decisions = {
        "a": ReadinessDecision("a", True, "ConnectionsOk", ""),
        "b": ReadinessDecision("b", False, "OverCapacity", ""),
    }
    current: dict[str, tuple[str, bool | None, str]] = {
        "a": ("uid-a", None, ""),
        "b": ("uid-b", False, "OverCapacity"),
    }
    assert [d.name for d in writes.needed("ns", decisions, current)] == ["a"]
    writes.written("ns", "a", "uid-a", decisions["a"])
    clock.now += 1
    assert writes.needed("ns", decisions, current) == []  # written, watch not caught up yet
    clock.now += 5
    assert [d.name for d in writes.needed("ns", decisions, current)] == ["a"]  # retried
    current["a"] = ("uid-a", True, "ConnectionsOk")
    assert writes.needed("ns", decisions, current) == []
    current["a"] = ("uid-a", True, "MinReadyPods")  # same status, other reason: rewritten
    assert [d.name for d in writes.needed("ns", decisions, current)] == ["a"]
    current["a"] = ("uid-a2", None, "")  # re-created pod of the same name
    assert [d.name for d in writes.needed("ns", decisions, current)] == ["a"]


def test_over_capacity_pod_with_unready_containers_is_left_alone() -> None:
    pods = [pod("probe-failing", 500, containers_ready=False), pod("ok", 1)]
    decisions = decide_readiness(pods, max_per_pod=100, min_ready_pods=1)
    assert statuses(decisions) == {"ok": (True, "ConnectionsOk")}
