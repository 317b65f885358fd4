"""The operator's in-memory state: pods, what their sidecars report, and ConnectionStats.

Everything here is plain data mutated from the event loop (no locks, no I/O).
Other parts read it: the controller (to aggregate a ConnectionStats), the
stats server, and the custom metrics API: :class:`FleetState` implements
:class:`~.metrics_source.MetricsSource` (``pods`` and ``connection_stats``).

Listeners registered with :meth:`FleetState.add_listener` are called
synchronously with the namespace after every change; those registered with
:meth:`FleetState.add_pod_listener` with the namespace and the pod's name (so
that a sidecar document wakes only the ConnectionStats that select that pod).
"""

from __future__ import annotations

import datetime
import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from wsgauge_contract import StatsDocument

from wsgauge_operator.model.label_selector import LabelSelector
from wsgauge_operator.model.metrics_source import ConnectionStatsMetrics, PodMetrics

DELETION_COST_ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
"""The annotation the ReplicaSet controller reads."""

WSGAUGE_COST_ANNOTATION = "wsgauge.dev/deletion-cost"
"""The value wsgauge last wrote to :data:`DELETION_COST_ANNOTATION`, written in the same patch:
a pod whose cost differs from it was changed by someone else."""

KARPENTER_COST_ANNOTATION = "karpenter.sh/managed-deletion-cost"
"""Karpenter's marker (PodDeletionCostManagement): Karpenter manages this pod's deletion cost."""

MIN_COST = -(2**31)
"""Smallest value the annotation accepts (int32)."""

MAX_COST = 2**31 - 1
"""Largest value the annotation accepts (int32)."""


def parse_deletion_cost(annotations: Mapping[str, str] | None) -> int | None:
    """The pod's deletion cost annotation as an int, or None when absent or invalid.

    The ReplicaSet treats both as 0; the planner does too.
    """
    if not annotations:
        return None
    raw = annotations.get(DELETION_COST_ANNOTATION)
    if raw is None:
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        return None
    if not MIN_COST <= value <= MAX_COST:
        return None
    return value


class CostWriter(enum.Enum):
    """Who wrote a pod's ``controller.kubernetes.io/pod-deletion-cost``, as its annotations tell."""

    NONE = "none"
    """No cost and no marker: nobody (the ReplicaSet reads 0)."""
    WSGAUGE = "wsgauge"
    """The cost is what :data:`WSGAUGE_COST_ANNOTATION` says wsgauge wrote."""
    KARPENTER = "karpenter"
    """Karpenter's :data:`KARPENTER_COST_ANNOTATION` marker is on the pod."""
    CHANGED = "changed"
    """wsgauge wrote a cost, and the cost is now another value (or gone): changed under us."""
    OTHER = "other"
    """A cost without wsgauge's marker: set by someone else (a person, a pod template, a tool)."""


def cost_writer(annotations: Mapping[str, str] | None) -> CostWriter:
    """Who wrote the pod's deletion cost (see :class:`CostWriter`); Karpenter's marker wins."""
    annotations = annotations or {}
    karpenter = annotations.get(KARPENTER_COST_ANNOTATION)
    if karpenter is not None and karpenter.strip().lower() != "false":
        return CostWriter.KARPENTER
    cost = annotations.get(DELETION_COST_ANNOTATION)
    ours = annotations.get(WSGAUGE_COST_ANNOTATION)
    if ours is not None:
        return (
            CostWriter.WSGAUGE
            if cost is not None and cost.strip() == ours.strip()
            else (CostWriter.CHANGED)
        )
    return CostWriter.NONE if cost is None else CostWriter.OTHER


class SidecarState(enum.Enum):
    """What the operator knows about one sidecar."""

    STARTING = "starting"
    """Never answered yet, and still within the startup grace."""
    REPORTING = "reporting"
    """Its latest document is current (a live stream or a recent poll)."""
    UNREACHABLE = "unreachable"
    """Stopped answering (or never answered within the startup grace)."""


@dataclass(frozen=True)
class PodRecord:
    """What the operator needs of one pod, taken from the pod watch."""

    namespace: str
    name: str
    uid: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    ip: str = ""
    node: str = ""
    phase: str = ""
    terminating: bool = False
    has_gate: bool = False
    """The pod has a readinessGate of the operator's condition type."""
    gate_status: bool | None = None
    """The current value of that condition on the pod (``None``: not set)."""
    gate_reason: str = ""
    """The reason of that condition."""
    ready: bool = False
    """The pod's Ready condition."""
    containers_ready: bool = False
    """The pod's ContainersReady condition (Ready without the gates)."""
    container_ports: Mapping[str, int] = field(default_factory=dict)
    """Named container ports of all containers."""
    deletion_cost: int | None = None
    """The ``controller.kubernetes.io/pod-deletion-cost`` annotation (None: absent/invalid)."""
    cost_writer: CostWriter = CostWriter.NONE
    """Who wrote that annotation, as the pod's markers tell (:func:`cost_writer`)."""

    @classmethod
    def from_body(cls, body: Mapping[str, Any], condition_type: str) -> PodRecord:
        """Build from a pod object (as a mapping, e.g. a kopf body)."""
        metadata = body.get("metadata") or {}
        spec = body.get("spec") or {}
        status = body.get("status") or {}
        items = [item for item in status.get("conditions") or [] if isinstance(item, Mapping)]
        conditions = {str(item.get("type")): item.get("status") for item in items}
        gate_reason = next(
            (str(item.get("reason") or "") for item in items if item.get("type") == condition_type),
            "",
        )
        ports: dict[str, int] = {}
        for container in spec.get("containers") or []:
            for port in container.get("ports") or []:
                if port.get("name") and isinstance(port.get("containerPort"), int):
                    ports.setdefault(str(port["name"]), int(port["containerPort"]))
        gate_raw = conditions.get(condition_type)
        phase = str(status.get("phase") or "")
        # A pod runtime that does not publish ContainersReady: Running stands in for it.
        containers_ready_default = "True" if phase == "Running" else "False"
        return cls(
            namespace=str(metadata.get("namespace") or ""),
            name=str(metadata.get("name") or ""),
            uid=str(metadata.get("uid") or ""),
            labels=dict(metadata.get("labels") or {}),
            ip=str(status.get("podIP") or ""),
            node=str(spec.get("nodeName") or ""),
            phase=phase,
            terminating=bool(metadata.get("deletionTimestamp")),
            has_gate=any(
                gate.get("conditionType") == condition_type
                for gate in spec.get("readinessGates") or []
            ),
            gate_status=None if gate_raw is None else gate_raw == "True",
            gate_reason=gate_reason,
            ready=conditions.get("Ready") == "True",
            containers_ready=conditions.get("ContainersReady", containers_ready_default) == "True",
            container_ports=ports,
            deletion_cost=parse_deletion_cost(metadata.get("annotations") or None),
            cost_writer=cost_writer(metadata.get("annotations") or None),
        )

    @property
    def followable(self) -> bool:
        """Whether there is a sidecar to follow: an IP, and not finished."""
        return bool(self.ip) and self.phase not in ("Succeeded", "Failed")

    def resolve_port(self, port: int | str) -> int | None:
        """The admin port number for ``spec.sidecarPort`` (``None``: no such named port)."""
        if isinstance(port, int):
            return port
        return self.container_ports.get(port)


@dataclass(frozen=True)
class EndpointKey:
    """One followed sidecar: a pod incarnation (uid), at an IP and a port."""

    namespace: str
    pod: str
    uid: str
    ip: str
    port: int


@dataclass
class EndpointStats:
    """What one sidecar reported last, and whether it still answers."""

    state: SidecarState = SidecarState.STARTING
    document: StatsDocument | None = None
    observed_at: float = 0.0
    """Wall-clock time (``time.time()``) of the latest document or heartbeat."""
    last_error: str = ""
    restarts: int = 0
    """Sidecar restarts noticed (``seq`` went back or ``startedAt`` changed)."""


FleetListener = Callable[[str], None]
PodListener = Callable[[str, str], None]


class FleetState:
    """Pods, sidecar reports and ConnectionStats aggregates, per namespace."""

    def __init__(self) -> None:
        self._pods: dict[str, dict[str, PodRecord]] = {}
        self._endpoints: dict[EndpointKey, EndpointStats] = {}
        self._endpoints_by_pod: dict[str, dict[str, set[EndpointKey]]] = {}
        """Followed sidecars per namespace and pod name."""
        self._sorted_names: dict[str, list[str]] = {}
        """Sorted names of the followed pods per namespace (dropped when that set changes)."""
        self._pod_metrics: dict[tuple[str, str], _CachedPodMetrics] = {}
        """The last ``PodMetrics`` built per pod, with what it was built from."""
        self._aggregates: dict[tuple[str, str], ConnectionStatsMetrics] = {}
        self._listeners: list[FleetListener] = []
        self._pod_listeners: list[PodListener] = []

    # -- listeners -------------------------------------------------------------------------
    def add_listener(self, listener: FleetListener) -> None:
        """Call ``listener(namespace)`` after every change in that namespace."""
        self._listeners.append(listener)

    def add_pod_listener(self, listener: PodListener) -> None:
        """Call ``listener(namespace, pod)`` after every change of a pod or its sidecar."""
        self._pod_listeners.append(listener)

    def _changed(self, namespace: str, pod: str) -> None:
        for pod_listener in list(self._pod_listeners):
            pod_listener(namespace, pod)
        for listener in list(self._listeners):
            listener(namespace)

    # -- pods ------------------------------------------------------------------------------
    def upsert_pod(self, record: PodRecord) -> bool:
        """Add or replace a pod; return whether anything changed."""
        pods = self._pods.setdefault(record.namespace, {})
        if pods.get(record.name) == record:
            return False
        pods[record.name] = record
        self._changed(record.namespace, record.name)
        return True

    def remove_pod(self, namespace: str, name: str) -> bool:
        """Forget a deleted pod; return whether it was known."""
        pods = self._pods.get(namespace, {})
        if pods.pop(name, None) is None:
            return False
        self._changed(namespace, name)
        return True

    def pod(self, namespace: str, name: str) -> PodRecord | None:
        """One pod, if known."""
        return self._pods.get(namespace, {}).get(name)

    def pod_records(self, namespace: str) -> list[PodRecord]:
        """All known pods of a namespace."""
        return list(self._pods.get(namespace, {}).values())

    def namespaces(self) -> list[str]:
        """Namespaces with known pods."""
        return [ns for ns, pods in self._pods.items() if pods]

    def pods_matching(self, namespace: str, selector: LabelSelector) -> list[PodRecord]:
        """The pods of a namespace that a selector selects, by name."""
        pods = self._pods.get(namespace, {})
        return [pods[name] for name in sorted(pods) if selector.matches(pods[name].labels)]

    # -- sidecar endpoints -----------------------------------------------------------------
    def endpoint(self, key: EndpointKey) -> EndpointStats | None:
        """What a followed sidecar reported, if it is followed."""
        return self._endpoints.get(key)

    def endpoint_keys(self) -> list[EndpointKey]:
        """All followed sidecars."""
        return list(self._endpoints)

    def add_endpoint(self, key: EndpointKey) -> EndpointStats:
        """Start tracking a sidecar (state STARTING)."""
        stats = self._endpoints.get(key)
        if stats is None:
            stats = self._endpoints[key] = EndpointStats()
            by_pod = self._endpoints_by_pod.setdefault(key.namespace, {})
            if key.pod not in by_pod:
                self._sorted_names.pop(key.namespace, None)
            by_pod.setdefault(key.pod, set()).add(key)
        return stats

    def remove_endpoint(self, key: EndpointKey) -> None:
        """Stop tracking a sidecar."""
        if self._endpoints.pop(key, None) is not None:
            by_pod = self._endpoints_by_pod.get(key.namespace, {})
            keys = by_pod.get(key.pod, set())
            keys.discard(key)
            if not keys:
                by_pod.pop(key.pod, None)
                self._sorted_names.pop(key.namespace, None)
                self._pod_metrics.pop((key.namespace, key.pod), None)
                if not by_pod:
                    self._endpoints_by_pod.pop(key.namespace, None)
            self._changed(key.namespace, key.pod)

    def report(self, key: EndpointKey, document: StatsDocument, now: float) -> None:
        """A sidecar sent a document: it is reporting, and these are its counts."""
        stats = self._endpoints.get(key)
        if stats is None:
            return
        previous = stats.document
        if previous is not None and (
            document.started_at != previous.started_at or document.seq < previous.seq
        ):
            stats.restarts += 1
        changed = stats.state is not SidecarState.REPORTING or previous != document
        stats.state = SidecarState.REPORTING
        stats.document = document
        stats.observed_at = now
        stats.last_error = ""
        if changed:
            self._changed(key.namespace, key.pod)

    def heartbeat(self, key: EndpointKey, now: float) -> None:
        """A sidecar is alive and nothing changed."""
        stats = self._endpoints.get(key)
        if stats is not None:
            stats.observed_at = now

    def mark_unreachable(self, key: EndpointKey, error: str) -> None:
        """A sidecar stopped answering; its last counts no longer count."""
        stats = self._endpoints.get(key)
        if stats is None:
            return
        stats.last_error = error
        if stats.state is not SidecarState.UNREACHABLE:
            stats.state = SidecarState.UNREACHABLE
            self._changed(key.namespace, key.pod)

    def note_error(self, key: EndpointKey, error: str) -> None:
        """Remember the latest error without changing the state."""
        stats = self._endpoints.get(key)
        if stats is not None:
            stats.last_error = error

    # -- aggregates (written by the controller, read by the metrics API) -------------------
    def set_aggregate(self, metrics: ConnectionStatsMetrics) -> None:
        """Remember the latest totals of a ConnectionStats."""
        self._aggregates[(metrics.namespace, metrics.name)] = metrics

    def drop_aggregate(self, namespace: str, name: str) -> None:
        """Forget a deleted ConnectionStats."""
        self._aggregates.pop((namespace, name), None)

    # -- the MetricsSource protocol --------------------------------------------------------
    def pods(self, namespace: str) -> Sequence[PodMetrics]:
        """Every followed pod of a namespace with its latest counts (MetricsSource).

        A pod followed on several ports (two ConnectionStats) is listed once, with
        its most recent report. Pods whose sidecar is not reporting have
        ``reachable=False`` and zero counts (the metrics API leaves them out).
        """
        by_pod = self._endpoints_by_pod.get(namespace, {})
        names = self._sorted_names.get(namespace)
        if names is None:
            names = self._sorted_names[namespace] = sorted(by_pod)
        result: list[PodMetrics] = []
        for name in names:
            metrics = self._metrics_of(namespace, name, by_pod.get(name, ()))
            if metrics is not None:
                result.append(metrics)
        return result

    def pod_metrics(self, namespace: str, name: str) -> PodMetrics | None:
        """One followed pod as :meth:`pods` lists it (``PodMetricsLookup``: O(1))."""
        keys = self._endpoints_by_pod.get(namespace, {}).get(name)
        if not keys:
            return None
        return self._metrics_of(namespace, name, keys)

    def _metrics_of(
        self, namespace: str, name: str, keys: Iterable[EndpointKey]
    ) -> PodMetrics | None:
        """One pod's ``PodMetrics``, rebuilt only when what it shows changed."""
        pod = self.pod(namespace, name)
        if pod is None:
            return None
        best: EndpointStats | None = None
        for key in keys:
            stats = self._endpoints[key]
            if key.uid == pod.uid and (best is None or _better(stats, best)):
                best = stats
        if best is None:
            return None
        source = (best.state, best.document, best.observed_at)
        cached = self._pod_metrics.get((namespace, name))
        if (
            cached is not None
            and cached.pod is pod
            and cached.stats is best
            and cached.source == source
        ):
            return cached.metrics
        document = best.document
        reporting = best.state is SidecarState.REPORTING and document is not None
        metrics = PodMetrics(
            namespace=namespace,
            name=name,
            labels=dict(pod.labels),
            connections=document.connections if document and reporting else 0,
            topics=dict(document.topics) if document and reporting else {},
            observed_at=wall_to_datetime(best.observed_at),
            reachable=reporting,
        )
        self._pod_metrics[(namespace, name)] = _CachedPodMetrics(pod, best, source, metrics)
        return metrics

    def connection_stats(self, namespace: str, name: str) -> ConnectionStatsMetrics | None:
        """The latest totals of a ConnectionStats, or ``None`` (MetricsSource)."""
        return self._aggregates.get((namespace, name))


@dataclass(frozen=True)
class _CachedPodMetrics:
    pod: PodRecord
    stats: EndpointStats
    source: tuple[SidecarState, StatsDocument | None, float]
    metrics: PodMetrics


def wall_to_datetime(wall: float) -> datetime.datetime | None:
    """A ``time.time()`` value as an aware UTC datetime (``None`` for 0: never)."""
    if wall <= 0:
        return None
    return datetime.datetime.fromtimestamp(wall, datetime.UTC)


def _better(candidate: EndpointStats, current: EndpointStats) -> bool:
    rank_candidate = (candidate.state is SidecarState.REPORTING, candidate.observed_at)
    rank_current = (current.state is SidecarState.REPORTING, current.observed_at)
    return rank_candidate > rank_current
