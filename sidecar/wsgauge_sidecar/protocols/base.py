"""The interface every frame protocol session implements, and its events.

A session follows one WebSocket. It is pure and sans-I/O (no asyncio, no
clock): the relay reassembles the messages of each direction with
:class:`wsgauge_sidecar.wsframes.MessageReader` (control frames are not
passed on; text payloads are valid UTF-8) and calls exactly one of

* ``client_text(payload)`` / ``server_text(payload)`` for a text message,
* ``client_binary(payload)`` / ``server_binary(payload)`` for a binary message,

in the order the messages went through the proxy. Each call returns the
events the message caused, in order: :class:`Joined` (the socket is now in
``topic``) and :class:`Left` (it no longer is). A session never reports a
topic twice without a :class:`Left` in between and never leaves a topic it is
not in, so the relay applies events to the counter as they come. When the
socket ends the counter drops all its topics at once: a session does not have
to report them.

Pre-filter: every call is made for every relayed message, so each method
first decides cheaply, on the raw bytes, whether the message *can* change the
socket's topics (a substring test such as ``b"phx_" in payload``) and returns
:data:`NO_EVENTS` without decoding when it cannot. The filter must never miss
a message that decoding would act on (the fuzz tests of each protocol check
that the filtered and the fully decoding paths follow the same topics).

The same filter as data, for the native relay:
:class:`~wsgauge_sidecar.protocols.prefilter.MessageFilter` names, per direction
and message type, byte needles (substrings) or a scan of the message's packets
(MQTT, STOMP) or first bytes (Socket.IO); a message that does not pass is one the
session would return :data:`NO_EVENTS` for without changing its state. The
spec's :attr:`ProtocolSpec.message_filter` is the wide filter (passing every
message any state of the session may need); a session's ``message_filter``
property is the filter of its state now (passing no more than the wide one: e.g.
Phoenix's ``phx_reply`` only while a join awaits its reply; an MQTT reader's
packet scan only between packets). The
native relay hands the session only the messages that pass it; it may hand more
(the session filters again), never fewer.

Errors: the only exception a session raises is
:class:`wsgauge_sidecar.exceptions.ProtocolError` (or a subclass); its
``close_code`` ends that one socket (1007 for a malformed message of the
protocol, 1003 for a message type the protocol forbids, 1008 when the socket
goes past a per-socket bound, which is the only way to stay exact). Anything
else escaping a session is a bug.

Topic names are what the wire names, cut to :data:`MAX_TOPIC_LENGTH`
characters by :func:`normalize_topic`; an empty name is no topic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from wsgauge_sidecar.httpwire import RequestHead, ResponseHead
from wsgauge_sidecar.protocols.prefilter import EVERY_MESSAGE, MessageFilter

MAX_TOPIC_LENGTH = 200
"""Topic names are cut to this many characters (keeps labels and documents bounded)."""

MAX_TOPICS_PER_SOCKET = 1000
"""Default bound on the topics one socket may be in (and on its pending subscriptions)."""


@dataclass(frozen=True)
class Joined:
    """The socket is now in ``topic``."""

    topic: str


@dataclass(frozen=True)
class Left:
    """The socket left ``topic``; ``reason`` says why (protocol-specific, e.g. ``leave``)."""

    topic: str
    reason: str


ProtocolEvent = Joined | Left
"""What a message changed in the socket's topics."""

NO_EVENTS: Sequence[ProtocolEvent] = ()
"""The answer for a message that changes nothing (shared, never mutated)."""


class SubscriptionTable:
    """A socket's subscriptions by key (an id or a filter) and the topics they put it in: a
    topic is joined with its first subscription and left with its last. The sessions whose
    protocols name subscriptions by key (GraphQL operations, STOMP ids, MQTT filters) keep one;
    limits stay with the session (their messages name the protocol)."""

    __slots__ = ("_refs", "_topics")

    def __init__(self) -> None:
        self._topics: dict[str, str] = {}  # key -> topic
        self._refs: dict[str, int] = {}  # topic -> subscriptions in it

    def __len__(self) -> int:
        return len(self._topics)

    def __contains__(self, key: object) -> bool:
        return key in self._topics

    def key_list(self) -> list[str]:
        """The subscription keys, oldest first (a copy: safe to remove while iterating)."""
        return list(self._topics)

    def items(self) -> list[tuple[str, str]]:
        """``(key, topic)`` pairs, oldest first (a copy)."""
        return list(self._topics.items())

    @property
    def topics(self) -> frozenset[str]:
        """The topics the socket is in now."""
        return frozenset(self._refs)

    def add(self, key: str, topic: str, events: list[ProtocolEvent]) -> None:
        """Subscribe ``key`` to ``topic`` (``key`` must be new); :class:`Joined` on the first."""
        self._topics[key] = topic
        count = self._refs.get(topic, 0)
        self._refs[topic] = count + 1
        if not count:
            events.append(Joined(topic))

    def remove(self, key: str, reason: str, events: list[ProtocolEvent]) -> None:
        """End ``key``'s subscription, if any; :class:`Left` with ``reason`` on the last."""
        topic = self._topics.pop(key, None)
        if topic is None:
            return
        count = self._refs[topic] - 1
        if count:
            self._refs[topic] = count
        else:
            del self._refs[topic]
            events.append(Left(topic, reason))


class ProtocolSession(Protocol):
    """Follows one WebSocket of a frame protocol (see the module docstring)."""

    @property
    def topics(self) -> frozenset[str]:
        """The topics the socket is in now."""
        ...

    @property
    def message_filter(self) -> MessageFilter:
        """The messages that may change the topics in the session's state now (see the
        module docstring); within its spec's :attr:`ProtocolSpec.message_filter`."""
        ...

    def client_text(self, payload: bytes) -> Sequence[ProtocolEvent]:
        """A client-to-server text message (valid UTF-8)."""
        ...

    def server_text(self, payload: bytes) -> Sequence[ProtocolEvent]:
        """A server-to-client text message (valid UTF-8)."""
        ...

    def client_binary(self, payload: bytes) -> Sequence[ProtocolEvent]:
        """A client-to-server binary message."""
        ...

    def server_binary(self, payload: bytes) -> Sequence[ProtocolEvent]:
        """A server-to-client binary message."""
        ...


def normalize_topic(name: str | None) -> str | None:
    """Cut a topic name to :data:`MAX_TOPIC_LENGTH`; an empty name (or ``None``) is ``None``."""
    if not name:
        return None
    return name[:MAX_TOPIC_LENGTH]


SessionFactory = Callable[[RequestHead, ResponseHead], ProtocolSession]
"""Creates the session of one socket from its upgrade request and the app's 101 answer
(the request target, e.g. Phoenix's ``vsn``; the accepted ``Sec-WebSocket-Protocol``)."""


@dataclass(frozen=True)
class ProtocolSpec:
    """A frame protocol as a ``--topic`` rule: its name, help line and session factory."""

    name: str
    """The ``--topic`` value (``phoenix``)."""
    summary: str
    """One line for ``--help`` (what counts as being in a topic)."""
    factory: SessionFactory
    """Creates the session of one socket."""
    message_filter: MessageFilter = EVERY_MESSAGE
    """The wide filter: every message any session state may need (the native relay hands the
    session every message passing it while the session's narrower filter is not yet known)."""
    strip_extensions: bool = True
    """Remove ``Sec-WebSocket-Extensions`` from upgrades, so that permessage-deflate is never
    negotiated and every message reaches the session uncompressed."""
