"""Settings of the sidecar: one frozen dataclass per concern, built by :mod:`wsgauge_sidecar.cli`.

Every field has a default and a docstring. They are the command line's defaults and
``--help`` texts (:mod:`wsgauge_contract.flags` reads them), and tests and embedders can build
a :class:`SidecarSettings` directly without going through ``argparse``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from wsgauge_contract.address import Address
from wsgauge_contract.live_session import LiveSettings

from wsgauge_sidecar.topics import TopicRule


@dataclass(frozen=True)
class ProxySettings:
    """The data port: the reverse proxy in front of the app."""

    listen: Address = field(default_factory=lambda: Address("0.0.0.0", 8080))
    """``--listen``: the data port, where clients connect (the proxy in front of the app)."""
    upstream: Address = field(default_factory=lambda: Address("127.0.0.1", 8081))
    """``--upstream``: the app container behind the proxy."""
    topic_rule: TopicRule = field(default_factory=lambda: TopicRule("path"))
    """``--topic``: how a socket's topic is found (topic rules: see below)."""
    handshake_timeout: float = 10.0
    """``--handshake-timeout``: seconds a client has to send a full request head (and,
    for an upgrade, for the upstream to answer it)."""
    max_header_bytes: int = 16384
    """``--max-header-bytes``: largest request or response head accepted."""
    max_message_bytes: int = 1048576
    """``--max-message-bytes``: largest WebSocket message read under a frame protocol rule
    (close code 1009 above it)."""
    socket_buffer_bytes: int = 262144
    """``--socket-buffer-bytes``: per-direction relay buffer; reading from the sending peer
    pauses above it."""
    tcp_keepalive: float = 60.0
    """``--tcp-keepalive``: seconds of silence on a client connection before TCP keepalive
    probes start (then every third of it, at least 1 s; cut after 3 unanswered probes, or
    when sent data stays unacknowledged for twice this long). 0 = off. This is what ends a
    half-open socket whose client vanished without a FIN or RST."""
    upstream_connect_timeout: float = 5.0
    """Seconds to wait for a TCP connection to the upstream before answering 502."""
    relay: str = "auto"
    """``--relay``: who relays an upgraded WebSocket (every topic rule; under a frame protocol
    rule the native relay also filters the messages for Python): ``native`` (the C relay; exit 2
    if it is not available), ``python`` (the asyncio relay) or ``auto`` (native when available,
    else Python; the start line and ``wsgauge_native_relay`` on ``/metrics`` say which)."""


@dataclass(frozen=True)
class LimitSettings:
    """Capacity limits and the cardinality guard."""

    max_connections: int = 0
    """``--max-connections``: new upgrades get HTTP 503 at this many sockets (0 = no limit)."""
    ready_below: int = 0
    """``--ready-below``: ``/readyz`` fails at or above this many sockets (0 = off)."""
    max_topics: int = 100
    """``--max-topics``: distinct topics before further ones count under ``_other``."""
    max_topic_connections: tuple[tuple[str, int], ...] = ()
    """``--max-topic-connections TOPIC=N`` (repeatable): new upgrades whose topic already
    holds N sockets get HTTP 503 (request-based topic rules only)."""
    max_upgrades_per_second: float = 0.0
    """``--max-upgrades-per-second``: new upgrades beyond this rate get HTTP 503 with a
    jittered Retry-After sized to the storm (0 = no limit)."""


@dataclass(frozen=True)
class AdminSettings:
    """The admin port: metrics, stats, readiness, report API."""

    listen: Address = field(default_factory=lambda: Address("0.0.0.0", 9090))
    """``--admin-listen``: the admin port, where the operator, kubelet and Prometheus connect
    (must differ from ``--listen``)."""
    report_listen: Address = field(default_factory=lambda: Address("127.0.0.1", 9091))
    """``--report-listen``: the report API's own listener, opened in report mode only; a
    loopback address, so that only the pod itself (the app container) can reach it."""
    watch_heartbeat: float = 5.0
    """``--watch-heartbeat``: seconds of silence after which ``/stats/watch`` sends a blank line."""
    watch_min_interval: float = 0.05
    """``--watch-min-interval``: least seconds between two documents on one watch stream."""
    upstream_check_interval: float = 2.0
    """``--upstream-check-interval``: seconds between TCP connect checks of the upstream."""
    max_report_bytes: int = 1048576
    """Largest body accepted by ``PUT``/``POST /report``."""
    control_ca: str = ""
    """``--control-ca``: the CA certificate (PEM text, or the path of a PEM file) whose
    certificates may send control orders (``POST /control/shed``: close sockets for a
    rebalance); the injector sets it from wsgauge's CA. Empty: every control order is refused."""


@dataclass(frozen=True)
class DrainSettings:
    """What happens on SIGTERM."""

    grace: float = 5.0
    """``--drain-grace``: seconds between SIGTERM (not ready at once) and refusing upgrades."""
    spread: float = 10.0
    """``--drain-spread``: seconds over which the remaining sockets get their close frame."""
    close_code: int = 1001
    """``--drain-close-code``: the close code the drain sends, 1001 (Going Away) or 1012
    (Service Restart)."""
    mode: str = "spread"
    """``--drain-mode``: ``spread`` closes one socket at a time, evenly over the spread;
    ``batches`` closes --drain-batches batches, each at a jittered moment of its own slot."""
    batches: int = 10
    """``--drain-batches``: how many batches the ``batches`` mode cuts the sockets into."""
    close_timeout: float = 5.0
    """Seconds a socket may take to finish its close handshake before it is cut."""


@dataclass(frozen=True)
class PodIdentity:
    """Who this sidecar is, from the downward API."""

    pod: str = ""
    """``POD_NAME``."""
    namespace: str = ""
    """``POD_NAMESPACE``."""
    node: str = ""
    """``NODE_NAME``."""

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> PodIdentity:
        """Read ``POD_NAME``, ``POD_NAMESPACE`` and ``NODE_NAME`` (empty when unset)."""
        env = os.environ if environ is None else environ
        return cls(
            pod=env.get("POD_NAME", ""),
            namespace=env.get("POD_NAMESPACE", ""),
            node=env.get("NODE_NAME", ""),
        )


@dataclass(frozen=True)
class SidecarSettings:
    """Everything the sidecar process needs."""

    proxy: ProxySettings = field(default_factory=ProxySettings)
    """Data port and proxying."""
    limits: LimitSettings = field(default_factory=LimitSettings)
    """Capacity and cardinality."""
    admin: AdminSettings = field(default_factory=AdminSettings)
    """Admin port."""
    drain: DrainSettings = field(default_factory=DrainSettings)
    """Drain on SIGTERM."""
    live: LiveSettings = field(default_factory=LiveSettings)
    """The bounds of each ``/stats/ws`` client on the admin port."""
    pod: PodIdentity = field(default_factory=PodIdentity)
    """Downward API identity."""
    log_level: str = "info"
    """``--log-level``: debug, info, warning or error."""

    @property
    def report_mode(self) -> bool:
        """True for ``--topic report``: the app reports its counts, the data port is off."""
        return self.proxy.topic_rule.kind == "report"
