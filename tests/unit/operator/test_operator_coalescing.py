"""Unit tests of status write coalescing and Event de-duplication (injected clocks)."""

from __future__ import annotations

from wsgauge_operator.kube.events import EventDeduper, ObjectRef, build_event
from wsgauge_operator.model.status_writer import StatusCoalescer


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_first_status_goes_out_at_once_then_at_most_once_per_interval() -> None:
    clock = FakeClock()
    coalescer = StatusCoalescer(clock)
    first = {"connections": 1, "lastUpdated": "t1"}
    assert coalescer.delay(first, 2.0) == 0.0
    coalescer.written(first)
    assert (
        coalescer.delay({"connections": 1, "lastUpdated": "t2"}, 2.0) is None
    )  # only time changed
    clock.now += 0.5
    assert coalescer.delay({"connections": 2}, 2.0) == 1.5
    clock.now += 1.5
    assert coalescer.delay({"connections": 2}, 2.0) == 0.0
    coalescer.written({"connections": 2})
    clock.now += 10
    assert coalescer.delay({"connections": 2}, 2.0) is None
    assert coalescer.delay({"connections": 3}, 2.0) == 0.0


def test_burst_of_changes_is_written_once_per_interval() -> None:
    clock = FakeClock()
    coalescer = StatusCoalescer(clock)
    writes = 0
    for step in range(100):  # 100 changes over 10 s, interval 2 s
        status = {"connections": step}
        delay = coalescer.delay(status, 2.0)
        if delay == 0.0:
            coalescer.written(status)
            writes += 1
        clock.now += 0.1
    assert writes == 5


def test_seeded_status_is_not_rewritten_after_a_restart() -> None:
    clock = FakeClock()
    stored = {"connections": 7, "topics": {"a": 7}, "lastUpdated": "2026-11-26T10:00:00Z"}
    coalescer = StatusCoalescer(clock)
    coalescer.seed(stored)
    assert coalescer.delay({"connections": 7, "topics": {"a": 7}}, 2.0) is None
    assert coalescer.delay({"connections": 8, "topics": {"a": 8}}, 2.0) == 0.0
    assert coalescer.last_status["connections"] == 7


def test_event_deduper() -> None:
    clock = FakeClock()
    deduper = EventDeduper(repeat_after=60.0, clock=clock)
    ref = ObjectRef("ns", "chat", "uid")
    assert deduper.allow(ref, "PodUnreachable", "pod a")
    assert not deduper.allow(ref, "PodUnreachable", "pod a")
    assert deduper.allow(ref, "PodUnreachable", "pod b")
    assert deduper.allow(ObjectRef("ns", "other", "u2"), "PodUnreachable", "pod a")
    clock.now += 61
    assert deduper.allow(ref, "PodUnreachable", "pod a")


def test_event_object_shape() -> None:
    event = build_event(
        ObjectRef("ns", "chat", "uid-1"),
        type_="Warning",
        reason="PodUnreachable",
        action="Observe",
        note="x" * 5000,
        instance="op-1",
    )
    assert event["apiVersion"] == "events.k8s.io/v1"
    assert event["regarding"] == {
        "apiVersion": "wsgauge.dev/v1alpha1",
        "kind": "ConnectionStats",
        "name": "chat",
        "namespace": "ns",
        "uid": "uid-1",
    }
    assert event["metadata"]["name"].startswith("chat.")
    assert len(event["note"]) == 1000
    assert event["eventTime"].endswith("Z")


def test_a_none_field_equals_an_absent_one() -> None:
    coalescer = StatusCoalescer(lambda: 0.0)
    coalescer.seed({"connections": 3})
    assert coalescer.delay({"connections": 3, "desiredReplicas": None}, 1.0) is None
    assert coalescer.delay({"connections": 3, "desiredReplicas": 2}, 1.0) == 0.0
