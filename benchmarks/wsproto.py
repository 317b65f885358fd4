"""Minimal RFC 6455 pieces for the benchmark's own client and echo server.

Only what a fast load generator and a fast echo server need: the handshake keys,
encoding a (masked or unmasked) frame, unmasking, and two incremental readers
over a byte stream: :class:`FrameCounter` counts complete frames without copying
their payloads (the client only needs to know that a reply arrived), and
:class:`FrameReader` returns whole frames with unmasked payloads (the echo
server). Neither handles extensions: the benchmark never negotiates any.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
"""The fixed GUID of the ``Sec-WebSocket-Accept`` computation."""

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

HEAD_END = b"\r\n\r\n"


def accept_key(key: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` value answering the client's ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1(key.strip() + GUID).digest())


def handshake_request(host: str, port: int, target: str) -> tuple[bytes, bytes]:
    """An upgrade request for ``target`` and the accept value its 101 answer must carry."""
    key = base64.b64encode(os.urandom(16))
    request = (
        f"GET {target} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key.decode()}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "\r\n"
    ).encode()
    return request, accept_key(key)


def unmask(payload: bytes, key: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte masking ``key`` (its own inverse)."""
    size = len(payload)
    if size == 0:
        return payload
    repeated = (key * (size // 4 + 1))[:size]
    value = int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")
    return value.to_bytes(size, "big")


def encode_frame(payload: bytes, opcode: int = OP_TEXT, mask_key: bytes | None = None) -> bytes:
    """One final frame; masked with ``mask_key`` (4 bytes) when given (client to server)."""
    size = len(payload)
    mask_bit = 0x80 if mask_key is not None else 0
    if size < 126:
        head = struct.pack("!BB", 0x80 | opcode, mask_bit | size)
    elif size < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, mask_bit | 126, size)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, mask_bit | 127, size)
    if mask_key is None:
        return head + payload
    return head + mask_key + unmask(payload, mask_key)


def new_mask_key() -> bytes:
    """A random, non-zero masking key."""
    while True:
        key = os.urandom(4)
        if key != b"\0\0\0\0":
            return key


def _header_size(first_two: bytes | bytearray) -> int:
    length = first_two[1] & 0x7F
    size = 2 + (2 if length == 126 else 8 if length == 127 else 0)
    return size + (4 if first_two[1] & 0x80 else 0)


def _payload_size(head: bytes | bytearray) -> int:
    length = head[1] & 0x7F
    if length == 126:
        return int(struct.unpack_from("!H", head, 2)[0])
    if length == 127:
        return int(struct.unpack_from("!Q", head, 2)[0])
    return length


class FrameCounter:
    """Counts complete frames in a byte stream, skipping payloads without copying them."""

    def __init__(self) -> None:
        self._head = bytearray()
        self._skip = 0
        self._in_payload = False
        self.frames = 0
        """Complete frames seen so far."""
        self.last_opcode: int | None = None
        """Opcode of the last frame whose header was read."""

    def feed(self, data: bytes) -> int:
        """Consume ``data``; the number of frames it completed."""
        completed = 0
        position = 0
        size = len(data)
        while position < size:
            if self._in_payload:
                take = min(self._skip, size - position)
                self._skip -= take
                position += take
                if self._skip == 0:
                    self._in_payload = False
                    completed += 1
                continue
            head = self._head
            if len(head) < 2:
                need = 2 - len(head)
                head += data[position : position + need]
                position += min(need, size - position)
                if len(head) < 2:
                    break
            header_size = _header_size(head)
            if len(head) < header_size:
                need = header_size - len(head)
                head += data[position : position + need]
                position += min(need, size - position)
                if len(head) < header_size:
                    break
            self.last_opcode = head[0] & 0x0F
            self._skip = _payload_size(head)
            head.clear()
            if self._skip == 0:
                completed += 1
            else:
                self._in_payload = True
        self.frames += completed
        return completed


class FrameReader:
    """Returns complete frames ``(opcode, unmasked payload)`` from a byte stream."""

    def __init__(self, max_payload: int = 16 * 1024 * 1024) -> None:
        self._buffer = bytearray()
        self.max_payload = max_payload
        """Larger frames raise ``ValueError`` (the echo server then drops the connection)."""

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Consume ``data``; the frames it completed."""
        buffer = self._buffer
        buffer += data
        frames: list[tuple[int, bytes]] = []
        position = 0
        available = len(buffer)
        while available - position >= 2:
            header_size = _header_size(buffer[position : position + 2])
            if available - position < header_size:
                break
            head = buffer[position : position + header_size]
            payload_size = _payload_size(head)
            if payload_size > self.max_payload:
                raise ValueError(f"frame of {payload_size} bytes is too large")
            end = position + header_size + payload_size
            if end > available:
                break
            payload = bytes(buffer[position + header_size : end])
            if head[1] & 0x80:
                payload = unmask(payload, bytes(head[header_size - 4 : header_size]))
            frames.append((head[0] & 0x0F, payload))
            position = end
        if position:
            del buffer[:position]
        return frames
