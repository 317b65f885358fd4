"""Unit tests of the RFC 6455 framing observers (wsgauge_sidecar.wsframes).

Frames are produced both by our own encoder and by the ``websockets`` library (an
independent implementation), then fed whole, byte by byte and at random splits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import Frame
from websockets.frames import Opcode as LibOpcode
from wsgauge_sidecar.exceptions import WebSocketProtocolError
from wsgauge_sidecar.wsframes import (
    FrameBoundaryTracker,
    MessageReader,
    Opcode,
    WsMessage,
    encode_close_frame,
    encode_frame,
)

Splitter = Callable[[bytes], Iterator[bytes]]  # the conftest "splitter" fixture


def lib_frame(opcode: LibOpcode, payload: bytes, *, fin: bool = True, mask: bool) -> bytes:
    return Frame(opcode, payload, fin=fin).serialize(mask=mask, extensions=[])


def conversation(mask: bool) -> bytes:
    """Text, fragmented text with an interleaved ping, binary (64-bit length), close."""
    return b"".join(
        [
            lib_frame(LibOpcode.TEXT, "héllo".encode(), mask=mask),
            lib_frame(LibOpcode.TEXT, b"frag", fin=False, mask=mask),
            lib_frame(LibOpcode.PING, b"p", mask=mask),
            lib_frame(LibOpcode.CONT, "ment€".encode(), mask=mask),
            lib_frame(LibOpcode.BINARY, bytes(range(256)) * 300, mask=mask),
            lib_frame(LibOpcode.TEXT, b"x" * 300, mask=mask),
            lib_frame(LibOpcode.TEXT, b"", mask=mask),
            lib_frame(LibOpcode.PONG, b"", mask=mask),
            lib_frame(LibOpcode.CLOSE, (1001).to_bytes(2, "big") + b"bye", mask=mask),
        ]
    )


def read_all(reader: MessageReader, pieces: Iterator[bytes]) -> list[WsMessage]:
    messages: list[WsMessage] = []
    for piece in pieces:
        messages += reader.feed(piece)
    return messages


@pytest.mark.parametrize("masked", [True, False])
def test_message_reader_over_any_split(masked: bool, splitter: Splitter) -> None:
    reader = MessageReader(masked=masked, max_message_bytes=100_000)
    messages = read_all(reader, splitter(conversation(masked)))
    assert [(message.opcode, message.payload) for message in messages] == [
        (Opcode.TEXT, "héllo".encode()),
        (Opcode.PING, b"p"),
        (Opcode.TEXT, "fragment€".encode()),
        (Opcode.BINARY, bytes(range(256)) * 300),
        (Opcode.TEXT, b"x" * 300),
        (Opcode.TEXT, b""),
        (Opcode.PONG, b""),
        (Opcode.CLOSE, b"\x03\xe9bye"),
    ]
    assert messages[0].text == "héllo"
    assert not messages[0].is_control
    assert messages[1].is_control
    assert messages[1].close_code is None
    assert messages[-1].close_code == 1001
    assert messages[-1].close_reason == "bye"
    assert reader.at_boundary


@pytest.mark.parametrize("masked", [True, False])
def test_tracker_over_any_split(masked: bool, splitter: Splitter) -> None:
    data = conversation(masked)
    tracker = FrameBoundaryTracker(masked=masked)
    boundaries = 0
    for piece in splitter(data):
        tracker.feed(piece)
        boundaries += tracker.at_boundary
    assert tracker.at_boundary
    assert tracker.frames_seen == 9
    assert tracker.close_code_seen == 1001


@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("size", [0, 1, 125, 126, 200, 65535, 65536])
def test_tracker_one_whole_frame_per_feed(masked: bool, size: int) -> None:
    """One whole frame per feed (the fast path): counted, at a boundary, errors still found."""
    tracker = FrameBoundaryTracker(masked=masked)
    for opcode in (Opcode.TEXT, Opcode.BINARY):
        tracker.feed(encode_frame(opcode, b"x" * size, mask=masked))
        assert tracker.at_boundary
        assert tracker.bytes_to_boundary == 0
    assert tracker.frames_seen == 2
    frame = encode_frame(Opcode.TEXT, b"y" * size, mask=masked)
    tracker.feed(frame[:-1])  # one byte short: not a whole frame
    assert not tracker.at_boundary
    tracker.feed(frame[-1:] + encode_close_frame(1000, mask=masked))
    assert tracker.at_boundary
    assert tracker.close_code_seen == 1000
    assert tracker.frames_seen == 4
    wrong = FrameBoundaryTracker(masked=masked)
    with pytest.raises(WebSocketProtocolError) as caught:
        wrong.feed(encode_frame(Opcode.TEXT, b"z" * size, mask=not masked))
    assert caught.value.close_code == 1002
    assert not wrong.at_boundary


def test_tracker_boundary_positions() -> None:
    frame = encode_frame(Opcode.TEXT, b"abc", mask=True, mask_key=b"\x01\x02\x03\x04")
    tracker = FrameBoundaryTracker(masked=True)
    states = []
    for index in range(len(frame)):
        tracker.feed(frame[index : index + 1])
        states.append(tracker.at_boundary)
    assert states == [False] * (len(frame) - 1) + [True]


@pytest.mark.parametrize("size", [0, 5, 125, 126, 300, 70000])
def test_bytes_to_boundary_never_overshoots(size: int) -> None:
    frame = encode_frame(Opcode.BINARY, b"q" * size, mask=True)
    data = frame + frame
    tracker = FrameBoundaryTracker(masked=True)
    assert tracker.bytes_to_boundary == 0
    position = 0
    boundaries = []
    while position < len(data):
        step = tracker.bytes_to_boundary or 1
        tracker.feed(data[position : position + step])
        position += step
        assert tracker.at_boundary == (tracker.bytes_to_boundary == 0)
        if tracker.at_boundary:
            boundaries.append(position)
    assert boundaries == [len(frame), 2 * len(frame)]


def test_tracker_stays_failed_after_an_error() -> None:
    tracker = FrameBoundaryTracker(masked=True)
    with pytest.raises(WebSocketProtocolError):
        tracker.feed(encode_frame(Opcode.TEXT, b"unmasked"))
    assert not tracker.at_boundary
    assert tracker.bytes_to_boundary == 1
    with pytest.raises(WebSocketProtocolError):
        tracker.feed(encode_frame(Opcode.TEXT, b"ok", mask=True))


def test_close_without_code_is_1005() -> None:
    tracker = FrameBoundaryTracker(masked=False)
    tracker.feed(encode_frame(Opcode.CLOSE))
    assert tracker.close_code_seen == 1005
    reader = MessageReader(masked=False)
    (message,) = reader.feed(encode_frame(Opcode.CLOSE))
    assert message.close_code == 1005


def test_tracker_keeps_first_close_code() -> None:
    tracker = FrameBoundaryTracker(masked=True)
    tracker.feed(encode_close_frame(4000, "a", mask=True) + encode_close_frame(1000, mask=True))
    assert tracker.close_code_seen == 4000


def test_tracker_lets_rsv1_through_for_relayed_compression() -> None:
    tracker = FrameBoundaryTracker(masked=False)
    tracker.feed(encode_frame(Opcode.TEXT, b"\x00\x01compressed", rsv=4))
    assert tracker.at_boundary


def test_encoders_agree_with_websockets_library() -> None:
    for payload in (b"", b"a" * 125, b"b" * 126, b"c" * 70000):
        assert encode_frame(Opcode.BINARY, payload) == lib_frame(
            LibOpcode.BINARY, payload, mask=False
        )
    close = encode_close_frame(1001, "going away")
    assert close == lib_frame(LibOpcode.CLOSE, b"\x03\xe9going away", mask=False)
    masked = encode_close_frame(1000, mask=True)
    (message,) = MessageReader(masked=True).feed(masked)
    assert message.close_code == 1000


def test_close_reason_is_cut_on_a_character_boundary() -> None:
    frame = encode_close_frame(1000, "€" * 100)
    (message,) = MessageReader(masked=False).feed(frame)
    assert len(message.payload) <= 125
    assert message.close_reason == "€" * 41


@pytest.mark.parametrize("code", [999, 1005, 1006, 1015, 5000])
def test_unsendable_close_codes(code: int) -> None:
    with pytest.raises(ValueError, match="cannot be sent"):
        encode_close_frame(code)


def unmasked(opcode: int, payload: bytes = b"", first_bits: int = 0x80) -> bytes:
    return bytes([first_bits | opcode, len(payload)]) + payload


@pytest.mark.parametrize(
    ("data", "masked", "code"),
    [
        (unmasked(0x3), False, 1002),  # reserved data opcode
        (unmasked(0xB), False, 1002),  # reserved control opcode
        (encode_frame(Opcode.TEXT, b"x"), True, 1002),  # unmasked from the client
        (encode_frame(Opcode.TEXT, b"x", mask=True), False, 1002),  # masked from the server
        (bytes([0x89, 126, 0, 126]) + b"x" * 126, False, 1002),  # control frame > 125
        (unmasked(0x9, b"", first_bits=0x00), False, 1002),  # fragmented ping
        (unmasked(0x0, b"x"), False, 1002),  # continuation outside a message
        (unmasked(0x1, b"a", 0x00) + unmasked(0x1, b"b"), False, 1002),  # message in a message
        (unmasked(0x8, b"\x03"), False, 1002),  # 1-byte close payload
        (bytes([0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0]), False, 1002),  # top bit of length
    ],
)
def test_protocol_errors_in_both_readers(data: bytes, masked: bool, code: int) -> None:
    for feed in (FrameBoundaryTracker(masked).feed, MessageReader(masked).feed):
        with pytest.raises(WebSocketProtocolError) as caught:
            feed(data)
        assert caught.value.close_code == code


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (encode_frame(Opcode.TEXT, b"x", rsv=4), 1002),  # RSV1: compression not negotiated
        (encode_frame(Opcode.TEXT, b"x", rsv=1), 1002),
        (encode_frame(Opcode.TEXT, b"\xff"), 1007),
        (encode_frame(Opcode.TEXT, b"\xed\xa0\x80"), 1007),  # encoded surrogate
        (encode_frame(Opcode.TEXT, "€".encode()[:2], fin=False) + unmasked(0, b"x"), 1007),
        (unmasked(0x8, b"\x03\xed"), 1002),  # close code 1005 may not be sent
        (unmasked(0x8, b"\x03\xe8\xff"), 1007),  # invalid UTF-8 reason
        (encode_frame(Opcode.BINARY, b"y" * 11), 1009),
        (encode_frame(Opcode.TEXT, b"y" * 6, fin=False) + unmasked(0, b"y" * 6), 1009),
    ],
)
def test_message_reader_errors(data: bytes, code: int) -> None:
    reader = MessageReader(masked=False, max_message_bytes=10)
    with pytest.raises(WebSocketProtocolError) as caught:
        reader.feed(data)
    assert caught.value.close_code == code
    with pytest.raises(WebSocketProtocolError):  # stays failed
        reader.feed(b"")


@pytest.mark.parametrize("code", [1000, 1001, 1003, 1007, 1011, 1014, 3000, 4999])
def test_valid_close_codes_are_accepted(code: int) -> None:
    (message,) = MessageReader(masked=False).feed(unmasked(0x8, code.to_bytes(2, "big") + b"r"))
    assert message.close_code == code
    assert message.close_reason == "r"


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000])
def test_invalid_close_codes_are_refused(code: int) -> None:
    with pytest.raises(WebSocketProtocolError) as caught:
        MessageReader(masked=False).feed(unmasked(0x8, code.to_bytes(2, "big")))
    assert caught.value.close_code == 1002


def test_too_big_is_refused_before_the_payload_arrives() -> None:
    reader = MessageReader(masked=False, max_message_bytes=1000)
    header = encode_frame(Opcode.BINARY, b"z" * 5000)[:4]
    with pytest.raises(WebSocketProtocolError) as caught:
        reader.feed(header)
    assert caught.value.close_code == 1009


def test_control_frames_do_not_count_toward_the_message_limit() -> None:
    reader = MessageReader(masked=False, max_message_bytes=10)
    data = (
        encode_frame(Opcode.TEXT, b"a" * 5, fin=False)
        + encode_frame(Opcode.PING, b"p" * 100)
        + encode_frame(Opcode.CONTINUATION, b"b" * 5)
        + encode_frame(Opcode.TEXT, b"c" * 10)
    )
    assert [m.payload for m in reader.feed(data)] == [b"p" * 100, b"a" * 5 + b"b" * 5, b"c" * 10]


# --------------------------------------------------------------------- fuzzing


def raw_frame(opcode: int, payload: bytes, fin: bool, rsv: int, mask: bool) -> bytes:
    """Any frame, also invalid ones (encode_frame refuses those)."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    size = len(payload)
    length = bytes([size]) if size < 126 else bytes([126]) + size.to_bytes(2, "big")
    header = bytes([first]) + bytes([length[0] | (0x80 if mask else 0)]) + length[1:]
    if mask:
        key = b"\x11\x22\x33\x44"
        payload = bytes(byte ^ key[index % 4] for index, byte in enumerate(payload))
        header += key
    return header + payload


_frames = st.lists(
    st.builds(
        raw_frame,
        opcode=st.sampled_from([0, 1, 2, 8, 9, 10, 3, 11]),
        payload=st.binary(max_size=140),
        fin=st.booleans(),
        rsv=st.sampled_from([0, 0, 0, 4, 1]),
        mask=st.booleans(),
    )
    | st.binary(max_size=6),
    max_size=8,
).map(b"".join)


def outcome(feed: Callable[[bytes], object], pieces: list[bytes]) -> object:
    results: list[object] = []
    error: WebSocketProtocolError | None = None
    try:
        for piece in pieces:
            result = feed(piece)
            if isinstance(result, list):
                results += [(message.opcode, message.payload) for message in result]
    except WebSocketProtocolError as caught:
        error = caught
    if error is not None:
        assert error.close_code in (1002, 1007, 1009)
        # messages completed earlier in the failing feed are not returned: the socket ends
        return ("error", error.close_code)
    return results


@settings(max_examples=150, deadline=None)
@given(data=_frames, masked=st.booleans(), cut=st.integers(1, 9))
def test_fuzz_readers_raise_only_protocol_errors_and_ignore_splits(
    data: bytes, masked: bool, cut: int
) -> None:
    pieces = [data[index : index + cut] for index in range(0, len(data), cut)]
    single_bytes = [data[index : index + 1] for index in range(len(data))]
    reader_whole = outcome(MessageReader(masked, 200).feed, [data])
    assert outcome(MessageReader(masked, 200).feed, pieces) == reader_whole
    assert outcome(MessageReader(masked, 200).feed, single_bytes) == reader_whole

    def track(pieces: list[bytes]) -> object:
        tracker = FrameBoundaryTracker(masked)
        result = outcome(tracker.feed, pieces)
        return result, tracker.at_boundary, tracker.close_code_seen, tracker.frames_seen

    assert track(pieces) == track([data]) == track(single_bytes)


def test_frames_completed_counts_whole_frames_fed_whole_and_byte_by_byte() -> None:
    sizes = (0, 5, 125, 126, 300, 65535, 65536)
    stream = b"".join(encode_frame(Opcode.BINARY, bytes([n % 251]) * n) for n in sizes)
    whole = FrameBoundaryTracker(masked=False)
    whole.feed(stream)
    assert whole.frames_completed == whole.frames_seen == len(sizes)
    tracker = FrameBoundaryTracker(masked=False)
    completed_after: list[int] = []
    for index in range(len(stream)):
        tracker.feed(stream[index : index + 1])
        completed_after.append(tracker.frames_completed)
    ends = [sum(2 + (2 if n >= 126 else 0) + (6 if n >= 65536 else 0) + n for n in sizes[: i + 1])
            for i in range(len(sizes))]  # fmt: skip
    # a frame counts once its last byte arrived, not before
    assert [completed_after[end - 1] for end in ends] == list(range(1, len(sizes) + 1))
    assert [completed_after[end - 2] for end in ends if end >= 2][1:] == list(range(1, len(sizes)))
