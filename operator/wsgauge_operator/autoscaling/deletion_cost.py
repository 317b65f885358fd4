"""Planner for ``controller.kubernetes.io/pod-deletion-cost``: emptiest pods go first.

When a ReplicaSet scales down it sorts its pods with ``ActivePodsWithRanks``
(``pkg/controller/controller_utils.go``) and deletes the first ones. The order:

1. unscheduled before scheduled pods;
2. Pending before Unknown before Running;
3. **not Ready before Ready** (a pod whose ``wsgauge.dev/connections-ok`` gate is
   False, e.g. an unreachable sidecar, goes first whatever its cost);
4. **lower pod-deletion-cost before higher** (missing or unparsable annotation = 0);
5. then more co-located pods, shorter Ready time, more restarts, newer pods.

So among Ready pods the cost decides, and this module plans writes that keep it
equal to the pod's connection count, sparingly. *When* to write at all is
:mod:`wsgauge_operator.model.deletion_cost_policy`'s decision: the urgent pass
while a scale-down is near (with ``spec.autoscaling``), the bands otherwise:

- **Bands, not every change.** A pod's cost is rewritten only when its count
  left a log-scale band around the value last written: more than
  ``band_ratio`` times bigger or smaller (in ``count + 1``) *and* by more than
  ``min_change`` sockets. Chosen over fixed buckets because the band is
  anchored at the last write, so a count oscillating around any value causes no
  write storm (fixed boundaries have no such hysteresis), and over ranks
  because one pod overtaking another rewrites nothing. The written value is the
  exact count at that moment, so costs stay comparable with counts: two pods
  are always in the right order once ``b + 1 > band_ratio**2 * (a + 1 + min_change)``
  (by default: one holds more than four times the other's count plus a few).
- **Urgent pass.** While a scale-down is near, the band is ignored: if the
  current costs are not strictly ordered like the counts, every pod whose cost
  is not its exact count is rewritten, emptiest first (they are the ones the
  ReplicaSet will pick), so the order is exact before the HPA acts.
- **Rate limit.** :class:`TokenBucket` (injected clock) caps pod writes per
  second over all ConnectionStats; :class:`DeletionCostPlanner` hands out only
  as many patches as there are tokens, most important first, and the next
  call picks up the rest.

Unreachable pods (count unknown) are never written: their readiness gate makes
them not Ready, which puts them first in the deletion order anyway (rule 3).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from wsgauge_operator.model.fleet import DELETION_COST_ANNOTATION, MAX_COST, parse_deletion_cost
from wsgauge_operator.model.metrics_source import PodMetrics


@dataclass(frozen=True)
class DeletionCostSettings:
    """How eagerly deletion costs are rewritten."""

    band_ratio: float = 2.0
    """Rewrite once ``(count + 1)`` is more than this factor above or below ``(cost + 1)``."""
    min_change: int = 2
    """... and the count differs from the cost by more than this many sockets."""
    writes_per_second: float = 10.0
    """Pod writes per second over the whole operator (token bucket refill rate)."""
    burst: int = 20
    """Pod writes allowed at once (token bucket capacity)."""


@dataclass(frozen=True)
class PodCostInput:
    """One pod of the target as the planner sees it."""

    name: str = ""
    """Pod name."""
    connections: int | None = None
    """Open sockets; None when the sidecar is unreachable or its value stale."""
    current_cost: int | None = None
    """Parsed annotation value (see :func:`parse_deletion_cost`); None when absent/invalid."""


@dataclass(frozen=True)
class CostPatch:
    """One annotation write: set ``pod``'s deletion cost to ``cost``."""

    pod: str = ""
    """Pod name."""
    cost: int = 0
    """New annotation value."""

    def merge_patch(self) -> dict[str, Any]:
        """JSON merge patch body for the pod."""
        return {"metadata": {"annotations": {DELETION_COST_ANNOTATION: str(self.cost)}}}


def cost_inputs(
    pods: Iterable[PodMetrics],
    annotations: Mapping[str, Mapping[str, str] | None],
    *,
    now: datetime,
    max_age_seconds: float,
) -> list[PodCostInput]:
    """Planner input for the target's pods: ``annotations`` maps each target pod's name to its
    annotations; pods in ``pods`` that are unreachable, stale or not in ``annotations`` get
    ``connections=None`` or are skipped (only pods named in ``annotations`` are returned)."""
    by_name = {pod.name: pod for pod in pods}
    result: list[PodCostInput] = []
    for name in sorted(annotations):
        pod = by_name.get(name)
        fresh = (
            pod is not None
            and pod.reachable
            and pod.observed_at is not None
            and (now - pod.observed_at).total_seconds() <= max_age_seconds
        )
        result.append(
            PodCostInput(
                name=name,
                connections=pod.connections if fresh and pod is not None else None,
                current_cost=parse_deletion_cost(annotations[name]),
            )
        )
    return result


def cost_for(connections: int) -> int:
    """The cost that encodes a connection count exactly (clamped to int32)."""
    return max(0, min(MAX_COST, connections))


def _effective(cost: int | None) -> int:
    return 0 if cost is None else cost


def outside_band(connections: int, cost: int | None, settings: DeletionCostSettings) -> bool:
    """Whether the count has left the band around the cost last written."""
    current = _effective(cost)
    wanted = cost_for(connections)
    if abs(wanted - current) <= settings.min_change:
        return False
    if current < 0:
        return True
    ratio = (wanted + 1) / (current + 1)
    return ratio > settings.band_ratio or ratio < 1.0 / settings.band_ratio


def order_is_exact(pods: Iterable[PodCostInput]) -> bool:
    """Whether costs are strictly increasing with counts among reachable pods.

    Pods with equal counts may have any costs relative to each other.
    """
    known = sorted(
        (pod.connections, _effective(pod.current_cost))
        for pod in pods
        if pod.connections is not None
    )
    previous_max: int | None = None
    index = 0
    while index < len(known):
        count = known[index][0]
        group = [cost for value, cost in known[index:] if value == count]
        if previous_max is not None and min(group) <= previous_max:
            return False
        previous_max = max(group)
        index += len(group)
    return True


def plan_deletion_costs(
    pods: Sequence[PodCostInput],
    *,
    urgent: bool,
    settings: DeletionCostSettings = DeletionCostSettings(),
) -> list[CostPatch]:
    """Every write needed now, most important first (no rate limit applied).

    Normal: pods whose count left its band, largest relative error first.
    Urgent: when the order is not exact, every pod whose cost is not its exact
    count, emptiest first.
    """
    reachable = [pod for pod in pods if pod.connections is not None]
    if urgent:
        if order_is_exact(reachable):
            return []
        stale = [
            pod
            for pod in reachable
            if _effective(pod.current_cost) != cost_for(pod.connections or 0)
        ]
        stale.sort(key=lambda pod: (pod.connections, pod.name))
        return [CostPatch(pod.name, cost_for(pod.connections or 0)) for pod in stale]
    moved = [
        pod for pod in reachable if outside_band(pod.connections or 0, pod.current_cost, settings)
    ]

    def error(pod: PodCostInput) -> float:
        wanted = cost_for(pod.connections or 0) + 1
        current = max(_effective(pod.current_cost), 0) + 1
        return max(wanted / current, current / wanted)

    moved.sort(key=lambda pod: (-error(pod), pod.name))
    return [CostPatch(pod.name, cost_for(pod.connections or 0)) for pod in moved]


class TokenBucket:
    """Classic token bucket on an injected monotonic clock (seconds)."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def _refill(self) -> None:
        now = self._clock()
        elapsed = max(0.0, now - self._last)
        self._last = max(self._last, now)
        self._tokens = min(float(self._burst), self._tokens + elapsed * self._rate)

    def available(self) -> int:
        """Whole tokens available now."""
        self._refill()
        return int(self._tokens)

    def take_up_to(self, wanted: int) -> int:
        """Take as many whole tokens as available, at most ``wanted``; return how many."""
        self._refill()
        granted = max(0, min(wanted, int(self._tokens)))
        self._tokens -= granted
        return granted

    def seconds_until_available(self) -> float:
        """Seconds until at least one token is available (0 when one is)."""
        self._refill()
        if self._tokens >= 1.0:
            return 0.0
        return (1.0 - self._tokens) / self._rate


class DeletionCostPlanner:
    """Plans rate-limited deletion-cost writes; share one per operator (one token bucket)."""

    def __init__(
        self,
        settings: DeletionCostSettings = DeletionCostSettings(),
        *,
        clock: Callable[[], float],
    ) -> None:
        self.settings = settings
        self.bucket = TokenBucket(settings.writes_per_second, settings.burst, clock)

    def plan(self, pods: Sequence[PodCostInput], *, urgent: bool) -> list[CostPatch]:
        """The writes to make now (tokens are taken for each one returned).

        Apply them all; whatever was left out for lack of tokens comes back on
        the next call (call again after :meth:`retry_after` seconds).
        """
        wanted = plan_deletion_costs(pods, urgent=urgent, settings=self.settings)
        granted = self.bucket.take_up_to(len(wanted))
        return wanted[:granted]

    def retry_after(self) -> float:
        """Seconds until the next write may be planned."""
        return self.bucket.seconds_until_available()
