"""The data port: a byte-relaying reverse proxy that counts WebSocket connections.

One :class:`ClientConnection` (an ``asyncio.Protocol``) per accepted client, with
one :class:`UpstreamSide` protocol for its connection to the app. Plain HTTP is
relayed byte for byte; :mod:`wsgauge_sidecar.httpwire` only finds where each
message ends, so keep-alive, chunked bodies, pipelining and long-polls work
unchanged. Requests on one client connection are handled one at a time over one
upstream connection.

A WebSocket upgrade is forwarded to the app and the socket is *counted when the
app answers 101* (never before: a refused or timed-out handshake is not
counted). From then on bytes are relayed as they arrive. In the request-based
topic rules only the server-to-client frame headers are followed (cheaply, by a
:class:`FrameBoundaryTracker`), so that a drain can inject a close frame at a
frame boundary; in ``phoenix`` mode both directions are read as messages and fed
to a :class:`PhoenixSession` that says which channels the socket joins and leaves.

Backpressure: every transport has a write buffer high-water mark of
``--socket-buffer-bytes``; above it the sending peer's transport stops reading
until the buffer drains, so a slow reader costs bounded memory.

Exactly-once uncounting: :meth:`ClientConnection._end_socket` is the only place
that uncounts, guarded by a flag and by the counter's own idempotence, and it is
reached from every way a socket ends (either side's connection lost, protocol
error, drain, shutdown).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import cast

from wsgauge_sidecar.exceptions import HttpParseError
from wsgauge_sidecar.httpwire import (
    BodyFramer,
    RequestHead,
    ResponseHead,
    parse_request_head,
    parse_response_head,
)
from wsgauge_sidecar.relay import UpstreamSide, WebSocketRelay, close_transport
from wsgauge_sidecar.state import SidecarState
from wsgauge_sidecar.topics import topic_from_request

log = logging.getLogger("wsgauge.sidecar.proxy")

_REASONS = {
    400: "Bad Request",
    408: "Request Timeout",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

LINGER_SECONDS = 2.0
"""After a local error answer: how long client bytes are still read and dropped."""

_HEAD, _EXCHANGE, _RELAY, _CLOSED = range(4)
"""Connection modes: waiting for a request head, one request in flight, relaying, closed."""


def keepalive_options(seconds: float) -> list[tuple[int, int, int]]:
    """The ``(level, option, value)`` socket options for ``--tcp-keepalive SECONDS`` (Linux).

    Probes start after ``seconds`` of silence, repeat every third of it (at least 1 s) and
    give up after 3; ``TCP_USER_TIMEOUT`` also cuts a peer that leaves sent data
    unacknowledged for twice ``seconds``. So a client that vanished without FIN or RST
    (half-open socket) is uncounted after about ``2 * seconds``. Empty when off.
    """
    if seconds <= 0:
        return []
    idle = max(1, round(seconds))
    interval = max(1, round(seconds / 3))
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (
        ("TCP_KEEPIDLE", idle),
        ("TCP_KEEPINTVL", interval),
        ("TCP_KEEPCNT", 3),
        ("TCP_USER_TIMEOUT", 2 * idle * 1000),
    ):
        option = getattr(socket, name, None)  # Linux names; absent elsewhere
        if option is not None:
            options.append((socket.IPPROTO_TCP, option, value))
    return options


def enable_tcp_keepalive(transport: asyncio.BaseTransport, seconds: float) -> None:
    """Apply :func:`keepalive_options` to the transport's socket (best effort)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    for level, option, value in keepalive_options(seconds):
        try:
            sock.setsockopt(level, option, value)
        except OSError as error:  # e.g. not a TCP socket
            log.debug("setsockopt(%s, %s) failed: %s", level, option, error)
            return


class ProxyServer:
    """The data port listener and the registry of its connections."""

    def __init__(self, state: SidecarState) -> None:
        self.state = state
        self.settings = state.settings.proxy
        self.close_timeout = state.settings.drain.close_timeout
        self.connections: set[ClientConnection] = set()
        """Every open client connection."""
        self.websockets: dict[int, ClientConnection] = {}
        """Counted sockets by socket id (insertion order = opening order)."""
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Bind ``--listen`` and start accepting."""
        loop = asyncio.get_running_loop()
        listen = self.settings.listen
        self._server = await loop.create_server(
            lambda: ClientConnection(self), listen.host, listen.port, reuse_address=True,
            backlog=4096,
        )  # fmt: skip

    @property
    def port(self) -> int:
        """The bound TCP port (useful with ``--listen HOST:0``)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("proxy is not listening")
        return int(self._server.sockets[0].getsockname()[1])

    def stop_listening(self) -> None:
        """Close the listening socket; existing connections go on."""
        if self._server is not None:
            self._server.close()

    def counted(self) -> list[ClientConnection]:
        """The connections whose WebSocket is counted, oldest first."""
        return list(self.websockets.values())

    def abort_all(self, reason: str) -> None:
        """Cut every connection now (end of drain / shutdown); counted sockets uncounted."""
        for connection in list(self.connections):
            connection.abort(reason)


class ClientConnection(asyncio.Protocol):
    """One client TCP connection on the data port and everything proxied over it."""

    def __init__(self, proxy: ProxyServer) -> None:
        self.proxy = proxy
        self.state = proxy.state
        self.settings = proxy.settings
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.upstream: UpstreamSide | None = None
        self.mode = _HEAD
        self.relay: WebSocketRelay | None = None
        self._inbuf = bytearray()
        self._request: RequestHead | None = None
        self._request_framer: BodyFramer | None = None
        self._request_done = False
        self._upgrading = False
        self._topic: str | None = None
        self._response_buffer = bytearray()
        self._response_head: ResponseHead | None = None
        self._response_framer: BodyFramer | None = None
        self._response_started = False
        self._pending_head: bytes | None = None
        self._paused: set[str] = set()
        self._write_paused = False
        self._client_eof = False
        self._timer: asyncio.TimerHandle | None = None
        self._peer = "?"

    # -- asyncio.Protocol (client side) ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        self.transport = transport
        buffer_bytes = self.settings.socket_buffer_bytes
        transport.set_write_buffer_limits(high=buffer_bytes, low=buffer_bytes // 4)
        enable_tcp_keepalive(transport, self.settings.tcp_keepalive)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self._peer = f"{peer[0]}:{peer[1]}"
        self.proxy.connections.add(self)
        self._start_timer(self.settings.handshake_timeout, self._head_timed_out)

    def data_received(self, data: bytes) -> None:
        relay = self.relay
        if relay is not None:
            relay.from_client(data)
            return
        if self.mode == _CLOSED:
            return
        self._inbuf += data
        self._process_client_bytes()

    def eof_received(self) -> bool:
        if self.relay is not None:
            return self.relay.client_eof()
        if self.mode == _CLOSED:
            return False  # lingering after a local answer: the client is done too, close
        # Plain HTTP: a half-closed client may still read the response in flight.
        self._client_eof = True
        if self._request is None:
            self.close("client")
            return False
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.proxy.connections.discard(self)
        self._cancel_timer()
        was_mode = self.mode
        self.mode = _CLOSED
        if self._upgrading:
            self._upgrade_failed("client_gone")
        if self.relay is not None:
            self.relay.client_lost(exc)
        elif self.upstream is not None:
            self.upstream.close(abort=exc is not None)
        if was_mode != _CLOSED and exc is not None:
            log.debug("client %s lost: %s", self._peer, exc)

    def mark_closed(self) -> None:
        """The connection is ending: ignore further client bytes."""
        self.mode = _CLOSED

    def pause_writing(self) -> None:
        self._write_paused = True
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.upstream is not None:
            self.upstream.resume_reading()

    # -- reading control -------------------------------------------------------------------

    def pause_client(self, reason: str) -> None:
        """Stop reading from the client until every pause reason is lifted."""
        if not self._paused and self.transport is not None:
            self.transport.pause_reading()
        self._paused.add(reason)

    def resume_client(self, reason: str) -> None:
        """Lift one pause reason; reading resumes when none is left."""
        if reason not in self._paused:
            return
        self._paused.discard(reason)
        if not self._paused and self.transport is not None and self.mode != _CLOSED:
            self.transport.resume_reading()

    @property
    def client_write_paused(self) -> bool:
        """True while the client's write buffer is above the high-water mark."""
        return self._write_paused

    # -- plain HTTP: requests --------------------------------------------------------------

    def _process_client_bytes(self) -> None:
        self._consume_client_bytes()
        # While a request is in flight, unconsumed bytes (a body waiting for the upstream
        # connection, pipelined requests) are bounded: stop reading above the high-water
        # mark. A request head is bounded by the parser (--max-header-bytes) instead.
        if self.mode == _EXCHANGE and len(self._inbuf) > self.settings.socket_buffer_bytes:
            self.pause_client("buffer")
        else:
            self.resume_client("buffer")

    def _consume_client_bytes(self) -> None:
        while self.mode in (_HEAD, _EXCHANGE):
            if self._request is None:
                try:
                    parsed = parse_request_head(self._inbuf, self.settings.max_header_bytes)
                except HttpParseError as error:
                    status = 431 if error.status == 413 else error.status
                    log.info("client %s: bad request head: %s", self._peer, error)
                    self.respond_locally(status, str(error))
                    return
                if parsed is None:
                    return
                head, consumed = parsed
                del self._inbuf[:consumed]
                self._cancel_timer()
                self._start_request(head)
                continue
            if not self._request_done:
                upstream = self.upstream
                if not self._inbuf or upstream is None or not upstream.connected:
                    return
                framer = self._request_framer
                assert framer is not None
                try:
                    used = framer.feed(self._inbuf)
                except HttpParseError as error:
                    log.info("client %s: bad request body framing: %s", self._peer, error)
                    self.abort("bad_request")
                    return
                if used:
                    upstream.write(bytes(self._inbuf[:used]))
                    del self._inbuf[:used]
                if framer.done:
                    self._request_done = True
                    self._maybe_finish_exchange()
                continue
            return  # request complete, response in flight: pipelined bytes wait here

    def _start_request(self, head: RequestHead) -> None:
        self.mode = _EXCHANGE
        self._request = head
        self._request_framer = BodyFramer.for_request(head)
        self._request_done = self._request_framer.done
        self._response_buffer.clear()
        self._response_head = None
        self._response_framer = None
        self._response_started = False
        head_bytes = head.raw
        if head.is_websocket_upgrade:
            refusal = self.state.upgrade_refusal()
            if refusal is not None:
                self.state.metrics.handshake_failed(refusal)
                log.info("client %s: upgrade %s refused (%s)", self._peer, head.target, refusal)
                self.respond_locally(503, f"upgrade refused: {refusal}")
                return
            self._upgrading = True
            self.state.pending_upgrades += 1
            rule = self.settings.topic_rule
            self._topic = topic_from_request(rule, head.target, head.headers)
            if rule.kind == "phoenix":
                head_bytes = head.serialize(drop_headers=("sec-websocket-extensions",))
            self._start_timer(self.settings.handshake_timeout, self._upgrade_timed_out)
        self._send_head_upstream(head_bytes)

    def _send_head_upstream(self, head_bytes: bytes) -> None:
        upstream = self.upstream
        if upstream is not None and upstream.connected:
            upstream.write(head_bytes)
            return
        self._pending_head = head_bytes
        if upstream is None:
            self.upstream = UpstreamSide(self)
            self.loop.create_task(self._connect_upstream(self.upstream))

    async def _connect_upstream(self, side: UpstreamSide) -> None:
        upstream = self.settings.upstream
        try:
            await asyncio.wait_for(
                self.loop.create_connection(lambda: side, upstream.host, upstream.port),
                self.settings.upstream_connect_timeout,
            )
        except (OSError, TimeoutError) as error:
            if self.upstream is side and self.mode != _CLOSED:
                log.warning("upstream %s unreachable: %s", upstream, error or "timeout")
                self.upstream = None
                if self._upgrading:
                    self._upgrade_failed("upstream_unreachable")
                self.respond_locally(502, "upstream unreachable")

    def upstream_connected(self, side: UpstreamSide) -> None:
        """Called by :class:`UpstreamSide` once its TCP connection is up."""
        if side is not self.upstream or self.mode == _CLOSED:
            side.close(abort=True)
            return
        if self._write_paused:
            side.pause_reading()
        head, self._pending_head = self._pending_head, None
        if head is not None:
            side.write(head)
        self._process_client_bytes()

    def _maybe_finish_exchange(self) -> None:
        if not (self._request_done and self._response_framer is not None):
            return
        if not self._response_framer.done:
            return
        request, response = self._request, self._response_head
        assert request is not None
        assert response is not None
        keep_alive = (
            request.keep_alive
            and response.keep_alive
            and not self._response_framer.until_close
            and not self._client_eof
        )
        if not keep_alive:
            self.close("http_done")
            return
        self.mode = _HEAD
        self._request = None
        self._request_framer = None
        self._response_head = None
        self._response_framer = None
        self._start_timer(self.settings.handshake_timeout, self._head_timed_out)
        self._process_client_bytes()

    # -- plain HTTP: responses -------------------------------------------------------------

    def from_upstream(self, data: bytes) -> None:
        """Bytes from the upstream while not relaying a WebSocket."""
        if self.mode == _CLOSED or self.transport is None:
            return
        if self._request is None:
            # nothing asked: a stray answer on an idle keep-alive connection; drop that connection
            if self.upstream is not None:
                self.upstream.close(abort=True)
                self.upstream = None
            return
        if self._response_framer is not None:
            self._relay_response_body(data)
            return
        self._response_buffer += data
        while self._response_framer is None:
            try:
                parsed = parse_response_head(self._response_buffer, self.settings.max_header_bytes)
            except HttpParseError as error:
                log.warning("upstream sent a bad response head: %s", error)
                if self._upgrading:
                    self._upgrade_failed("bad_upstream_response")
                self.respond_locally(502, "bad response from upstream")
                return
            if parsed is None:
                return
            head, consumed = parsed
            rest = bytes(self._response_buffer[consumed:])
            self._response_buffer.clear()
            if head.is_interim:
                self._response_started = True
                self.transport.write(head.raw)
                self._response_buffer += rest
                continue
            if head.status == 101:
                self._switch_protocols(head, rest)
                return
            self._final_response(head, rest)

    def _final_response(self, head: ResponseHead, rest: bytes) -> None:
        request = self._request
        assert request is not None
        assert self.transport is not None
        if self._upgrading:
            self._upgrade_failed("upstream_rejected")
            log.info("upgrade %s rejected by upstream: %s", request.target, head.status)
        self._response_head = head
        self._response_framer = BodyFramer.for_response(head, request.method)
        self._response_started = True
        self.transport.write(head.raw)
        if rest:
            self._relay_response_body(rest)
        else:
            self._maybe_finish_exchange()

    def _relay_response_body(self, data: bytes) -> None:
        framer = self._response_framer
        assert framer is not None
        assert self.transport is not None
        try:
            used = framer.feed(data)
        except HttpParseError as error:
            log.warning("upstream sent a bad response body: %s", error)
            self.abort("bad_upstream_response")
            return
        if used:
            self.transport.write(data if used == len(data) else data[:used])
            self.state.metrics.relay.to_client += used
        if framer.done:
            if used < len(data) and self.upstream is not None:
                self.upstream.close(abort=True)  # bytes beyond the response: distrust it
                self.upstream = None
            self._maybe_finish_exchange()

    def upstream_eof(self) -> None:
        """The upstream closed its side (FIN) while not relaying a WebSocket."""
        self.upstream_gone(None)

    def upstream_gone(self, exc: Exception | None) -> None:
        """The upstream connection ended while not relaying a WebSocket."""
        self.upstream = None
        if self.mode == _CLOSED:
            return
        if self._request is None:
            return  # idle keep-alive connection closed by the app: reconnect on next request
        framer = self._response_framer
        if framer is not None and framer.until_close:
            self.close("http_done")
        elif not self._response_started:
            if self._upgrading:
                self._upgrade_failed("upstream_closed")
            self.respond_locally(502, "upstream closed the connection")
        elif exc is not None:
            self.abort("upstream_reset")
        else:
            self.close("upstream_closed")

    # -- WebSocket switch ------------------------------------------------------------------

    def _switch_protocols(self, head: ResponseHead, rest: bytes) -> None:
        assert self.transport is not None
        assert self.upstream is not None
        request = self._request
        assert request is not None
        counted = self._upgrading and head.is_websocket_upgrade
        if self._upgrading:
            self._upgrading = False
            self.state.pending_upgrades -= 1
        self._cancel_timer()
        self.mode = _RELAY
        relay = WebSocketRelay(self, self.upstream, request, counted=counted, topic=self._topic)
        self.relay = relay
        self.upstream.relay = relay
        self._paused.discard("buffer")
        if not self._paused:
            self.transport.resume_reading()
        self.transport.write(head.raw)
        if rest:
            relay.from_upstream(rest)
        if self._inbuf:
            early = bytes(self._inbuf)
            self._inbuf.clear()
            relay.from_client(early)

    def _upgrade_failed(self, reason: str) -> None:
        if self._upgrading:
            self._upgrading = False
            self.state.pending_upgrades -= 1
            self.state.metrics.handshake_failed(reason)

    # -- timers ----------------------------------------------------------------------------

    def _start_timer(self, delay: float, callback: object) -> None:
        self._cancel_timer()
        assert callable(callback)
        self._timer = self.loop.call_later(delay, callback)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timed_out(self) -> None:
        self._timer = None
        if self.mode != _HEAD:
            return
        if not self._inbuf:
            self.close("idle")  # nothing sent (or idle keep-alive): close quietly
            return
        self.state.metrics.handshake_failed("handshake_timeout")
        log.info("client %s: no complete request head in time, closing", self._peer)
        self.respond_locally(408, "request head not received in time")

    def _upgrade_timed_out(self) -> None:
        self._timer = None
        if self._upgrading:
            self._upgrade_failed("upstream_timeout")
            log.warning("upstream did not answer an upgrade in time")
            self.respond_locally(504, "upstream did not answer the upgrade in time")

    # -- ending ----------------------------------------------------------------------------

    def respond_locally(self, status: int, message: str) -> None:
        """Answer the client ourselves (an error) and close the connection."""
        if self.transport is None or self.mode == _CLOSED:
            return
        body = (message + "\n").encode()
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        if self._response_started or self.relay is not None:
            self.close("local_response")
            return
        self.transport.write(head.encode() + body)
        self._linger_close()

    def _linger_close(self) -> None:
        """Half-close after a local answer, then discard what the client still sends.

        Closing a socket with unread input makes the kernel send a reset, which can destroy
        our answer (a 431, a 408) before the client reads it. So, like nginx's lingering
        close: send FIN, keep reading and dropping bytes until the client closes too or
        :data:`LINGER_SECONDS` pass, then close.
        """
        transport = self.transport
        self._shut_upstream_side()
        if transport is None or transport.is_closing() or not transport.can_write_eof():
            self._shut(abort=False)
            return
        self._inbuf.clear()
        transport.write_eof()
        if self._paused:
            self._paused.clear()
            transport.resume_reading()
        timeout = self.proxy.close_timeout
        self._timer = self.loop.call_later(
            LINGER_SECONDS, lambda: close_transport(transport, abort=False, timeout=timeout)
        )

    def close(self, reason: str) -> None:
        """Close both sides after flushing what is buffered."""
        if self.relay is not None:
            self.relay.end(reason, abort=False)
            return
        self._shut(abort=False)

    def abort(self, reason: str) -> None:
        """Cut both sides now."""
        if self.relay is not None:
            self.relay.end(reason, abort=True)
            return
        self._shut(abort=True)

    def _shut_upstream_side(self, *, abort: bool = True) -> None:
        self._cancel_timer()
        if self._upgrading:
            self._upgrade_failed("closed")
        self.mode = _CLOSED
        if self.upstream is not None:
            self.upstream.close(abort=abort)
            self.upstream = None

    def _shut(self, *, abort: bool) -> None:
        self._shut_upstream_side(abort=abort)
        if self.transport is not None:
            close_transport(self.transport, abort=abort, timeout=self.proxy.close_timeout)
