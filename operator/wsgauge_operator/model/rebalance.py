"""Rebalance after scale-out (``spec.rebalance``), pure: who stops taking sockets, who sheds.

WebSocket connections are long-lived: when pods are added, the old ones keep their sockets and the
new ones stay nearly empty until clients happen to reconnect. :func:`decide_rebalance` looks at
the counts of one ConnectionStats' pods and, while some pod is further from the average than the
tolerance allows, says

- which pods to **hold**: the pods above the average, busiest first, get the readiness condition
  False (reason ``Rebalancing``) so that new and reconnecting sockets go to the emptier pods;
  never so many that fewer than ``minReadyPods`` pods stay ready (a pod that is not ready for
  another reason is not counted as ready in the first place);
- how many sockets each pod above the average **sheds** now: at most its excess over the
  average (rounded up), at most what the per-minute bound leaves (see :class:`ShedLedger`), and
  nothing while its previous batch is still in flight (being closed over ``spread`` seconds and
  reconnecting elsewhere).

As soon as every pod is within the tolerance, the plan is inactive: no hold, no shed.

The bound: a pod is asked to shed at most ``max(1, floor(maxShedPerMinute * reference))``
sockets per window, where ``reference`` is what it held when the window's first batch was
asked (fixed for the window: sockets it gains meanwhile do not raise it), and a batch counts
until :data:`WINDOW` seconds after its last close (the sidecar closes a batch gently over
``spread`` seconds, with jitter, close code 1012 or 1001; see ``wsgauge_sidecar.shed``). So the
closes of a pod seen in any window of :data:`WINDOW` seconds, wherever it starts, never exceed
the bound.

No I/O and no clock of its own: the caller passes ``now`` (monotonic seconds).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from wsgauge_operator.model.spec import RebalanceSpec

WINDOW = 60.0
"""Seconds of the sliding window of the shed bound (the "per minute")."""

SETTLE = 5.0
"""Seconds after a batch's spread during which that pod is not asked again (its clients are
reconnecting; its count is still moving)."""


@dataclass(frozen=True)
class RebalancePod:
    """One pod as the rebalance sees it."""

    name: str
    connections: int
    eligible: bool = True
    """Reporting, not draining, not terminating: counted in the average, may be held or shed."""
    ready: bool = True
    """Ready as the readiness policy decides (before any rebalance hold)."""
    has_gate: bool = True
    """Has the readiness gate (only such pods can be held)."""


@dataclass(frozen=True)
class RebalancePlan:
    """What to do now."""

    active: bool = False
    """Some pod is further from the average than the tolerance."""
    average: float = 0.0
    band: float = 0.0
    """The tolerance in sockets: a pod within ``average ± band`` is balanced."""
    hold: frozenset[str] = frozenset()
    """Pods to take out of service (readiness condition False, reason ``Rebalancing``)."""
    shed: Mapping[str, int] = field(default_factory=dict)
    """Sockets each pod closes now (pods with 0 left out)."""
    references: Mapping[str, int] = field(default_factory=dict)
    """The bound's base of each pod in ``shed`` (record it with the shed)."""
    spread: float = 0.0
    """Largest ``connections - average`` over the pods (0 when inactive)."""

    @property
    def message(self) -> str:
        """One line for an Event or a log."""
        if not self.active:
            return f"balanced: every pod within {self.band:.0f} of the average {self.average:.1f}"
        sheds = ", ".join(f"{name} {count}" for name, count in sorted(self.shed.items()))
        return (
            f"average {self.average:.1f}, tolerance {self.band:.0f}: holding "
            f"{len(self.hold)} pod(s) out of service; shedding {sheds or 'nothing now'}"
        )


@dataclass(frozen=True)
class ShedRecord:
    """A shed asked of a pod."""

    pod: str
    count: int
    at: float
    done: float
    """When the pod's last close of the batch is due (``at + spread``)."""
    until: float
    """When the pod's batch is done and its clients have had time to reconnect."""
    reference: int
    """What the pod held when the window's first batch was asked (the bound's base)."""


class ShedLedger:
    """The sheds asked in the last :data:`WINDOW` seconds (one per ConnectionStats)."""

    def __init__(self) -> None:
        self._records: deque[ShedRecord] = deque()

    def _expire(self, now: float) -> None:
        if any(now - r.done >= WINDOW for r in self._records):
            self._records = deque(r for r in self._records if now - r.done < WINDOW)

    def shed_in_window(self, pod: str, now: float) -> int:
        """Sockets of ``pod`` in batches whose last close is less than WINDOW seconds ago."""
        self._expire(now)
        return sum(r.count for r in self._records if r.pod == pod)

    def total_in_window(self, now: float) -> int:
        """The same over every pod."""
        self._expire(now)
        return sum(r.count for r in self._records)

    def window_reference(self, pod: str, now: float) -> int | None:
        """The bound's base of ``pod``'s current window (``None``: no batch in the window)."""
        self._expire(now)
        return next((r.reference for r in self._records if r.pod == pod), None)

    def in_flight(self, pod: str, now: float) -> bool:
        """Whether a batch of ``pod`` may still be closing or reconnecting."""
        self._expire(now)
        return any(r.pod == pod and now < r.until for r in self._records)

    def record(
        self, pod: str, count: int, now: float, spread: float, reference: int | None = None
    ) -> None:
        """``pod`` was asked to shed ``count`` sockets at ``now`` (spread over ``spread`` s);
        ``reference``: the plan's base of the bound (default: the window's, else ``count``)."""
        if count > 0:
            base = self.window_reference(pod, now)
            if base is None:
                base = reference if reference is not None else count
            self._records.append(
                ShedRecord(pod, count, now, now + spread, now + spread + SETTLE, base)
            )

    def pods(self) -> set[str]:
        """The pods with a record."""
        return {r.pod for r in self._records}

    def forget(self, pod: str) -> None:
        """The pod is gone."""
        self._records = deque(r for r in self._records if r.pod != pod)


def shed_bound(reference: int, share: float) -> int:
    """Sockets a pod that held ``reference`` may shed in one window."""
    return max(1, math.floor(share * reference))


def tolerance_band(average: float, tolerance: float) -> float:
    """The tolerance in sockets around ``average`` (at least one socket)."""
    return max(1.0, tolerance * average)


def decide_rebalance(
    pods: Iterable[RebalancePod],
    spec: RebalanceSpec,
    *,
    min_ready_pods: int,
    ledger: ShedLedger,
    now: float,
) -> RebalancePlan:
    """The plan for one round; the caller records the sheds it sends in ``ledger``."""
    counted = [pod for pod in pods if pod.eligible]
    if not spec.enabled or len(counted) < 2:
        return RebalancePlan()
    total = sum(pod.connections for pod in counted)
    average = total / len(counted)
    band = tolerance_band(average, spec.tolerance)
    spread = max(abs(pod.connections - average) for pod in counted)
    if spread <= band:
        return RebalancePlan(active=False, average=average, band=band)
    above = sorted(
        (pod for pod in counted if pod.connections > average),
        key=lambda pod: (-pod.connections, pod.name),
    )
    ready = sum(1 for pod in counted if pod.ready)
    hold: set[str] = set()
    for pod in above:
        if pod.ready and pod.has_gate and ready - 1 >= min_ready_pods:
            hold.add(pod.name)
            ready -= 1
    target = math.ceil(average)
    shed: dict[str, int] = {}
    references: dict[str, int] = {}
    for pod in above:
        excess = pod.connections - target
        if excess <= 0 or ledger.in_flight(pod.name, now):
            continue
        done = ledger.shed_in_window(pod.name, now)
        reference = ledger.window_reference(pod.name, now)
        if reference is None:
            reference = pod.connections
        budget = shed_bound(reference, spec.max_shed_per_minute) - done
        count = min(excess, budget)
        if count > 0:
            shed[pod.name] = count
            references[pod.name] = reference
    return RebalancePlan(
        active=True,
        average=average,
        band=band,
        hold=frozenset(hold),
        shed=shed,
        references=references,
        spread=spread,
    )
