"""Action Cable reader: which channels a proxied Rails Action Cable / AnyCable socket holds.

Pure and sans-I/O: the proxy feeds every whole message of an ``actioncable``
socket to one :class:`ActionCableSession` and applies the returned
:class:`Joined` / :class:`Left` events to the counter. Messages are relayed
unchanged.

Protocol facts relied on (``actioncable-v1-json``, ``actioncable-v1-ext-json``;
Rails ``ActionCable::Connection::Subscriptions``, ``@rails/actioncable``):

* The client sends JSON objects ``{"command": "subscribe" | "unsubscribe" |
  "message", "identifier": ID, ...}``; ``ID`` is itself a JSON object encoded as
  a string, ``{"channel": "ChatChannel", "room": "1"}``.
* The server sends ``{"type": "welcome" | "ping" | "disconnect" |
  "confirm_subscription" | "reject_subscription", ...}`` and broadcasts
  ``{"identifier": ID, "message": ...}``. A subscription exists once the server
  sent ``confirm_subscription`` for its identifier; ``reject_subscription``
  refuses it (``@rails/actioncable`` then forgets every subscription of that
  identifier). Rails refuses a second subscribe of an identifier already
  subscribed (``AlreadySubscribedError``, no second confirmation).
* Turbo Streams subscribe to ``Turbo::StreamsChannel`` with
  ``signed_stream_name``: ``BASE64(JSON(name)) + "--" + DIGEST`` (an
  ``ActiveSupport::MessageVerifier`` message); AnyCable's ``$pubsub`` channel
  takes ``stream_name`` or ``signed_stream_name`` the same way.

Counting rules: an identifier is held from the server's ``confirm_subscription``
answering a ``subscribe`` of it until the client's ``unsubscribe`` of it, a
``reject_subscription`` of it, or the socket's end; a subscribe that is rejected,
never answered, or unsubscribed before its confirmation arrives is not counted
(``@rails/actioncable`` has forgotten it too); repeated subscribes and
confirmations of an identifier already held change nothing. Identifiers are told
apart by their first :data:`MAX_IDENTIFIER_LENGTH` characters. The topic
of an identifier is its ``channel``; for ``Turbo::StreamsChannel`` and
``$pubsub``, the stream name (decoded from a signed one; when it cannot be
decoded, the channel). The socket is in topic T while it holds at least one
identifier of topic T (two rooms of ``ChatChannel`` make it one socket in
``ChatChannel``).

Inspected messages: a client message is decoded only when it contains
``subscribe`` (which ``unsubscribe`` contains too) or a ``\\u`` escape, a server
message only when it contains ``_subscription`` or a ``\\u`` escape: JSON can
spell those words only plainly or with ``\\u`` escapes, so no subscription
change is missed. Performs, broadcasts and pings are relayed without being
decoded. An inspected message that is not a JSON object raises
:class:`ProtocolError` (close code 1007); more than ``max_identifiers``
identifiers held, or awaiting confirmation, raises
:class:`ProtocolLimitError` (1008).

What the wire cannot show: the streams a channel's ``stream_from`` adds on the
server (only the subscription's identifier travels); MessagePack and Protobuf
encodings (``actioncable-v1-msgpack``, ``actioncable-v1-protobuf``): their
binary messages are not read, so such sockets count in no topic.

Compression: the proxy removes ``Sec-WebSocket-Extensions`` from the upgrade
request, so permessage-deflate is never negotiated and every message is plain.
"""

from __future__ import annotations

import base64
import binascii
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
from wsgauge_sidecar.protocols.prefilter import MessageFilter

MAX_IDENTIFIERS = MAX_TOPICS_PER_SOCKET
"""Identifiers held per socket (a confirmation of one more closes the socket with 1008)."""

MAX_IDENTIFIER_LENGTH = 4096
"""Identifiers are told apart by their first this many characters (bounds memory)."""

STREAM_CHANNELS = frozenset({"Turbo::StreamsChannel", "$pubsub"})
"""Channels whose topic is the stream name carried in the identifier."""


def topic_of_identifier(identifier: str) -> str | None:
    """The topic an identifier counts under (see the module docstring); ``None`` if none."""
    try:
        params = json.loads(identifier)
    except (ValueError, RecursionError):
        return None
    if not isinstance(params, dict):
        return None
    channel = params.get("channel")
    if not isinstance(channel, str):
        return None
    if channel in STREAM_CHANNELS:
        signed = params.get("signed_stream_name")
        if isinstance(signed, str):
            name = decode_signed_stream_name(signed)
            if name is not None:
                return normalize_topic(name)
        plain = params.get("stream_name")
        if isinstance(plain, str) and plain:
            return normalize_topic(plain)
    return normalize_topic(channel)


def decode_signed_stream_name(signed: str) -> str | None:
    """The stream name inside a Turbo/AnyCable signed stream name, or ``None``.

    The signature is not checked (the sidecar has no key, and the server checks
    it before confirming): the name is only read.
    """
    data, separator, _ = signed.rpartition("--")
    if not separator or not data:
        return None
    padded = data + "=" * (-len(data) % 4)
    try:
        raw = base64.b64decode(padded, altchars=b"-_" if "-" in data or "_" in data else None)
        value = json.loads(raw)
    except (ValueError, binascii.Error, RecursionError):
        return None
    if isinstance(value, dict):  # Rails 7.1+ metadata envelope: {"_rails": {"data": ...}}
        envelope = value.get("_rails")
        value = envelope.get("data") if isinstance(envelope, dict) else None
    return value if isinstance(value, str) and value else None


def _decode(payload: bytes) -> dict[str, object]:
    try:
        message = json.loads(payload)
    except (ValueError, RecursionError):
        raise ProtocolError("Action Cable message is not valid JSON") from None
    if not isinstance(message, dict):
        raise ProtocolError("Action Cable message must be a JSON object")
    return message


FILTER = MessageFilter(client_text=(b"subscribe", b"\\u"), server_text=(b"_subscription", b"\\u"))
"""The pre-filter as data."""


class ActionCableSession:
    """Follows one Action Cable socket and reports the topics of the identifiers it holds."""

    __slots__ = ("_held", "_members", "_pending", "max_identifiers")

    def __init__(self, *, max_identifiers: int = MAX_IDENTIFIERS) -> None:
        self.max_identifiers = max_identifiers
        """Identifiers held; a confirmation of one more raises the limit error."""
        self._pending: set[str] = set()  # identifiers subscribed to, not yet confirmed
        self._held: dict[str, str | None] = {}  # identifier -> its topic
        self._members: dict[str, int] = {}  # topic -> identifiers held in it

    @property
    def topics(self) -> frozenset[str]:
        """The topics the socket is in now."""
        return frozenset(self._members)

    @property
    def message_filter(self) -> MessageFilter:
        """The pre-filter of the session's state now, as needles (see protocols.base)."""
        return FILTER

    def client_text(self, payload: bytes) -> Sequence[ProtocolEvent]:
        """A client text message; decoded only if it can be a subscribe or unsubscribe."""
        if b"subscribe" not in payload and b"\\u" not in payload:
            return NO_EVENTS
        message = _decode(payload)
        command, identifier = message.get("command"), message.get("identifier")
        if not isinstance(identifier, str):
            return NO_EVENTS
        key = identifier[:MAX_IDENTIFIER_LENGTH]
        if command == "subscribe":
            if key not in self._pending and len(self._pending) >= self.max_identifiers:
                raise ProtocolLimitError(
                    f"more than {self.max_identifiers} subscribes awaiting confirmation"
                )
            self._pending.add(key)
        elif command == "unsubscribe":
            self._pending.discard(key)
            return self._release(key, "leave")
        return NO_EVENTS

    def server_text(self, payload: bytes) -> Sequence[ProtocolEvent]:
        """A server text message; decoded only if it can be a confirmation or rejection."""
        if b"_subscription" not in payload and b"\\u" not in payload:
            return NO_EVENTS
        message = _decode(payload)
        kind, identifier = message.get("type"), message.get("identifier")
        if not isinstance(identifier, str):
            return NO_EVENTS
        key = identifier[:MAX_IDENTIFIER_LENGTH]
        if kind == "confirm_subscription":
            if key not in self._pending:
                return NO_EVENTS  # unsubscribed before the confirmation, or never asked for
            self._pending.discard(key)
            return self._hold(key)
        if kind == "reject_subscription":
            self._pending.discard(key)
            return self._release(key, "error")
        return NO_EVENTS

    def client_binary(self, data: bytes) -> Sequence[ProtocolEvent]:
        """A binary message (MessagePack/Protobuf encodings): not read."""
        return NO_EVENTS

    def server_binary(self, data: bytes) -> Sequence[ProtocolEvent]:
        """A binary message (MessagePack/Protobuf encodings): not read."""
        return NO_EVENTS

    def _hold(self, key: str) -> Sequence[ProtocolEvent]:
        if key in self._held:
            return NO_EVENTS
        if len(self._held) >= self.max_identifiers:
            raise ProtocolLimitError(f"more than {self.max_identifiers} subscriptions")
        topic = topic_of_identifier(key)
        self._held[key] = topic
        if topic is None:
            return NO_EVENTS
        count = self._members.get(topic, 0)
        self._members[topic] = count + 1
        return [Joined(topic)] if count == 0 else NO_EVENTS

    def _release(self, key: str, reason: str) -> Sequence[ProtocolEvent]:
        if key not in self._held:
            return NO_EVENTS
        topic = self._held.pop(key)
        if topic is None:
            return NO_EVENTS
        count = self._members[topic] - 1
        if count:
            self._members[topic] = count
            return NO_EVENTS
        del self._members[topic]
        return [Left(topic, reason)]


def _new_session(request: RequestHead, response: ResponseHead) -> ActionCableSession:
    return ActionCableSession()


SPEC = ProtocolSpec(
    name="actioncable",
    summary=(
        "Rails Action Cable / AnyCable JSON: the channel of each confirmed\n"
        "subscription (Turbo Streams: the stream name)"
    ),
    factory=_new_session,
    message_filter=FILTER,
)
"""The ``actioncable`` rule (permessage-deflate is kept from being negotiated)."""
