"""The deletion-cost policy (model/deletion_cost_policy.py): who wrote a pod's cost, other
writers, yield or overwrite, the condition and Events, and when a scale-down is near."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wsgauge_operator.model.deletion_cost_policy import (
    NEAR_HOLD_SECONDS,
    OtherWriterMemory,
    OtherWriterReport,
    ScaleDownOutlook,
    conflict_condition,
    conflict_event,
    hpa_replicas,
    other_writers,
    writes_allowed,
)
from wsgauge_operator.model.fleet import (
    DELETION_COST_ANNOTATION,
    KARPENTER_COST_ANNOTATION,
    WSGAUGE_COST_ANNOTATION,
    CostWriter,
    PodRecord,
    cost_writer,
)
from wsgauge_operator.model.spec import OtherWriters

COST, OURS, KARPENTER = DELETION_COST_ANNOTATION, WSGAUGE_COST_ANNOTATION, KARPENTER_COST_ANNOTATION


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        (None, CostWriter.NONE),
        ({}, CostWriter.NONE),
        ({"other": "x"}, CostWriter.NONE),
        ({COST: "5", OURS: "5"}, CostWriter.WSGAUGE),
        ({COST: " 5", OURS: "5 "}, CostWriter.WSGAUGE),
        ({COST: "7", OURS: "5"}, CostWriter.CHANGED),
        ({OURS: "5"}, CostWriter.CHANGED),  # the cost was removed under us
        ({COST: "5"}, CostWriter.OTHER),
        ({COST: "garbage"}, CostWriter.OTHER),
        ({COST: "3", KARPENTER: "true"}, CostWriter.KARPENTER),
        ({COST: "5", OURS: "5", KARPENTER: "true"}, CostWriter.KARPENTER),
        ({COST: "5", OURS: "5", KARPENTER: "false"}, CostWriter.WSGAUGE),
    ],
)  # fmt: skip
def test_cost_writer(annotations: dict[str, str] | None, expected: CostWriter) -> None:
    assert cost_writer(annotations) is expected


def test_pod_record_carries_the_writer() -> None:
    body = {"metadata": {"name": "p", "annotations": {COST: "4", KARPENTER: "true"}}}
    record = PodRecord.from_body(body, "wsgauge.dev/connections-ok")
    assert (record.deletion_cost, record.cost_writer) == (4, CostWriter.KARPENTER)


@given(st.lists(st.sampled_from(list(CostWriter)), max_size=30))
def test_other_writers_counts_every_pod_once(writers: list[CostWriter]) -> None:
    report = other_writers(writers)
    assert report.pods == len(writers)
    assert report.karpenter == writers.count(CostWriter.KARPENTER)
    assert report.changed == writers.count(CostWriter.CHANGED)
    assert report.other == writers.count(CostWriter.OTHER)
    foreign = {CostWriter.KARPENTER, CostWriter.CHANGED, CostWriter.OTHER}
    assert report.found == any(w in foreign for w in writers)
    # wsgauge's own costs and unset ones never make a finding
    assert writes_allowed(report, OtherWriters.YIELD) == (not report.found)
    assert writes_allowed(report, OtherWriters.OVERWRITE)


def test_reasons_prefer_karpenter_then_changes() -> None:
    assert other_writers([CostWriter.OTHER, CostWriter.CHANGED]).reason == "ChangedByOtherWriter"
    both = other_writers([CostWriter.OTHER, CostWriter.KARPENTER, CostWriter.WSGAUGE])
    assert both.reason == "KarpenterManaged"
    assert both.describe() == "1 of 3 pods carry karpenter.sh/managed-deletion-cost"
    assert other_writers([CostWriter.OTHER]).reason == "SetByOtherWriter"
    assert other_writers([CostWriter.WSGAUGE, CostWriter.NONE]).reason == "NoOtherWriter"


def test_condition_says_what_wsgauge_does() -> None:
    clean = other_writers([CostWriter.WSGAUGE])
    assert conflict_condition(clean, OtherWriters.YIELD)[:2] == ("False", "NoOtherWriter")
    karpenter = other_writers([CostWriter.KARPENTER, CostWriter.NONE])
    status, reason, message = conflict_condition(karpenter, OtherWriters.YIELD)
    assert (status, reason) == ("True", "KarpenterManaged")
    assert "1 of 2 pods" in message
    assert "yields" in message
    assert "keeps writing" in conflict_condition(karpenter, OtherWriters.OVERWRITE)[2]


def test_events_on_transitions_only() -> None:
    clean = OtherWriterReport(pods=2)
    karpenter = other_writers([CostWriter.KARPENTER])
    changed = other_writers([CostWriter.CHANGED])
    reason, event = conflict_event(None, clean, OtherWriters.YIELD)
    assert (reason, event) == ("NoOtherWriter", None)  # a clean start says nothing
    reason, event = conflict_event(reason, karpenter, OtherWriters.YIELD)
    assert event is not None
    assert (event.warning, event.reason) == (True, "DeletionCostConflict")
    assert "yields" in event.note
    reason, event = conflict_event(reason, karpenter, OtherWriters.YIELD)
    assert event is None  # the same finding again: no second Event
    reason, event = conflict_event(reason, changed, OtherWriters.OVERWRITE)
    assert event is not None
    assert "changed" in event.note
    reason, event = conflict_event(reason, clean, OtherWriters.OVERWRITE)
    assert event is not None
    assert (event.warning, event.reason) == (
        False,
        "DeletionCostConflictResolved",
    )
    assert conflict_event(None, karpenter, OtherWriters.YIELD)[1] is not None


def test_memory_keeps_a_finding_whose_evidence_was_overwritten() -> None:
    memory = OtherWriterMemory(memory_seconds=60)
    changed = other_writers([CostWriter.CHANGED, CostWriter.WSGAUGE])
    clean = other_writers([CostWriter.WSGAUGE, CostWriter.WSGAUGE])
    assert memory.observe(clean, 0.0) == clean
    assert memory.observe(changed, 10.0) == changed
    assert memory.observe(clean, 30.0) == changed  # wsgauge overwrote it: still reported
    assert memory.observe(clean, 70.0) == changed
    assert memory.observe(clean, 70.1) == clean
    assert memory.observe(clean, 200.0) == clean


@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=100),
            st.integers(1, 6),
            st.integers(1, 6),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_near_exactly_when_a_sign_is_within_the_hold(samples: list[tuple[float, int, int]]) -> None:
    outlook = ScaleDownOutlook(hold_seconds=NEAR_HOLD_SECONDS)
    now = 0.0
    signs: list[float] = []
    for step, current, desired in samples:
        now += step
        near = outlook.observe(now, current=current, desired=desired)
        if desired < current:
            signs.append(now)
        assert near == any(now - sign <= NEAR_HOLD_SECONDS for sign in signs)
        if desired < current:
            assert near  # a scale-down the metric implies is always near


def test_near_from_the_hpa_and_never_without_a_sign() -> None:
    outlook = ScaleDownOutlook(hold_seconds=30)
    assert not outlook.observe(0.0, current=None, desired=None)
    assert not outlook.observe(1.0, current=4, desired=4, hpa_current=4, hpa_desired=4)
    assert not outlook.observe(2.0, current=3, desired=5)  # a scale-up is not a scale-down
    assert outlook.observe(3.0, current=4, desired=4, hpa_current=4, hpa_desired=2)
    assert outlook.observe(33.0, current=4, desired=4)
    assert not outlook.observe(33.5, current=4, desired=4)


ACTIVE = [{"type": "ScalingActive", "status": "True", "reason": "ValidMetricFound"}]


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (None, (None, None)),
        ({"currentReplicas": 2, "desiredReplicas": 0}, (None, None)),  # before its first reading
        ({"currentReplicas": 2, "desiredReplicas": 0, "conditions": ACTIVE}, (None, None)),
        ({"currentReplicas": 3, "desiredReplicas": 2}, (None, None)),  # no ScalingActive True
        (
            {"currentReplicas": 3, "desiredReplicas": 2,
             "conditions": [{"type": "ScalingActive", "status": "False"}]},
            (None, None),
        ),
        ({"currentReplicas": 3, "desiredReplicas": 2, "conditions": ACTIVE}, (3, 2)),
        ({"currentReplicas": True, "desiredReplicas": 2, "conditions": ACTIVE}, (None, None)),
    ],
)  # fmt: skip
def test_hpa_replicas_only_from_a_decision(
    status: dict[str, object] | None, expected: tuple[int | None, int | None]
) -> None:
    assert hpa_replicas(status) == expected
