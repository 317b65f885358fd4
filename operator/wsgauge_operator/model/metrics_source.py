"""What the metrics API reads: the operator's live counts, behind a small protocol.

The custom metrics API server (:mod:`wsgauge_operator.metrics_api.server`), the KEDA
endpoint and the deletion-cost planner never talk to sidecars or to the
Kubernetes API per request: they read a :class:`MetricsSource`, which the
operator's in-memory fleet state implements. Every method is synchronous,
cheap and does no I/O; it returns immutable snapshots.

:class:`StaticMetricsSource` is a plain in-memory implementation for tests,
benchmarks and tools.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class PodMetrics:
    """One pod that runs the sidecar, as the operator last saw it."""

    namespace: str = ""
    """Namespace of the pod."""
    name: str = ""
    """Name of the pod."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """The pod's labels (matched against the HPA's label selector)."""
    connections: int = 0
    """Open WebSocket sockets in the last stats document."""
    topics: Mapping[str, int] = field(default_factory=dict)
    """Open sockets per topic in the last stats document."""
    observed_at: datetime | None = None
    """Timezone-aware time the value was last confirmed current: the arrival of the last stats
    document *or watch-stream heartbeat* (or poll). None = never. Values older than the metrics
    API's ``max_metric_age_seconds`` are left out as stale, so keep this fresh while the stream
    is healthy."""
    reachable: bool = False
    """True while the sidecar answers; unreachable pods are left out of metric answers."""


@dataclass(frozen=True)
class ConnectionStatsMetrics:
    """The aggregate of one ``ConnectionStats`` resource."""

    namespace: str = ""
    """Namespace of the ConnectionStats."""
    name: str = ""
    """Name of the ConnectionStats."""
    connections: int = 0
    """Total open sockets over its reporting pods."""
    topics: Mapping[str, int] = field(default_factory=dict)
    """Total open sockets per topic (all topics known in memory, not the folded status)."""
    observed_at: datetime | None = None
    """Timezone-aware time the totals were last confirmed current (the *oldest* ``observed_at``
    of the reporting pods is the honest choice). None = never."""
    pods_reporting: int = 0
    """Pods whose sidecar answered and are counted in the totals."""
    desired_replicas: int | None = None
    """What the served metric implies for the target (None when autoscaling is off)."""


@runtime_checkable
class MetricsSource(Protocol):
    """Read-only, I/O-free view on live counts; implemented by the operator's fleet state."""

    def pods(self, namespace: str) -> Sequence[PodMetrics]:
        """Every known pod of ``namespace`` (reachable or not), in any order."""
        ...

    def connection_stats(self, namespace: str, name: str) -> ConnectionStatsMetrics | None:
        """The aggregate of one ConnectionStats, or None when it is not known."""
        ...


@runtime_checkable
class PodMetricsLookup(Protocol):
    """Optional for a :class:`MetricsSource`: one pod without listing its namespace.

    The metrics API uses it for requests that name one pod (O(1) instead of O(pods of the
    namespace)); sources without it are asked for the whole namespace.
    """

    def pod_metrics(self, namespace: str, name: str) -> PodMetrics | None:
        """What ``pods(namespace)`` lists for that pod, or None when it lists no such pod."""
        ...


class StaticMetricsSource:
    """An in-memory :class:`MetricsSource` whose contents are set directly."""

    def __init__(
        self,
        pods: Iterable[PodMetrics] = (),
        connection_stats: Iterable[ConnectionStatsMetrics] = (),
    ) -> None:
        self._pods: dict[str, dict[str, PodMetrics]] = {}
        self._stats: dict[tuple[str, str], ConnectionStatsMetrics] = {}
        for pod in pods:
            self.set_pod(pod)
        for stats in connection_stats:
            self.set_connection_stats(stats)

    def set_pod(self, pod: PodMetrics) -> None:
        """Add or replace a pod (keyed by namespace and name)."""
        self._pods.setdefault(pod.namespace, {})[pod.name] = pod

    def remove_pod(self, namespace: str, name: str) -> None:
        """Forget a pod; no error when it is not known."""
        by_name = self._pods.get(namespace)
        if by_name is not None:
            by_name.pop(name, None)
            if not by_name:
                del self._pods[namespace]

    def set_connection_stats(self, stats: ConnectionStatsMetrics) -> None:
        """Add or replace a ConnectionStats aggregate (keyed by namespace and name)."""
        self._stats[(stats.namespace, stats.name)] = stats

    def remove_connection_stats(self, namespace: str, name: str) -> None:
        """Forget a ConnectionStats aggregate; no error when it is not known."""
        self._stats.pop((namespace, name), None)

    def pods(self, namespace: str) -> Sequence[PodMetrics]:
        """Every known pod of ``namespace``."""
        return tuple(self._pods.get(namespace, {}).values())

    def connection_stats(self, namespace: str, name: str) -> ConnectionStatsMetrics | None:
        """The aggregate of one ConnectionStats, or None."""
        return self._stats.get((namespace, name))
