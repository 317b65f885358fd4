"""When wsgauge writes ``controller.kubernetes.io/pod-deletion-cost``, and when it holds back.

Pure policy (times are passed in, seconds on a monotonic clock); the autoscaler's deletion-cost
loop (:mod:`wsgauge_operator.autoscaling.autoscaler`) feeds it and does the writes that
:mod:`wsgauge_operator.autoscaling.deletion_cost` plans.

**Only when a scale-down is near** (KEP-2255 asks writers to set the annotation shortly before a
scale-down, not to track a metric with it: every write is a pod update). With
``spec.autoscaling``, :class:`ScaleDownOutlook` calls a scale-down *near* at time ``t`` when

1. the replica count the served metric implies (``status.desiredReplicas``, computed like the HPA
   with the spec's per-direction tolerances) is below the target's current replicas, or
2. the owned HPA's own ``status.desiredReplicas`` is below its ``status.currentReplicas``
   (only a decision: its ``ScalingActive`` condition True and ``desiredReplicas`` at least 1; an
   HPA that has not read the metric yet reports ``desiredReplicas: 0``, see :func:`hpa_replicas`),
   or
3. 1. or 2. held at some moment in the last :data:`NEAR_HOLD_SECONDS` (the HPA samples the
   metric at other moments than the operator: two sync periods of the default 15 s).

The HPA removes pods only after every recommendation of its scale-down stabilization window
(``behavior.scaleDown.stabilizationWindowSeconds``, 300 s by default) was below the current
count, so 1. starts that whole window before the scale-down. While it is near, the costs are
kept in the exact order of the counts (writing only the pods that are out of order); while it
is not, nothing is written. Without ``spec.autoscaling`` nothing tells when a scale-down comes
(KEDA, a person): the costs then follow the counts within bands all the time.

**Other writers.** :func:`other_writers` reads the markers of the target's pods
(:class:`~.fleet.CostWriter`): Karpenter's ``karpenter.sh/managed-deletion-cost``, a cost that
differs from ``wsgauge.dev/deletion-cost`` (the value wsgauge wrote, set in the same patch, so
a change under us shows on the pod itself, also after an operator restart), or a cost without
wsgauge's marker. :class:`OtherWriterMemory` keeps a finding for :data:`MEMORY_SECONDS` after its
last evidence, because in ``Overwrite`` mode wsgauge's own write erases the evidence.
``spec.autoscaling.deletionCost.otherWriters`` chooses: ``Yield`` (default) writes nothing on
the target while another writer is seen; ``Overwrite`` keeps writing. Either way the condition
``DeletionCostConflict`` and an Event say so (:func:`conflict_condition`, :func:`conflict_event`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from wsgauge_operator.model.event_policy import PlannedEvent
from wsgauge_operator.model.fleet import CostWriter
from wsgauge_operator.model.spec import OtherWriters

NEAR_HOLD_SECONDS = 30.0
"""A scale-down stays near this long after the last sign of it (see the module docstring)."""
MEMORY_SECONDS = 600.0
"""A finding of another writer is kept this long after its last evidence."""
CONDITION = "DeletionCostConflict"
"""Condition type: True while another writer of the deletion cost is seen on the target."""

_REASONS = {
    CostWriter.KARPENTER: "KarpenterManaged",
    CostWriter.CHANGED: "ChangedByOtherWriter",
    CostWriter.OTHER: "SetByOtherWriter",
}
_WHAT = {
    CostWriter.KARPENTER: "carry karpenter.sh/managed-deletion-cost",
    CostWriter.CHANGED: "have a deletion cost that someone else changed after wsgauge wrote it",
    CostWriter.OTHER: "have a deletion cost that wsgauge did not write",
}


@dataclass(frozen=True)
class OtherWriterReport:
    """What the target's pods tell about other writers of their deletion cost."""

    pods: int = 0
    """Pods looked at."""
    karpenter: int = 0
    """Pods with Karpenter's marker."""
    changed: int = 0
    """Pods whose cost changed after wsgauge wrote it."""
    other: int = 0
    """Pods with a cost wsgauge did not write."""

    @property
    def found(self) -> bool:
        """Whether any other writer is seen."""
        return bool(self.karpenter or self.changed or self.other)

    @property
    def kind(self) -> CostWriter | None:
        """The most telling kind found: Karpenter, then a change, then a foreign value."""
        for kind, count in (
            (CostWriter.KARPENTER, self.karpenter),
            (CostWriter.CHANGED, self.changed),
            (CostWriter.OTHER, self.other),
        ):
            if count:
                return kind
        return None

    @property
    def reason(self) -> str:
        """Condition and Event reason."""
        kind = self.kind
        return "NoOtherWriter" if kind is None else _REASONS[kind]

    def describe(self) -> str:
        """E.g. ``2 of 5 pods carry karpenter.sh/managed-deletion-cost``."""
        kind = self.kind
        if kind is None:
            return "no other writer of controller.kubernetes.io/pod-deletion-cost is seen"
        count = {
            CostWriter.KARPENTER: self.karpenter,
            CostWriter.CHANGED: self.changed,
            CostWriter.OTHER: self.other,
        }[kind]
        return f"{count} of {self.pods} pods {_WHAT[kind]}"


def other_writers(writers: Iterable[CostWriter]) -> OtherWriterReport:
    """Count the target's pods by who wrote their deletion cost."""
    pods = karpenter = changed = other = 0
    for writer in writers:
        pods += 1
        karpenter += writer is CostWriter.KARPENTER
        changed += writer is CostWriter.CHANGED
        other += writer is CostWriter.OTHER
    return OtherWriterReport(pods, karpenter, changed, other)


class OtherWriterMemory:
    """The latest finding with evidence, kept :data:`MEMORY_SECONDS` after the evidence went."""

    def __init__(self, memory_seconds: float = MEMORY_SECONDS) -> None:
        self._memory = memory_seconds
        self._last: OtherWriterReport = OtherWriterReport()
        self._seen_at: float | None = None

    def observe(self, report: OtherWriterReport, now: float) -> OtherWriterReport:
        """The finding to act on: ``report`` when it shows a writer, else the last one that did
        while it is younger than the memory, else ``report``."""
        if report.found:
            self._last, self._seen_at = report, now
            return report
        if self._seen_at is not None and now - self._seen_at <= self._memory:
            return self._last
        self._last, self._seen_at = report, None
        return report


def writes_allowed(report: OtherWriterReport, mode: OtherWriters) -> bool:
    """Whether wsgauge writes deletion costs on the target."""
    return not report.found or mode is OtherWriters.OVERWRITE


def _action(mode: OtherWriters) -> str:
    if mode is OtherWriters.YIELD:
        return "wsgauge yields: it writes no deletion cost on this target (otherWriters: Yield)"
    return "wsgauge keeps writing its deletion costs (otherWriters: Overwrite)"


def conflict_condition(report: OtherWriterReport, mode: OtherWriters) -> tuple[str, str, str]:
    """(status, reason, message) of the ``DeletionCostConflict`` condition."""
    if not report.found:
        return "False", report.reason, report.describe()
    return "True", report.reason, f"{report.describe()}; {_action(mode)}"


def conflict_event(
    previous: str | None, report: OtherWriterReport, mode: OtherWriters
) -> tuple[str, PlannedEvent | None]:
    """(reason now, the Event to record) after a finding: a Warning ``DeletionCostConflict`` when
    another writer appears (or its kind changes), a Normal ``DeletionCostConflictResolved`` when
    none is seen any more, nothing otherwise. ``previous``: the reason returned last time (None at
    first: an operator that starts on a clean target records nothing)."""
    reason = report.reason
    if reason == previous or (previous is None and not report.found):
        return reason, None
    if report.found:
        note = f"{report.describe()}; {_action(mode)}"
        return reason, PlannedEvent(True, "DeletionCostConflict", note)
    note = "no other writer of the deletion cost is seen any more"
    return reason, PlannedEvent(False, "DeletionCostConflictResolved", note)


def hpa_replicas(status: Mapping[str, Any] | None) -> tuple[int | None, int | None]:
    """(``currentReplicas``, ``desiredReplicas``) of an HPA status when they are a decision of the
    HPA controller: its ``ScalingActive`` condition is True and ``desiredReplicas`` is at least 1
    (before its first reading of the metric, or when the reading fails, the HPA reports 0)."""
    status = status or {}
    active = any(
        isinstance(item, Mapping)
        and item.get("type") == "ScalingActive"
        and item.get("status") == "True"
        for item in status.get("conditions") or []
    )
    current, desired = status.get("currentReplicas"), status.get("desiredReplicas")
    if (
        not active
        or not isinstance(current, int)
        or not isinstance(desired, int)
        or isinstance(current, bool)
        or isinstance(desired, bool)
        or desired < 1
    ):
        return None, None
    return current, desired


class ScaleDownOutlook:
    """Whether a scale-down of one target is near (the module docstring defines it)."""

    def __init__(self, hold_seconds: float = NEAR_HOLD_SECONDS) -> None:
        self._hold = hold_seconds
        self._last_sign: float | None = None

    def observe(
        self,
        now: float,
        *,
        current: int | None,
        desired: int | None,
        hpa_current: int | None = None,
        hpa_desired: int | None = None,
    ) -> bool:
        """Record this moment's signs; whether a scale-down is near now."""
        implied = current is not None and desired is not None and desired < current
        decided = hpa_current is not None and hpa_desired is not None and hpa_desired < hpa_current
        if implied or decided:
            self._last_sign = now
        return self._last_sign is not None and now - self._last_sign <= self._hold
