"""The HTTP/1.1 side of one data-port client connection, as a sans-I/O state machine.

:class:`HttpExchange` is fed what happens on the connection (client bytes, the
client's FIN, the upstream connection coming up, failing or ending, upstream
bytes, a timer firing) and returns what to do, as a list of events: bytes to send
to either side, opening or dropping the upstream connection, timers, pausing the
client for backpressure, the WebSocket switch, local error answers and how to
close. :class:`wsgauge_sidecar.proxy.ClientConnection` is the asyncio adapter
that carries the events out; after :class:`SwitchProtocols` the connection belongs
to the WebSocket relay and the exchange takes no more input.

What it does:

* Requests are handled one at a time (pipelined ones wait in the buffer, and
  the client is paused above ``buffer_bytes`` of them); each head and body is
  relayed byte for byte as :mod:`wsgauge_sidecar.httpwire` frames it, heads
  only once the upstream connection is up (it is opened on the first request
  and again after the app closed an idle one).
* Keep-alive: after a complete response the next request head is awaited,
  unless either side said ``close``, the response ran until close, or the
  client sent FIN.
* The upgrade gate: a request whose ``Upgrade`` names ``websocket`` is an
  upgrade; a GET is checked with ``upgrade_refusal`` (503 when refused, with
  ``Retry-After`` when the :class:`~wsgauge_sidecar.admission.Refusal` has one) and
  counted on 101 (:class:`SwitchProtocols` with ``counted``), any other method
  gets 400. A 101 to another request becomes a tunnel only to a protocol it
  asked for, never ``websocket`` (502 otherwise).
* Timers: a request head must be complete within ``handshake_timeout`` of the
  connection or of the previous response (408, or a quiet close when nothing
  was sent); the app must answer an upgrade within it too (504).
* Errors answered locally (400, 408, 431, 501, 502, 503, 504) end with a
  lingering close (:class:`Linger`); a bad body framing on either side cuts
  the connection.

Upgrade bookkeeping for the adapter: :class:`UpgradeStarted` when an upgrade
goes to the app (one more handshake in flight), then exactly one of
:class:`SwitchProtocols` (``counted``) or :class:`HandshakeFailed` with
``pending`` set; :class:`HandshakeFailed` without ``pending`` for an upgrade
refused before that, or a head that never completed. :class:`Note` carries a
log line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from wsgauge_sidecar.admission import Refusal
from wsgauge_sidecar.exceptions import HttpParseError
from wsgauge_sidecar.httpwire import (
    BodyFramer,
    RequestHead,
    ResponseHead,
    parse_request_head,
    parse_response_head,
)

REASONS = {
    400: "Bad Request",
    408: "Request Timeout",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

TimerKind = Literal["head", "upgrade"]
"""``head``: the request head is due; ``upgrade``: the app's answer to an upgrade is due."""


@dataclass(frozen=True)
class SendToClient:
    """Write ``data`` (a response head, or a local answer) to the client."""

    data: bytes


@dataclass(frozen=True)
class RelayToClient:
    """Write ``data`` (response body bytes, counted as relayed) to the client."""

    data: bytes


@dataclass(frozen=True)
class SendToUpstream:
    """Write ``data`` (request bytes) to the upstream connection, which is up."""

    data: bytes


@dataclass(frozen=True)
class ConnectUpstream:
    """Open a new connection to the app; answer with ``upstream_connected`` or
    ``upstream_unreachable``."""


@dataclass(frozen=True)
class DropUpstream:
    """Close (``abort``: reset) the current upstream connection and forget it."""

    abort: bool


@dataclass(frozen=True)
class StartTimer:
    """(Re)start the one timer of the connection; call ``timer_fired(kind)`` when it fires."""

    kind: TimerKind
    seconds: float


@dataclass(frozen=True)
class CancelTimer:
    """Cancel the timer, if any."""


@dataclass(frozen=True)
class PauseClient:
    """Stop reading the client: too many unconsumed bytes are buffered."""


@dataclass(frozen=True)
class ResumeClient:
    """Read the client again (the buffer drained)."""


@dataclass(frozen=True)
class UpgradeStarted:
    """An upgrade went through the gate and goes to the app: one more handshake in flight."""

    request: RequestHead


@dataclass(frozen=True)
class HandshakeFailed:
    """An upgrade did not become a socket; ``pending``: it was in flight (``UpgradeStarted``)."""

    reason: str
    pending: bool


@dataclass(frozen=True)
class SwitchProtocols:
    """The app answered 101: hand both connections to the WebSocket relay.

    Send ``response.raw`` to the client, then relay ``upstream_rest`` (bytes after the
    101) and ``client_rest`` (client bytes after the request). ``counted``: it is a
    WebSocket upgrade (it was in flight); otherwise a plain tunnel.
    """

    request: RequestHead
    response: ResponseHead
    upstream_rest: bytes
    client_rest: bytes
    counted: bool


@dataclass(frozen=True)
class Linger:
    """Lingering close of the client: FIN after what is buffered, then read and drop
    client bytes for a bounded time before closing."""


@dataclass(frozen=True)
class CloseClient:
    """Close the client connection (``abort``: reset now; else after flushing)."""

    abort: bool
    reason: str


@dataclass(frozen=True)
class Note:
    """A line for the log (``level`` as in :mod:`logging`: ``info``, ``warning``)."""

    level: Literal["info", "warning"]
    message: str


Event = (
    SendToClient | RelayToClient | SendToUpstream | ConnectUpstream | DropUpstream | StartTimer
    | CancelTimer | PauseClient | ResumeClient | UpgradeStarted | HandshakeFailed
    | SwitchProtocols | Linger | CloseClient | Note
)  # fmt: skip
"""What :class:`HttpExchange` asks its adapter to do."""

_HEAD, _EXCHANGE, _RELAY, _CLOSED = range(4)
_NO_UPSTREAM, _CONNECTING, _CONNECTED = range(3)


def local_answer(status: int, message: str, retry_after: int | None = None) -> bytes:
    """The bytes of an error answered by the sidecar itself (``Connection: close``), with
    ``Retry-After: <seconds>`` when ``retry_after`` is given."""
    body = (message + "\n").encode()
    retry = f"Retry-After: {retry_after}\r\n" if retry_after is not None else ""
    head = (
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"{retry}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def tunnel_allowed(request: RequestHead, response: ResponseHead) -> bool:
    """Whether a 101 to a request that is not a WebSocket upgrade may become a plain tunnel.

    Only a switch to protocols the request asked for, none of them ``websocket``
    (RFC 9110 15.2.2): the sidecar never relays an uncounted WebSocket.
    """
    offered = response.upgrade_protocols
    asked = request.upgrade_protocols
    return bool(offered) and b"websocket" not in offered and all(p in asked for p in offered)


class HttpExchange:
    """The request/response exchange of one client connection (see the module docstring)."""

    def __init__(
        self,
        *,
        max_header_bytes: int,
        buffer_bytes: int,
        handshake_timeout: float,
        strip_extensions: Callable[[RequestHead], bool] = lambda head: False,
        upgrade_refusal: Callable[[RequestHead], Refusal | None] = lambda request: None,
    ) -> None:
        self.max_header_bytes = max_header_bytes
        self.buffer_bytes = buffer_bytes
        self.handshake_timeout = handshake_timeout
        self.strip_extensions = strip_extensions
        """Whether to drop ``Sec-WebSocket-Extensions`` from an upgrade request (a socket whose
        messages a frame protocol reads must not negotiate permessage-deflate)."""
        self.upgrade_refusal = upgrade_refusal
        """Why a new upgrade (its request head) must get 503 right now, or ``None``."""
        self._mode = _HEAD
        self._upstream = _NO_UPSTREAM
        self._inbuf = bytearray()
        self._request: RequestHead | None = None
        self._request_framer: BodyFramer | None = None
        self._request_done = False
        self._upgrading = False
        self._response_buffer = bytearray()
        self._response_head: ResponseHead | None = None
        self._response_framer: BodyFramer | None = None
        self._response_started = False
        self._pending_head: bytes | None = None
        self._client_eof = False
        self._paused = False
        self._events: list[Event] = []

    # -- state -----------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """The connection is ending: no more input is taken."""
        return self._mode == _CLOSED

    @property
    def switched(self) -> bool:
        """The 101 was relayed: the connection belongs to the WebSocket relay."""
        return self._mode == _RELAY

    @property
    def upgrading(self) -> bool:
        """An upgrade is in flight (sent to the app, not answered yet)."""
        return self._upgrading

    @property
    def request(self) -> RequestHead | None:
        """The request being answered, if any."""
        return self._request

    # -- input -----------------------------------------------------------------------------

    def start(self) -> list[Event]:
        """The client connection is up: its first request head is due."""
        self._emit(StartTimer("head", self.handshake_timeout))
        return self._take()

    def client_data(self, data: bytes) -> list[Event]:
        """Bytes from the client."""
        if self._mode in (_HEAD, _EXCHANGE):
            self._inbuf += data
            self._process_client_bytes()
        return self._take()

    def client_eof(self) -> list[Event]:
        """The client sent FIN; afterwards ``closed`` says whether to close at once."""
        if self._mode in (_HEAD, _EXCHANGE):
            # a half-closed client may still read the response in flight
            self._client_eof = True
            if self._request is None:
                self._close("client", abort=False)
        return self._take()

    def client_lost(self) -> list[Event]:
        """The client connection is gone."""
        self._upgrade_failed("client_gone")
        self._mode = _CLOSED
        return self._take()

    def mark_closed(self) -> None:
        """The connection is ending for a reason of the adapter's: take no more input."""
        self._mode = _CLOSED

    def upstream_connected(self) -> list[Event]:
        """The connection asked for with :class:`ConnectUpstream` is up."""
        if self._mode in (_HEAD, _EXCHANGE):
            self._upstream = _CONNECTED
            head, self._pending_head = self._pending_head, None
            if head is not None:
                self._emit(SendToUpstream(head))
            self._process_client_bytes()
        return self._take()

    def upstream_unreachable(self) -> list[Event]:
        """The connection asked for with :class:`ConnectUpstream` failed."""
        if self._mode in (_HEAD, _EXCHANGE):
            self._upstream = _NO_UPSTREAM
            self._upgrade_failed("upstream_unreachable")
            self._respond_locally(502, "upstream unreachable")
        return self._take()

    def upstream_data(self, data: bytes) -> list[Event]:
        """Bytes from the upstream connection."""
        if self._mode in (_HEAD, _EXCHANGE):
            self._from_upstream(data)
        return self._take()

    def upstream_gone(self, *, reset: bool) -> list[Event]:
        """The upstream connection ended (FIN, or ``reset``); it is forgotten."""
        self._upstream = _NO_UPSTREAM
        if self._mode in (_HEAD, _EXCHANGE) and self._request is not None:
            framer = self._response_framer
            if framer is not None and framer.until_close:
                self._close("http_done", abort=False)
            elif not self._response_started:
                self._upgrade_failed("upstream_closed")
                self._respond_locally(502, "upstream closed the connection")
            elif reset:
                self._close("upstream_reset", abort=True)
            else:
                self._close("upstream_closed", abort=False)
        # idle keep-alive connection closed by the app: reconnect on the next request
        return self._take()

    def timer_fired(self, kind: TimerKind) -> list[Event]:
        """The timer of a :class:`StartTimer` fired."""
        if kind == "head" and self._mode == _HEAD:
            if not self._inbuf:
                self._close("idle", abort=False)  # nothing sent (or idle keep-alive): quietly
            else:
                self._emit(HandshakeFailed("handshake_timeout", pending=False))
                self._emit(Note("info", "no complete request head in time, closing"))
                self._respond_locally(408, "request head not received in time")
        elif kind == "upgrade" and self._upgrading:
            self._upgrade_failed("upstream_timeout")
            self._emit(Note("warning", "upstream did not answer an upgrade in time"))
            self._respond_locally(504, "upstream did not answer the upgrade in time")
        return self._take()

    def close(self, reason: str, *, abort: bool) -> list[Event]:
        """End the connection for a reason of the adapter's (drain end, shutdown)."""
        self._close(reason, abort=abort)
        return self._take()

    # -- requests --------------------------------------------------------------------------

    def _process_client_bytes(self) -> None:
        self._consume_client_bytes()
        # While a request is in flight, unconsumed bytes (a body waiting for the upstream
        # connection, pipelined requests) are bounded: stop reading above the buffer size.
        # A request head is bounded by the parser (max_header_bytes) instead.
        if self._mode == _EXCHANGE and len(self._inbuf) > self.buffer_bytes:
            if not self._paused:
                self._paused = True
                self._emit(PauseClient())
        elif self._paused and self._mode in (_HEAD, _EXCHANGE):
            self._paused = False
            self._emit(ResumeClient())

    def _consume_client_bytes(self) -> None:
        while self._mode in (_HEAD, _EXCHANGE):
            if self._request is None:
                try:
                    parsed = parse_request_head(self._inbuf, self.max_header_bytes)
                except HttpParseError as error:
                    status = 431 if error.status == 413 else error.status
                    self._emit(Note("info", f"bad request head: {error}"))
                    self._respond_locally(status, str(error))
                    return
                if parsed is None:
                    return
                head, consumed = parsed
                del self._inbuf[:consumed]
                self._emit(CancelTimer())
                self._start_request(head)
                continue
            if not self._request_done:
                if not self._inbuf or self._upstream != _CONNECTED:
                    return
                framer = self._request_framer
                assert framer is not None
                try:
                    used = framer.feed(self._inbuf)
                except HttpParseError as error:
                    self._emit(Note("info", f"bad request body framing: {error}"))
                    self._close("bad_request", abort=True)
                    return
                if used:
                    self._emit(SendToUpstream(bytes(self._inbuf[:used])))
                    del self._inbuf[:used]
                if framer.done:
                    self._request_done = True
                    self._maybe_finish_exchange()
                continue
            return  # request complete, response in flight: pipelined bytes wait here

    def _start_request(self, head: RequestHead) -> None:
        self._mode = _EXCHANGE
        self._request = head
        self._request_framer = BodyFramer.for_request(head)
        self._request_done = self._request_framer.done
        self._response_buffer.clear()
        self._response_head = None
        self._response_framer = None
        self._response_started = False
        head_bytes = head.raw
        if head.names_websocket:
            if head.method != "GET":
                # RFC 6455 4.1: the handshake is a GET. Refused here, so that the app never
                # gets the chance to switch protocols on a request that was not counted.
                self._emit(HandshakeFailed("bad_request", pending=False))
                self._emit(Note("info", f"{head.method} upgrade to websocket refused"))
                self._respond_locally(400, "a WebSocket upgrade must be a GET request")
                return
            refusal = self.upgrade_refusal(head)
            if refusal is not None:
                self._emit(HandshakeFailed(refusal.reason, pending=False))
                self._emit(Note("info", f"upgrade {head.target} refused ({refusal.reason})"))
                self._respond_locally(
                    503, f"upgrade refused: {refusal.reason}", refusal.retry_after
                )
                return
            self._upgrading = True
            self._emit(UpgradeStarted(head))
            if self.strip_extensions(head):
                head_bytes = head.serialize(drop_headers=("sec-websocket-extensions",))
            self._emit(StartTimer("upgrade", self.handshake_timeout))
        self._send_head_upstream(head_bytes)

    def _send_head_upstream(self, head_bytes: bytes) -> None:
        if self._upstream == _CONNECTED:
            self._emit(SendToUpstream(head_bytes))
            return
        self._pending_head = head_bytes
        if self._upstream == _NO_UPSTREAM:
            self._upstream = _CONNECTING
            self._emit(ConnectUpstream())

    def _maybe_finish_exchange(self) -> None:
        framer = self._response_framer
        if not (self._request_done and framer is not None and framer.done):
            return
        request, response = self._request, self._response_head
        assert request is not None
        assert response is not None
        keep_alive = (
            request.keep_alive
            and response.keep_alive
            and not framer.until_close
            and not self._client_eof
        )
        if not keep_alive:
            self._close("http_done", abort=False)
            return
        self._mode = _HEAD
        self._request = None
        self._request_framer = None
        self._response_head = None
        self._response_framer = None
        self._emit(StartTimer("head", self.handshake_timeout))
        self._process_client_bytes()

    # -- responses -------------------------------------------------------------------------

    def _from_upstream(self, data: bytes) -> None:
        if self._request is None:
            # nothing asked: a stray answer on an idle keep-alive connection; drop that connection
            if self._upstream != _NO_UPSTREAM:
                self._upstream = _NO_UPSTREAM
                self._emit(DropUpstream(abort=True))
            return
        if self._response_framer is not None:
            self._relay_response_body(data)
            return
        self._response_buffer += data
        while self._response_framer is None:
            try:
                parsed = parse_response_head(self._response_buffer, self.max_header_bytes)
            except HttpParseError as error:
                self._emit(Note("warning", f"upstream sent a bad response head: {error}"))
                self._upgrade_failed("bad_upstream_response")
                self._respond_locally(502, "bad response from upstream")
                return
            if parsed is None:
                return
            head, consumed = parsed
            rest = bytes(self._response_buffer[consumed:])
            self._response_buffer.clear()
            if head.is_interim:
                self._response_started = True
                self._emit(SendToClient(head.raw))
                self._response_buffer += rest
                continue
            if head.status == 101:
                self._switch_protocols(head, rest)
                return
            self._final_response(head, rest)

    def _final_response(self, head: ResponseHead, rest: bytes) -> None:
        request = self._request
        assert request is not None
        if self._upgrading:
            self._upgrade_failed("upstream_rejected")
            rejected = f"upgrade {request.target} rejected by upstream: {head.status}"
            self._emit(Note("info", rejected))
        self._response_head = head
        self._response_framer = BodyFramer.for_response(head, request.method)
        self._response_started = True
        self._emit(SendToClient(head.raw))
        if rest:
            self._relay_response_body(rest)
        else:
            self._maybe_finish_exchange()

    def _relay_response_body(self, data: bytes) -> None:
        framer = self._response_framer
        assert framer is not None
        try:
            used = framer.feed(data)
        except HttpParseError as error:
            self._emit(Note("warning", f"upstream sent a bad response body: {error}"))
            self._close("bad_upstream_response", abort=True)
            return
        if used:
            self._emit(RelayToClient(data if used == len(data) else data[:used]))
        if framer.done:
            if used < len(data) and self._upstream != _NO_UPSTREAM:
                self._upstream = _NO_UPSTREAM  # bytes beyond the response: distrust it
                self._emit(DropUpstream(abort=True))
            self._maybe_finish_exchange()

    def _switch_protocols(self, head: ResponseHead, rest: bytes) -> None:
        request = self._request
        assert request is not None
        counted = self._upgrading
        if not counted and not tunnel_allowed(request, head):
            offered = b",".join(head.upgrade_protocols).decode(errors="replace") or "none"
            self._emit(Note("warning", f"upstream switched protocols ({offered}) on "
                                       f"{request.method} {request.target}, which did not ask "
                                       "for that"))  # fmt: skip
            self._respond_locally(502, "upstream switched to a protocol that was not asked for")
            return
        self._upgrading = False
        self._emit(CancelTimer())
        self._mode = _RELAY
        self._paused = False
        early = bytes(self._inbuf)
        self._inbuf.clear()
        # the exchange is over: the socket's whole life long it would otherwise hold the heads
        # (about 1 KiB of parsed headers per socket); the event hands them on
        self._request = self._request_framer = None
        self._response_head = self._response_framer = None
        self._emit(SwitchProtocols(request, head, rest, early, counted))

    def _upgrade_failed(self, reason: str) -> None:
        if self._upgrading:
            self._upgrading = False
            self._emit(HandshakeFailed(reason, pending=True))

    # -- ending ----------------------------------------------------------------------------

    def _respond_locally(self, status: int, message: str, retry_after: int | None = None) -> None:
        if self._mode == _CLOSED:
            return
        if self._response_started or self._mode == _RELAY:
            self._close("local_response", abort=False)
            return
        self._emit(SendToClient(local_answer(status, message, retry_after)))
        self._shut_upstream_side(abort=True)
        self._inbuf.clear()
        self._paused = False
        self._emit(Linger())

    def _shut_upstream_side(self, *, abort: bool) -> None:
        self._emit(CancelTimer())
        self._upgrade_failed("closed")
        self._mode = _CLOSED
        if self._upstream != _NO_UPSTREAM:
            self._upstream = _NO_UPSTREAM
            self._emit(DropUpstream(abort=abort))

    def _close(self, reason: str, *, abort: bool) -> None:
        self._shut_upstream_side(abort=abort)
        self._emit(CloseClient(abort=abort, reason=reason))

    def _emit(self, event: Event) -> None:
        self._events.append(event)

    def _take(self) -> list[Event]:
        events, self._events = self._events, []
        return events
