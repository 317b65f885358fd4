"""The event-on-transition policy (:mod:`wsgauge_operator.model.event_policy`), pure: which Events a
round of a ConnectionStats calls for, given what the last round saw."""

from __future__ import annotations

from collections.abc import Mapping

from wsgauge_operator.model.event_policy import (
    PlannedEvent,
    RoundView,
    TransitionMemory,
    replica_recommendation,
)


def everyone_live(_pod: str) -> bool:
    return True


def reasons(events: list[PlannedEvent]) -> list[str]:
    return [event.reason for event in events]


def condition(type_: str, status: str, reason: str, message: str = "m") -> Mapping[str, str]:
    return {"type": type_, "status": status, "reason": reason, "message": message}


def test_unreachable_and_reachable_pods_at_most_five_each() -> None:
    memory = TransitionMemory()
    pods = frozenset(f"p{i}" for i in range(8))
    events = memory.round(RoundView(unreachable=pods), everyone_live)
    assert reasons(events) == ["PodUnreachable"] * 5
    assert all(event.warning for event in events)
    assert events[0].note == "the sidecar of pod p0 stopped answering"
    assert memory.round(RoundView(unreachable=pods), everyone_live) == []  # no transition

    def live(pod: str) -> bool:
        return pod != "p1"  # p1 was deleted meanwhile: no PodReachable

    events = memory.round(RoundView(unreachable=frozenset({"p7"})), live)
    assert [event.note for event in events] == [
        "the sidecar of pod p0 answers again",
        "the sidecar of pod p2 answers again",
        "the sidecar of pod p3 answers again",
        "the sidecar of pod p4 answers again",
    ]  # the first five that answer again, then those still there
    assert not any(event.warning for event in events)


def test_sidecar_restarts_only_when_the_count_grows() -> None:
    memory = TransitionMemory()
    assert memory.round(RoundView(restart_counts={"a": 2, "b": 0}), everyone_live) == []
    events = memory.round(RoundView(restart_counts={"a": 3}), everyone_live)  # b not observed
    assert events == [PlannedEvent(False, "SidecarRestarted", "the sidecar of pod a restarted")]
    assert memory.restarts == {"a": 3, "b": 0}
    memory.round(RoundView(restart_counts={"b": None}), everyone_live)  # b left
    assert memory.restarts == {"a": 3}
    assert memory.round(RoundView(restart_counts={"b": 1}), everyone_live) == []  # new again


def test_condition_transitions() -> None:
    memory = TransitionMemory()
    first = [
        condition("Ready", "True", "PodsReporting"),
        condition("Degraded", "False", "AllPodsReporting"),
        condition("AutoscalingActive", "False", "NoAutoscaling"),  # not the controller's
    ]
    assert memory.round(RoundView(conditions=first), everyone_live) == []  # first, no problem
    worse = [
        condition("Ready", "True", "PodsReporting"),
        condition("Degraded", "True", "PodsUnreachable", "1 of 3 pods unreachable"),
        condition("AutoscalingActive", "True", "HPAActive"),
    ]
    events = memory.round(RoundView(conditions=worse), everyone_live)
    assert events == [
        PlannedEvent(True, "PodsUnreachable", "Degraded is True: 1 of 3 pods unreachable")
    ]
    events = memory.round(RoundView(conditions=first), everyone_live)
    assert events == [PlannedEvent(False, "AllPodsReporting", "Degraded is False: m")]


def test_a_first_problem_is_reported_and_waiting_for_sidecars_is_not() -> None:
    memory = TransitionMemory()
    events = memory.round(
        RoundView(conditions=[condition("Ready", "False", "NoPodsMatched")]), everyone_live
    )
    assert events == [PlannedEvent(True, "NoPodsMatched", "Ready is False: m")]
    waiting = [condition("Ready", "False", "WaitingForSidecars")]
    assert memory.round(RoundView(conditions=waiting), everyone_live) == []


def test_memory_from_the_stored_status_records_nothing_unchanged_after_a_restart() -> None:
    stored = {
        "conditions": [
            condition("CapacityExceeded", "True", "OverCapacity"),
            "not a mapping",
        ]
    }
    memory = TransitionMemory.from_status(stored)
    assert memory.condition_reasons == {"CapacityExceeded": ("True", "OverCapacity")}
    same = RoundView(conditions=[condition("CapacityExceeded", "True", "OverCapacity")])
    assert memory.round(same, everyone_live) == []


def test_scale_recommended_while_over_capacity() -> None:
    memory = TransitionMemory()
    over = RoundView(connections=2500, counted=2, max_per_pod=1000)
    events = memory.round(over, everyone_live)
    assert events == [
        PlannedEvent(
            False,
            "ScaleRecommended",
            "2500 connections on 2 pods exceed maxConnectionsPerPod 1000: "
            "at least 3 pods are needed",
        )
    ]
    assert reasons(memory.round(over, everyone_live)) == ["ScaleRecommended"]  # every round
    within = RoundView(connections=2000, counted=2, max_per_pod=1000)
    assert memory.round(within, everyone_live) == []
    assert memory.round(RoundView(connections=5, counted=1), everyone_live) == []  # no limit


def test_replica_recommendation_once_per_new_desired_count() -> None:
    recommended, event = replica_recommendation(None, 5, 3, connections=5000, target_per_pod=1000)
    assert recommended == 5
    assert event == PlannedEvent(
        False,
        "ReplicasRecommended",
        "scale up: 5000 connections at 1000 per pod imply 5 replicas (the target has 3)",
    )
    assert replica_recommendation(5, 5, 3, connections=5000, target_per_pod=1000) == (5, None)
    recommended, event = replica_recommendation(5, 2, 3, connections=1500, target_per_pod=1000)
    assert recommended == 2
    assert event is not None
    assert event.note.startswith("scale down:")
    assert replica_recommendation(2, 3, 3, connections=3000, target_per_pod=1000) == (None, None)
    assert replica_recommendation(2, None, 3, connections=0, target_per_pod=1000) == (None, None)
