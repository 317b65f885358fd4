"""MQTT 3.1, 3.1.1 and 5 over WebSocket: which topic filters a socket is subscribed to.

Pure and sans-I/O, a :class:`wsgauge_sidecar.protocols.base.ProtocolSession`.

Protocol facts relied on (MQTT 3.1.1 and 5.0 OASIS standards):

* Over WebSocket every control packet travels in binary messages, and a packet
  may span several messages or share one with others (MQTT 5 section 6.0:
  "a single WebSocket data frame can contain multiple or partial MQTT Control
  Packets"); a text message is a protocol violation ([MQTT-6.0.0-1]: close).
* A packet is a fixed header (type in the high nibble of byte 1), a remaining
  length (1-4 bytes, 7 bits each, least significant first) and that many bytes.
* ``CONNECT`` (type 1) is the client's first packet: protocol name, then the
  protocol level (3 = 3.1, 4 = 3.1.1, 5 = 5.0).
* ``SUBSCRIBE`` (8): packet identifier, (5: properties), then filters, each a
  UTF-8 string (2-byte length) and an options byte. ``SUBACK`` (9): packet
  identifier, (5: properties), one return/reason code per filter in order:
  ``0x00``-``0x02`` granted, ``0x80`` and above refused.
* ``UNSUBSCRIBE`` (10): packet identifier, (5: properties), filters.
  ``UNSUBACK`` (11): packet identifier; in 5 also properties and one reason
  code per filter (``0x00`` success, ``0x11`` no subscription existed, ``0x80``
  and above refused); in 3.1.1 no payload (every filter is removed).
* Subscribing again to a filter the session has replaces that subscription
  (3.1.1 [MQTT-3.8.4-3]): a filter is counted once however often it is granted.

Counting rules: a filter is in the socket's topics from the ``SUBACK`` that
grants it (code below ``0x80``) until the ``UNSUBACK`` that confirms its
removal (a 5 reason code below ``0x80``; always in 3.1.1). The topic is the
filter as sent (``chat/+``, ``$share/g/chat``). The wire cannot show
subscriptions the broker restores from a persistent session (``CONNECT`` without
clean session/start, ``CONNACK`` session present): they are not counted.

Cost: every packet header is read, but only ``CONNECT``, ``SUBSCRIBE``,
``UNSUBSCRIBE``, ``SUBACK`` and ``UNSUBACK`` bodies are kept and decoded; the
bodies of every other packet (``PUBLISH`` payloads) are skipped by length. Under
the native relay a message made of whole packets of other types never reaches
Python (:class:`MqttPacketScan`).

Errors (:class:`~wsgauge_sidecar.exceptions.ProtocolError`): a text message
(1003); a malformed packet (remaining length over 4 bytes, reserved type 0,
fields past the end, a filter that is not UTF-8, a first client packet that is
not ``CONNECT``, a ``SUBACK`` with fewer codes than filters) (1007); a decoded
packet over ``max_packet_bytes`` (1009); more than ``max_pending`` unanswered
subscribe/unsubscribe packets, ``max_topics`` filters or a filter over
:data:`MAX_FILTER_BYTES` bytes (1008).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from wsgauge_sidecar.exceptions import ProtocolError, ProtocolLimitError
from wsgauge_sidecar.httpwire import RequestHead, ResponseHead
from wsgauge_sidecar.protocols.base import (
    MAX_TOPICS_PER_SOCKET,
    NO_EVENTS,
    ProtocolEvent,
    ProtocolSpec,
    SubscriptionTable,
    normalize_topic,
)
from wsgauge_sidecar.protocols.prefilter import EVERY, MessageFilter, Scan

CONNECT, SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 1, 8, 9, 10, 11
"""The packet types this reader decodes."""

MAX_FILTER_BYTES = 1024
"""Longest topic filter a socket may subscribe to (1008 above)."""

MAX_PACKET_BYTES = 1048576
"""Largest decoded packet (CONNECT, SUBSCRIBE, ...) by default (1009 above)."""

_CLIENT_TYPES = frozenset({CONNECT, SUBSCRIBE, UNSUBSCRIBE})
_SERVER_TYPES = frozenset({SUBACK, UNSUBACK})


class PacketReader:
    """Splits one direction's byte stream into MQTT packets; returns the wanted ones.

    ``feed`` returns ``(type, body)`` for each completed packet whose type is in
    ``wanted``; other packets are skipped by their remaining length.
    """

    __slots__ = ("_body", "_head", "_need", "_skip", "_type", "max_packet_bytes", "wanted")

    def __init__(self, wanted: frozenset[int], max_packet_bytes: int = MAX_PACKET_BYTES) -> None:
        self.wanted = wanted
        self.max_packet_bytes = max_packet_bytes
        self._head = bytearray()  # fixed header bytes of the packet being read
        self._skip = 0  # bytes of an unwanted packet still to skip
        self._type = 0
        self._need = 0  # body length of the wanted packet being read
        self._body: bytearray | None = None

    @property
    def at_boundary(self) -> bool:
        """True between packets."""
        return not self._head and not self._skip and self._body is None

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Bytes of the stream, in order; the wanted packets they complete."""
        packets: list[tuple[int, bytes]] = []
        position, size = 0, len(data)
        while position < size:
            if position + 1 < size and not self._head and not self._skip and self._body is None:
                # fast path: a packet whose 1-byte remaining length is in ``data``
                first, length = data[position], data[position + 1]
                kind = first >> 4
                if length < 0x80 and kind and kind not in self.wanted:
                    position += 2 + length
                    if position > size:
                        self._skip = position - size
                    continue
            if self._skip:
                step = min(self._skip, size - position)
                self._skip -= step
                position += step
                continue
            body = self._body
            if body is not None:
                step = min(self._need - len(body), size - position)
                body += data[position : position + step]
                position += step
                if len(body) == self._need:
                    packets.append((self._type, bytes(body)))
                    self._body = None
                continue
            head = self._head
            head.append(data[position])
            position += 1
            if len(head) < 2:
                if head[0] >> 4 == 0:
                    raise ProtocolError("MQTT packet of reserved type 0")
                continue
            if head[-1] & 0x80:
                if len(head) == 5:
                    raise ProtocolError("MQTT remaining length longer than 4 bytes")
                continue
            length, shift = 0, 0
            for byte in head[1:]:
                length |= (byte & 0x7F) << shift
                shift += 7
            kind = head[0] >> 4
            head.clear()
            if kind not in self.wanted:
                self._skip = length
                continue
            if length > self.max_packet_bytes:
                raise ProtocolError(
                    f"MQTT packet of {length} bytes over {self.max_packet_bytes}", close_code=1009
                )
            if size - position >= length:
                packets.append((kind, data[position : position + length]))
                position += length
            else:
                self._type, self._need = kind, length
                self._body = bytearray(data[position:])
                position = size
        return packets


class _Fields:
    """Reads the fields of one packet body; any overrun is a malformed packet (1007)."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.position = 0

    @property
    def left(self) -> int:
        return len(self.body) - self.position

    def take(self, count: int) -> bytes:
        if count > self.left:
            raise ProtocolError("MQTT packet shorter than its fields")
        chunk = self.body[self.position : self.position + count]
        self.position += count
        return chunk

    def byte(self) -> int:
        return self.take(1)[0]

    def uint16(self) -> int:
        high, low = self.take(2)
        return high << 8 | low

    def varint(self) -> int:
        value, shift = 0, 0
        for _ in range(4):
            byte = self.byte()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
        raise ProtocolError("MQTT variable byte integer longer than 4 bytes")

    def string(self) -> str:
        raw = self.take(self.uint16())
        if len(raw) > MAX_FILTER_BYTES:
            raise ProtocolLimitError(f"MQTT topic filter over {MAX_FILTER_BYTES} bytes")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("MQTT string is not UTF-8") from None

    def skip_properties(self) -> None:
        self.take(self.varint())


@dataclass(frozen=True)
class MqttPacketScan(Scan):
    """Passes every message except one made of whole MQTT packets (fixed header, remaining
    length of 1-4 bytes, body) none of which is of a type in ``types``: a message that a
    :class:`PacketReader` of ``types`` between packets reads without returning a packet,
    raising or stopping inside one (its reference, mirrored in C)."""

    types: frozenset[int]
    """The packet types (1-15) the session decodes."""

    native_kind: ClassVar[str] = "TEST_MQTT_PACKETS"

    def native_items(self) -> tuple[bytes, ...]:
        return (bytes(sorted(self.types)),)

    def passes(self, payload: bytes) -> bool:
        reader = PacketReader(self.types)
        try:
            return bool(reader.feed(payload)) or not reader.at_boundary
        except ProtocolError:
            return True  # malformed: the session says so


_CLIENT_SCAN = MqttPacketScan(_CLIENT_TYPES)
_SERVER_SCAN = MqttPacketScan(_SERVER_TYPES)
_FILTERS = {
    (client_at_boundary, server_at_boundary): MessageFilter(
        client_text=EVERY,  # refused (1003)
        client_binary=_CLIENT_SCAN if client_at_boundary else EVERY,
        server_text=EVERY,
        server_binary=_SERVER_SCAN if server_at_boundary else EVERY,
    )
    for client_at_boundary in (False, True)
    for server_at_boundary in (False, True)
}
"""The session's filter by (client reader between packets, server reader between packets)."""


class MqttSession:
    """Follows one MQTT-over-WebSocket socket and reports the filters it subscribes to."""

    __slots__ = (
        "_client",
        "_filters",
        "_server",
        "_subscribes",
        "_unsubscribes",
        "max_pending",
        "max_topics",
        "version",
    )

    def __init__(
        self,
        *,
        max_topics: int = MAX_TOPICS_PER_SOCKET,
        max_pending: int = MAX_TOPICS_PER_SOCKET,
        max_packet_bytes: int = MAX_PACKET_BYTES,
    ) -> None:
        self.version: int | None = None
        """The protocol level from CONNECT (3, 4 or 5); ``None`` before it."""
        self.max_topics = max_topics
        """Subscribed filters; a SUBACK granting one more raises ``ProtocolLimitError``."""
        self.max_pending = max_pending
        """Unanswered SUBSCRIBE/UNSUBSCRIBE packets; one more raises ``ProtocolLimitError``."""
        self._client = PacketReader(_CLIENT_TYPES, max_packet_bytes)
        self._server = PacketReader(_SERVER_TYPES, max_packet_bytes)
        self._subscribes: dict[int, list[str]] = {}  # packet id -> filters awaiting SUBACK
        self._unsubscribes: dict[int, list[str]] = {}  # packet id -> filters awaiting UNSUBACK
        self._filters = SubscriptionTable()  # subscribed filter -> its topic

    @property
    def topics(self) -> frozenset[str]:
        """The topics (filters) the socket is subscribed to now."""
        return self._filters.topics

    @property
    def message_filter(self) -> MessageFilter:
        """The pre-filter of the session's state now (see protocols.prefilter): a direction
        whose reader is between packets needs only the messages holding a packet it decodes
        (or not whole packets); one inside a packet needs every message until it ends."""
        return _FILTERS[self._client.at_boundary, self._server.at_boundary]

    def client_text(self, payload: bytes) -> Sequence[ProtocolEvent]:
        raise ProtocolError("MQTT over WebSocket allows only binary messages", close_code=1003)

    server_text = client_text

    def client_binary(self, payload: bytes) -> Sequence[ProtocolEvent]:
        for kind, body in self._client.feed(payload):
            self._from_client(kind, body)
        return NO_EVENTS

    def server_binary(self, payload: bytes) -> Sequence[ProtocolEvent]:
        packets = self._server.feed(payload)
        if not packets:
            return NO_EVENTS
        events: list[ProtocolEvent] = []
        for kind, body in packets:
            self._from_server(kind, body, events)
        return events

    # ------------------------------------------------------------- logic

    def _from_client(self, kind: int, body: bytes) -> None:
        fields = _Fields(body)
        if kind == CONNECT:
            fields.take(fields.uint16())  # protocol name: "MQTT" (3.1.1, 5) or "MQIsdp" (3.1)
            level = fields.byte()
            if level not in (3, 4, 5):
                raise ProtocolError(f"unknown MQTT protocol level {level}")
            self.version = level
            return
        if self.version is None:
            raise ProtocolError("the first MQTT packet of a client must be CONNECT")
        packet_id = fields.uint16()
        if self.version == 5:
            fields.skip_properties()
        filters: list[str] = []
        while fields.left:
            filters.append(fields.string())
            if kind == SUBSCRIBE:
                fields.byte()  # subscription options / requested QoS
        table = self._subscribes if kind == SUBSCRIBE else self._unsubscribes
        if packet_id not in table and len(self._subscribes) + len(self._unsubscribes) >= (
            self.max_pending
        ):
            raise ProtocolLimitError(f"more than {self.max_pending} unanswered MQTT requests")
        table[packet_id] = filters

    def _from_server(self, kind: int, body: bytes, events: list[ProtocolEvent]) -> None:
        fields = _Fields(body)
        packet_id = fields.uint16()
        if kind == SUBACK:
            filters = self._subscribes.pop(packet_id, None)
            if filters is None:
                return
            if self.version == 5:
                fields.skip_properties()
            codes = fields.take(fields.left)
            if len(codes) < len(filters):
                raise ProtocolError("MQTT SUBACK has fewer return codes than the SUBSCRIBE")
            for name, code in zip(filters, codes, strict=False):
                if code < 0x80:
                    self._subscribe(name, events)
            return
        filters = self._unsubscribes.pop(packet_id, None)
        if filters is None:
            return
        if self.version == 5:
            fields.skip_properties()
            codes = fields.take(fields.left)
            if len(codes) < len(filters):
                raise ProtocolError("MQTT UNSUBACK has fewer reason codes than the UNSUBSCRIBE")
            filters = [name for name, code in zip(filters, codes, strict=False) if code < 0x80]
        for name in filters:
            self._unsubscribe(name, events)

    def _subscribe(self, name: str, events: list[ProtocolEvent]) -> None:
        if name in self._filters:
            return  # a re-subscription replaces the subscription: still one
        topic = normalize_topic(name)
        if topic is None:
            return
        if len(self._filters) >= self.max_topics:
            raise ProtocolLimitError(f"more than {self.max_topics} MQTT subscriptions")
        self._filters.add(name, topic, events)

    def _unsubscribe(self, name: str, events: list[ProtocolEvent]) -> None:
        self._filters.remove(name, "unsubscribe", events)


def _new_session(request: RequestHead, response: ResponseHead) -> MqttSession:
    return MqttSession()


SPEC = ProtocolSpec(
    name="mqtt",
    summary="MQTT 3.1.1/5 over WebSocket: the topic filters granted in SUBACK",
    factory=_new_session,
)
"""The ``mqtt`` rule."""
