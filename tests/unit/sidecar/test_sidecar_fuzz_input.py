"""Fuzzing of the sidecar's input parsers with mutations of *valid* input, split at every byte.

The existing fuzz tests (test_sidecar_httpwire.py, test_sidecar_wsframes.py,
test_sidecar_phoenix.py) feed grammar-shaped noise. These start from what real clients
send (a WebSocket handshake, masked client frames, Phoenix V1/V2 messages, V2 binary
pushes) and mutate it a little, which reaches the deep branches random bytes rarely do.
Properties: only the documented exception escapes (HttpParseError 400/413/501,
WebSocketProtocolError 1002/1007/1009, PhoenixProtocolError 1007); the outcome does not
depend on how the bytes are split; what a parser accepts stays within its bounds.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsgauge_sidecar.exceptions import (
    HttpParseError,
    PhoenixLimitError,
    PhoenixProtocolError,
    WebSocketProtocolError,
)
from wsgauge_sidecar.httpwire import RequestHead, parse_request_head
from wsgauge_sidecar.protocols.phoenix import Joined, PhoenixSession
from wsgauge_sidecar.topics import MAX_TOPIC_LENGTH, parse_topic_rule, topic_from_request
from wsgauge_sidecar.wsframes import FrameBoundaryTracker, MessageReader

HANDSHAKE = (
    b"GET /ws/stream?topic=news&x=%41 HTTP/1.1\r\n"
    b"Host: example.test\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: keep-alive, Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    b"X-Topic: live\r\n"
    b"\r\n"
)
RULES = [
    parse_topic_rule(spec)
    for spec in ("path", "path:^/ws/([^/?]+)", "query:topic", "header:X-Topic", "phoenix")
]
INTERESTING_BYTES = b"\x00\t\n\r :;,?#%/\\\x7f\x80\xff"

# one mutation: (kind, relative position 0..1, a byte)
_mutation = st.tuples(
    st.sampled_from(["flip", "set", "insert", "delete", "duplicate_line", "upper", "lower"]),
    st.floats(0, 1, allow_nan=False),
    st.sampled_from(list(INTERESTING_BYTES)) | st.integers(0, 255),
)


def mutate(data: bytes, mutations: list[tuple[str, float, int]]) -> bytes:
    """Apply small edits to ``data``."""
    result = bytearray(data)
    for kind, where, value in mutations:
        if not result:
            result.append(value)
            continue
        index = min(int(where * len(result)), len(result) - 1)
        if kind == "flip":
            result[index] ^= 1 << (value % 8)
        elif kind == "set":
            result[index] = value
        elif kind == "insert":
            result.insert(index, value)
        elif kind == "delete":
            del result[index]
        elif kind == "duplicate_line":
            start = result.rfind(b"\n", 0, index) + 1
            end = result.find(b"\n", index)
            end = len(result) if end < 0 else end + 1
            result[end:end] = result[start:end]
        elif kind == "upper":
            result[index : index + 8] = bytes(result[index : index + 8]).upper()
        else:
            result[index : index + 8] = bytes(result[index : index + 8]).lower()
    return bytes(result)


def head_outcome(pieces: list[bytes], max_bytes: int) -> tuple[object, ...]:
    """Feed ``pieces`` like the proxy does (parse after each read): head, error or need-more."""
    buffer = bytearray()
    error: HttpParseError | None = None
    try:
        for piece in pieces:
            buffer += piece
            parsed = parse_request_head(buffer, max_bytes)
            if parsed is not None:
                head, consumed = parsed
                return ("head", head.method, head.target, head.version, head.headers, consumed)
    except HttpParseError as caught:
        error = caught
    if error is not None:
        assert error.status in (400, 413, 501), error.status
        return ("error", error.status)
    return ("more",)


def check_accepted_head(head: RequestHead, consumed: int, max_bytes: int) -> None:
    """What the proxy does with an accepted head never fails and stays bounded."""
    assert consumed <= max_bytes
    assert head.raw.endswith((b"\n\n", b"\n\r\n"))  # LF or CRLF ends, mixed too (RFC 9112 2.2)
    for rule in RULES:
        topic = topic_from_request(rule, head.target, head.headers)
        assert topic is None or 0 < len(topic) <= MAX_TOPIC_LENGTH
    _ = head.is_websocket_upgrade, head.keep_alive
    # what phoenix mode sends upstream parses back to the same head, minus the dropped field
    forwarded = head.serialize(drop_headers=("sec-websocket-extensions",))
    again = parse_request_head(forwarded, len(forwarded))
    assert again is not None
    assert again[1] == len(forwarded)
    kept = [(n, v) for n, v in head.headers if n.lower() != b"sec-websocket-extensions"]
    assert (again[0].method, again[0].target, again[0].headers) == (head.method, head.target, kept)


@settings(max_examples=250, deadline=None)
@given(mutations=st.lists(_mutation, min_size=1, max_size=4), max_bytes=st.sampled_from([96, 4096]))
def test_fuzz_mutated_handshakes_parse_or_refuse_the_same_at_every_split(
    mutations: list[tuple[str, float, int]], max_bytes: int
) -> None:
    data = mutate(HANDSHAKE, mutations)
    whole = head_outcome([data], max_bytes)
    for cut in range(1, len(data)):
        split = head_outcome([data[:cut], data[cut:]], max_bytes)
        if whole[0] == "head" or split[0] == "head":
            assert split == whole, (cut, whole, split)
        else:  # an error may show earlier in a shorter prefix (e.g. 413 before a later 400)
            assert split[0] in ("error", "more")
            assert whole[0] in ("error", "more")
    if whole[0] == "head":
        parsed = parse_request_head(data, max_bytes)
        assert parsed is not None
        check_accepted_head(parsed[0], parsed[1], max_bytes)


def test_unmutated_handshake_is_accepted_with_every_rule() -> None:
    parsed = parse_request_head(HANDSHAKE, 4096)
    assert parsed is not None
    assert parsed[0].is_websocket_upgrade
    check_accepted_head(parsed[0], parsed[1], 4096)
    topics = [topic_from_request(rule, parsed[0].target, parsed[0].headers) for rule in RULES]
    assert topics == ["/ws/stream", "stream", "news", "live", None]


@pytest.mark.parametrize("blank", [b"\r\n", b"\n"])
def test_endless_blank_lines_before_a_head_count_toward_the_limit(blank: bytes) -> None:
    # a client sending only line ends must not make the proxy buffer them without bound
    with pytest.raises(HttpParseError) as refused:
        parse_request_head(blank * 2000, 1024)
    assert refused.value.status == 413
    # a few blank lines before a head are still skipped (RFC 9112 section 2.2)
    parsed = parse_request_head(blank * 3 + HANDSHAKE, 4096)
    assert parsed is not None
    assert parsed[1] == 3 * len(blank) + len(HANDSHAKE)


@settings(max_examples=200, deadline=None)
@given(noise=st.binary(max_size=300), max_bytes=st.integers(16, 400))
def test_fuzz_noise_after_a_request_line_never_exceeds_the_limit(
    noise: bytes, max_bytes: int
) -> None:
    data = b"GET /ws/x HTTP/1.1\r\n" + noise + b"\r\n\r\n"
    outcome = head_outcome([data], max_bytes)
    if outcome[0] == "head":
        assert outcome[-1] <= max_bytes  # type: ignore[operator]
    assert outcome == head_outcome([data[i : i + 1] for i in range(len(data))], max_bytes) or (
        outcome[0] == "error"
    )


# ------------------------------------------------------------------------ WebSocket frames


def masked(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    key = b"\x0f\xf0\x55\xaa"
    size = len(payload)
    if size < 126:
        length = bytes([0x80 | size])
    elif size < 65536:
        length = bytes([0x80 | 126]) + size.to_bytes(2, "big")
    else:
        length = bytes([0x80 | 127]) + size.to_bytes(8, "big")
    body = bytes(byte ^ key[index % 4] for index, byte in enumerate(payload))
    return bytes([(0x80 if fin else 0) | opcode]) + length + key + body


CLIENT_STREAM = (
    masked(0x1, b'["1","1","room:a","phx_join",{}]')
    + masked(0x9, b"ping")
    + masked(0x1, "héllo ".encode(), fin=False)
    + masked(0x0, "wörld".encode())
    + masked(0x2, bytes(range(200)))
    + masked(0xA, b"")
    + masked(0x1, b"x" * 300)
    + masked(0x8, (1000).to_bytes(2, "big") + b"bye")
)


def frames_outcome(feed: Callable[[bytes], object], pieces: list[bytes]) -> object:
    messages: list[object] = []
    error: WebSocketProtocolError | None = None
    try:
        for piece in pieces:
            result = feed(piece)
            if isinstance(result, list):
                messages += [(message.opcode, message.payload) for message in result]
    except WebSocketProtocolError as caught:
        error = caught
    if error is not None:
        assert error.close_code in (1002, 1007, 1009), error.close_code
        return ("error", error.close_code)
    return messages


@settings(max_examples=120, deadline=None)
@given(mutations=st.lists(_mutation, min_size=1, max_size=3))
def test_fuzz_mutated_client_frames_at_every_split(mutations: list[tuple[str, float, int]]) -> None:
    data = mutate(CLIENT_STREAM, mutations)
    whole = frames_outcome(MessageReader(masked=True, max_message_bytes=512).feed, [data])
    tracker_whole = frames_outcome(FrameBoundaryTracker(masked=True).feed, [data])
    for cut in range(1, len(data), 3):
        pieces = [data[:cut], data[cut:]]
        split = frames_outcome(MessageReader(masked=True, max_message_bytes=512).feed, pieces)
        if isinstance(whole, tuple):
            # messages completed before the error in the same feed are not handed on
            assert isinstance(split, tuple), (cut, split)
            assert split == whole, (cut, split)
        else:
            assert split == whole, cut
        assert frames_outcome(FrameBoundaryTracker(masked=True).feed, pieces) == tracker_whole


def test_unmutated_client_frames_are_read() -> None:
    messages = frames_outcome(MessageReader(masked=True).feed, [CLIENT_STREAM])
    assert isinstance(messages, list)
    assert len(messages) == 7
    assert messages[2] == (0x1, "héllo wörld".encode())


# ------------------------------------------------------------------------------- Phoenix

PHOENIX_CONVERSATION: list[tuple[bool, str]] = [
    (True, '["1","1","room:a","phx_join",{"token":"t"}]'),
    (False, '["1","1","room:a","phx_reply",{"status":"ok","response":{}}]'),
    (True, '["2","2","room:b","phx_join",{}]'),
    (False, '["2","2","room:b","phx_reply",{"status":"ok","response":{}}]'),
    (True, '[null,"3","phoenix","heartbeat",{}]'),
    (False, '[null,"3","phoenix","phx_reply",{"status":"ok","response":{}}]'),
    (True, '["1","4","room:a","shout",{"body":"phx_join \\u0070hx_leave"}]'),
    (False, '["2",null,"room:b","phx_error",{}]'),
    (True, '["1","5","room:a","phx_leave",{}]'),
    (False, '["1","5","room:a","phx_reply",{"status":"ok","response":{}}]'),
    (False, '["1","1","room:a","phx_close",{}]'),
    (True, '{"topic":"room:c","event":"phx_join","payload":{},"ref":"6"}'),
]


def _text_mutation(text: str, mutations: list[tuple[str, float, int]]) -> bytes:
    return mutate(text.encode(), mutations)


def _close_code_of(error: PhoenixProtocolError) -> int:
    """1008 for a per-socket bound (pending joins, joined topics, ref length), else 1007."""
    return 1008 if isinstance(error, PhoenixLimitError) else 1007


@settings(max_examples=250, deadline=None)
@given(
    edits=st.lists(
        st.tuples(st.integers(0, len(PHOENIX_CONVERSATION) - 1), st.lists(_mutation, max_size=3)),
        max_size=4,
    ),
    serializer=st.sampled_from([None, "v2"]),
)
def test_fuzz_mutated_phoenix_conversation_prefilter_agrees_with_full_decoding(
    edits: list[tuple[int, list[tuple[str, float, int]]]], serializer: str | None
) -> None:
    """The relay's cheap pre-filtered path (client_text/server_text on bytes) must follow
    the same topics as decoding every message, and raise only PhoenixProtocolError."""
    conversation = [(from_client, text.encode()) for from_client, text in PHOENIX_CONVERSATION]
    for index, mutations in edits:
        from_client, text = PHOENIX_CONVERSATION[index]
        conversation[index] = (from_client, _text_mutation(text, mutations))
    fast = PhoenixSession(serializer, max_pending_joins=4, max_joined_topics=3)  # type: ignore[arg-type]
    full = PhoenixSession(serializer, max_pending_joins=4, max_joined_topics=3)  # type: ignore[arg-type]
    for from_client, payload in conversation:
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            continue  # the frame reader closes such a socket with 1007 before Phoenix sees it
        full_error: PhoenixProtocolError | None = None
        fast_error: PhoenixProtocolError | None = None
        try:
            full_events = (full.client_message if from_client else full.server_message)(
                payload.decode()
            )
        except PhoenixProtocolError as error:
            full_error, full_events = error, None
        if full_error is not None:
            assert full_error.close_code == _close_code_of(full_error)
        try:
            fast_events = (fast.client_text if from_client else fast.server_text)(payload)
        except PhoenixProtocolError as error:
            fast_error = error
        if fast_error is not None:
            assert fast_error.close_code == _close_code_of(fast_error)
            # the fast path may only refuse what full decoding refuses too
            assert full_events is None
            return
        if full_events is None:
            # full decoding refused a message the pre-filter skipped: the socket would be
            # closed in one mode and not the other, but only for a message that cannot
            # change topics; the two sessions stop being comparable here
            return
        assert list(fast_events) == full_events, payload
        assert fast.topics == full.topics
        assert len(fast.topics) <= 3


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from([0, 1, 2, 3, 255]),
    fields=st.lists(st.binary(max_size=12), min_size=0, max_size=5),
    sizes_delta=st.integers(-3, 3),
    tail=st.binary(max_size=20),
    from_client=st.booleans(),
)
def test_fuzz_phoenix_binary_messages_raise_only_1007(
    kind: int, fields: list[bytes], sizes_delta: int, tail: bytes, from_client: bool
) -> None:
    sizes = bytes(max(0, min(255, len(field) + sizes_delta)) for field in fields)
    data = bytes([kind]) + sizes + b"".join(fields) + tail
    session = PhoenixSession(max_joined_topics=2)
    feed = session.client_binary if from_client else session.server_binary
    try:
        events = feed(data)
    except PhoenixProtocolError as error:
        close_code: int | None = error.close_code
    else:
        close_code = None
    if close_code is not None:
        assert close_code == 1007
        return
    assert all(not isinstance(event, Joined) for event in events)  # a join needs a reply
    assert len(session.topics) <= 2
