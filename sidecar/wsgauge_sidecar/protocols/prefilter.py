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
* :class:`MqttPacketScan`: every message except one made of whole MQTT packets
  none of which has a wanted type;
* :class:`StompFrameScan`: every message except one made of whole STOMP frames
  (EOLs between them) none of which has a wanted command.

The two scans read a message as the start of a packet or frame, so a session
uses them only while its own reader of that direction is between packets
(frames); a message split across WebSocket messages makes the scan pass the
message, and the session then passes every message of that direction until its
reader is between packets again. A scan passes every message it cannot read to
the end (a malformed packet included), so the session's own checks see it.
"""

from __future__ import annotations

from dataclasses import dataclass

EVERY: tuple[bytes, ...] = (b"",)
"""Needles that match every message (the empty needle is in every payload)."""


@dataclass(frozen=True)
class PrefixSkip:
    """Passes every message except those starting with one of ``prefixes``."""

    prefixes: tuple[bytes, ...]
    """Message starts that never change the socket's topics (and need no check)."""

    def passes(self, payload: bytes) -> bool:
        """Whether the message passes (the pure-Python reference of the native test)."""
        return not payload.startswith(self.prefixes)


@dataclass(frozen=True)
class MqttPacketScan:
    """Passes every message except one made of whole MQTT packets (fixed header, remaining
    length of 1-4 bytes, body) none of which is of a type in ``types``."""

    types: frozenset[int]
    """The packet types (1-15) the session decodes."""

    def passes(self, payload: bytes) -> bool:
        """Whether the message passes (the pure-Python reference of the native test)."""
        position, size = 0, len(payload)
        while position < size:
            kind = payload[position] >> 4
            if kind == 0 or kind in self.types:
                return True  # reserved type 0 is malformed: the session says so
            at, length, shift = position + 1, 0, 0
            while True:
                if at - position == 5 or at >= size:
                    return True  # a remaining length over 4 bytes, or a header cut
                byte = payload[at]
                at += 1
                length |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            if length > size - at:
                return True  # the packet goes on in a later message
            position = at + length
        return False


@dataclass(frozen=True)
class StompFrameScan:
    """Passes every message except one made of whole STOMP frames (command line, headers, empty
    line, a body ended by NUL or sized by ``content-length``), with any EOLs between them, none
    of which has a command in ``commands``."""

    commands: tuple[bytes, ...]
    """The commands the session decodes (``SUBSCRIBE``, ``ERROR``, ...)."""

    def passes(self, payload: bytes) -> bool:
        """Whether the message passes (the pure-Python reference of the native test)."""
        position, size = 0, len(payload)
        while position < size:
            while position < size and payload[position] in b"\r\n":
                position += 1
            if position >= size:
                return False
            end = payload.find(b"\n\n", position)
            crlf = payload.find(b"\n\r\n", position, end if end >= 0 else size)
            if crlf >= 0:
                end, body = crlf, crlf + 3
            elif end >= 0:
                body = end + 2
            else:
                return True  # the headers go on in a later message
            head = payload[position:end]
            if head.partition(b"\n")[0].rstrip(b"\r") in self.commands:
                return True
            at = head.find(b"\ncontent-length:")
            if at >= 0:
                value = head[at + 16 :].split(b"\n", 1)[0].strip(b"\r \t")
                if not value.isdigit() or len(value) > 18 or int(value) >= size - body:
                    return True  # malformed (the session says so), or the body is cut
                stop = body + int(value)
                if payload[stop] != 0:
                    return True  # a body longer than its content-length: malformed
            else:
                stop = payload.find(b"\0", body)
                if stop < 0:
                    return True
            position = stop + 1
        return False


MessageTest = tuple[bytes, ...] | PrefixSkip | MqttPacketScan | StompFrameScan
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
