"""RFC 6455 WebSocket framing, sans-I/O: observe the frames the proxy relays.

The proxy relays WebSocket bytes unchanged; these objects only *watch* them:

* :class:`FrameBoundaryTracker` is the cheap one, used in the byte-relay modes
  (``path``, ``query``, ``header``): it reads frame headers and skips payloads
  without copying them, so the proxy knows whether the stream is between two
  frames (``at_boundary``: where a close frame may be injected, e.g. on drain)
  and which close code a peer sent (``close_code_seen``). RSV bits are not
  checked there: in the byte-relay modes permessage-deflate (RSV1) passes through.
* :class:`MessageReader` is the full reader used under a frame protocol rule
  (``phoenix``, ...): it unmasks, reassembles fragmented text/binary messages,
  validates UTF-8 and returns the messages and control frames.

Compression: under a frame protocol rule the proxy strips ``Sec-WebSocket-Extensions``
from the upgrade request, so permessage-deflate (RFC 7692) is never negotiated
and every frame must have its RSV bits clear; :class:`MessageReader` therefore
treats any RSV bit as a protocol error (close code 1002) instead of inflating.

Errors are :class:`WebSocketProtocolError` with the close code to end that one
socket with: 1002 protocol error (wrong masking, reserved opcode, RSV bit set,
fragmented or oversized control frame, stray continuation, bad close payload),
1007 invalid UTF-8, 1009 message larger than ``max_message_bytes``.
Only :func:`encode_frame`/:func:`encode_close_frame` raise ``ValueError``, for
arguments no caller should pass (a programming error, not peer input).
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from typing import NamedTuple

from wsgauge_sidecar.exceptions import WebSocketProtocolError

PROTOCOL_ERROR = 1002
INVALID_PAYLOAD = 1007
MESSAGE_TOO_BIG = 1009
NO_STATUS_RECEIVED = 1005
"""Close code noted when a close frame carries no code (RFC 6455 7.1.5)."""

MAX_CONTROL_PAYLOAD = 125


class Opcode(enum.IntEnum):
    """Frame opcodes of RFC 6455 section 5.2 (the others are reserved)."""

    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


_DATA_OPCODES = frozenset({Opcode.TEXT, Opcode.BINARY})
_TEXT, _BINARY = Opcode.TEXT, Opcode.BINARY
_KNOWN_OPCODES = frozenset(int(opcode) for opcode in Opcode)


def is_valid_close_code(code: int) -> bool:
    """Whether a peer may send ``code`` in a close frame (RFC 6455 7.4, IANA registry)."""
    return code in (1000, 1001, 1002, 1003) or 1007 <= code <= 1014 or 3000 <= code <= 4999


class WsMessage(NamedTuple):
    """A whole data message (reassembled, unmasked) or a control frame.

    A named tuple rather than a frozen dataclass: one is made per relayed message
    under a frame protocol rule, and a tuple is several times cheaper to create.
    """

    opcode: Opcode
    """TEXT, BINARY, CLOSE, PING or PONG (never CONTINUATION)."""
    payload: bytes
    """Unmasked payload; for a text message, valid UTF-8."""

    @property
    def is_control(self) -> bool:
        """CLOSE, PING or PONG."""
        return self.opcode >= Opcode.CLOSE

    @property
    def text(self) -> str:
        """The payload decoded as UTF-8 (validated for TEXT messages)."""
        return self.payload.decode("utf-8", errors="replace")

    @property
    def close_code(self) -> int | None:
        """For a CLOSE frame: its status code, 1005 if it has none; else ``None``."""
        if self.opcode != Opcode.CLOSE:
            return None
        if len(self.payload) < 2:
            return NO_STATUS_RECEIVED
        return int.from_bytes(self.payload[:2], "big")

    @property
    def close_reason(self) -> str:
        """For a CLOSE frame: its reason text (may be empty)."""
        if self.opcode != Opcode.CLOSE:
            return ""
        return self.payload[2:].decode("utf-8", errors="replace")


@dataclass
class _FrameHeader:
    fin: bool
    rsv: int
    opcode: int
    masked: bool
    length: int
    mask_key: bytes


class _HeaderReader:
    """Accumulates one frame header (2 to 14 bytes) across feeds."""

    def __init__(self, expect_masked: bool) -> None:
        self.expect_masked = expect_masked
        self.buffer = bytearray()

    def take(self, data: bytes | memoryview, position: int) -> tuple[_FrameHeader | None, int]:
        """Consume header bytes from ``data[position:]``; the header once complete."""
        if not self.buffer:  # fast path: the whole header is in ``data``
            available = len(data) - position
            if available >= 2:
                first, second = data[position], data[position + 1]
                short_length = second & 0x7F
                needed = (4 if short_length == 126 else 10 if short_length == 127 else 2) + (
                    4 if second & 0x80 else 0
                )
                if available >= needed:
                    _check_first_bytes(first, second, self.expect_masked)
                    header = _decode_header(first, second, data[position + 2 : position + needed])
                    return header, position + needed
        while True:
            needed = self._needed()
            missing = needed - len(self.buffer)
            if missing <= 0:
                break
            chunk = data[position : position + missing]
            if not chunk:
                return None, position
            self.buffer += chunk
            position += len(chunk)
            if len(self.buffer) == 2:
                _check_first_bytes(self.buffer[0], self.buffer[1], self.expect_masked)
        header = _decode_header(self.buffer[0], self.buffer[1], self.buffer[2:])
        self.buffer.clear()
        return header, position

    def missing(self) -> int:
        """Bytes still needed to complete the header, as far as known now (at least 1)."""
        return max(1, self._needed() - len(self.buffer))

    def _needed(self) -> int:
        if len(self.buffer) < 2:
            return 2
        short_length = self.buffer[1] & 0x7F
        extra = 2 if short_length == 126 else 8 if short_length == 127 else 0
        return 2 + extra + (4 if self.buffer[1] & 0x80 else 0)


def _check_first_bytes(first: int, second: int, expect_masked: bool) -> None:
    opcode = first & 0x0F
    if opcode not in _KNOWN_OPCODES:
        raise WebSocketProtocolError(f"reserved opcode {opcode:#x}", PROTOCOL_ERROR)
    if bool(second & 0x80) != expect_masked:
        which = "unmasked" if expect_masked else "masked"
        raise WebSocketProtocolError(f"{which} frame in this direction", PROTOCOL_ERROR)
    if opcode >= 0x8:
        if not first & 0x80:
            raise WebSocketProtocolError("fragmented control frame", PROTOCOL_ERROR)
        if second & 0x7F > MAX_CONTROL_PAYLOAD:
            raise WebSocketProtocolError("control frame payload over 125 bytes", PROTOCOL_ERROR)


def _decode_header(first: int, second: int, rest: bytes | bytearray | memoryview) -> _FrameHeader:
    """A header from its first two bytes and the rest (extended length, mask key)."""
    length = second & 0x7F
    offset = 0
    if length == 126:
        length = int.from_bytes(rest[0:2], "big")
        offset = 2
    elif length == 127:
        length = int.from_bytes(rest[0:8], "big")
        offset = 8
        if length >> 63:
            raise WebSocketProtocolError("frame length with its top bit set", PROTOCOL_ERROR)
    masked = bool(second & 0x80)
    return _FrameHeader(
        fin=bool(first & 0x80),
        rsv=(first >> 4) & 0x07,
        opcode=first & 0x0F,
        masked=masked,
        length=length,
        mask_key=bytes(rest[offset : offset + 4]) if masked else b"",
    )


class FrameBoundaryTracker:
    """Follows frame boundaries of one direction of a WebSocket, skipping payloads.

    ``masked`` is True for the client-to-server direction (RFC 6455 5.3: clients
    mask every frame, servers none).
    """

    def __init__(self, masked: bool) -> None:
        self._headers = _HeaderReader(masked)
        self._payload_left = 0
        self._in_fragmented_message = False
        self._close_bytes: bytearray | None = None
        self._close_key = b""
        self._close_code_seen: int | None = None
        self._failed: WebSocketProtocolError | None = None
        self.frames_seen = 0
        """Complete frame headers read so far."""

    @property
    def at_boundary(self) -> bool:
        """True between two frames (no partial frame header or payload pending).

        Always False after a protocol error: nothing may be injected into a broken stream.
        """
        return self._payload_left == 0 and not self._headers.buffer and self._failed is None

    @property
    def close_code_seen(self) -> int | None:
        """Code of the first close frame seen (1005 if it had none), else ``None``."""
        return self._close_code_seen

    @property
    def frames_completed(self) -> int:
        """Whole frames (header and payload) seen so far: :attr:`frames_seen` minus the frame
        whose payload is still coming."""
        return self.frames_seen - (1 if self._payload_left else 0)

    @property
    def bytes_to_boundary(self) -> int:
        """0 at a boundary; else how many bytes can surely be fed without passing one.

        Inside a payload this is exactly the rest of the frame; inside a header it is
        what the header still lacks (the payload length is not known yet), so feeding
        that many bytes at a time and checking :attr:`at_boundary` finds the boundary.
        """
        if self._payload_left:
            return self._payload_left
        if self._failed is not None:
            return 1  # never at a boundary again; feeding re-raises the error
        if not self._headers.buffer:
            return 0
        return self._headers.missing()

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Follow ``data``; raise :class:`WebSocketProtocolError` (1002) on malformed frames.

        After an error every further call raises the same error again.
        """
        if not self._payload_left and not self._in_fragmented_message and not self._headers.buffer:
            # Fastest path (the usual case): ``data`` is exactly one whole
            # unfragmented text/binary frame under 64 KiB, starting at a boundary.
            # Nothing changes but the frame count.
            size = len(data)
            if size >= 4 and (data[0] == 0x81 or data[0] == 0x82) and self._failed is None:
                length = data[1] ^ 0x80 if self._headers.expect_masked else data[1]
                if length < 126:
                    whole = size == length + (6 if self._headers.expect_masked else 2)
                elif length == 126:
                    length = (data[2] << 8) | data[3]
                    whole = size == length + (8 if self._headers.expect_masked else 4)
                else:
                    whole = False  # a wrong mask bit (>= 0x80) or a 64-bit length
                if whole:
                    self.frames_seen += 1
                    return
        if self._failed is not None:
            raise self._failed
        try:
            self._feed(data)
        except WebSocketProtocolError as error:
            self._failed = error
            raise

    def _feed(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B") if not isinstance(data, bytes) else data
        position = 0
        size = len(view)
        headers = self._headers
        expect_masked = headers.expect_masked
        while position < size:
            if self._payload_left:
                used = min(self._payload_left, size - position)
                if self._close_bytes is not None:
                    self._collect_close(view[position : position + used])
                position += used
                self._payload_left -= used
                continue
            # Fast path (the usual case): a whole header of an unfragmented data
            # frame in ``data``; everything else takes the general path below.
            if not headers.buffer and size - position >= 2:
                first, second = view[position], view[position + 1]
                if first in (0x81, 0x82) and bool(second & 0x80) == expect_masked:
                    length = second & 0x7F
                    header_size = 2 + (4 if expect_masked else 0)
                    if length == 126:
                        header_size += 2
                        length = int.from_bytes(view[position + 2 : position + 4], "big")
                    elif length == 127:
                        header_size = size + 1  # rare: leave it to the general path
                    if size - position >= header_size and not self._in_fragmented_message:
                        self.frames_seen += 1
                        position += header_size
                        self._payload_left = length
                        continue
            header, position = headers.take(view, position)
            if header is None:
                return
            self._start_frame(header)

    def _start_frame(self, header: _FrameHeader) -> None:
        self.frames_seen += 1
        if header.opcode == Opcode.CONTINUATION:
            if not self._in_fragmented_message:
                raise WebSocketProtocolError("continuation frame outside a message", PROTOCOL_ERROR)
            self._in_fragmented_message = not header.fin
        elif header.opcode in _DATA_OPCODES:
            if self._in_fragmented_message:
                raise WebSocketProtocolError("new message inside a fragmented one", PROTOCOL_ERROR)
            self._in_fragmented_message = not header.fin
        elif header.opcode == Opcode.CLOSE:
            if header.length == 1:
                raise WebSocketProtocolError("close frame with a 1-byte payload", PROTOCOL_ERROR)
            if header.length == 0:
                self._note_close(NO_STATUS_RECEIVED)
            elif self._close_code_seen is None:
                self._close_bytes = bytearray()
                self._close_key = header.mask_key
        self._payload_left = header.length

    def _collect_close(self, chunk: bytes | memoryview) -> None:
        assert self._close_bytes is not None
        self._close_bytes += chunk[: 2 - len(self._close_bytes)]
        if len(self._close_bytes) == 2:
            code = bytes(self._close_bytes)
            if self._close_key:
                code = _unmask(code, self._close_key)
            self._close_bytes = None
            self._note_close(int.from_bytes(code, "big"))

    def _note_close(self, code: int) -> None:
        if self._close_code_seen is None:
            self._close_code_seen = code


class MessageReader:
    """Reads whole messages from one direction of a WebSocket (used under a frame protocol rule).

    Frames are reassembled and unmasked; ``feed`` returns the messages and control
    frames completed by the bytes given. RSV bits must be clear: compression is
    kept from being negotiated under a frame protocol rule (see the module docstring).
    """

    def __init__(self, masked: bool, max_message_bytes: int = 1048576) -> None:
        self._headers = _HeaderReader(masked)
        self.max_message_bytes = max_message_bytes
        """Largest data message (sum of its fragments) accepted; above it: 1009."""
        self._frame: _FrameHeader | None = None
        self._frame_payload = bytearray()
        self._message_opcode: Opcode | None = None
        self._message_parts: list[bytes] = []
        self._message_size = 0
        self._failed: WebSocketProtocolError | None = None

    @property
    def at_boundary(self) -> bool:
        """True between two frames."""
        return self._frame is None and not self._headers.buffer

    def feed(self, data: bytes | bytearray | memoryview) -> list[WsMessage]:
        """Read ``data``; return the messages and control frames it completes.

        After an error every further call raises the same error again.
        """
        if self._failed is not None:
            raise self._failed
        try:
            if (
                type(data) is bytes
                and self._frame is None
                and self._message_opcode is None
                and not self._headers.buffer
            ):
                # the usual case: ``data`` starts with a whole unfragmented data frame
                whole = self._whole_frame(data, 0, len(data), self._headers.expect_masked)
                if whole is not None:
                    if whole[1] == len(data):
                        return [whole[0]]
                    return self._feed(data, whole[1], [whole[0]])
            return self._feed(data, 0, [])
        except WebSocketProtocolError as error:
            self._failed = error
            raise

    def _feed(
        self, data: bytes | bytearray | memoryview, position: int, messages: list[WsMessage]
    ) -> list[WsMessage]:
        """Read ``data[position:]``, appending what it completes to ``messages``."""
        view = memoryview(data).cast("B") if not isinstance(data, bytes) else data
        size = len(view)
        headers = self._headers
        expect_masked = headers.expect_masked
        while position < size:
            # Fast path (the usual case): a whole unfragmented text/binary frame
            # with a short header, entirely in ``data``, outside any fragmented message.
            if self._frame is None and self._message_opcode is None and not headers.buffer:
                fast = self._whole_frame(view, position, size, expect_masked)
                if fast is not None:
                    messages.append(fast[0])
                    position = fast[1]
                    continue
            if self._frame is None:
                header, position = headers.take(view, position)
                if header is None:
                    break
                self._start_frame(header)
                self._frame = header
            frame = self._frame
            missing = frame.length - len(self._frame_payload)
            if missing:
                chunk = view[position : position + missing]
                self._frame_payload += chunk
                position += len(chunk)
                if len(chunk) < missing:
                    break
            payload = bytes(self._frame_payload)
            self._frame_payload.clear()
            self._frame = None
            if frame.masked:
                payload = _unmask(payload, frame.mask_key)
            message = self._end_frame(frame, payload)
            if message is not None:
                messages.append(message)
        return messages

    def _whole_frame(
        self, view: bytes | memoryview, position: int, size: int, expect_masked: bool
    ) -> tuple[WsMessage, int] | None:
        """The frame at ``position`` as a message if it is simple and complete, else None."""
        if size - position < 2:
            return None
        first = view[position]
        if first not in (0x81, 0x82):
            return None
        second = view[position + 1]
        if (second >= 0x80) != expect_masked:
            return None
        length = second & 0x7F
        start = position + 2
        if length == 126:
            length = int.from_bytes(view[start : start + 2], "big")
            start += 2
        elif length == 127:
            return None
        if expect_masked:
            end = start + 4 + length
            if end > size:
                return None
            payload = _unmask(bytes(view[start + 4 : end]), bytes(view[start : start + 4]))
        else:
            end = start + length
            if end > size:
                return None
            payload = bytes(view[start:end])
        if length > self.max_message_bytes:
            raise WebSocketProtocolError(
                f"message larger than {self.max_message_bytes} bytes", MESSAGE_TOO_BIG
            )
        if first == 0x81:
            if not payload.isascii():
                try:
                    payload.decode("utf-8")
                except UnicodeDecodeError:
                    raise WebSocketProtocolError(
                        "text message is not valid UTF-8", INVALID_PAYLOAD
                    ) from None
            return WsMessage(_TEXT, payload), end
        return WsMessage(_BINARY, payload), end

    def _start_frame(self, header: _FrameHeader) -> None:
        if header.rsv:
            raise WebSocketProtocolError(
                "RSV bit set: no extension (such as permessage-deflate) was negotiated",
                PROTOCOL_ERROR,
            )
        if header.opcode == Opcode.CONTINUATION:
            if self._message_opcode is None:
                raise WebSocketProtocolError("continuation frame outside a message", PROTOCOL_ERROR)
        elif header.opcode in _DATA_OPCODES:
            if self._message_opcode is not None:
                raise WebSocketProtocolError("new message inside a fragmented one", PROTOCOL_ERROR)
            self._message_opcode = Opcode(header.opcode)
        elif header.opcode == Opcode.CLOSE and header.length == 1:
            raise WebSocketProtocolError("close frame with a 1-byte payload", PROTOCOL_ERROR)
        if header.opcode < Opcode.CLOSE:
            if self._message_size + header.length > self.max_message_bytes:
                raise WebSocketProtocolError(
                    f"message larger than {self.max_message_bytes} bytes", MESSAGE_TOO_BIG
                )
            self._message_size += header.length

    def _end_frame(self, frame: _FrameHeader, payload: bytes) -> WsMessage | None:
        if frame.opcode >= Opcode.CLOSE:
            opcode = Opcode(frame.opcode)
            if opcode == Opcode.CLOSE and payload:
                _check_close_payload(payload)
            return WsMessage(opcode, payload)
        self._message_parts.append(payload)
        if not frame.fin:
            return None
        assert self._message_opcode is not None
        opcode = self._message_opcode
        whole = b"".join(self._message_parts)
        self._message_parts.clear()
        self._message_opcode = None
        self._message_size = 0
        if opcode == Opcode.TEXT:
            try:
                whole.decode("utf-8")
            except UnicodeDecodeError:
                raise WebSocketProtocolError(
                    "text message is not valid UTF-8", INVALID_PAYLOAD
                ) from None
        return WsMessage(opcode, whole)


def _check_close_payload(payload: bytes) -> None:
    code = int.from_bytes(payload[:2], "big")
    if not is_valid_close_code(code):
        raise WebSocketProtocolError(f"invalid close code {code}", PROTOCOL_ERROR)
    try:
        payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise WebSocketProtocolError("close reason is not valid UTF-8", INVALID_PAYLOAD) from None


def _unmask(payload: bytes, key: bytes) -> bytes:
    """XOR ``payload`` with the repeating 4-byte ``key`` (RFC 6455 5.3)."""
    size = len(payload)
    if not size:
        return payload
    repeated = (key * (size // 4 + 1))[:size]
    value = int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")
    return value.to_bytes(size, "little")


def encode_frame(
    opcode: Opcode,
    payload: bytes = b"",
    *,
    fin: bool = True,
    mask: bool = False,
    mask_key: bytes | None = None,
    rsv: int = 0,
) -> bytes:
    """One frame as bytes; masked with ``mask_key`` (random if not given) when ``mask``."""
    if opcode >= Opcode.CLOSE and (len(payload) > MAX_CONTROL_PAYLOAD or not fin):
        raise ValueError("control frames are unfragmented and carry at most 125 bytes")
    if not 0 <= rsv <= 7:
        raise ValueError("rsv is 3 bits")
    first = (0x80 if fin else 0) | (rsv << 4) | int(opcode)
    mask_bit = 0x80 if mask else 0
    size = len(payload)
    if size < 126:
        header = bytes([first, mask_bit | size])
    elif size < 1 << 16:
        header = bytes([first, mask_bit | 126]) + size.to_bytes(2, "big")
    else:
        header = bytes([first, mask_bit | 127]) + size.to_bytes(8, "big")
    if not mask:
        return header + payload
    key = mask_key if mask_key is not None else os.urandom(4)
    if len(key) != 4:
        raise ValueError("a mask key has 4 bytes")
    return header + key + _unmask(payload, key)


def encode_close_frame(code: int, reason: str = "", mask: bool = False) -> bytes:
    """A close frame with ``code`` and ``reason`` (cut to fit 125 bytes on a UTF-8 boundary).

    ``mask`` is True when the frame goes to the server (as if from the client).
    """
    if not 1000 <= code <= 4999 or code in (1005, 1006, 1015):
        raise ValueError(f"close code {code} cannot be sent")
    encoded = reason.encode("utf-8")[: MAX_CONTROL_PAYLOAD - 2]
    encoded = encoded.decode("utf-8", errors="ignore").encode("utf-8")
    return encode_frame(Opcode.CLOSE, code.to_bytes(2, "big") + encoded, mask=mask)
