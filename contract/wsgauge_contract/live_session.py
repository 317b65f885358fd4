"""One live client of ``/stats/ws``: the asyncio adapter around :class:`~.live.LiveOutbox`.

Both servers (the sidecar's admin port, the operator's stats port) accept the WebSocket with
their own HTTP library and hand this module a :class:`LiveSocket` (send a text frame, close,
abort), the frames the client sends, and a :class:`LiveSource` (the document to push, the
answer to a request, a wait for the next change). :func:`serve_live` then runs three tasks:
one reads requests into the outbox, one notes changes, one sends what the outbox says, each
send bounded by ``send_timeout``: a client that stops reading is cut (its transport aborted)
when its socket buffers are full and a send waits longer than that. Nothing else is kept per
client, so memory does not grow with what a client fails to read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from wsgauge_contract.live import (
    CLOSE_POLICY,
    CLOSE_UNSUPPORTED,
    LiveOutbox,
    LiveRequest,
    LiveRequestError,
    Push,
    encode_message,
    error_message,
    parse_request,
)

log = logging.getLogger("wsgauge.live")


@dataclass(frozen=True)
class LiveSettings:
    """Bounds of one live client."""

    send_timeout: float = 10.0
    """Seconds one frame may wait for the client to read; past that the client is cut."""
    min_interval: float = 0.1
    """Least seconds between two pushes to one client (changes in between are coalesced)."""
    max_pending_answers: int = 16
    """Requests a client may have unanswered; one more closes the socket (1008)."""
    max_clients: int = 64
    """Live clients served at once; the next upgrade gets HTTP 503."""
    heartbeat: float = 20.0
    """Seconds between WebSocket pings (a client that answers none is closed)."""


class LiveSocket(Protocol):
    """The accepted WebSocket, as the server's HTTP library gives it."""

    async def send_text(self, text: str) -> None:
        """Send one text frame (waits while the transport's buffer is full)."""

    async def close(self, code: int, reason: str) -> None:
        """Start the closing handshake."""

    def abort(self) -> None:
        """Drop the connection at once (a client that does not read)."""


class LiveSource(Protocol):
    """What a server pushes and answers."""

    allowed: frozenset[str]
    """The ``get`` values this server answers."""

    def push(self) -> dict[str, Any]:
        """The message pushed on connect and after changes (the latest document)."""

    def answer(self, request: LiveRequest) -> dict[str, Any]:
        """The answer to a request; raises :class:`LiveRequestError` when there is none."""

    def wait_change(self) -> Awaitable[None]:
        """Return after the document changed (or after a while: a spurious push is harmless
        only when its document equals the last one, so prefer waiting for a real change)."""


class LiveClients:
    """How many live clients a server has, against ``max_clients``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    def admit(self) -> bool:
        """Take a slot; False when the server is full."""
        if self.count >= self.limit:
            return False
        self.count += 1
        return True

    def release(self) -> None:
        """Give a slot back."""
        self.count = max(0, self.count - 1)


async def serve_live(
    socket: LiveSocket,
    frames: AsyncIterator[str | bytes],
    source: LiveSource,
    settings: LiveSettings,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> str:
    """Serve one client until it leaves, misbehaves or is cut; return why it ended."""
    outbox = LiveOutbox(settings.max_pending_answers)
    wake = asyncio.Event()
    wake.set()
    ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def end(reason: str) -> None:
        if not ended.done():
            ended.set_result(reason)

    async def close_or_cut(code: int, reason: str) -> None:
        # a client that does not read would keep even the close frame waiting: cut it then
        try:
            await asyncio.wait_for(socket.close(code, reason), settings.send_timeout)
        except TimeoutError:
            socket.abort()

    async def read() -> None:
        async for frame in frames:
            if isinstance(frame, bytes):
                await close_or_cut(CLOSE_UNSUPPORTED, "binary frames are not accepted")
                end("binary frame")
                return
            request: LiveRequest | LiveRequestError
            try:
                request = parse_request(frame, source.allowed)
            except LiveRequestError as error:
                request = error
            if not outbox.add_request(request):
                await close_or_cut(CLOSE_POLICY, "too many requests without reading")
                end("too many unanswered requests")
                return
            wake.set()
        end("client closed")

    async def follow() -> None:
        while True:
            await source.wait_change()
            outbox.note_change()
            wake.set()

    async def send() -> None:
        while True:
            item = outbox.take()
            if item is None:
                wake.clear()
                await wake.wait()
                continue
            if isinstance(item, Push):
                message = source.push()
            elif isinstance(item, LiveRequestError):
                message = error_message(str(item), item.request_id)
            else:
                try:
                    message = source.answer(item)
                except LiveRequestError as error:
                    message = error_message(str(error), item.request_id)
            try:
                await asyncio.wait_for(
                    socket.send_text(encode_message(message)), settings.send_timeout
                )
            except TimeoutError:
                socket.abort()
                end("cut: not reading")
                return
            if isinstance(item, Push) and settings.min_interval > 0:
                await sleep(settings.min_interval)

    tasks = [asyncio.ensure_future(job()) for job in (read, follow, send)]
    for task in tasks:
        task.add_done_callback(lambda done: _ended_by(done, end))
    try:
        return await ended
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await task


def _ended_by(task: asyncio.Future[None], end: Callable[[str], None]) -> None:
    if task.cancelled():
        return
    error = task.exception()
    if error is None:
        return
    if isinstance(error, ConnectionError):
        end("connection lost")
        return
    log.error("live client task failed", exc_info=error)
    end(f"internal error: {error}")
