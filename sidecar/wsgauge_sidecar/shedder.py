"""Shedding sockets for a rebalance: the asyncio adapter over :mod:`.shed`.

:class:`Shedder` runs one order at a time: it takes the ``count`` oldest counted sockets (the
clients that reconnected lately are not bounced again) and closes each at its jittered offset
(:func:`.shed.jittered_offsets`) with the order's close code, gently, as the drain does: the
close frame is injected at a frame boundary and the client's close reply relayed to the app.
A socket that ended meanwhile is skipped (not replaced). A drain that starts stops the shed
(the drain closes everything anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

from wsgauge_contract.control import ShedOrder

from wsgauge_sidecar.proxy import ClientConnection, ProxyServer
from wsgauge_sidecar.shed import jittered_offsets
from wsgauge_sidecar.state import SidecarState

log = logging.getLogger("wsgauge.sidecar.shed")

REASON = "rebalance"
"""The ``reason`` label of ``wsgauge_connections_closed_total`` for shed sockets."""


class Shedder:
    """One shed at a time for one sidecar."""

    def __init__(
        self, state: SidecarState, proxy: ProxyServer | None, rng: random.Random | None = None
    ) -> None:
        self.state = state
        self.proxy = proxy
        self._rng = rng or random.Random()
        self._task: asyncio.Task[None] | None = None
        self.shed_total = 0
        """Sockets this sidecar started to close for a rebalance, since it started."""

    @property
    def busy(self) -> bool:
        """Whether a shed is running."""
        return self._task is not None and not self._task.done()

    def start(self, order: ShedOrder) -> int:
        """Start ``order``; returns how many sockets it will close (fewer when fewer are open)."""
        if self.proxy is None or self.state.draining:
            return 0
        sockets = self.proxy.counted()[: order.count]
        offsets = jittered_offsets(len(sockets), order.spread_seconds, self._rng)
        log.info(
            "shed: closing %d of %d sockets with %d over %.1f s (rebalance)",
            len(sockets), self.state.counter.connections, order.close_code, order.spread_seconds,
        )  # fmt: skip
        self._task = asyncio.ensure_future(self._run(sockets, offsets, order.close_code))
        return len(sockets)

    async def _run(self, sockets: list[ClientConnection], offsets: list[float], code: int) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        closed = 0
        for connection, offset in zip(sockets, offsets, strict=True):
            delay = start + offset - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.state.draining:
                log.info("shed: stopped by the drain after %d sockets", closed)
                return
            relay = connection.relay
            if relay is not None and relay.close_gracefully(code, REASON):
                closed += 1
                self.shed_total += 1
        log.info("shed: done, %d sockets sent %d", closed, code)

    async def stop(self) -> None:
        """Cancel a running shed (shutdown)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
