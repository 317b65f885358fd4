"""The data port: a byte-relaying reverse proxy that counts WebSocket connections.

One :class:`ClientConnection` (an ``asyncio.Protocol``) per accepted client, with
one :class:`UpstreamSide` protocol for its connection to the app. The HTTP side
of a connection (requests one at a time over one upstream connection, keep-alive,
pipelining, framing, the upgrade gate, the 101 switch, timeouts, local error
answers) is decided by the sans-I/O :class:`wsgauge_sidecar.exchange.HttpExchange`;
:class:`ClientConnection` only feeds it what happens on the sockets and carries
out the events it returns. Plain HTTP is relayed byte for byte.

A WebSocket upgrade is forwarded to the app and the socket is *counted when the
app answers 101* (never before: a refused or timed-out handshake is not
counted). From then on the native relay (:mod:`wsgauge_sidecar.native_relay`, when it is
available; it pre-filters the messages of a frame protocol rule in C) or a
:class:`WebSocketRelay` owns both connections and bytes
are relayed as they arrive. In the Python relay, under the request-based topic rules only the
server-to-client frame headers are followed (cheaply, by a
:class:`FrameBoundaryTracker`), so that a drain can inject a close frame at a
frame boundary; under a frame protocol rule (``phoenix``, ...) both directions are
read as messages and fed to that protocol's session
(:mod:`wsgauge_sidecar.protocols`), which says which topics the socket joins and
leaves.

Backpressure: every transport has a write buffer high-water mark of
``--socket-buffer-bytes``; above it the sending peer's transport stops reading
until the buffer drains, so a slow reader costs bounded memory.

Exactly-once uncounting: :meth:`WebSocketRelay.end` is the only place that
uncounts, guarded by a flag and by the counter's own idempotence, and it is
reached from every way a socket ends (either side's connection lost, protocol
error, drain, shutdown).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import cast

from wsgauge_sidecar.exchange import (
    CancelTimer,
    CloseClient,
    ConnectUpstream,
    DropUpstream,
    Event,
    HandshakeFailed,
    HttpExchange,
    Linger,
    Note,
    PauseClient,
    RelayToClient,
    ResumeClient,
    SendToClient,
    SendToUpstream,
    StartTimer,
    SwitchProtocols,
    TimerKind,
    UpgradeStarted,
)
from wsgauge_sidecar.native_relay import NativeRelay, NativeSocket, load_extension
from wsgauge_sidecar.relay import UpstreamSide, WebSocketRelay, close_transport
from wsgauge_sidecar.state import SidecarState
from wsgauge_sidecar.topics import topic_from_request

log = logging.getLogger("wsgauge.sidecar.proxy")

LINGER_SECONDS = 2.0
"""After a local error answer: how long client bytes are still read and dropped."""


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
        """Every client connection with an open asyncio transport (a socket handed to the
        native relay leaves it; it stays in :attr:`websockets`)."""
        self.websockets: dict[int, ClientConnection] = {}
        """Counted sockets by socket id (insertion order = opening order)."""
        self._server: asyncio.Server | None = None
        self.native: NativeRelay | None = None
        """The native relay of upgraded sockets (``None``: they are relayed in Python)."""
        self.relay_description = "python (--relay python)"
        """Who relays upgraded sockets, and why: for the start line."""

    def _start_native(self, loop: asyncio.AbstractEventLoop) -> None:
        choice = self.settings.relay
        if choice == "python":
            return
        extension, why = load_extension()
        if extension is None:
            self.relay_description = f"python (the native relay is {why})"
            return
        self.native = NativeRelay(self.state, extension)
        self.native.start(loop)
        self.state.metrics.relay.native = True
        self.relay_description = "native"

    async def start(self) -> None:
        """Bind ``--listen`` and start accepting."""
        loop = asyncio.get_running_loop()
        self._start_native(loop)
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
        # natively relayed sockets are no longer in ``connections`` (their asyncio
        # transports closed at the hand-off), but they are in ``websockets``
        for connection in list({**dict.fromkeys(self.connections), **dict.fromkeys(
                self.websockets.values())}):  # fmt: skip
            connection.abort(reason)

    def release(self) -> None:
        """Stop the native relay's thread (after :meth:`abort_all`)."""
        if self.native is not None:
            self.native.close()
            self.native = None


class ClientConnection(asyncio.Protocol):
    """One client TCP connection on the data port: the asyncio adapter of its
    :class:`HttpExchange`, then of its :class:`WebSocketRelay` after a 101."""

    def __init__(self, proxy: ProxyServer) -> None:
        self.proxy = proxy
        self.state = proxy.state
        self.settings = proxy.settings
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.upstream: UpstreamSide | None = None
        self.relay: WebSocketRelay | NativeSocket | None = None
        settings = self.settings
        self.exchange = HttpExchange(
            max_header_bytes=settings.max_header_bytes,
            buffer_bytes=settings.socket_buffer_bytes,
            handshake_timeout=settings.handshake_timeout,
            strip_extensions=settings.topic_rule.strips_extensions,
            upgrade_refusal=self.state.upgrade_refusal,
        )
        self._paused: set[str] = set()
        self._write_paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._peer = "?"
        self._upgrade_topic: str | None = None

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
        self._run(self.exchange.start())

    def data_received(self, data: bytes) -> None:
        relay = self.relay
        if relay is not None:
            relay.from_client(data)
            return
        self._run(self.exchange.client_data(data))

    def eof_received(self) -> bool:
        if self.relay is not None:
            return self.relay.client_eof()
        if self.exchange.closed:
            return False  # lingering after a local answer: the client is done too, close
        self._run(self.exchange.client_eof())
        return not self.exchange.closed

    def connection_lost(self, exc: Exception | None) -> None:
        self.proxy.connections.discard(self)
        self._cancel_timer()
        was_closed = self.exchange.closed
        self._run(self.exchange.client_lost())
        if self.relay is not None:
            self.relay.client_lost(exc)
        elif self.upstream is not None:
            self.upstream.close(abort=exc is not None)
        if not was_closed and exc is not None:
            log.debug("client %s lost: %s", self._peer, exc)

    def mark_closed(self) -> None:
        """The connection is ending: ignore further client bytes."""
        self.exchange.mark_closed()

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
        if not self._paused and self.transport is not None and not self.exchange.closed:
            self.transport.resume_reading()

    @property
    def client_write_paused(self) -> bool:
        """True while the client's write buffer is above the high-water mark."""
        return self._write_paused

    # -- the upstream connection (called by UpstreamSide before a 101) ---------------------

    async def _connect_upstream(self, side: UpstreamSide) -> None:
        upstream = self.settings.upstream
        try:
            await asyncio.wait_for(
                self.loop.create_connection(lambda: side, upstream.host, upstream.port),
                self.settings.upstream_connect_timeout,
            )
        except (OSError, TimeoutError) as error:
            if self.upstream is side and not self.exchange.closed:
                log.warning("upstream %s unreachable: %s", upstream, error or "timeout")
                self.upstream = None
                self._run(self.exchange.upstream_unreachable())

    def upstream_connected(self, side: UpstreamSide) -> None:
        """Called by :class:`UpstreamSide` once its TCP connection is up."""
        if side is not self.upstream or self.exchange.closed:
            side.close(abort=True)
            return
        if self._write_paused:
            side.pause_reading()
        self._run(self.exchange.upstream_connected())

    def from_upstream(self, data: bytes) -> None:
        """Bytes from the upstream while not relaying a WebSocket."""
        if self.transport is not None:
            self._run(self.exchange.upstream_data(data))

    def upstream_eof(self) -> None:
        """The upstream closed its side (FIN) while not relaying a WebSocket."""
        self.upstream_gone(None)

    def upstream_gone(self, exc: Exception | None) -> None:
        """The upstream connection ended while not relaying a WebSocket."""
        self.upstream = None
        self._run(self.exchange.upstream_gone(reset=exc is not None))

    # -- carrying out the exchange's events ------------------------------------------------

    def _run(self, events: list[Event]) -> None:
        for event in events:
            self._do(event)

    def _do(self, event: Event) -> None:
        transport = self.transport
        if isinstance(event, SendToUpstream):
            if self.upstream is not None:
                self.upstream.write(event.data)
        elif isinstance(event, RelayToClient):
            if transport is not None:
                transport.write(event.data)
                self.state.metrics.relay.to_client += len(event.data)
        elif isinstance(event, SendToClient):
            if transport is not None:
                transport.write(event.data)
        elif isinstance(event, StartTimer):
            self._start_timer(event.kind, event.seconds)
        elif isinstance(event, CancelTimer):
            self._cancel_timer()
        elif isinstance(event, ConnectUpstream):
            side = self.upstream = UpstreamSide(self)
            self.loop.create_task(self._connect_upstream(side))
        elif isinstance(event, DropUpstream):
            if self.upstream is not None:
                self.upstream.close(abort=event.abort)
                self.upstream = None
        elif isinstance(event, PauseClient):
            self.pause_client("buffer")
        elif isinstance(event, ResumeClient):
            self.resume_client("buffer")
        elif isinstance(event, UpgradeStarted):
            self._upgrade_topic = self.state.request_topic(event.request)
            self.state.upgrade_started(self._upgrade_topic)
        elif isinstance(event, HandshakeFailed):
            if event.pending:
                self.state.upgrade_ended(self._upgrade_topic)
            self.state.metrics.handshake_failed(event.reason)
        elif isinstance(event, SwitchProtocols):
            self._switch_protocols(event)
        elif isinstance(event, Linger):
            if not self.linger() and transport is not None:
                close_transport(transport, abort=False, timeout=self.proxy.close_timeout)
        elif isinstance(event, CloseClient):
            if transport is not None:
                close_transport(transport, abort=event.abort, timeout=self.proxy.close_timeout)
        elif isinstance(event, Note):
            log.log(logging.WARNING if event.level == "warning" else logging.INFO,
                    "client %s: %s", self._peer, event.message)  # fmt: skip

    def _switch_protocols(self, event: SwitchProtocols) -> None:
        transport, upstream = self.transport, self.upstream
        assert transport is not None
        assert upstream is not None
        request = event.request
        rule = self.settings.topic_rule.for_socket(request, event.response)
        topic = None
        if event.counted:
            self.state.upgrade_ended(self._upgrade_topic)
            topic = topic_from_request(rule, request.target, request.headers)
            native = self.proxy.native
            if native is not None:
                self.relay = native.hand_off(self, upstream, event, topic, rule)
                if self.relay is not None:
                    return
        relay = WebSocketRelay(
            self, upstream, request, event.response, counted=event.counted, topic=topic, rule=rule
        )
        self.relay = relay
        upstream.relay = relay
        self._paused.discard("buffer")
        if not self._paused:
            transport.resume_reading()
        transport.write(event.response.raw)
        if event.upstream_rest:
            relay.from_upstream(event.upstream_rest)
        if event.client_rest:
            relay.from_client(event.client_rest)

    # -- timers ----------------------------------------------------------------------------

    def _start_timer(self, kind: TimerKind, delay: float) -> None:
        self._cancel_timer()
        self._timer = self.loop.call_later(delay, self._timer_fired, kind)

    def _timer_fired(self, kind: TimerKind) -> None:
        self._timer = None
        self._run(self.exchange.timer_fired(kind))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- ending ----------------------------------------------------------------------------

    def linger(self) -> bool:
        """Send FIN after what is buffered, then read and drop client bytes for at most
        :data:`LINGER_SECONDS` before closing; False if the transport cannot do that.

        Closing a socket with unread input makes the kernel send a reset, which can destroy
        our last words (a 431, a 408, a WebSocket close frame) before the client reads them.
        So, like nginx's lingering close: FIN, keep reading and dropping bytes until the
        client closes too or :data:`LINGER_SECONDS` pass, then close. Used after a local
        error answer and by the WebSocket relay after a protocol error.
        """
        transport = self.transport
        if transport is None or transport.is_closing() or not transport.can_write_eof():
            return False
        self.exchange.mark_closed()
        transport.write_eof()
        if self._paused:
            self._paused.clear()
            transport.resume_reading()
        timeout = self.proxy.close_timeout
        self._cancel_timer()
        self._timer = self.loop.call_later(
            LINGER_SECONDS, lambda: close_transport(transport, abort=False, timeout=timeout)
        )
        return True

    def close(self, reason: str) -> None:
        """Close both sides after flushing what is buffered."""
        if self.relay is not None:
            self.relay.end(reason, abort=False)
            return
        self._run(self.exchange.close(reason, abort=False))

    def abort(self, reason: str) -> None:
        """Cut both sides now."""
        if self.relay is not None:
            self.relay.end(reason, abort=True)
            return
        self._run(self.exchange.close(reason, abort=True))
