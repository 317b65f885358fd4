"""Drain on SIGTERM: stop being ready, stop accepting upgrades, close sockets gently, exit.

Timeline after SIGTERM (``t = 0``):

1. ``t = 0``: ``draining`` is set: ``/readyz`` answers 503 ``draining`` and the
   stats document says ``"draining": true`` (the operator and the kubelet see it).
   New upgrades are still proxied and counted, because endpoints take a moment
   to stop sending traffic here.
2. ``t = grace``: new upgrades get HTTP 503 (plain HTTP still passes through).
   The sockets open at that moment are closed one by one with close code 1001
   (going away), evenly spread over ``spread`` seconds: socket ``i`` of ``n`` at
   ``grace + i * spread / n``, oldest first, so that clients reconnect elsewhere
   in a trickle instead of a stampede. Each close is injected at a frame boundary
   and the client's close reply is relayed to the app.
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

from wsgauge_sidecar.proxy import ClientConnection, ProxyServer
from wsgauge_sidecar.state import SidecarState

log = logging.getLogger("wsgauge.sidecar.drain")

GOING_AWAY = 1001
"""Close code sent to every socket on drain."""


class DrainController:
    """Runs the drain once; :meth:`hurry` shortens the waits."""

    def __init__(self, state: SidecarState, proxy: ProxyServer | None) -> None:
        self.state = state
        self.proxy = proxy
        self.settings = state.settings.drain
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
        log.info("drain: grace over; refusing upgrades; closing %d sockets with 1001", total)
        if total == 0:
            return
        loop = asyncio.get_running_loop()
        interval = self.settings.spread / total
        start = loop.time()
        next_report = 0.0
        for index, connection in enumerate(sockets):
            await self._sleep(start + index * interval - loop.time())
            self._close(connection)
            done = (index + 1) / total
            if done >= next_report or index + 1 == total:
                log.info(
                    "drain: %d/%d sockets sent 1001, %d still open",
                    index + 1, total, self.state.counter.connections,
                )  # fmt: skip
                next_report = done + 0.25
        for connection in proxy.counted():  # upgrades answered during the spread
            self._close(connection)

    def _close(self, connection: ClientConnection) -> None:
        """Send ``connection`` its 1001, counting it once (not again if it is closing)."""
        relay = connection.relay
        if relay is not None and relay.close_gracefully(GOING_AWAY, "drain"):
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
