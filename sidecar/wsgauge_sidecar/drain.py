"""Drain on SIGTERM: stop being ready, stop accepting upgrades, close sockets gently, exit.

Timeline after SIGTERM (``t = 0``):

1. ``t = 0``: ``draining`` is set: ``/readyz`` answers 503 ``draining`` and the
   stats document says ``"draining": true`` (the operator and the kubelet see it).
   New upgrades are still proxied and counted, because endpoints take a moment
   to stop sending traffic here.
2. ``t = grace``: new upgrades get HTTP 503 (plain HTTP still passes through).
   The sockets open at that moment get a close frame with ``--drain-close-code``
   (1001 going away by default, or 1012 service restart), oldest first, at the
   moments :func:`wsgauge_sidecar.drain_schedule.plan_drain` gives: in ``spread``
   mode socket ``i`` of ``n`` at ``grace + i * spread / n``; in ``batches`` mode in
   ``--drain-batches`` batches, each at a jittered moment of its own slot. Either way
   clients reconnect elsewhere in a trickle instead of a stampede. Each close is
   injected at a frame boundary and the client's close reply is relayed to the app.
3. Sockets that appear meanwhile (an upgrade the app answered late) are closed
   at the end of the spread; then every socket has ``close_timeout`` seconds to
   finish its close handshake before it is cut. The process then exits 0.

In report mode the sidecar holds no sockets: it waits ``grace``, then until the
app reports 0 connections or ``spread`` seconds pass, and exits.

A second SIGTERM is ignored (logged); SIGINT (or a second SIGINT) hurries the
drain: the remaining waits are skipped and the sockets are closed at once.
"""

from __future__ import annotations

import asyncio
import logging
import random

from wsgauge_sidecar.drain_schedule import plan_drain
from wsgauge_sidecar.proxy import ClientConnection, ProxyServer
from wsgauge_sidecar.state import SidecarState

log = logging.getLogger("wsgauge.sidecar.drain")


class DrainController:
    """Runs the drain once; :meth:`hurry` shortens the waits."""

    def __init__(
        self,
        state: SidecarState,
        proxy: ProxyServer | None,
        rng: random.Random | None = None,
    ) -> None:
        self.state = state
        self.proxy = proxy
        self.settings = state.settings.drain
        self._rng = rng if rng is not None else random.Random()
        self._hurry = asyncio.Event()
        self.started = False
        """True once :meth:`run` began."""
        self.closed_by_drain = 0
        """Sockets this drain started to close (each once, however often it is swept)."""

    def hurry(self) -> None:
        """Skip the remaining waits (SIGINT)."""
        self._hurry.set()

    async def _sleep(self, seconds: float) -> None:
        """Sleep unless hurried."""
        if seconds <= 0 or self._hurry.is_set():
            return
        try:
            await asyncio.wait_for(self._hurry.wait(), seconds)
        except TimeoutError:
            return

    async def run(self) -> None:
        """The whole drain; returns when the process may exit."""
        self.started = True
        state = self.state
        state.set_draining()
        hurried = self._hurry.is_set()
        log.info(
            "drain: started with %d open sockets; not ready now, accepting upgrades "
            "for %.1f s more, then closing them over %.1f s",
            state.counter.connections,
            0.0 if hurried else self.settings.grace,
            0.0 if hurried else self.settings.spread,
        )
        await self._sleep(self.settings.grace)
        state.stop_accepting_upgrades()
        if self.proxy is None:
            await self._wait_reported_zero()
            return
        await self._close_spread(self.proxy)
        await self._wait_closed(self.proxy)

    async def _close_spread(self, proxy: ProxyServer) -> None:
        sockets = proxy.counted()
        total = len(sockets)
        settings = self.settings
        code = settings.close_code
        log.info(
            "drain: grace over; refusing upgrades; closing %d sockets with %d (%s)",
            total, code, settings.mode,
        )  # fmt: skip
        if total == 0:
            return
        schedule = plan_drain(total, settings.spread, settings.mode, settings.batches, self._rng)
        loop = asyncio.get_running_loop()
        start = loop.time()
        next_report = 0.0
        for batch in schedule:
            await self._sleep(start + batch.at - loop.time())
            for index in batch.indexes:
                self._close(sockets[index])
            done = (batch.first + batch.size) / total
            if done >= next_report or done == 1:
                log.info(
                    "drain: %d/%d sockets sent %d, %d still open",
                    batch.first + batch.size, total, code, self.state.counter.connections,
                )  # fmt: skip
                next_report = done + 0.25
        for connection in proxy.counted():  # upgrades answered during the spread
            self._close(connection)

    def _close(self, connection: ClientConnection) -> None:
        """Send ``connection`` its close frame, counting it once (not again if it is closing)."""
        relay = connection.relay
        if relay is not None and relay.close_gracefully(self.settings.close_code, "drain"):
            self.closed_by_drain += 1

    async def _wait_closed(self, proxy: ProxyServer) -> None:
        """Give the close handshakes ``close_timeout`` seconds, then cut what is left."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.close_timeout
        state = self.state
        while state.counter.connections and loop.time() < deadline:
            event = state.changes.current()
            try:
                await asyncio.wait_for(event.wait(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                break
        remaining = state.counter.connections
        if remaining:
            log.warning("drain: %d sockets did not finish closing in time; cutting them", remaining)
        proxy.abort_all("shutdown")
        log.info("drain: done, %d sockets closed by the drain", self.closed_by_drain)

    async def _wait_reported_zero(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.spread
        state = self.state
        while state.counter.connections and loop.time() < deadline and not self._hurry.is_set():
            event = state.changes.current()
            try:
                await asyncio.wait_for(event.wait(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                break
        log.info("drain: done (report mode, %d connections reported)", state.counter.connections)
