"""Centrifugo reader: which channels a proxied Centrifugo / Centrifuge socket is subscribed to.

Pure and sans-I/O: the proxy feeds every whole message of a ``centrifugo`` socket
to one :class:`CentrifugoSession` and applies the returned :class:`Joined` /
:class:`Left` events to the counter. Messages are relayed unchanged.

Protocol facts relied on (the Centrifugo client protocol v2, JSON format, as
spoken by ``centrifuge-js`` 3+ and Centrifugo 4+ / the Go ``centrifuge`` library):

* One WebSocket message carries one or more JSON objects separated by newlines
  (commands of the client, replies and pushes of the server, batched).
* A client command is ``{"id": N, METHOD: {...}}``; a subscription is
  ``{"id": N, "subscribe": {"channel": C, ...}}``, its end ``{"id": N,
  "unsubscribe": {"channel": C}}``. The reply carries the same ``id`` and either
  the method's result (``{"id": N, "subscribe": {...}}``) or ``{"error": {...}}``.
* The reply to ``connect`` lists the server-side subscriptions in
  ``connect.subs`` (channel -> details). Pushes ``{"push": {"channel": C,
  "subscribe": {...}}}`` and ``{"push": {"channel": C, "unsubscribe": {...}}}``
  add and remove subscriptions on the server's initiative (also for client-side
  ones: the client then resubscribes or not); a ``connect`` push (unidirectional
  transports) carries ``subs`` like the connect reply. ``{}`` is a ping / pong.

Counting rules: the socket is in topic C (the channel) from a successful reply
to its ``subscribe`` command for C (not unsubscribed before the reply), a
connect reply or push listing C in ``subs``, or a ``subscribe`` push for C,
until its ``unsubscribe`` command for C (at once), an ``unsubscribe`` push for
C, or the socket's end. A subscribe
answered with an error, or never answered, is not counted; a subscription to a
channel already held changes nothing.

Inspected messages: a client message is decoded only when it contains
``subscribe`` (``unsubscribe`` contains it) or a ``\\u`` escape; a server message
when it contains ``subscribe``, ``"subs"``, or ``"error"`` while a subscribe
awaits its reply, or a ``\\u`` escape. Publications, RPC, presence, history and
pings are relayed without being decoded. An inspected message whose lines are
not JSON objects raises :class:`ProtocolError` (close code 1007); more than
``max_pending`` subscribes awaiting replies or ``max_channels`` channels raises
:class:`ProtocolLimitError` (1008).

What the wire cannot show: the Protobuf format (``centrifuge-protobuf``
subprotocol, binary messages) is not read, so such sockets count in no topic;
the legacy protocol v1 (``{"method": 1, "params": ...}``, centrifuge-js 2) is
not counted either.

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
from wsgauge_sidecar.protocols.prefilter import MessageFilter

MAX_PENDING = MAX_TOPICS_PER_SOCKET
"""Subscribe commands awaiting their replies per socket (one more closes it with 1008)."""

MAX_CHANNELS = MAX_TOPICS_PER_SOCKET
"""Channels held per socket (one more closes it with 1008)."""


def decode_lines(payload: bytes) -> list[dict[str, object]]:
    """The JSON objects of one message (newline-separated; blank lines skipped)."""
    objects: list[dict[str, object]] = []
    for line in payload.split(b"\n"):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except (ValueError, RecursionError):
            raise ProtocolError("Centrifugo message is not valid JSON") from None
        if not isinstance(value, dict):
            raise ProtocolError("Centrifugo command or reply must be a JSON object")
        objects.append(value)
    return objects


def _channel(body: object) -> str | None:
    if isinstance(body, dict):
        channel = body.get("channel")
        if isinstance(channel, str):
            return normalize_topic(channel)
    return None


def _command_id(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**32:
        return value
    return None


_CLIENT_NEEDLES = (b"subscribe", b"\\u")
_SERVER_NEEDLES = (b"subscribe", b'"subs"', b"\\u")
FILTER = MessageFilter(client_text=_CLIENT_NEEDLES, server_text=_SERVER_NEEDLES)
"""The pre-filter as data while no subscribe awaits its reply."""
FILTER_PENDING = MessageFilter(
    client_text=_CLIENT_NEEDLES, server_text=(*_SERVER_NEEDLES, b'"error"')
)
"""The pre-filter as data while a subscribe awaits its reply (the spec's wide filter)."""


class CentrifugoSession:
    """Follows one Centrifugo JSON socket and reports the channels it is subscribed to."""

    __slots__ = ("_channels", "_pending", "max_channels", "max_pending")

    def __init__(self, *, max_pending: int = MAX_PENDING, max_channels: int = MAX_CHANNELS) -> None:
        self.max_pending = max_pending
        """Subscribes awaiting replies; one more raises the limit error."""
        self.max_channels = max_channels
        """Channels held; one more raises the limit error."""
        self._pending: dict[int, str] = {}  # command id -> channel
        self._channels: set[str] = set()

    @property
    def topics(self) -> frozenset[str]:
        """The channels the socket is subscribed to now."""
        return frozenset(self._channels)

    @property
    def message_filter(self) -> MessageFilter:
        """The pre-filter of the session's state now, as needles (see protocols.base)."""
        return FILTER_PENDING if self._pending else FILTER

    def client_text(self, payload: bytes) -> Sequence[ProtocolEvent]:
        """A client text message (commands); decoded only if it can (un)subscribe."""
        if b"subscribe" not in payload and b"\\u" not in payload:
            return NO_EVENTS
        events: list[ProtocolEvent] = []
        for command in decode_lines(payload):
            if "subscribe" in command:
                channel, command_id = _channel(command["subscribe"]), _command_id(command.get("id"))
                if channel is not None and command_id is not None:
                    if command_id not in self._pending and len(self._pending) >= self.max_pending:
                        raise ProtocolLimitError(
                            f"more than {self.max_pending} subscribes awaiting replies"
                        )
                    self._pending[command_id] = channel
            elif "unsubscribe" in command:
                channel = _channel(command["unsubscribe"])
                if channel is not None:
                    # a subscribe still awaiting its reply is over too
                    for waiting in [key for key, sent in self._pending.items() if sent == channel]:
                        del self._pending[waiting]
                    events += self._leave(channel, "leave")
        return events or NO_EVENTS

    def server_text(self, payload: bytes) -> Sequence[ProtocolEvent]:
        """A server text message (replies and pushes); decoded only if it can change channels."""
        if not (
            b"subscribe" in payload
            or b'"subs"' in payload
            or b"\\u" in payload
            or (self._pending and b'"error"' in payload)
        ):
            return NO_EVENTS
        events: list[ProtocolEvent] = []
        for reply in decode_lines(payload):
            push = reply.get("push")
            if isinstance(push, dict):
                events += self._push(push)
                continue
            command_id = _command_id(reply.get("id"))
            if command_id is None:
                continue
            if "connect" in reply:
                events += self._subs(reply["connect"])
                continue
            channel = self._pending.pop(command_id, None)
            if channel is not None and "subscribe" in reply and "error" not in reply:
                events += self._join(channel)
        return events or NO_EVENTS

    def client_binary(self, data: bytes) -> Sequence[ProtocolEvent]:
        """A binary message (Protobuf format): not read."""
        return NO_EVENTS

    def server_binary(self, data: bytes) -> Sequence[ProtocolEvent]:
        """A binary message (Protobuf format): not read."""
        return NO_EVENTS

    def _push(self, push: dict[str, object]) -> Sequence[ProtocolEvent]:
        if "connect" in push:
            return self._subs(push["connect"])
        channel = _channel(push)
        if channel is None:
            return NO_EVENTS
        if "subscribe" in push:
            return self._join(channel)
        if "unsubscribe" in push:
            return self._leave(channel, "close")
        return NO_EVENTS

    def _subs(self, result: object) -> Sequence[ProtocolEvent]:
        subs = result.get("subs") if isinstance(result, dict) else None
        events: list[ProtocolEvent] = []
        if isinstance(subs, dict):
            for name in subs:
                channel = normalize_topic(name)
                if channel is not None:
                    events += self._join(channel)
        return events or NO_EVENTS

    def _join(self, channel: str) -> Sequence[ProtocolEvent]:
        if channel in self._channels:
            return NO_EVENTS
        if len(self._channels) >= self.max_channels:
            raise ProtocolLimitError(f"more than {self.max_channels} channels")
        self._channels.add(channel)
        return [Joined(channel)]

    def _leave(self, channel: str, reason: str) -> Sequence[ProtocolEvent]:
        if channel not in self._channels:
            return NO_EVENTS
        self._channels.discard(channel)
        return [Left(channel, reason)]


def _new_session(request: RequestHead, response: ResponseHead) -> CentrifugoSession:
    return CentrifugoSession()


SPEC = ProtocolSpec(
    name="centrifugo",
    summary="Centrifugo JSON protocol: subscribed channels (client- and server-side)",
    factory=_new_session,
    message_filter=FILTER_PENDING,
)
"""The ``centrifugo`` rule (permessage-deflate is kept from being negotiated)."""
