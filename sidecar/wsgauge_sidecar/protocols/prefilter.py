"""The pre-filter language: which relayed messages may change a socket's topics.

A protocol session says, per direction and message type, which messages it must
see (:class:`MessageFilter`); the native relay (``native_relay.c``) applies the
same tests in C and hands Python only the messages that pass, and the pure-Python
``passes`` methods here are the reference the C code is fuzzed against. A test is
one of:

* needles, a tuple of byte strings: the message contains one of them (the empty
  needle, :data:`EVERY`, is in every message; an empty tuple passes none);
* :class:`PrefixSkip`: every message except those starting with a skip prefix
  (Socket.IO: the packet types that never change namespaces);
* ``MqttPacketScan`` (``protocols.mqtt``): every message except one made of whole
  MQTT packets none of which has a wanted type;
* ``StompFrameScan`` (``protocols.stomp``): every message except one made of whole
  STOMP frames (EOLs between them) none of which has a wanted command.

The references of these two are the sessions' own packet and frame readers, fed
the message from a packet boundary. The two scans read a message as the start of
a packet or frame, so a session
uses them only while its own reader of that direction is between packets
(frames); a message split across WebSocket messages makes the scan pass the
message, and the session then passes every message of that direction until its
reader is between packets again. A scan passes every message it cannot read to
the end (a malformed packet included), so the session's own checks see it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

EVERY: tuple[bytes, ...] = (b"",)
"""Needles that match every message (the empty needle is in every payload)."""


class Scan:
    """A test the native relay runs as one of its scans (a frozen dataclass in each subclass,
    so filters stay hashable)."""

    native_kind: ClassVar[str]
    """The native module's constant of the scan (``TEST_PREFIX_SKIP``, ...)."""

    def native_items(self) -> tuple[bytes, ...]:
        """The byte strings the native scan takes (prefixes, commands, packet types)."""
        raise NotImplementedError

    def passes(self, payload: bytes) -> bool:
        """Whether the message passes (the pure-Python reference of the native scan)."""
        raise NotImplementedError


@dataclass(frozen=True)
class PrefixSkip(Scan):
    """Passes every message except those starting with one of ``prefixes``."""

    prefixes: tuple[bytes, ...]
    """Message starts that never change the socket's topics (and need no check)."""

    native_kind: ClassVar[str] = "TEST_PREFIX_SKIP"

    def native_items(self) -> tuple[bytes, ...]:
        return self.prefixes

    def passes(self, payload: bytes) -> bool:
        return not payload.startswith(self.prefixes)


MessageTest = tuple[bytes, ...] | Scan
"""What one direction and message type of a :class:`MessageFilter` passes."""


def message_passes(test: MessageTest, payload: bytes) -> bool:
    """Whether ``payload`` passes ``test`` (the pure-Python reference of the native filter)."""
    if isinstance(test, tuple):
        return any(needle in payload for needle in test)
    return test.passes(payload)


@dataclass(frozen=True)
class MessageFilter:
    """Which messages may change a socket's topics, per direction and message type (see the
    module docstring). Hashable: the native relay interns each filter once."""

    client_text: MessageTest = ()
    """Client-to-server text messages."""
    client_binary: MessageTest = ()
    """Client-to-server binary messages."""
    server_text: MessageTest = ()
    """Server-to-client text messages."""
    server_binary: MessageTest = ()
    """Server-to-client binary messages."""

    def test(self, *, from_client: bool, binary: bool) -> MessageTest:
        """The test of one direction and message type."""
        if from_client:
            return self.client_binary if binary else self.client_text
        return self.server_binary if binary else self.server_text

    def wants(self, payload: bytes, *, from_client: bool, binary: bool) -> bool:
        """Whether a message passes (the pure-Python reference of the native filter)."""
        return message_passes(self.test(from_client=from_client, binary=binary), payload)


EVERY_MESSAGE = MessageFilter(EVERY, EVERY, EVERY, EVERY)
"""The filter that passes every data message (a session that reads them all)."""
