"""Prometheus metrics of the sidecar, served as text on the admin port's ``GET /metrics``.

Live values (sockets, topics, opened/closed totals, readiness) are read from the
counter at scrape time by a custom collector, so the hot path of the proxy does
not touch prometheus_client at all except for one histogram observation per
closed socket and one counter increment per failed handshake. Everything lives
in a dedicated :class:`CollectorRegistry`, never the process-global one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""Content type of the Prometheus text exposition format."""

DURATION_BUCKETS: tuple[float, ...] = (
    0.1, 0.5, 1, 5, 15, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 24 * 3600,
)  # fmt: skip
"""Buckets of ``wsgauge_connection_duration_seconds``: WebSockets live from ms to days."""


@dataclass
class LiveView:
    """What the collector reads at scrape time (filled in by the app wiring)."""

    connections: int = 0
    """Open sockets."""
    topics: dict[str, int] = field(default_factory=dict)
    """Open sockets per topic."""
    opened: int = 0
    """Sockets counted since start."""
    closed_by_reason: dict[str, int] = field(default_factory=dict)
    """Sockets uncounted since start, per reason."""
    ready: bool = True
    """What ``/readyz`` answers."""
    draining: bool = False
    """SIGTERM received."""
    upstream_reachable: bool = True
    """Result of the last upstream TCP check."""
    max_connections: int = 0
    """``--max-connections`` (0 = none)."""
    ready_below: int = 0
    """``--ready-below`` (0 = none)."""
    topic_limits: dict[str, int] = field(default_factory=dict)
    """``--max-topic-connections``: topic -> cap."""
    max_upgrades_per_second: float = 0.0
    """``--max-upgrades-per-second`` (0 = none)."""
    drain_close_code: int = 1001
    """``--drain-close-code``."""
    drain_grace: float = 5.0
    """``--drain-grace``."""
    drain_spread: float = 10.0
    """``--drain-spread``."""
    drain_batches: int = 0
    """``--drain-batches`` in ``batches`` mode; 0 in ``spread`` mode."""


@dataclass
class RelayBytes:
    """Plain integers the proxy adds to per chunk (cheaper than a prometheus Counter)."""

    to_upstream: int = 0
    """Bytes relayed from clients to the upstream."""
    to_client: int = 0
    """Bytes relayed from the upstream to clients."""
    native: bool = False
    """True when upgraded sockets are relayed by the native relay."""
    native_bytes: Callable[[], tuple[int, int]] | None = None
    """The native relay's (to_upstream, to_client) byte totals, read at scrape time."""


class _LiveCollector(Collector):
    def __init__(self, read: Callable[[], LiveView], relay: RelayBytes) -> None:
        self._read = read
        self._relay = relay

    def collect(self) -> Iterable[Metric]:
        view = self._read()
        yield GaugeMetricFamily(
            "wsgauge_connections", "Open WebSocket connections.", value=view.connections
        )
        topics = GaugeMetricFamily(
            "wsgauge_topic_connections",
            "Open WebSocket connections per topic (a socket may be in several topics).",
            labels=["topic"],
        )
        for topic, count in sorted(view.topics.items()):
            topics.add_metric([topic], count)
        yield topics
        yield CounterMetricFamily(
            "wsgauge_connections_opened",
            "WebSocket connections counted since the sidecar started.",
            value=view.opened,
        )
        closed = CounterMetricFamily(
            "wsgauge_connections_closed",
            "WebSocket connections uncounted since the sidecar started, by what ended them.",
            labels=["reason"],
        )
        for reason, count in sorted(view.closed_by_reason.items()):
            closed.add_metric([reason], count)
        yield closed
        yield GaugeMetricFamily("wsgauge_ready", "1 while /readyz answers 200.", value=view.ready)
        yield GaugeMetricFamily(
            "wsgauge_draining", "1 once SIGTERM was received.", value=view.draining
        )
        yield GaugeMetricFamily(
            "wsgauge_upstream_reachable",
            "1 while the last TCP connect check of the upstream succeeded.",
            value=view.upstream_reachable,
        )
        yield GaugeMetricFamily(
            "wsgauge_max_connections",
            "Configured --max-connections (0 = unlimited).",
            value=view.max_connections,
        )
        yield GaugeMetricFamily(
            "wsgauge_ready_below", "Configured --ready-below (0 = off).", value=view.ready_below
        )
        topic_caps = GaugeMetricFamily(
            "wsgauge_topic_max_connections",
            "Configured --max-topic-connections per topic (new upgrades get 503 at it).",
            labels=["topic"],
        )
        for topic, limit in sorted(view.topic_limits.items()):
            topic_caps.add_metric([topic], limit)
        yield topic_caps
        yield GaugeMetricFamily(
            "wsgauge_max_upgrades_per_second",
            "Configured --max-upgrades-per-second (0 = unlimited).",
            value=view.max_upgrades_per_second,
        )
        yield GaugeMetricFamily(
            "wsgauge_drain_close_code",
            "Close code the drain sends on SIGTERM (--drain-close-code: 1001 or 1012).",
            value=view.drain_close_code,
        )
        yield GaugeMetricFamily(
            "wsgauge_drain_grace_seconds",
            "Configured --drain-grace: seconds from SIGTERM to refusing upgrades.",
            value=view.drain_grace,
        )
        yield GaugeMetricFamily(
            "wsgauge_drain_spread_seconds",
            "Configured --drain-spread: the window in which every socket gets its close frame.",
            value=view.drain_spread,
        )
        yield GaugeMetricFamily(
            "wsgauge_drain_batches",
            "Batches of --drain-mode batches (0 = --drain-mode spread, one socket at a time).",
            value=view.drain_batches,
        )
        relayed = CounterMetricFamily(
            "wsgauge_relayed_bytes",
            "Bytes relayed by the data port proxy, by direction.",
            labels=["direction"],
        )
        relay = self._relay
        native_up, native_down = relay.native_bytes() if relay.native_bytes else (0, 0)
        relayed.add_metric(["to_upstream"], relay.to_upstream + native_up)
        relayed.add_metric(["to_client"], relay.to_client + native_down)
        yield relayed
        yield GaugeMetricFamily(
            "wsgauge_native_relay",
            "1 when upgraded WebSockets are relayed by the native relay, 0 when in Python.",
            value=relay.native,
        )


class SidecarMetrics:
    """The sidecar's metric set in its own registry."""

    def __init__(self, read_live: Callable[[], LiveView]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        """The dedicated registry served on ``/metrics``."""
        self.relay = RelayBytes()
        """Byte counters the proxy increments directly."""
        self.handshake_failures = Counter(
            "wsgauge_handshake_failures",
            "WebSocket upgrades that were not counted, by reason.",
            labelnames=["reason"],
            registry=self.registry,
        )
        """Incremented once per upgrade request that did not end in a counted socket."""
        self.connection_duration = Histogram(
            "wsgauge_connection_duration_seconds",
            "Lifetime of counted WebSocket connections, observed when they close.",
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        """Observed once per uncounted socket."""
        self.registry.register(_LiveCollector(read_live, self.relay))

    def handshake_failed(self, reason: str) -> None:
        """Count one upgrade that did not become a counted socket."""
        self.handshake_failures.labels(reason=reason).inc()

    def connection_closed(self, duration_seconds: float) -> None:
        """Record the lifetime of one socket that was just uncounted."""
        self.connection_duration.observe(max(0.0, duration_seconds))

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
