"""What one round sees of one pod: its pod record and its sidecar's report, as counting input.

A ConnectionStats round (see :mod:`wsgauge_operator.control.controller`) turns every selected pod
into a :class:`~.aggregation.PodObservation` (for the status) and a
:class:`~.readiness.ReadinessInput` (for the pod condition). Rounds are O(pods), so
:func:`observe` keeps the constant small: it remembers each pod's answer with the
objects it was computed from (the immutable pod record, the spec, the sidecar's state,
document and restart count) and reuses it while they are the same objects. Only the
report time is read afresh (heartbeats move it without a new document).

:class:`ObservedPods` keeps one ConnectionStats' observations between rounds together with
their running sums (:class:`~.running_totals.RunningAggregate`) and readiness decisions
(:class:`~.readiness.RunningReadiness`), so that a round re-observes only the pods whose
record or sidecar changed (the controller tracks which) instead of every selected pod.

No I/O: reads :class:`~.fleet.FleetState`, nothing else.
"""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass

from wsgauge_contract import StatsDocument

from wsgauge_operator.model.aggregation import PodObservation, PodState
from wsgauge_operator.model.fleet import (
    EndpointKey,
    EndpointStats,
    FleetState,
    PodRecord,
    SidecarState,
)
from wsgauge_operator.model.readiness import ReadinessInput, RunningReadiness
from wsgauge_operator.model.running_totals import RunningAggregate
from wsgauge_operator.model.spec import ConnectionStatsSpec

Reported = tuple[SidecarState | None, StatsDocument | None, int, bool]
"""The sidecar's state, document, restarts, and whether the follower limit holds it back."""


@dataclass(frozen=True)
class Observed:
    """One pod's answer in a round, and what it was computed from."""

    pod: PodRecord
    """The pod record it was computed from (records are replaced, never changed)."""
    spec: ConnectionStatsSpec
    """The spec it was computed for (replaced on a spec change)."""
    endpoint: EndpointKey | None
    """The followed sidecar (``None``: no IP, finished, or no such port)."""
    stats: EndpointStats | None
    """The sidecar's stats object at the time."""
    reported: Reported
    """What the stats object said at the time."""
    observation: PodObservation
    """For the aggregation."""
    readiness: ReadinessInput
    """For the readiness decision."""
    restarts: int
    """Sidecar restarts seen."""

    def observed_at(self, stats: EndpointStats | None) -> float:
        """The report time of a reporting pod (0: not reporting); never cached."""
        if stats is None or self.observation.state is not PodState.REPORTING:
            return 0.0
        return stats.observed_at


class ObservedPods:
    """The observed pods of one ConnectionStats (for one spec), kept between rounds."""

    def __init__(self, spec: ConnectionStatsSpec) -> None:
        self.spec = spec
        """The spec observed for (a new spec needs a new instance)."""
        self.entries: dict[str, Observed] = {}
        limit = spec.capacity.max_connections_per_pod
        self.totals = RunningAggregate(limit)
        """The aggregation of every entry."""
        self.readiness = RunningReadiness(limit, spec.capacity.min_ready_pods)
        """The readiness decisions of every entry."""
        self._reporting: dict[str, EndpointStats] = {}
        """The sidecar stats of the reporting pods (their report times move without a change)."""

    def names(self) -> list[str]:
        """The pods observed."""
        return list(self.entries)

    def refresh(
        self,
        name: str,
        pod: PodRecord | None,
        fleet: FleetState,
        held_back: Container[EndpointKey],
    ) -> int | None:
        """Observe one pod again (``None``: no longer selected); returns its sidecar restarts
        (``None`` once the pod is left out)."""
        if pod is None:
            if self.entries.pop(name, None) is not None:
                self.totals.remove(name)
                self.readiness.remove(name)
                self._reporting.pop(name, None)
            return None
        before = self.entries.get(name)
        observe(pod, self.spec, self.entries, fleet, held_back)
        entry = self.entries[name]
        if entry is not before:
            self.totals.set(entry.observation)
            self.readiness.set(entry.readiness)
            if entry.stats is not None and entry.observation.state is PodState.REPORTING:
                self._reporting[name] = entry.stats
            else:
                self._reporting.pop(name, None)
        return entry.restarts

    def oldest_report(self) -> float:
        """The oldest report time of the reporting pods (0: none reports)."""
        times = (stats.observed_at for stats in self._reporting.values())
        return min((t for t in times if t > 0), default=0.0)


def observe_all(
    pods: Sequence[PodRecord],
    spec: ConnectionStatsSpec,
    previous: Mapping[str, Observed],
    fleet: FleetState,
    held_back: Container[EndpointKey],
) -> tuple[list[tuple[PodObservation, ReadinessInput, float, int]], dict[str, Observed]]:
    """:func:`observe` every pod; returns the answers and the cache for the next round."""
    cache = {pod.name: previous[pod.name] for pod in pods if pod.name in previous}
    return [observe(pod, spec, cache, fleet, held_back) for pod in pods], cache


def observe(
    pod: PodRecord,
    spec: ConnectionStatsSpec,
    cache: dict[str, Observed],
    fleet: FleetState,
    held_back: Container[EndpointKey],
) -> tuple[PodObservation, ReadinessInput, float, int]:
    """A pod's observation, readiness input, report time and sidecar restarts seen.

    ``cache`` maps pod names to the previous round's :class:`Observed` (updated here);
    ``held_back`` holds the endpoints not followed because of the follower limit.
    """
    entry = cache.get(pod.name)
    if entry is not None and entry.pod is pod and entry.spec is spec:
        endpoint = entry.endpoint
    else:
        entry = None
        endpoint = None
        port = pod.resolve_port(spec.sidecar_port) if pod.followable else None
        if port is not None:
            endpoint = EndpointKey(pod.namespace, pod.name, pod.uid, pod.ip, port)
    stats = fleet.endpoint(endpoint) if endpoint is not None else None
    over_limit = endpoint is not None and endpoint in held_back
    reported: Reported = (None, None, 0, over_limit)
    if stats is not None:
        reported = (stats.state, stats.document, stats.restarts, over_limit)
    if entry is None or entry.stats is not stats or entry.reported != reported:
        entry = _observe_anew(pod, spec, endpoint, stats, reported)
        cache[pod.name] = entry
    return entry.observation, entry.readiness, entry.observed_at(stats), entry.restarts


def _observe_anew(
    pod: PodRecord,
    spec: ConnectionStatsSpec,
    endpoint: EndpointKey | None,
    stats: EndpointStats | None,
    reported: Reported,
) -> Observed:
    state = PodState.PENDING
    restarts = 0
    connections = 0
    topics: Mapping[str, int] = {}
    draining = False
    if pod.followable:
        if endpoint is None:
            state = PodState.PORT_MISSING
        else:
            restarts = stats.restarts if stats is not None else 0
            if reported[3]:
                state = PodState.NOT_FOLLOWED
            elif stats is None or stats.state is SidecarState.STARTING:
                state = PodState.STARTING
            elif stats.state is SidecarState.UNREACHABLE or stats.document is None:
                state = PodState.UNREACHABLE
            else:
                state = PodState.REPORTING
                connections = stats.document.connections
                topics = stats.document.topics
                draining = stats.document.draining
    observation = PodObservation(
        name=pod.name,
        state=state,
        node=pod.node,
        connections=connections,
        topics=topics,
        ready=pod.ready,
        draining=draining,
        terminating=pod.terminating,
    )
    readiness = ReadinessInput(
        name=pod.name,
        has_gate=pod.has_gate,
        state=state,
        connections=connections,
        draining=draining,
        terminating=pod.terminating,
        containers_ready=pod.containers_ready,
        ready=pod.ready,
        gate_status=pod.gate_status,
    )
    return Observed(pod, spec, endpoint, stats, reported, observation, readiness, restarts)
