"""Phoenix channels protocol reader: which topics a proxied socket is in.

Pure and sans-I/O, a :class:`wsgauge_sidecar.protocols.base.ProtocolSession`:
the relay feeds every message of a ``phoenix`` socket (reassembled by
:class:`wsgauge_sidecar.wsframes.MessageReader`) to one :class:`PhoenixSession`
and applies the returned events (:class:`Joined`, :class:`Left`) to the
counter. Messages are relayed unchanged.

Protocol facts relied on (checked against the Phoenix source, phoenixframework/phoenix):

* Serializers, ``lib/phoenix/socket/serializers/``: V1 (``vsn=1.0.0``) sends
  objects ``{"topic", "event", "payload", "ref"}`` (``encode_v1_fields_only``
  takes exactly these keys; a client may add ``join_ref``); V2 (``vsn=2.0.0``,
  the JS client's ``DEFAULT_VSN``) sends arrays ``[join_ref, ref, topic, event,
  payload]`` (``decode_text`` accepts trailing extra elements). The server
  falls back to ``"1.0.0"`` when the query has no ``vsn``.
* Replies (``encode!(%Reply{})``): event ``phx_reply`` with payload
  ``{"status": "ok" | "error", "response": ...}`` and the ``ref`` (and in V2 the
  ``join_ref``) of the message answered. A ``phx_join`` of an unmatched topic
  gets status ``error`` without a join_ref.
* Lifecycle events (``assets/js/phoenix/constants.js`` ``CHANNEL_EVENTS``):
  ``phx_join``, ``phx_leave``, ``phx_reply``, ``phx_close``, ``phx_error``.
  The server (``lib/phoenix/socket.ex``) sends ``phx_close`` when a channel
  stops normally (e.g. after a leave) and ``phx_error`` when it crashes, both
  with ``ref = join_ref`` of that channel (so in V1 the join_ref travels in
  ``ref``, and is ``null`` for V1 clients that send none). A ``phx_leave`` is
  honoured only if its join_ref is the channel's or ``null``.
* A duplicate ``phx_join`` for a joined topic makes the server close the old
  channel and answer the new join; the old channel's ``phx_close`` (old
  join_ref) may arrive *after* the new join's ok reply. The JS client drops
  lifecycle events whose join_ref is not the channel's current one
  (``Channel.isMember``); so do we. Heartbeats use topic ``phoenix``, which is
  never counted.
* Binary frames (V2 only): client push ``<<0, join_ref_size, ref_size,
  topic_size, event_size, join_ref, ref, topic, event, data>>``, server reply
  ``<<1, join_ref_size, ref_size, topic_size, status_size, ...>>``, server push
  ``<<0, join_ref_size, topic_size, event_size, ...>>`` and broadcast ``<<2,
  topic_size, event_size, ...>>`` (``Phoenix.Socket.V2.JSONSerializer``).
* Supabase Realtime (``@supabase/realtime-js`` ``serializer.ts``) adds two binary
  kinds for user broadcasts: the client's ``<<3, join_ref_size, ref_size,
  topic_size, event_size, metadata_size, encoding, join_ref, ref, topic, event,
  metadata, payload>>`` and the server's ``<<4, topic_size, event_size,
  metadata_size, encoding, topic, event, metadata, payload>>``. Neither changes
  topics; both pass (their headers checked). Supabase topics are
  ``realtime:NAME`` and count like any other.

Counting rules: a topic is joined when the server's ``phx_reply`` with status
``ok`` answers a pending ``phx_join`` (same topic and ref); it is left on the
client's ``phx_leave`` (at once: the server always honours it) and on a server
``phx_close`` or ``phx_error`` for the current join_ref. A rejoin of a joined
topic is not counted twice. Topic names are cut to 200 characters
(:func:`wsgauge_sidecar.protocols.base.normalize_topic`); two topics equal in their
first 200 characters count as one.

Inspected messages: the proxy feeds text messages through the pre-filters
:meth:`PhoenixSession.client_text` and :meth:`PhoenixSession.server_text`,
which fully decode only the messages that can change the socket's topics: a
client message containing ``phx_`` (``phx_join``, ``phx_leave``), a server
message containing ``phx_close`` or ``phx_error``, or ``phx_reply`` while a
join awaits its reply, and any message containing a backslash (JSON can spell
``phx_...`` without those bytes only with a ``\\u`` escape, so the filter never
misses a lifecycle event). Every other message
(pushes, broadcasts, heartbeats, replies when no join is pending) gives the
same events (none) either way and is relayed without being decoded, so its JSON
is not validated. Binary messages are always decoded.

Compression: in ``phoenix`` mode the proxy removes ``Sec-WebSocket-Extensions``
from the upgrade request, so permessage-deflate is never negotiated; any frame
with an RSV bit set is then a protocol error (close code 1002) in the frame
reader, and this module only ever sees plain text.

Memory is bounded per socket, and the counts stay exact within the bounds: at
most ``max_pending_joins`` (:data:`MAX_PENDING_JOINS`) joins awaiting their
replies, ``max_joined_topics`` (:data:`MAX_JOINED_TOPICS`) joined topics, refs
of :data:`MAX_REF_LENGTH` characters. A socket that goes past one (a further
join, the reply accepting one topic too many, a join with a longer ref) gets
:class:`PhoenixLimitError` (close code 1008): closing is the only way to stay
exact, since a join that cannot be followed would be counted wrong. Otherwise
only :class:`PhoenixProtocolError` (close code 1007) escapes, for an inspected
text that is not JSON or not of the serializer's shape.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl

from wsgauge_sidecar.exceptions import PhoenixLimitError, PhoenixProtocolError
from wsgauge_sidecar.httpwire import RequestHead, ResponseHead, split_target
from wsgauge_sidecar.protocols.base import (
    Joined,
    Left,
    ProtocolEvent,
    ProtocolSpec,
    normalize_topic,
)
from wsgauge_sidecar.protocols.prefilter import EVERY, MessageFilter

__all__ = ["SPEC", "Joined", "Left", "PhoenixEvent", "PhoenixSession", "serializer_from_query"]

Serializer = Literal["v1", "v2"]
"""The Phoenix JSON serializer in use: V1 objects or V2 arrays."""

HEARTBEAT_TOPIC = "phoenix"
"""Topic of the socket-level heartbeat; never counted."""

MAX_REF_LENGTH = 200
"""Longest ref (as text) a join may have (1008 above); longer refs elsewhere are ignored."""

MAX_PENDING_JOINS = 1000
"""Joins awaiting their replies per socket (the next one closes the socket with 1008)."""

MAX_JOINED_TOPICS = 1000
"""Joined topics per socket (a reply accepting one more closes the socket with 1008)."""

MAX_STALE_CLOSES = 8
"""Outdated closes remembered per topic (see ``PhoenixSession._expect_stale_close``)."""


PhoenixEvent = ProtocolEvent
"""What a message changed in the socket's topics (``Left.reason``: ``leave``, ``close``,
``error``)."""


@dataclass(frozen=True)
class PhoenixMessage:
    """One decoded Phoenix message (refs as sent: string, number or ``None``)."""

    join_ref: object
    ref: object
    topic: str
    event: str
    payload: object


_CLIENT_NEEDLES = (b"phx_", b"\\")
_SERVER_NEEDLES = (b"phx_close", b"phx_error", b"\\")
_REPLY_NEEDLES = (*_SERVER_NEEDLES, b"phx_reply")
FILTER = MessageFilter(_CLIENT_NEEDLES, EVERY, _SERVER_NEEDLES, EVERY)
"""The pre-filter as data (V2 or not yet known, no join pending): binary messages always."""
FILTER_JOINING = MessageFilter(_CLIENT_NEEDLES, EVERY, _REPLY_NEEDLES, EVERY)
"""As :data:`FILTER` while a join awaits its reply (the spec's wide filter)."""
FILTER_V1 = MessageFilter(_CLIENT_NEEDLES, (), _SERVER_NEEDLES, ())
"""A V1 socket: binary messages never matter."""
FILTER_V1_JOINING = MessageFilter(_CLIENT_NEEDLES, (), _REPLY_NEEDLES, ())
"""A V1 socket while a join awaits its reply."""


def serializer_from_query(target: str) -> Serializer | None:
    """The serializer a client asked for with ``vsn`` in the request target's query.

    ``vsn=2.x`` is V2, ``vsn=1.x`` is V1; anything else (or none) is ``None``:
    detect it from the first message.
    """
    _, query = split_target(target)
    for name, value in parse_qsl(query, keep_blank_values=True, errors="replace"):
        if name == "vsn":
            if value.startswith("2."):
                return "v2"
            if value.startswith("1."):
                return "v1"
            return None
    return None


def decode_text(text: str, serializer: Serializer | None) -> tuple[Serializer, PhoenixMessage]:
    """Decode one text message; the serializer is detected from the shape if ``None``."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise PhoenixProtocolError("Phoenix message is not valid JSON") from None
    if isinstance(data, list):
        if serializer == "v1":
            raise PhoenixProtocolError("V2 array message on a V1 socket")
        if len(data) < 5:
            raise PhoenixProtocolError("V2 message needs [join_ref, ref, topic, event, payload]")
        join_ref, ref, topic, event, payload = data[:5]
        found: Serializer = "v2"
    elif isinstance(data, dict):
        if serializer == "v2":
            raise PhoenixProtocolError("V1 object message on a V2 socket")
        topic, event = data.get("topic"), data.get("event")
        join_ref, ref, payload = data.get("join_ref"), data.get("ref"), data.get("payload")
        found = "v1"
    else:
        raise PhoenixProtocolError("Phoenix message must be a JSON array (V2) or object (V1)")
    if not isinstance(topic, str) or not isinstance(event, str):
        raise PhoenixProtocolError("Phoenix message topic and event must be strings")
    return found, PhoenixMessage(join_ref, ref, topic, event, payload)


def decode_binary(data: bytes, *, from_client: bool) -> PhoenixMessage | None:
    """Decode a V2 binary frame; ``None`` for a broadcast (it never changes topics).

    A reply (kind 1) is returned as event ``phx_reply`` with payload ``{"status": ...}``.
    """
    if not data:
        raise PhoenixProtocolError("empty Phoenix binary message")
    kind = data[0]
    if kind == 2 and not from_client:
        return None
    if (kind == 3 and from_client) or (kind == 4 and not from_client):
        # Supabase user broadcast (push): only its header's sizes are checked, since
        # realtime-js writes its fields one UTF-16 code unit per byte (not always UTF-8)
        count = 5 if kind == 3 else 3
        header = data[1 : 1 + count]
        if len(header) < count or len(data) < 2 + count + sum(header):
            raise PhoenixProtocolError("truncated Supabase binary message header")
        return None
    if kind == 0 and from_client:
        sizes, fields = _binary_fields(data, 4)
        join_ref, ref, topic, event = fields
        return PhoenixMessage(join_ref, ref, topic, event, data[1 + 4 + sum(sizes) :])
    if kind == 0:
        _, fields = _binary_fields(data, 3)
        join_ref, topic, event = fields
        return PhoenixMessage(join_ref, None, topic, event, None)
    if kind == 1 and not from_client:
        _, fields = _binary_fields(data, 4)
        join_ref, ref, topic, status = fields
        return PhoenixMessage(join_ref, ref, topic, "phx_reply", {"status": status})
    raise PhoenixProtocolError(f"unknown Phoenix binary message kind {kind}")


def _binary_fields(data: bytes, count: int) -> tuple[list[int], list[str]]:
    sizes = list(data[1 : 1 + count])
    if len(sizes) < count or len(data) < 1 + count + sum(sizes):
        raise PhoenixProtocolError("truncated Phoenix binary message header")
    fields: list[str] = []
    position = 1 + count
    for size in sizes:
        try:
            fields.append(data[position : position + size].decode("utf-8"))
        except UnicodeDecodeError:
            raise PhoenixProtocolError("Phoenix binary header is not UTF-8") from None
        position += size
    return sizes, fields


def encode_message(
    serializer: Serializer,
    *,
    join_ref: object,
    ref: object,
    topic: str,
    event: str,
    payload: object,
) -> str:
    """Encode one message as the given serializer does (V1 adds ``join_ref`` if not None)."""
    if serializer == "v2":
        return json.dumps([join_ref, ref, topic, event, payload], separators=(",", ":"))
    message: dict[str, object] = {"topic": topic, "event": event, "payload": payload, "ref": ref}
    if join_ref is not None:
        message["join_ref"] = join_ref
    return json.dumps(message, separators=(",", ":"))


class PhoenixSession:
    """Follows one Phoenix socket and reports the topics it joins and leaves."""

    __slots__ = (
        "_joined",
        "_pending",
        "_pending_count",
        "_stale_closes",
        "max_joined_topics",
        "max_pending_joins",
        "serializer",
    )

    def __init__(
        self,
        serializer: Serializer | None = None,
        *,
        max_pending_joins: int = MAX_PENDING_JOINS,
        max_joined_topics: int = MAX_JOINED_TOPICS,
    ) -> None:
        self.serializer: Serializer | None = serializer
        """The serializer in use; ``None`` until detected from the first message."""
        self.max_pending_joins = max_pending_joins
        """Joins awaiting their replies; one more raises :class:`PhoenixLimitError`."""
        self.max_joined_topics = max_joined_topics
        """Joined topics; a reply accepting one more raises :class:`PhoenixLimitError`."""
        # topic -> {ref key -> join_ref key} of the phx_joins waiting for their replies
        self._pending: dict[str, dict[str, str]] = {}
        self._pending_count = 0
        # topic -> join_ref key of the channel currently joined
        self._joined: dict[str, str] = {}
        # topic -> phx_close/phx_error still expected for a channel already accounted
        # for, when its join_ref cannot tell it apart (V1 sockets without join_refs)
        self._stale_closes: OrderedDict[str, int] = OrderedDict()

    @property
    def topics(self) -> frozenset[str]:
        """The topics the socket is in now."""
        return frozenset(self._joined)

    @property
    def message_filter(self) -> MessageFilter:
        """The pre-filters of :meth:`client_text` ... :meth:`server_binary` as needles."""
        if self.serializer == "v1":
            return FILTER_V1_JOINING if self._pending else FILTER_V1
        return FILTER_JOINING if self._pending else FILTER

    # -------------------------------------------------------------- text

    def client_message(self, text: str) -> list[PhoenixEvent]:
        """A text message from the client; returns the events it causes."""
        self.serializer, message = decode_text(text, self.serializer)
        return self._from_client(message)

    def server_message(self, text: str) -> list[PhoenixEvent]:
        """A text message from the server; returns the events it causes."""
        self.serializer, message = decode_text(text, self.serializer)
        return self._from_server(message)

    # ------------------------------------------------- text, pre-filtered

    def client_text(self, payload: bytes) -> list[PhoenixEvent]:
        """A client text message (valid UTF-8 bytes), decoded only if it can be a join or leave.

        It is inspected (decoded and validated like :meth:`client_message`) only
        when it contains ``phx_`` or a backslash; any other message cannot change
        the socket's topics and is not decoded.
        """
        if b"phx_" in payload or b"\\" in payload:
            return self.client_message(payload.decode("utf-8", errors="replace"))
        return []

    def server_text(self, payload: bytes) -> list[PhoenixEvent]:
        """A server text message (valid UTF-8 bytes), decoded only if it can change topics.

        It is inspected (decoded and validated like :meth:`server_message`) only
        when it contains ``phx_close``, ``phx_error`` or a backslash, or
        ``phx_reply`` while a join awaits its reply; any other message cannot
        change the socket's topics and is not decoded.
        """
        if b"\\" not in payload:
            position = payload.find(b"phx_")
            while position >= 0:
                word = payload[position + 4 : position + 9]
                if word in (b"close", b"error") or (word == b"reply" and self._pending):
                    break
                position = payload.find(b"phx_", position + 4)
            else:
                return []
        return self.server_message(payload.decode("utf-8", errors="replace"))

    # ------------------------------------------------------------ binary

    def client_binary(self, data: bytes) -> list[PhoenixEvent]:
        """A binary message from the client (V2 binary push); ignored on V1 sockets."""
        if self.serializer == "v1":
            return []
        self.serializer = "v2"
        message = decode_binary(data, from_client=True)
        return [] if message is None else self._from_client(message)

    def server_binary(self, data: bytes) -> list[PhoenixEvent]:
        """A binary message from the server (V2 reply/push/broadcast); ignored on V1 sockets."""
        if self.serializer == "v1":
            return []
        self.serializer = "v2"
        message = decode_binary(data, from_client=False)
        return [] if message is None else self._from_server(message)

    # ------------------------------------------------------------- logic

    def _from_client(self, message: PhoenixMessage) -> list[PhoenixEvent]:
        topic = normalize_topic(message.topic)
        if topic is None or topic == HEARTBEAT_TOPIC:
            return []
        if message.event == "phx_join":
            ref, join_ref = _ref_key(message.ref), _ref_key(message.join_ref)
            if ref is None or join_ref is None:
                raise PhoenixLimitError(f"phx_join with a ref over {MAX_REF_LENGTH} characters")
            if ref not in self._pending.get(topic, ()):
                if self._pending_count >= self.max_pending_joins:
                    raise PhoenixLimitError(
                        f"more than {self.max_pending_joins} joins awaiting their replies"
                    )
                self._pending_count += 1
            self._pending.setdefault(topic, {})[ref] = join_ref
            return []
        if message.event == "phx_leave":
            join_ref = _ref_key(message.join_ref) or ""
            waiting = self._pending.get(topic)
            if waiting:
                left = [ref for ref, sent in waiting.items() if not join_ref or sent == join_ref]
                for ref in left:
                    del waiting[ref]
                    self._pending_count -= 1
                if not waiting:
                    del self._pending[topic]
            current = self._joined.get(topic)
            if current is not None and (not join_ref or current == join_ref):
                if not current:  # the phx_close that follows cannot be told apart
                    self._expect_stale_close(topic)
                return self._leave(topic, "leave")
        return []

    def _from_server(self, message: PhoenixMessage) -> list[PhoenixEvent]:
        topic = normalize_topic(message.topic)
        if topic is None or topic == HEARTBEAT_TOPIC:
            return []
        if message.event == "phx_reply":
            ref = _ref_key(message.ref)
            if ref is None:
                return []
            join_ref = self._pop_pending(topic, ref)
            if join_ref is None or _reply_status(message.payload) != "ok":
                return []
            current = self._joined.get(topic)
            if current is not None:  # rejoin: the old channel's close is still to come
                if current == join_ref:
                    self._expect_stale_close(topic)
                self._joined[topic] = join_ref
                return []
            if len(self._joined) >= self.max_joined_topics:
                raise PhoenixLimitError(f"more than {self.max_joined_topics} joined topics")
            self._joined[topic] = join_ref
            return [Joined(topic)]
        if message.event in ("phx_close", "phx_error"):
            # V2 carries the channel's join_ref in join_ref; V1 only in ref
            sent = message.join_ref if self.serializer == "v2" else message.ref
            join_ref = _ref_key(sent) or ""
            current = self._joined.get(topic)
            if join_ref and join_ref != current:
                return []  # an older channel of this topic: outdated
            stale = self._stale_closes.get(topic, 0)
            if stale:
                if stale == 1:
                    del self._stale_closes[topic]
                else:
                    self._stale_closes[topic] = stale - 1
                return []
            if current is None:
                return []
            return self._leave(topic, "close" if message.event == "phx_close" else "error")
        return []

    def _pop_pending(self, topic: str, ref: str) -> str | None:
        """The join_ref of the join of ``topic`` with ``ref`` awaiting its reply, forgotten now."""
        waiting = self._pending.get(topic)
        if waiting is None or ref not in waiting:
            return None
        join_ref = waiting.pop(ref)
        self._pending_count -= 1
        if not waiting:
            del self._pending[topic]
        return join_ref

    def _expect_stale_close(self, topic: str) -> None:
        """Remember that one phx_close/phx_error of ``topic`` is for a channel already gone."""
        self._stale_closes[topic] = min(self._stale_closes.get(topic, 0) + 1, MAX_STALE_CLOSES)
        self._stale_closes.move_to_end(topic)
        while len(self._stale_closes) > self.max_pending_joins:
            self._stale_closes.popitem(last=False)

    def _leave(self, topic: str, reason: str) -> list[PhoenixEvent]:
        del self._joined[topic]
        return [Left(topic, reason)]


def _ref_key(value: object) -> str | None:
    """A ref as comparable text ("" for none); ``None`` if it is too long to track.

    Refs compare as text because binary frames carry them as text
    (``to_string(ref)`` in the V2 serializer).
    """
    if value is None:
        return ""
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int):
        if abs(value) >= 10**MAX_REF_LENGTH:
            return None
        text = str(value)
    else:
        try:
            text = json.dumps(value, sort_keys=True)
        except (ValueError, TypeError, RecursionError):
            return None
    return text if len(text) <= MAX_REF_LENGTH else None


def _reply_status(payload: object) -> object:
    return payload.get("status") if isinstance(payload, dict) else None


def _new_session(request: RequestHead, response: ResponseHead) -> PhoenixSession:
    return PhoenixSession(serializer_from_query(request.target))


SPEC = ProtocolSpec(
    name="phoenix",
    summary="Phoenix channels (JSON v1/v2): topics joined with phx_join",
    factory=_new_session,
    message_filter=FILTER_JOINING,
)
"""The ``phoenix`` rule."""
