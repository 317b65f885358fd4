"""The Pusher channels protocol (Pusher, Soketi, Laravel Reverb): a socket's channels.

Pure and sans-I/O, a :class:`wsgauge_sidecar.protocols.base.ProtocolSession`.

Protocol facts relied on (Pusher's "Pusher Channels Protocol" reference, protocol
7, as pusher-js speaks it): every message is a JSON object with ``event``,
``data`` and (server events on a channel) ``channel``.

* Client ``{"event": "pusher:subscribe", "data": {"channel": C, "auth"?: ...}}``
  and ``{"event": "pusher:unsubscribe", "data": {"channel": C}}``; ``data`` may
  also arrive as a JSON-encoded string of that object.
* Server ``{"event": "pusher_internal:subscription_succeeded", "channel": C,
  "data": ...}`` when the subscription is accepted, ``pusher:subscription_error``
  (with ``channel``) when it is refused (bad auth), and no answer to an
  unsubscribe.

Counting rules: a channel is in the socket's topics from the server's
``pusher_internal:subscription_succeeded`` for it until the client's
``pusher:unsubscribe`` of it (or the socket's end). A refused or unanswered
subscription is never counted; a second success for a channel already counted
changes nothing. The topic is the channel name as sent
(``private-chat.1``, ``presence-room``).

What the wire cannot show: a server-side unsubscription (Pusher has no such
event; the app's own ``pusher:...`` events are opaque) and presence members
other than this socket.

Pre-filter: a client message is decoded only if it contains
``pusher:unsubscribe`` or ``\\u``; a server message only if it contains
``subscription_succeeded`` or ``\\u`` (JSON spells those names otherwise only
with ``\\u`` escapes). Other events (client events, channel events, pings) are
relayed undecoded.

Errors: an inspected message that is not a JSON object (1007); more than
``max_channels`` channels (1008). Binary messages are not part of the
protocol and are ignored.
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
from wsgauge_sidecar.protocols.prefilter import MessageFilter

SUBSCRIBED = "pusher_internal:subscription_succeeded"
UNSUBSCRIBE = "pusher:unsubscribe"


FILTER = MessageFilter(
    client_text=(b"pusher:unsubscribe", b"\\u"), server_text=(b"subscription_succeeded", b"\\u")
)
"""The pre-filter as data."""


class PusherSession:
    """Follows one Pusher socket and reports the channels it is subscribed to."""

    __slots__ = ("_channels", "max_channels")

    def __init__(self, *, max_channels: int = MAX_TOPICS_PER_SOCKET) -> None:
        self.max_channels = max_channels
        """Subscribed channels; one more raises ``ProtocolLimitError``."""
        self._channels: set[str] = set()

    @property
    def topics(self) -> frozenset[str]:
        """The channels the socket is subscribed to now."""
        return frozenset(self._channels)

    @property
    def message_filter(self) -> MessageFilter:
        """The pre-filter of the session's state now, as needles (see protocols.base)."""
        return FILTER

    def client_text(self, payload: bytes) -> Sequence[ProtocolEvent]:
        if b"pusher:unsubscribe" in payload or b"\\u" in payload:
            return self.client_message(payload)
        return NO_EVENTS

    def server_text(self, payload: bytes) -> Sequence[ProtocolEvent]:
        if b"subscription_succeeded" in payload or b"\\u" in payload:
            return self.server_message(payload)
        return NO_EVENTS

    def client_binary(self, payload: bytes) -> Sequence[ProtocolEvent]:
        return NO_EVENTS

    server_binary = client_binary

    # ------------------------------------------------------ full decoding

    def client_message(self, payload: bytes) -> Sequence[ProtocolEvent]:
        """A client message, always decoded."""
        message = _decode(payload)
        if message.get("event") != UNSUBSCRIBE:
            return NO_EVENTS
        data = message.get("data")
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except (ValueError, RecursionError):
                return NO_EVENTS
        channel = data.get("channel") if isinstance(data, dict) else None
        topic = normalize_topic(channel) if isinstance(channel, str) else None
        if topic is None or topic not in self._channels:
            return NO_EVENTS
        self._channels.discard(topic)
        return [Left(topic, "unsubscribe")]

    def server_message(self, payload: bytes) -> Sequence[ProtocolEvent]:
        """A server message, always decoded."""
        message = _decode(payload)
        if message.get("event") != SUBSCRIBED:
            return NO_EVENTS
        channel = message.get("channel")
        topic = normalize_topic(channel) if isinstance(channel, str) else None
        if topic is None or topic in self._channels:
            return NO_EVENTS
        if len(self._channels) >= self.max_channels:
            raise ProtocolLimitError(f"more than {self.max_channels} Pusher channels")
        self._channels.add(topic)
        return [Joined(topic)]


def _decode(payload: bytes) -> dict[str, object]:
    try:
        message = json.loads(payload)
    except (ValueError, RecursionError):
        raise ProtocolError("Pusher message is not valid JSON") from None
    if not isinstance(message, dict):
        raise ProtocolError("Pusher message must be a JSON object")
    return message


def _new_session(request: RequestHead, response: ResponseHead) -> PusherSession:
    return PusherSession()


SPEC = ProtocolSpec(
    name="pusher",
    summary="Pusher channels (Pusher, Soketi, Reverb): channels from\n"
    "pusher_internal:subscription_succeeded until pusher:unsubscribe",
    factory=_new_session,
    message_filter=FILTER,
)
"""The ``pusher`` rule."""
