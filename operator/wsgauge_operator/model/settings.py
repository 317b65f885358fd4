"""Settings of the operator: one frozen dataclass per concern, every field defaulted.

:mod:`wsgauge_operator.cli` fills them from flags and ``WSGAUGE_OPERATOR_*`` environment variables.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wsgauge_contract.live_session import LiveSettings

CONNECTIONS_OK_CONDITION = "wsgauge.dev/connections-ok"
"""Pod condition type the operator keeps for a pod ``readinessGate``."""

API_GROUP = "wsgauge.dev"
"""API group of the ConnectionStats resource."""

API_VERSION = "v1alpha1"
"""Served (and stored) version of the ConnectionStats resource."""

PLURAL = "connectionstats"
"""Plural resource name of ConnectionStats."""

KIND = "ConnectionStats"
"""Kind of the custom resource."""


@dataclass(frozen=True)
class KubeSettings:
    """How the operator reaches the Kubernetes API and what it watches."""

    kubeconfig: str | None = None
    """Path of a kubeconfig file; unset: the in-cluster service account, else ``$KUBECONFIG``."""
    namespaces: tuple[str, ...] = ()
    """Namespaces to watch (pods and ConnectionStats); empty: the whole cluster."""
    field_manager: str = "wsgauge-operator"
    """Field manager name on the operator's writes."""
    request_timeout: float = 10.0
    """Seconds before one API call is abandoned."""
    instance: str = ""
    """Reporting instance on Events (defaults to the host name)."""


@dataclass(frozen=True)
class FollowerSettings:
    """How the operator follows each sidecar's ``/stats/watch``."""

    connect_timeout: float = 2.0
    """Seconds to open a connection and receive the response head."""
    read_timeout: float = 12.0
    """Seconds without a byte (document or heartbeat) before a sidecar counts as unreachable.

    Must exceed the sidecar's ``--watch-heartbeat`` (5 s by default)."""
    backoff_initial: float = 0.25
    """First reconnect delay in seconds; doubles up to ``backoff_max``."""
    backoff_max: float = 10.0
    """Longest reconnect delay in seconds."""
    poll_interval: float = 2.0
    """Seconds between ``GET /stats`` polls when a sidecar has no ``/stats/watch``."""
    startup_grace: float = 15.0
    """Seconds a never-seen sidecar may take to answer before its pod counts as unreachable."""
    max_document_bytes: int = 1024 * 1024
    """Largest stats document accepted from one sidecar."""
    max_followed_pods: int = 20000
    """Most sidecars followed at once (one stream each); further selected pods are not
    followed and their ConnectionStats reports ``Degraded``/``PodLimitReached``."""


@dataclass(frozen=True)
class StatusSettings:
    """Shape and pace of the ConnectionStats status."""

    default_interval: float = 2.0
    """Status interval in seconds when ``spec.statusInterval`` is not set."""
    min_interval: float = 0.5
    """Lower bound on ``spec.statusInterval`` (protects the API server)."""
    top_topics: int = 20
    """Topics listed in the status; the rest are folded into ``_other``."""
    busiest_pods: int = 10
    """Pods listed in ``status.busiestPods``."""
    max_nodes: int = 50
    """Nodes listed in ``status.nodes`` (busiest first)."""


@dataclass(frozen=True)
class ReadinessSettings:
    """The pod condition behind the ``wsgauge.dev/connections-ok`` readiness gate."""

    enabled: bool = True
    """Whether the operator writes the pod condition at all."""
    condition_type: str = CONNECTIONS_OK_CONDITION
    """Condition type written on pods (pods opt in with a readinessGate of this type)."""
    repatch_after: float = 5.0
    """Seconds before a condition write not yet seen in the pod watch is tried again."""


@dataclass(frozen=True)
class EventSettings:
    """Kubernetes Events recorded on ConnectionStats."""

    enabled: bool = True
    """Whether Events are recorded."""
    repeat_after: float = 300.0
    """Seconds before the same Event (reason and message) is recorded again."""


@dataclass(frozen=True)
class ServerSettings:
    """The operator's own HTTP server: cluster-wide stats, live stream and ``/metrics``."""

    listen: str = "0.0.0.0:8090"
    """``HOST:PORT`` of the stats server; empty string: no server."""
    watch_heartbeat: float = 5.0
    """Seconds between blank-line heartbeats on ``/stats/watch`` when nothing changed."""
    watch_min_interval: float = 0.25
    """Shortest time between two documents on ``/stats/watch``."""
    live: LiveSettings = field(default_factory=LiveSettings)
    """The bounds of each ``/stats/ws`` client (the live page's and ``kubectl wsgauge``'s)."""
    live_page: bool = True
    """Serve the live page at ``/ui/`` (its assets come with the package)."""


@dataclass(frozen=True)
class AutoscalingSettings:
    """The custom metrics API, the KEDA endpoint, the owned HPA and the pod deletion cost."""

    metrics_api: bool = False
    """Serve ``custom.metrics.k8s.io`` over TLS (needs the request-header CA ConfigMap)."""
    metrics_api_listen: str = "0.0.0.0:8443"
    """``HOST:PORT`` of the custom metrics API (HTTPS)."""
    metrics_api_cert_file: str = ""
    """Serving certificate (PEM); empty with an empty key file: self-signed at start."""
    metrics_api_key_file: str = ""
    """Private key of the serving certificate (PEM)."""
    keda_listen: str = ""
    """``HOST:PORT`` of an own plain-HTTP listener for the KEDA endpoint; empty: the endpoint
    is mounted on the stats server (``/keda/...``)."""
    max_metric_age: float = 30.0
    """Seconds after which a value the sidecar has not confirmed is left out (stale)."""
    hpa_resync: float = 10.0
    """Seconds between checks of an owned HPA and the target's scale subresource."""
    deletion_cost: bool = True
    """Keep ``controller.kubernetes.io/pod-deletion-cost`` on the target's pods."""
    deletion_cost_writes_per_second: float = 10.0
    """Pod annotation writes per second over the whole operator."""
    deletion_cost_burst: int = 20
    """Pod annotation writes allowed at once."""


@dataclass(frozen=True)
class LeaderElectionSettings:
    """Lease-based leader election between operator replicas (see ``docs/operator.md``).

    Timing follows client-go: a standby takes over a lease it has seen unchanged for
    ``lease_duration``; the leader renews every ``retry_period`` and stops (exits) when it could
    not renew for ``renew_deadline``, which is shorter than ``lease_duration``, so that it has
    stopped before anyone else may take over.
    """

    enabled: bool = False
    """Elect a leader among replicas; only the leader runs the controller (off: act at once)."""
    namespace: str = ""
    """Namespace of the Lease; empty: the pod's own namespace in a cluster, else ``default``."""
    lease_name: str = "wsgauge-operator"
    """Name of the ``coordination.k8s.io/v1`` Lease."""
    identity: str = ""
    """This replica's holder identity; empty: ``<instance or host name>_<random suffix>``."""
    lease_duration: float = 15.0
    """Seconds a standby waits, after the lease last changed, before it takes the lease over."""
    renew_deadline: float = 10.0
    """Seconds the leader may fail to renew before it gives up (exits); < ``lease_duration``."""
    retry_period: float = 2.0
    """Seconds between renewals of the leader and between a standby's looks at the lease."""


@dataclass(frozen=True)
class CollectorSettings:
    """CPython's cyclic garbage collector in the operator process.

    The operator keeps millions of long-lived objects at 10,000 pods (one follower, its
    stream and its last document per pod). With CPython's default thresholds (700, 10, 10)
    the collector walks that heap so often that a third of the CPU went into it and the
    event loop stalled for seconds (docs/operator.md, "Scale"). Memory is still freed by
    reference counting as before; only the search for reference cycles runs less often.
    """

    thresholds: tuple[int, int, int] = (100_000, 50, 100)
    """``gc.set_threshold`` values: allocations before a young collection, young collections
    before a middle one, middle ones before a full one. CPython's own: ``(700, 10, 10)``."""


@dataclass(frozen=True)
class OperatorSettings:
    """All settings of one operator process."""

    kube: KubeSettings = field(default_factory=KubeSettings)
    """Kubernetes API access."""
    follower: FollowerSettings = field(default_factory=FollowerSettings)
    """Sidecar following."""
    status: StatusSettings = field(default_factory=StatusSettings)
    """Status shape and pace."""
    readiness: ReadinessSettings = field(default_factory=ReadinessSettings)
    """Readiness-gate condition."""
    events: EventSettings = field(default_factory=EventSettings)
    """Kubernetes Events."""
    server: ServerSettings = field(default_factory=ServerSettings)
    """Stats / metrics server."""
    autoscaling: AutoscalingSettings = field(default_factory=AutoscalingSettings)
    """Custom metrics API, KEDA endpoint, owned HPA, deletion cost."""
    leader_election: LeaderElectionSettings = field(default_factory=LeaderElectionSettings)
    """Leader election between replicas."""
    collector: CollectorSettings = field(default_factory=CollectorSettings)
    """Garbage collector thresholds."""
    log_level: str = "info"
    """Log level: debug, info, warning or error."""
    liveness_endpoint: str = ""
    """kopf liveness endpoint URL (e.g. ``http://0.0.0.0:8080/healthz``); empty: none."""
