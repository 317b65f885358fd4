"""The sidecar's shared live state: counts, readiness, drain flags, and change notification.

One :class:`SidecarState` is created per process and handed to the proxy, the
admin API and the drain controller. It owns the counter (a
:class:`ConnectionCounter` in the proxy modes, a :class:`ReportedCounts` in
report mode), answers "are we ready, and if not why", builds the stats document
of the wire contract, and wakes ``/stats/watch`` streams when anything in that
document changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime

from wsgauge_contract import Capacity, StatsDocument

from wsgauge_sidecar.admission import Refusal, UpgradeAdmission
from wsgauge_sidecar.counter import ConnectionCounter, ReportedCounts
from wsgauge_sidecar.httpwire import RequestHead
from wsgauge_sidecar.metrics import LiveView, SidecarMetrics
from wsgauge_sidecar.settings import SidecarSettings
from wsgauge_sidecar.topics import topic_from_request

log = logging.getLogger("wsgauge.sidecar")

READY = "ready"
"""Body of a 200 ``/readyz``."""


class ChangeFeed:
    """Wakes every waiter after a change (an ``asyncio.Event`` replaced on each notify)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        """Wake everybody currently waiting."""
        event, self._event = self._event, asyncio.Event()
        event.set()

    def current(self) -> asyncio.Event:
        """The event the next :meth:`notify` sets (take it before checking for changes)."""
        return self._event


class SidecarState:
    """Counts plus the flags that make up readiness and the stats document."""

    def __init__(self, settings: SidecarSettings) -> None:
        self.settings = settings
        """The process settings."""
        limits = settings.limits
        topic_limits = dict(limits.max_topic_connections)
        self.counter: ConnectionCounter | ReportedCounts = (
            ReportedCounts(limits.max_topics)
            if settings.report_mode
            else ConnectionCounter(limits.max_topics, named=frozenset(topic_limits))
        )
        """The counts (:class:`ReportedCounts` in report mode)."""
        self.started_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        """RFC 3339 start time for the stats document."""
        self.started_monotonic = time.monotonic()
        """Monotonic start time."""
        self.draining = False
        """True once SIGTERM was received (``/readyz`` fails from then on)."""
        self.accepting_upgrades = True
        """False once the drain grace is over: new upgrades get 503."""
        self.upstream_reachable = True
        """Result of the last TCP connect check of the upstream."""
        self.upstream_checked = False
        """True once the first upstream check finished."""
        self.pending_upgrades = 0
        """Upgrade requests forwarded to the upstream and not yet answered."""
        self.pending_by_topic: dict[str, int] = {}
        """Of those, how many per capped topic (``--max-topic-connections``)."""
        self.admission = UpgradeAdmission(
            max_connections=limits.max_connections,
            topic_limits=topic_limits,
            upgrades_per_second=limits.max_upgrades_per_second,
            clock=time.monotonic,
        )
        """Which new upgrades get 503 (capacity, topic caps, upgrade rate, drain)."""
        self.changes = ChangeFeed()
        """Woken after every change of the stats document."""
        self.stopping = asyncio.Event()
        """Set when the process is about to exit (ends watch streams)."""
        self._state_seq = 0
        self.metrics = SidecarMetrics(self.live_view)
        """The Prometheus metric set."""
        self.counter.add_listener(self.changes.notify)

    @property
    def connection_counter(self) -> ConnectionCounter:
        """The counter of the proxy modes (only valid when not in report mode)."""
        counter = self.counter
        assert isinstance(counter, ConnectionCounter), "no proxy counter in report mode"
        return counter

    # -- flags -----------------------------------------------------------------------------

    def set_draining(self) -> None:
        """Enter the drain: not ready from now on."""
        if not self.draining:
            self.draining = True
            self._state_changed()

    def stop_accepting_upgrades(self) -> None:
        """End of the drain grace: new upgrades are refused with 503."""
        self.accepting_upgrades = False

    def set_upstream_reachable(self, reachable: bool) -> None:
        """Record the result of an upstream TCP check."""
        first = not self.upstream_checked
        self.upstream_checked = True
        if reachable != self.upstream_reachable:
            self.upstream_reachable = reachable
            self._state_changed()
            if not first:
                upstream = self.settings.proxy.upstream
                if reachable:
                    log.info("upstream %s reachable again: ready", upstream)
                else:
                    log.warning("upstream %s unreachable: /readyz fails until it is back", upstream)

    def _state_changed(self) -> None:
        self._state_seq += 1
        self.changes.notify()

    # -- derived ---------------------------------------------------------------------------

    @property
    def seq(self) -> int:
        """Grows with every change of the stats document (counts or flags)."""
        return self.counter.seq + self._state_seq

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason): ``(True, "ready")`` or ``(False, why)``."""
        if self.draining:
            return False, "draining"
        ready_below = self.settings.limits.ready_below
        connections = self.counter.connections
        if ready_below and connections >= ready_below:
            return False, f"over ready-below ({connections} >= {ready_below})"
        if not self.upstream_reachable:
            return False, f"upstream unreachable ({self.settings.proxy.upstream})"
        return True, READY

    def request_topic(self, request: RequestHead) -> str | None:
        """The topic an upgrade request is counted in (``None``: none, or the topic rule
        reads frames, not the request)."""
        rule = self.settings.proxy.topic_rule
        return topic_from_request(rule, request.target, request.headers)

    def upgrade_refusal(self, request: RequestHead) -> Refusal | None:
        """Why a new upgrade must be refused with 503 right now (``None`` = go ahead)."""
        topic = self.request_topic(request) if self.admission.topic_limits else None
        topic_connections = 0
        if topic is not None and topic in self.admission.topic_limits:
            in_flight = self.pending_by_topic.get(topic, 0)
            topic_connections = self.connection_counter.topic_count(topic) + in_flight
        return self.admission.decide(
            accepting=self.accepting_upgrades,
            connections=self.counter.connections + self.pending_upgrades,
            topic=topic,
            topic_connections=topic_connections,
        )

    def upgrade_started(self, topic: str | None) -> None:
        """An admitted upgrade went to the app (one more in flight, in ``topic``)."""
        self.pending_upgrades += 1
        if topic is not None and topic in self.admission.topic_limits:
            self.pending_by_topic[topic] = self.pending_by_topic.get(topic, 0) + 1

    def upgrade_ended(self, topic: str | None) -> None:
        """An in-flight upgrade became a socket or failed."""
        self.pending_upgrades -= 1
        if topic is not None and topic in self.pending_by_topic:
            left = self.pending_by_topic[topic] - 1
            if left > 0:
                self.pending_by_topic[topic] = left
            else:
                del self.pending_by_topic[topic]

    def document(self) -> StatsDocument:
        """The stats document of the wire contract, as of now."""
        limits = self.settings.limits
        pod = self.settings.pod
        return StatsDocument(
            pod=pod.pod,
            namespace=pod.namespace,
            node=pod.node,
            connections=self.counter.connections,
            topics=self.counter.topics(),
            opened=self.counter.opened,
            closed=self.counter.closed,
            capacity=Capacity(
                max=limits.max_connections or None,
                ready_below=limits.ready_below or None,
                topics=self.admission.topic_limits,
                upgrades_per_second=limits.max_upgrades_per_second or None,
            ),
            refused=self.admission.refused(),
            ready=self.readiness()[0],
            draining=self.draining,
            started_at=self.started_at,
            seq=self.seq,
            topic_protocols=self._topic_protocols(),
        )

    def _topic_protocols(self) -> dict[str, str] | None:
        """``--topic auto``: topic -> the rule that counted its sockets; else ``None``."""
        counter = self.counter
        if self.settings.proxy.topic_rule.kind != "auto" or not isinstance(
            counter, ConnectionCounter
        ):
            return None
        return counter.topic_protocols()

    def live_view(self) -> LiveView:
        """The values the metrics collector exports at scrape time."""
        counter = self.counter
        if isinstance(counter, ConnectionCounter):
            closed_by_reason = counter.closed_by_reason()
        else:
            closed_by_reason = {"reported": counter.closed} if counter.closed else {}
        drain = self.settings.drain
        return LiveView(
            connections=counter.connections,
            topics=counter.topics(),
            opened=counter.opened,
            closed_by_reason=closed_by_reason,
            ready=self.readiness()[0],
            draining=self.draining,
            upstream_reachable=self.upstream_reachable,
            max_connections=self.settings.limits.max_connections,
            ready_below=self.settings.limits.ready_below,
            topic_limits=self.admission.topic_limits,
            max_upgrades_per_second=self.settings.limits.max_upgrades_per_second,
            drain_close_code=drain.close_code,
            drain_grace=drain.grace,
            drain_spread=drain.spread,
            drain_batches=drain.batches if drain.mode == "batches" else 0,
        )


async def check_upstream_forever(state: SidecarState) -> None:
    """Periodically try a TCP connect to the upstream and record whether it worked."""
    upstream = state.settings.proxy.upstream
    interval = state.settings.admin.upstream_check_interval
    while not state.stopping.is_set():
        state.set_upstream_reachable(await probe_tcp(upstream.host, upstream.port, interval))
        try:
            await asyncio.wait_for(state.stopping.wait(), interval)
        except TimeoutError:
            continue


async def probe_tcp(host: str, port: int, timeout: float) -> bool:
    """True if a TCP connection to ``host:port`` can be opened within ``timeout`` seconds."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
