"""Socket.IO reader: which namespaces a proxied Engine.IO WebSocket is connected to.

Pure and sans-I/O: the proxy feeds every whole message of a ``socketio`` socket
(reassembled by :class:`wsgauge_sidecar.wsframes.MessageReader`) to one
:class:`SocketIoSession` and applies the returned :class:`Joined` / :class:`Left`
events to the counter. Messages are relayed unchanged.

Protocol facts relied on (Engine.IO protocol v4 and v3, Socket.IO protocol v5, the
``socket.io-parser`` encoding):

* Over the WebSocket transport one text message is one Engine.IO packet: a type
  digit (``0`` open, ``1`` close, ``2`` ping, ``3`` pong, ``4`` message, ``5``
  upgrade, ``6`` noop) and its data. No batching (``\\x1e`` separates packets only
  in HTTP long-polling bodies). Binary messages are Socket.IO attachments (EIO 4
  sends them raw, EIO 3 behind a ``0x04`` byte); they never change namespaces.
* A Socket.IO packet is an Engine.IO ``message``: a type digit (``0`` CONNECT,
  ``1`` DISCONNECT, ``2`` EVENT, ``3`` ACK, ``4`` CONNECT_ERROR, ``5``
  BINARY_EVENT, ``6`` BINARY_ACK), then the namespace when it is not ``/``
  (``/chat`` up to a ``,``), an optional ack id and JSON data: ``40/chat,`` asks
  to connect namespace ``/chat`` (``40`` the main namespace ``/``).
* The server answers a CONNECT with its own CONNECT carrying ``{"sid": ...}``
  when it accepts (the client is then connected to that namespace), or with
  CONNECT_ERROR (``44/chat,{"message": ...}``) when a middleware refuses it.
  Either side ends a namespace with DISCONNECT (``41/chat,``); an Engine.IO
  ``close`` packet ends them all.

Counting rules: the socket is in topic ``/ns`` from the server's CONNECT for
``/ns`` until a DISCONNECT for ``/ns`` from either side, a server CONNECT_ERROR
for it (the client drops the namespace), an Engine.IO close or the socket's end.
The topic is the namespace as sent; a Socket.IO v2 query string on it
(``/chat?token=x``) is not part of the name. Rooms live only in the server's
memory (``socket.join(room)`` sends nothing): they are not on the wire and
cannot be counted.

Inspected messages: only Engine.IO ``close`` packets and Socket.IO CONNECT,
DISCONNECT and CONNECT_ERROR packets are decoded (their namespace read, their
JSON data validated); events, acks, pings and binary attachments are relayed
without being decoded (the native relay tells them by their first one or two
bytes and does not hand them to Python). An inspected packet that is malformed (an empty message,
an unknown Engine.IO or Socket.IO packet type, data that is not JSON) raises
:class:`ProtocolError` (close code 1007); a socket connected to more than
``max_namespaces`` namespaces gets :class:`ProtocolLimitError` (1008).

What the wire cannot show: rooms; namespaces connected over HTTP long-polling
before the transport was upgraded to WebSocket (the WebSocket then starts with
``2probe``): clients must connect with the WebSocket transport only
(``transports: ["websocket"]``) for their namespaces to be counted.

Compression: the proxy removes ``Sec-WebSocket-Extensions`` from the upgrade
request, so permessage-deflate is never negotiated and every message is plain.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from wsgauge_sidecar.exceptions import ProtocolError, ProtocolLimitError
from wsgauge_sidecar.httpwire import RequestHead, ResponseHead
from wsgauge_sidecar.protocols.base import (
    MAX_TOPICS_PER_SOCKET,
    NO_EVENTS,
    Joined,
    Left,
    ProtocolEvent,
    ProtocolSpec,
    normalize_topic,
)
from wsgauge_sidecar.protocols.prefilter import MessageFilter, PrefixSkip

MAIN_NAMESPACE = "/"
"""The namespace of packets that name none."""

MAX_NAMESPACES = MAX_TOPICS_PER_SOCKET
"""Namespaces connected per socket (the server accepting one more closes it with 1008)."""

_ENGINE_TYPES = b"0123456"
_SOCKET_TYPES = b"0123456"
_OPEN, _CLOSE, _MESSAGE = ord("0"), ord("1"), ord("4")
_CONNECT, _DISCONNECT, _CONNECT_ERROR = ord("0"), ord("1"), ord("4")


def parse_namespace_packet(payload: bytes) -> tuple[int, str, object]:
    """A Socket.IO CONNECT, DISCONNECT or CONNECT_ERROR packet (Engine.IO message included).

    Returns (Socket.IO type digit, namespace, data or ``None``). Raises
    :class:`ProtocolError` for a malformed packet.
    """
    text = payload[2:].decode("utf-8", errors="replace")
    namespace = MAIN_NAMESPACE
    rest = text
    if text.startswith("/"):
        comma = text.find(",")
        namespace, rest = (text, "") if comma < 0 else (text[:comma], text[comma + 1 :])
        namespace = namespace.split("?", 1)[0] or MAIN_NAMESPACE
    position = 0
    while position < len(rest) and rest[position].isdigit():
        position += 1  # an ack id
    data: object = None
    if rest[position:]:
        try:
            data = json.loads(rest[position:])
        except (ValueError, RecursionError):
            raise ProtocolError("Socket.IO packet data is not valid JSON") from None
    return payload[1], namespace, data


_UNREAD = PrefixSkip((b"0", b"2", b"3", b"5", b"6", b"42", b"43", b"45", b"46"))
"""Text messages that never change namespaces and are not checked: Engine.IO open, ping, pong,
upgrade and noop packets, and Socket.IO EVENT, ACK, BINARY_EVENT and BINARY_ACK packets."""

FILTER = MessageFilter(client_text=_UNREAD, server_text=_UNREAD)
"""The text messages read (Engine.IO close, Socket.IO CONNECT, DISCONNECT, CONNECT_ERROR and
whatever is not a known packet type, to be refused); binary ones never."""


class SocketIoSession:
    """Follows one Engine.IO/Socket.IO WebSocket and reports the namespaces it is in."""

    __slots__ = ("_namespaces", "max_namespaces")

    def __init__(self, *, max_namespaces: int = MAX_NAMESPACES) -> None:
        self.max_namespaces = max_namespaces
        """Connected namespaces; the server accepting one more raises the limit error."""
        self._namespaces: set[str] = set()

    @property
    def topics(self) -> frozenset[str]:
        """The namespaces the socket is connected to now."""
        return frozenset(self._namespaces)

    @property
    def message_filter(self) -> MessageFilter:
        """The pre-filter of the session's state now, as needles (see protocols.base)."""
        return FILTER

    def client_text(self, payload: bytes) -> Sequence[ProtocolEvent]:
        """A client text message (one Engine.IO packet); returns the events it causes."""
        return self._packet(payload, from_client=True)

    def server_text(self, payload: bytes) -> Sequence[ProtocolEvent]:
        """A server text message (one Engine.IO packet); returns the events it causes."""
        return self._packet(payload, from_client=False)

    def client_binary(self, data: bytes) -> Sequence[ProtocolEvent]:
        """A client binary message: an attachment, which never changes namespaces."""
        return NO_EVENTS

    def server_binary(self, data: bytes) -> Sequence[ProtocolEvent]:
        """A server binary message: an attachment, which never changes namespaces."""
        return NO_EVENTS

    def _packet(self, payload: bytes, *, from_client: bool) -> Sequence[ProtocolEvent]:
        if not payload:
            raise ProtocolError("empty Engine.IO packet")
        engine_type = payload[0]
        if engine_type == _MESSAGE:
            if len(payload) < 2:
                raise ProtocolError("Engine.IO message without a Socket.IO packet")
            socket_type = payload[1]
            if socket_type not in _SOCKET_TYPES:
                raise ProtocolError(f"unknown Socket.IO packet type {chr(socket_type)!r}")
            if socket_type in (_CONNECT, _DISCONNECT, _CONNECT_ERROR):
                return self._namespace_packet(payload, from_client=from_client)
            return NO_EVENTS
        if engine_type not in _ENGINE_TYPES:
            raise ProtocolError(f"unknown Engine.IO packet type {chr(engine_type)!r}")
        if engine_type == _CLOSE:
            return self._leave_all("close")
        return NO_EVENTS

    def _namespace_packet(self, payload: bytes, *, from_client: bool) -> Sequence[ProtocolEvent]:
        kind, name, _ = parse_namespace_packet(payload)
        topic = normalize_topic(name)
        if topic is None:
            return NO_EVENTS
        if kind == _DISCONNECT:
            return self._leave(topic, "leave" if from_client else "close")
        if from_client:
            return NO_EVENTS  # a CONNECT request counts only once the server accepts it
        if kind == _CONNECT_ERROR:
            return self._leave(topic, "error")
        if topic in self._namespaces:
            return NO_EVENTS
        if len(self._namespaces) >= self.max_namespaces:
            raise ProtocolLimitError(f"more than {self.max_namespaces} namespaces")
        self._namespaces.add(topic)
        return [Joined(topic)]

    def _leave(self, topic: str, reason: str) -> Sequence[ProtocolEvent]:
        if topic not in self._namespaces:
            return NO_EVENTS
        self._namespaces.discard(topic)
        return [Left(topic, reason)]

    def _leave_all(self, reason: str) -> Sequence[ProtocolEvent]:
        events: list[ProtocolEvent] = [Left(topic, reason) for topic in sorted(self._namespaces)]
        self._namespaces.clear()
        return events or NO_EVENTS


def _new_session(request: RequestHead, response: ResponseHead) -> SocketIoSession:
    return SocketIoSession()


SPEC = ProtocolSpec(
    name="socketio",
    summary="Socket.IO v4 namespaces the app accepted (40/ns); rooms are not on the wire",
    factory=_new_session,
    message_filter=FILTER,
)
"""The ``socketio`` rule (permessage-deflate is kept from being negotiated)."""
