"""The WebSocket half of the data port: relaying an upgraded connection and counting it.

:class:`UpstreamSide` is the ``asyncio.Protocol`` of the connection to the app
(it serves the plain HTTP exchange first, then the WebSocket). Once the app has
answered 101, :class:`WebSocketRelay` takes over both connections:

* the socket is counted on creation (``ConnectionCounter.open_socket``) and put
  in its request topic, if any; ``rule`` is the topic rule of this socket (under
  ``--topic auto`` the one chosen for it, which its topics then show in /stats);
* bytes go through as they arrive, both ways; server-to-client frame headers are
  followed by a :class:`FrameBoundaryTracker`; under a frame protocol rule
  (``phoenix``, ...) both directions are also read as messages and fed to the
  protocol's session (:mod:`wsgauge_sidecar.protocols`), whose Joined/Left
  events move the socket between topics;
* :meth:`WebSocketRelay.close_gracefully` sends the client a close frame (1001 on
  drain) at the next server-to-client frame boundary and then relays the
  client's close reply to the app, so the app sees a normal close;
* a malformed frame or protocol message ends this socket with the error's close
  code (never anything else), in a lingering close toward the client (FIN, then
  its bytes dropped for a bounded time) so that a client still writing gets the
  close frame instead of a reset;
* :meth:`WebSocketRelay.end` is the single exit: it uncounts the socket exactly
  once and closes or aborts both connections.

Close reasons (``wsgauge_connections_closed_total{reason}``): ``normal`` (a close
handshake was seen), ``client_gone`` / ``upstream_gone`` (that side's TCP ended
without one), ``drain``, ``protocol_error``, ``close_timeout``, ``shutdown``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from wsgauge_sidecar.exceptions import ProtocolError, WebSocketProtocolError
from wsgauge_sidecar.httpwire import RequestHead, ResponseHead
from wsgauge_sidecar.protocols.base import Joined, Left, ProtocolEvent, ProtocolSession
from wsgauge_sidecar.topics import AUTO, TopicRule
from wsgauge_sidecar.wsframes import (
    FrameBoundaryTracker,
    MessageReader,
    Opcode,
    WsMessage,
    encode_close_frame,
)

if TYPE_CHECKING:
    from wsgauge_sidecar.proxy import ClientConnection

log = logging.getLogger("wsgauge.sidecar.relay")

_TEXT, _BINARY = Opcode.TEXT, Opcode.BINARY

CLOSE_REASONS = {1001: "going away", 1002: "protocol error", 1007: "invalid payload",
                 1009: "message too big", 1011: "internal error",
                 1012: "service restart"}  # fmt: skip


def close_transport(transport: asyncio.Transport, *, abort: bool, timeout: float) -> None:
    """Close (flushing) or abort a transport; a flush that never ends is cut after ``timeout``."""
    if abort:
        transport.abort()
        return
    if transport.is_closing():
        return
    transport.close()
    if transport.get_write_buffer_size():
        asyncio.get_running_loop().call_later(timeout, transport.abort)


class UpstreamSide(asyncio.Protocol):
    """The client connection's TCP connection to the app."""

    def __init__(self, owner: ClientConnection) -> None:
        self.owner = owner
        self.relay: WebSocketRelay | None = None
        self.transport: asyncio.Transport | None = None
        self.connected = False
        self.lost = False
        self._reading_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        self.transport = transport
        self.connected = True
        limit = self.owner.settings.socket_buffer_bytes
        transport.set_write_buffer_limits(high=limit, low=limit // 4)
        self.owner.upstream_connected(self)

    def data_received(self, data: bytes) -> None:
        relay = self.relay
        if relay is not None:
            relay.from_upstream(data)
        elif self.owner.upstream is self:
            self.owner.from_upstream(data)

    def eof_received(self) -> bool:
        if self.relay is not None:
            return self.relay.upstream_eof()
        if self.owner.upstream is self:
            self.owner.upstream_eof()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.connected = False
        if self.relay is not None:
            self.relay.upstream_lost(exc)
        elif self.owner.upstream is self:
            self.owner.upstream_gone(exc)

    def pause_writing(self) -> None:
        self.owner.pause_client("upstream")

    def resume_writing(self) -> None:
        self.owner.resume_client("upstream")

    def write(self, data: bytes) -> None:
        """Send bytes to the app."""
        if self.transport is not None and not self.lost:
            self.transport.write(data)

    def pause_reading(self) -> None:
        """Stop reading from the app (the client's write buffer is full)."""
        if self.transport is not None and not self._reading_paused and not self.lost:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        """Read from the app again."""
        if self.transport is not None and self._reading_paused and not self.lost:
            self._reading_paused = False
            self.transport.resume_reading()

    def close(self, *, abort: bool) -> None:
        """Close (flushing) or abort the connection to the app."""
        if self.transport is None or self.lost:
            return
        close_transport(self.transport, abort=abort, timeout=self.owner.proxy.close_timeout)


class WebSocketRelay:
    """An upgraded connection: relays bytes both ways and keeps its count right."""

    def __init__(
        self,
        client: ClientConnection,
        upstream: UpstreamSide,
        request: RequestHead,
        response: ResponseHead,
        *,
        counted: bool,
        topic: str | None,
        rule: TopicRule,
    ) -> None:
        assert client.transport is not None
        assert upstream.transport is not None
        self.client = client
        self.upstream = upstream
        self._client_transport = client.transport
        self._upstream_transport = upstream.transport
        self.state = client.state
        self._bytes = self.state.metrics.relay
        self.target = request.target
        self.socket_id: int | None = None
        self.opened_at = time.monotonic()
        self.tracker: FrameBoundaryTracker | None = None
        self._client_reader: MessageReader | None = None
        self._server_reader: MessageReader | None = None
        self._session: ProtocolSession | None = None
        self.ended = False
        self.end_reason: str | None = None
        self._close_pending: int | None = None
        self._close_sent = False
        self._closing = False
        self._lingering = False
        self._discard_client = False
        self._gone_first: str | None = None
        self._timer: asyncio.TimerHandle | None = None
        if not counted:
            return  # a 101 to something other than a WebSocket: a plain tunnel
        counter = self.state.connection_counter
        # under --topic auto, each socket's topics show the rule chosen for it
        chosen = str(rule).split(":", 1)[0] if client.settings.topic_rule.kind == AUTO else None
        self.socket_id = counter.open_socket(chosen)
        client.proxy.websockets[self.socket_id] = client
        if topic is not None:
            counter.join(self.socket_id, topic)
        self.tracker = FrameBoundaryTracker(masked=False)
        protocol = rule.protocol
        if protocol is not None:
            limit = client.settings.max_message_bytes
            self._client_reader = MessageReader(masked=True, max_message_bytes=limit)
            self._server_reader = MessageReader(masked=False, max_message_bytes=limit)
            self._session = protocol.factory(request, response)
        log.debug("socket %s opened: %s topic=%s", self.socket_id, request.target, topic)

    # -- bytes -----------------------------------------------------------------------------

    def from_client(self, data: bytes) -> None:
        """Client bytes: (frame protocol: read them), then relay to the app."""
        if self._discard_client:
            return
        reader = self._client_reader
        if reader is not None:
            try:
                self._on_messages(reader.feed(data), from_client=True)
            except (WebSocketProtocolError, ProtocolError) as error:
                self.protocol_error(error.close_code, "client", error)
                return
        self._upstream_transport.write(data)
        self._bytes.to_upstream += len(data)

    def from_upstream(self, data: bytes) -> None:
        """App bytes: (frame protocol: read them), follow frame boundaries, relay to the client."""
        if self._close_sent:
            return  # we already closed toward the client: nothing more may follow
        reader = self._server_reader
        if reader is not None:
            try:
                self._on_messages(reader.feed(data), from_client=False)
            except (WebSocketProtocolError, ProtocolError) as error:
                self.protocol_error(error.close_code, "upstream", error)
                return
        tracker = self.tracker
        if tracker is not None:
            if self._close_pending is not None:
                self._relay_until_boundary(tracker, data)
                return
            try:
                tracker.feed(data)
            except WebSocketProtocolError as error:
                self.protocol_error(error.close_code, "upstream", error, at_boundary=False)
                return
        self._client_transport.write(data)
        self._bytes.to_client += len(data)

    def _on_messages(self, messages: list[WsMessage], *, from_client: bool) -> None:
        session = self._session
        if session is None or self.socket_id is None:
            return
        if from_client:
            text, binary = session.client_text, session.client_binary
        else:
            text, binary = session.server_text, session.server_binary
        for opcode, payload in messages:
            if opcode == _TEXT:
                events = text(payload)
            elif opcode == _BINARY:
                events = binary(payload)
            else:
                continue
            if events:
                self._apply(events)

    def _apply(self, events: Sequence[ProtocolEvent]) -> None:
        counter = self.state.connection_counter
        socket_id = self.socket_id
        if socket_id is None or self.ended:
            return
        for event in events:
            if isinstance(event, Joined):
                counter.join(socket_id, event.topic)
            elif isinstance(event, Left):
                counter.leave(socket_id, event.topic)

    def _relay_until_boundary(self, tracker: FrameBoundaryTracker, data: bytes) -> None:
        """Relay ``data`` up to the next frame boundary, then send the pending close frame."""
        position = 0
        size = len(data)
        try:
            while position < size and not tracker.at_boundary:
                # never passes a boundary: the rest of the frame, or what its header lacks
                step = min(max(1, tracker.bytes_to_boundary), size - position)
                tracker.feed(data[position : position + step])
                position += step
        except WebSocketProtocolError as error:
            self.protocol_error(error.close_code, "upstream", error, at_boundary=False)
            return
        if position:
            self._client_transport.write(data[:position])
            self._bytes.to_client += position
        if tracker.at_boundary:
            self._send_pending_close(tracker)

    def _send_pending_close(self, tracker: FrameBoundaryTracker) -> None:
        code, self._close_pending = self._close_pending, None
        if code is None:
            return
        self._close_sent = True
        if tracker.close_code_seen is not None:
            return  # the app's own close frame went out first: that is the close
        self._client_transport.write(encode_close_frame(code, CLOSE_REASONS.get(code, "")))

    # -- closing on purpose ----------------------------------------------------------------

    def close_gracefully(self, code: int, reason: str) -> bool:
        """Close toward the client with ``code`` at the next frame boundary (drain).

        True if this call started the close; False if the socket was already ending
        or closing (a second call changes nothing).
        """
        if self.ended or self._closing or self._close_sent or self._close_pending is not None:
            return False
        self._closing = True
        self.end_reason = reason
        self._timer = asyncio.get_running_loop().call_later(
            self.client.proxy.close_timeout, self._close_timed_out
        )
        tracker = self.tracker
        if tracker is None:
            self.end(reason, abort=False)
            return True
        if tracker.close_code_seen is not None:
            return True  # the app is closing already; the timer bounds how long that takes
        self._close_pending = code
        if tracker.at_boundary:
            self._send_pending_close(tracker)
        return True

    def _close_timed_out(self) -> None:
        self._timer = None
        log.info("socket %s: close not finished in time, cutting it", self.socket_id)
        self.end(self._reason("close_timeout"), abort=True)

    def protocol_error(
        self, code: int, side: str, error: Exception, *, at_boundary: bool = True
    ) -> None:
        """A malformed frame or message: close this socket with ``code``."""
        log.info("socket %s: protocol error from %s: %s (close %s)", self.socket_id, side, error,
                 code)  # fmt: skip
        self._discard_client = True
        tracker = self.tracker
        if at_boundary and tracker is not None and tracker.at_boundary and not self._close_sent:
            self._close_pending = code
            self._send_pending_close(tracker)
        self._close_sent = True
        self.end("protocol_error", abort=False, linger=True)

    # -- connection ends -------------------------------------------------------------------

    def client_eof(self) -> bool:
        """The client half-closed: pass it on; the app has ``close_timeout`` s to finish."""
        if self._lingering:
            return False  # the client is done sending: the lingering close ends now
        self._note_gone("client_gone")
        if self.upstream.lost:
            self.end(self._reason("client_gone"), abort=False)
            return False
        if self._upstream_transport.can_write_eof():
            self._upstream_transport.write_eof()
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(
                self.client.proxy.close_timeout, self._close_timed_out
            )
        return True

    def upstream_eof(self) -> bool:
        """The app closed its side: the WebSocket is over (the server closes TCP first)."""
        self._note_gone("upstream_gone")
        self.end(self._reason("upstream_gone"), abort=False)
        return False

    def client_lost(self, exc: Exception | None) -> None:
        """The client connection is gone (``exc`` set: reset or error)."""
        self._note_gone("client_gone")
        self.end(self._reason("client_gone"), abort=exc is not None)

    def upstream_lost(self, exc: Exception | None) -> None:
        """The app connection is gone."""
        self._note_gone("upstream_gone")
        self.end(self._reason("upstream_gone"), abort=exc is not None)

    def _note_gone(self, side_gone: str) -> None:
        """Remember how the socket ended, at the first sign of one side going away."""
        if self._gone_first is None:
            tracker = self.tracker
            closing = tracker is not None and tracker.close_code_seen is not None
            self._gone_first = "normal" if closing else side_gone

    def _reason(self, default: str) -> str:
        return self.end_reason or self._gone_first or default

    def end(self, reason: str, *, abort: bool, linger: bool = False) -> None:
        """Uncount (exactly once) and close both connections.

        ``linger``: the client may still be sending (a protocol error): our close frame
        must not be destroyed by the reset that closing over unread input causes, so the
        client side gets a lingering close (FIN, then its bytes are read and dropped for a
        bounded time) instead. Later calls leave a lingering client side alone.
        """
        if not self.ended:
            self.ended = True
            self._discard_client = True
            self._close_sent = True
            self._uncount(reason)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.client.mark_closed()
        self.upstream.close(abort=abort)
        if self._lingering:
            return
        if linger and not abort and self.client.linger():
            self._lingering = True
            return
        if not self._client_transport.is_closing() or abort:
            close_transport(
                self._client_transport, abort=abort, timeout=self.client.proxy.close_timeout
            )

    def _uncount(self, reason: str) -> None:
        socket_id = self.socket_id
        if socket_id is None:
            return
        self.client.proxy.websockets.pop(socket_id, None)
        if self.state.connection_counter.close_socket(socket_id, reason):
            self.state.metrics.connection_closed(time.monotonic() - self.opened_at)
            log.debug("socket %s closed (%s)", socket_id, reason)
