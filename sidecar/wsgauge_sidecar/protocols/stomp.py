"""STOMP 1.0-1.2 over WebSocket (optionally inside SockJS): a socket's destinations.

Pure and sans-I/O, a :class:`wsgauge_sidecar.protocols.base.ProtocolSession`.

Protocol facts relied on (the STOMP 1.0, 1.1 and 1.2 specifications):

* A frame is a command line, header lines ``name:value``, an empty line, a body
  and a NUL byte; lines end in LF or CRLF. A ``content-length`` header gives the
  body's size (the body may then contain NUL). Between frames any number of
  EOLs may appear (heart-beats). Over WebSocket one message may hold several
  frames and a frame may span several messages (text or binary alike).
* Repeated headers: the first one counts. In 1.1 and 1.2 header values (except
  in CONNECT/CONNECTED) escape ``\\r \\n \\c \\\\``; 1.0 has no escapes. The
  version is the ``version`` header of ``CONNECTED`` (none: 1.0).
* ``SUBSCRIBE`` has ``destination`` and ``id`` (``id`` optional in 1.0);
  ``UNSUBSCRIBE`` has ``id`` (1.0: ``id`` or ``destination``). The server sends
  ``ERROR`` and then closes the connection (a refused subscription ends so).
* SockJS (sockjs-protocol 0.3.3, websocket transport at
  ``/<prefix>/<server>/<session>/websocket``): the server sends ``o`` (open),
  ``h`` (heartbeat), ``a[...]`` (a JSON array of message strings), ``m"..."`` and
  ``c[code,"reason"]``; the client sends a JSON array of strings (or one string).
  Each string is STOMP text.

Counting rules: a subscription is in its destination from the client's
``SUBSCRIBE`` (STOMP has no acknowledgement of it) until the client's
``UNSUBSCRIBE`` of its id (1.0 without id: every subscription of that
destination), or the server's ``ERROR`` (which ends all of them: the server
closes the connection after it). A ``SUBSCRIBE`` reusing an id replaces that
subscription. The topic is the destination as sent (``/topic/chat``); several
subscriptions to one destination count the socket once.

SockJS: when the URL has the SockJS websocket shape, the socket is SockJS if
the first message is the server's ``o``; a client that speaks first means a
raw STOMP socket on a URL of that shape.

What the wire cannot show: a subscription the broker drops without an
``ERROR`` (none do in the specification); a destination's meaning (wildcards of
a broker are counted by their text).

Cost: every frame's boundaries are found (byte searches); only ``SUBSCRIBE``,
``UNSUBSCRIBE``, ``CONNECTED`` and ``ERROR`` headers are decoded. Under the native
relay a raw STOMP message made of whole frames with other commands never reaches
Python (:class:`StompFrameScan`); SockJS
messages all do.

Errors: a header line without ``:``, a ``content-length`` that is not a
number, a body longer than its ``content-length`` says, a SockJS message that is
not of its shape (1007); a frame over ``max_frame_bytes`` (1009); more than
``max_subscriptions`` subscriptions or an id over :data:`MAX_ID_LENGTH` (1008).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from wsgauge_sidecar.exceptions import ProtocolError, ProtocolLimitError
from wsgauge_sidecar.httpwire import RequestHead, ResponseHead, split_target
from wsgauge_sidecar.protocols.base import (
    MAX_TOPICS_PER_SOCKET,
    NO_EVENTS,
    ProtocolEvent,
    ProtocolSpec,
    SubscriptionTable,
    normalize_topic,
)
from wsgauge_sidecar.protocols.prefilter import EVERY, EVERY_MESSAGE, MessageFilter, Scan

MAX_FRAME_BYTES = 1048576
"""Largest STOMP frame by default (1009 above)."""

MAX_ID_LENGTH = 200
"""Longest subscription id tracked (1008 above)."""

SOCKJS_PATH = re.compile(r"/[^/.]+/[^/.]+/websocket/?$")
"""The path of SockJS's websocket transport: ``.../<server_id>/<session_id>/websocket``."""

_ESCAPES = {"r": "\r", "n": "\n", "c": ":", "\\": "\\"}
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)

Frame = tuple[bytes, list[tuple[str, str]]]
"""A decoded frame: command and headers (the body is not kept)."""


class FrameReader:
    """Splits one direction's STOMP byte stream into frames; decodes the wanted ones."""

    __slots__ = ("_buffer", "escapes", "max_frame_bytes", "wanted")

    def __init__(self, wanted: frozenset[bytes], max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self.wanted = wanted
        self.max_frame_bytes = max_frame_bytes
        self.escapes = True
        """Header values use the 1.1/1.2 escapes (False for 1.0)."""
        self._buffer = b""

    @property
    def at_boundary(self) -> bool:
        """True between frames (nothing of a frame is buffered)."""
        return not self._buffer

    def feed(self, data: bytes) -> list[Frame]:
        """Bytes of the stream, in order; the wanted frames they complete."""
        buffer = self._buffer + data if self._buffer else data
        frames: list[Frame] = []
        position, size = 0, len(buffer)
        while position < size:
            while position < size and buffer[position] in b"\r\n":
                position += 1  # heart-beats and EOLs between frames
            if position >= size:
                break
            # the empty line ends the headers: LF LF, or LF CR LF (CRLF line endings)
            end = buffer.find(b"\n\n", position)
            crlf = buffer.find(b"\n\r\n", position, end if end >= 0 else size)
            if crlf >= 0 and (end < 0 or crlf < end):
                end, body = crlf, crlf + 3
            else:
                body = end + 2
            if end < 0:
                break
            head = buffer[position:end]
            length = _content_length(head)
            if length is None:
                stop = buffer.find(b"\0", body)
                if stop < 0:
                    break
            else:
                stop = body + length
                if stop >= size:
                    break
                if buffer[stop] != 0:
                    raise ProtocolError("STOMP body longer than its content-length")
            command, _, headers = head.partition(b"\n")
            command = command.rstrip(b"\r")
            if command in self.wanted:
                frames.append((command, self._headers(headers)))
            position = stop + 1
        rest = buffer[position:]
        if len(rest) > self.max_frame_bytes:
            raise ProtocolError(f"STOMP frame over {self.max_frame_bytes} bytes", close_code=1009)
        self._buffer = rest
        return frames

    def _headers(self, raw: bytes) -> list[tuple[str, str]]:
        headers: list[tuple[str, str]] = []
        for raw_line in raw.decode("utf-8", errors="replace").split("\n"):
            line = raw_line.removesuffix("\r")
            if not line:
                continue
            name, colon, value = line.partition(":")
            if not colon:
                raise ProtocolError("STOMP header line without ':'")
            if self.escapes:
                name, value = _unescape(name), _unescape(value)
            headers.append((name, value))
        return headers


def _content_length(head: bytes) -> int | None:
    at = head.find(b"\ncontent-length:")
    if at < 0:
        return None
    value = head[at + 16 :].split(b"\n", 1)[0].strip(b"\r \t")
    if not value.isdigit():
        raise ProtocolError("STOMP content-length is not a number")
    if len(value) > 18:
        raise ProtocolError("STOMP content-length over 18 digits", close_code=1009)
    return int(value)


def _unescape(text: str) -> str:
    if "\\" not in text:
        return text
    return _ESCAPE.sub(lambda match: _ESCAPES.get(match.group(1), match.group(0)), text)


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    for field, value in headers:
        if field == name:
            return value
    return None


@dataclass(frozen=True)
class StompFrameScan(Scan):
    """Passes every message except one made of whole STOMP frames (command line, headers, empty
    line, a body ended by NUL or sized by ``content-length``), with any EOLs between them, none
    of which has a command in ``commands``: a message that a :class:`FrameReader` of
    ``commands`` between frames reads without returning a frame, raising or keeping a rest (its
    reference, mirrored in C)."""

    commands: tuple[bytes, ...]
    """The commands the session decodes (``SUBSCRIBE``, ``ERROR``, ...)."""

    native_kind: ClassVar[str] = "TEST_STOMP_FRAMES"

    def native_items(self) -> tuple[bytes, ...]:
        return self.commands

    def passes(self, payload: bytes) -> bool:
        reader = FrameReader(frozenset(self.commands))
        try:
            return bool(reader.feed(payload)) or not reader.at_boundary
        except ProtocolError:
            return True  # malformed: the session says so


_CLIENT_COMMANDS = frozenset({b"SUBSCRIBE", b"UNSUBSCRIBE"})
_SERVER_COMMANDS = frozenset({b"CONNECTED", b"ERROR"})
_CLIENT_SCAN = StompFrameScan(tuple(sorted(_CLIENT_COMMANDS)))
_SERVER_SCAN = StompFrameScan(tuple(sorted(_SERVER_COMMANDS)))
_FILTERS = {
    (client_at_boundary, server_at_boundary): MessageFilter(
        client_text=_CLIENT_SCAN if client_at_boundary else EVERY,
        client_binary=_CLIENT_SCAN if client_at_boundary else EVERY,
        server_text=_SERVER_SCAN if server_at_boundary else EVERY,
        server_binary=_SERVER_SCAN if server_at_boundary else EVERY,
    )
    for client_at_boundary in (False, True)
    for server_at_boundary in (False, True)
}
"""A raw STOMP session's filter by (client reader between frames, server reader between frames)."""


class StompSession:
    """Follows one STOMP socket and reports the destinations it is subscribed to."""

    __slots__ = ("_client", "_server", "_subscriptions", "max_subscriptions", "sockjs")

    def __init__(
        self,
        *,
        sockjs: bool = False,
        max_subscriptions: int = MAX_TOPICS_PER_SOCKET,
        max_frame_bytes: int = MAX_FRAME_BYTES,
    ) -> None:
        self.sockjs: bool | None = None if sockjs else False
        """SockJS framing: ``None`` until the first message decides (SockJS-shaped URL)."""
        self.max_subscriptions = max_subscriptions
        """Subscriptions; one more raises ``ProtocolLimitError``."""
        self._client = FrameReader(_CLIENT_COMMANDS, max_frame_bytes)
        self._server = FrameReader(_SERVER_COMMANDS, max_frame_bytes)
        self._subscriptions = SubscriptionTable()  # id -> topic

    @property
    def topics(self) -> frozenset[str]:
        """The destinations the socket is subscribed to now."""
        return self._subscriptions.topics

    @property
    def message_filter(self) -> MessageFilter:
        """The pre-filter of the session's state now (see protocols.prefilter): on a raw STOMP
        socket a direction whose reader is between frames needs only the messages holding a
        frame it decodes (or not whole frames); SockJS sockets and a direction inside a frame
        need every message."""
        if self.sockjs is not False:
            return EVERY_MESSAGE
        return _FILTERS[self._client.at_boundary, self._server.at_boundary]

    def client_text(self, payload: bytes) -> Sequence[ProtocolEvent]:
        if self.sockjs is None:
            self.sockjs = False  # the client spoke first: raw STOMP
        if self.sockjs:
            return self._from_client(b"".join(_sockjs_client(payload)))
        return self._from_client(payload)

    def server_text(self, payload: bytes) -> Sequence[ProtocolEvent]:
        if self.sockjs is None:
            self.sockjs = payload == b"o"
        if self.sockjs:
            return self._from_server(b"".join(_sockjs_server(payload)))
        return self._from_server(payload)

    def client_binary(self, payload: bytes) -> Sequence[ProtocolEvent]:
        if self.sockjs:
            return NO_EVENTS  # SockJS carries text only
        self.sockjs = False
        return self._from_client(payload)

    def server_binary(self, payload: bytes) -> Sequence[ProtocolEvent]:
        if self.sockjs:
            return NO_EVENTS
        self.sockjs = False
        return self._from_server(payload)

    # ------------------------------------------------------------- logic

    def _from_client(self, data: bytes) -> Sequence[ProtocolEvent]:
        frames = self._client.feed(data)
        if not frames:
            return NO_EVENTS
        events: list[ProtocolEvent] = []
        for command, headers in frames:
            destination = _header(headers, "destination")
            ident = _header(headers, "id")
            if command == b"SUBSCRIBE":
                topic = normalize_topic(destination)
                key = ident if ident is not None else f"destination:{destination}"
                if key in self._subscriptions:
                    self._end(key, "replaced", events)
                if topic is not None:
                    self._start(key, topic, events)
            elif ident is not None:
                self._end(ident, "unsubscribe", events)
            elif destination is not None:
                for key, topic in self._subscriptions.items():
                    if topic == normalize_topic(destination):
                        self._end(key, "unsubscribe", events)
        return events

    def _from_server(self, data: bytes) -> Sequence[ProtocolEvent]:
        frames = self._server.feed(data)
        if not frames:
            return NO_EVENTS
        events: list[ProtocolEvent] = []
        for command, headers in frames:
            if command == b"CONNECTED":
                version = _header(headers, "version") or "1.0"
                escapes = version != "1.0"
                self._client.escapes = self._server.escapes = escapes
            else:
                for key in self._subscriptions.key_list():
                    self._end(key, "error", events)
        return events

    def _start(self, key: str, topic: str, events: list[ProtocolEvent]) -> None:
        if len(key) > MAX_ID_LENGTH:
            raise ProtocolLimitError(f"STOMP subscription id over {MAX_ID_LENGTH} characters")
        if len(self._subscriptions) >= self.max_subscriptions:
            raise ProtocolLimitError(f"more than {self.max_subscriptions} STOMP subscriptions")
        self._subscriptions.add(key, topic, events)

    def _end(self, key: str, reason: str, events: list[ProtocolEvent]) -> None:
        self._subscriptions.remove(key, reason, events)


def _sockjs_strings(text: bytes) -> list[bytes]:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise ProtocolError("SockJS message is not valid JSON") from None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ProtocolError("SockJS message must be a JSON array of strings")
    return [item.encode("utf-8", errors="replace") for item in value]


def _sockjs_client(payload: bytes) -> list[bytes]:
    return _sockjs_strings(payload)


def _sockjs_server(payload: bytes) -> list[bytes]:
    kind = payload[:1]
    if kind == b"a":
        return _sockjs_strings(payload[1:])
    if kind == b"m":
        return _sockjs_strings(b"[" + payload[1:] + b"]")
    if kind in (b"o", b"h", b"c"):
        return []
    raise ProtocolError("unknown SockJS frame type")


def is_sockjs_target(target: str) -> bool:
    """True when a request target has the path of SockJS's websocket transport."""
    path, _ = split_target(target)
    return SOCKJS_PATH.search(path) is not None


def _new_session(request: RequestHead, response: ResponseHead) -> StompSession:
    return StompSession(sockjs=is_sockjs_target(request.target))


SPEC = ProtocolSpec(
    name="stomp",
    summary="STOMP 1.0-1.2 (SockJS unwrapped on .../<server>/<session>/websocket):\n"
    "destinations from SUBSCRIBE until UNSUBSCRIBE by id or ERROR",
    factory=_new_session,
)
"""The ``stomp`` rule."""
