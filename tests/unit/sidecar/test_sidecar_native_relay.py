"""The native relay (``wsgauge_sidecar._native_relay``): its tracker against the Python one, its
message reader and filter against the Python reader and ``MessageFilter.wants``, and the relay
thread over real socket pairs (bytes both ways, a drain's close frame at a frame boundary, close
events with their reasons, backpressure; under a message filter: masked client frames, needles
and headers split across reads, fragments, filter updates from Python, 1009/1007 closes,
``fail``)."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsgauge_sidecar.exceptions import WebSocketProtocolError
from wsgauge_sidecar.native_relay import load_extension
from wsgauge_sidecar.protocols.prefilter import MessageFilter
from wsgauge_sidecar.wsframes import (
    FrameBoundaryTracker,
    MessageReader,
    Opcode,
    encode_close_frame,
    encode_frame,
)

extension, why = load_extension()
pytestmark = pytest.mark.skipif(extension is None, reason=f"the native relay is {why}")


def native() -> ModuleType:
    assert extension is not None
    return extension


# -- the tracker ---------------------------------------------------------------------------

frame_strategy = st.one_of(
    st.builds(
        lambda op, payload, fin: encode_frame(op, payload, fin=fin),
        st.sampled_from([Opcode.TEXT, Opcode.BINARY, Opcode.CONTINUATION]),
        st.binary(max_size=300).map(lambda b: b * 3),
        st.booleans(),
    ),
    st.builds(lambda p: encode_frame(Opcode.PING, p), st.binary(max_size=125)),
    st.builds(encode_close_frame, st.sampled_from([1000, 1001, 1011, 4000])),
    st.just(encode_frame(Opcode.CLOSE)),
    st.binary(min_size=1, max_size=4),  # junk: usually a protocol error
)


@settings(max_examples=300, deadline=None)
@given(st.lists(frame_strategy, max_size=8), st.data())
def test_native_tracker_agrees_with_the_python_tracker(frames: list[bytes], data: Any) -> None:
    stream = b"".join(frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    python, c_tracker = FrameBoundaryTracker(masked=False), native().Tracker()
    start = 0
    for end in [*cuts, len(stream)]:
        chunk = stream[start:end]
        start = end
        python_error = native_error = False
        try:
            python.feed(chunk)
        except WebSocketProtocolError:
            python_error = True
        try:
            assert c_tracker.feed(chunk) == len(chunk)
        except ValueError:
            native_error = True
        assert python_error == native_error
        if python_error:
            return
        assert c_tracker.at_boundary == python.at_boundary
        assert c_tracker.close_code_seen == python.close_code_seen
        assert c_tracker.frames_seen == python.frames_seen


def test_native_tracker_stops_at_the_next_boundary() -> None:
    first, second = encode_frame(Opcode.TEXT, b"x" * 200), encode_frame(Opcode.BINARY, b"y")
    tracker = native().Tracker()
    assert tracker.feed(first[:3]) == 3
    assert tracker.feed(first[3:] + second, True) == len(first) - 3
    assert tracker.at_boundary
    assert tracker.feed(second, True) == 0  # already at a boundary: nothing passes it


# -- the relay thread over socket pairs ----------------------------------------------------


class Pair:
    """A relay with one socket pair: ``client`` and ``app`` are the outer ends."""

    def __init__(self, relay: Any, token: int, to_client: bytes = b"") -> None:
        self.relay = relay
        self.token = token
        self.client, client_inner = socket.socketpair()
        upstream_inner, self.app = socket.socketpair()
        for sock in (self.client, self.app):
            sock.settimeout(5)
        for inner in (client_inner, upstream_inner):
            inner.setblocking(False)
        self.slot = relay.add(
            client_inner.detach(), upstream_inner.detach(), token, b"HTTP/1.1 101\r\n\r\n",
            to_client, b"",
        )  # fmt: skip

    def read_client(self, size: int) -> bytes:
        return read_up_to(self.client, size)


def read_up_to(sock: socket.socket, size: int) -> bytes:
    """``size`` bytes from a blocking socket, fewer if it closes first."""
    received = b""
    while len(received) < size:
        chunk = sock.recv(size - len(received))
        if not chunk:
            break
        received += chunk
    return received


def wait_events(relay: Any, until: Callable[[list[tuple[int, int, int]]], bool]) -> list[Any]:
    seen: list[tuple[int, int, int]] = []
    deadline = time.monotonic() + 5
    while not until(seen) and time.monotonic() < deadline:
        select.select([relay.fileno()], [], [], 0.2)
        seen += relay.events()
    return seen


@pytest.fixture
def relay() -> Iterator[Any]:
    running = native().Relay(close_timeout=1.0, linger_seconds=0.5)
    yield running
    running.shutdown()


def test_bytes_go_both_ways_and_an_app_close_is_normal(relay: Any) -> None:
    pair = Pair(relay, 7, to_client=encode_frame(Opcode.TEXT, b"early"))
    head = b"HTTP/1.1 101\r\n\r\n"
    assert pair.read_client(len(head) + 7) == head + encode_frame(Opcode.TEXT, b"early")
    pair.client.sendall(b"masked bytes are passed as they are")
    assert pair.app.recv(100) == b"masked bytes are passed as they are"
    pair.app.sendall(encode_close_frame(1000))
    assert pair.read_client(4) == encode_close_frame(1000)
    pair.app.close()
    events = wait_events(relay, bool)
    assert events == [(7, native().EV_CLOSED, native().R_NORMAL)]
    assert pair.client.recv(10) == b""  # then the client's side is closed
    assert relay.stats()[2] == 0


def test_drain_close_frame_waits_for_the_frame_in_flight(relay: Any) -> None:
    pair = Pair(relay, 8)
    pair.read_client(len(b"HTTP/1.1 101\r\n\r\n"))
    big = encode_frame(Opcode.BINARY, b"z" * 5000)
    pair.app.sendall(big[:1000])
    assert pair.read_client(1000) == big[:1000]
    assert relay.close_gracefully(pair.slot, 8, 1001, b"going away")
    assert not relay.close_gracefully(pair.slot, 8, 1001, b"going away")  # once
    pair.app.sendall(big[1000:] + encode_frame(Opcode.TEXT, b"after the boundary"))
    expected = big[1000:] + encode_close_frame(1001, "going away")
    assert pair.read_client(len(expected)) == expected
    pair.app.close()
    assert pair.read_client(1) == b""  # nothing after the close frame
    assert wait_events(relay, bool) == [(8, native().EV_CLOSED, native().R_UPSTREAM_GONE)]


def test_client_eof_is_passed_on_and_reported(relay: Any) -> None:
    pair = Pair(relay, 9)
    pair.client.shutdown(socket.SHUT_WR)
    assert pair.app.recv(10) == b""
    events = wait_events(relay, bool)
    assert events == [(9, native().EV_CLIENT_EOF, native().R_CLIENT_GONE)]
    pair.app.close()
    events = wait_events(relay, bool)
    assert events == [(9, native().EV_CLOSED, native().R_CLIENT_GONE)]


def test_a_masked_frame_from_the_app_is_a_protocol_error(relay: Any) -> None:
    pair = Pair(relay, 10)
    pair.read_client(len(b"HTTP/1.1 101\r\n\r\n"))
    pair.app.sendall(encode_frame(Opcode.TEXT, b"no", mask=True))
    events = wait_events(relay, bool)
    assert events == [(10, native().EV_CLOSED, native().R_PROTOCOL_ERROR)]
    assert pair.read_client(1) == b""  # lingering close: FIN, the malformed frame not passed
    assert pair.app.recv(1) == b""


def test_end_from_python_posts_no_event_and_unknown_slots_are_ignored(relay: Any) -> None:
    pair = Pair(relay, 11)
    relay.end(pair.slot, 11, True)
    relay.end(pair.slot, 11, True)  # again: nothing
    relay.end(12345, 99, False)
    assert pair.app.recv(10) == b""
    assert not relay.close_gracefully(pair.slot, 11, 1001, b"")
    assert wait_events(relay, lambda seen: False) == []


def test_a_client_that_does_not_read_stops_the_app_side_reading(relay: Any) -> None:
    pair = Pair(relay, 12)
    pair.app.setblocking(False)
    chunk = encode_frame(Opcode.BINARY, b"q" * 60000)
    sent, blocked_since, rest = 0, None, chunk
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            count = pair.app.send(rest)  # whole frames only: the relay checks them
            sent += count
            rest = rest[count:] or chunk
            blocked_since = None
        except BlockingIOError:
            blocked_since = blocked_since or time.monotonic()
            if time.monotonic() - blocked_since > 0.5:
                break  # the app could not send for half a second: the relay stopped reading
            time.sleep(0.02)
    assert blocked_since is not None, f"the relay kept taking bytes ({sent})"
    _, to_client, live = relay.stats()
    assert live == 1
    assert to_client <= sent


# -- the message reader and its filter (frame protocol rules) --------------------------------

NEEDLES = (b"phx_join", b"phx_reply", b"\\")
"""The text needles of the reader tests (Phoenix-like; the binary ones: every message)."""


def reference_messages(
    reader: MessageReader, chunk: bytes, text: tuple[bytes, ...], binary: tuple[bytes, ...]
) -> list[tuple[int, bytes]]:
    """What the native reader must hand over for ``chunk``: the Python reader's data messages
    that pass the same filter (the pure-Python reference, ``MessageFilter.wants``)."""
    wanted = MessageFilter(client_text=text, client_binary=binary)
    return [
        (int(opcode), payload)
        for opcode, payload in reader.feed(chunk)
        if opcode in (Opcode.TEXT, Opcode.BINARY)
        and wanted.wants(payload, from_client=True, binary=opcode == Opcode.BINARY)
    ]


payload_strategy = st.one_of(
    st.binary(max_size=40),
    st.builds(
        lambda a, needle, b: a + needle + b,
        st.binary(max_size=20),
        st.sampled_from([*NEEDLES, b"phx_", b"reply", "é€😀".encode()]),
        st.binary(max_size=20),
    ),
    st.text(max_size=30).map(str.encode),
)


def data_frames(masked: bool) -> st.SearchStrategy[bytes]:
    """Frames of one direction: messages (some fragmented), control frames, sometimes junk."""
    message = st.builds(
        lambda opcode, payload, parts: _fragments(opcode, payload, parts, masked),
        st.sampled_from([Opcode.TEXT, Opcode.BINARY]),
        payload_strategy,
        st.integers(1, 3),
    )
    control = st.one_of(
        st.builds(lambda p: encode_frame(Opcode.PING, p, mask=masked), st.binary(max_size=20)),
        st.builds(
            lambda code, reason: encode_frame(
                Opcode.CLOSE, code.to_bytes(2, "big") + reason, mask=masked
            ),
            st.sampled_from([1000, 1001, 1005, 1016, 2999, 3000, 4999, 5000]),
            st.sampled_from([b"", b"bye", b"\xff"]),
        ),
    )
    odd = st.one_of(
        st.builds(
            lambda p: encode_frame(Opcode.TEXT, p, mask=masked, rsv=4), st.binary(max_size=5)
        ),
        st.just(encode_frame(Opcode.CONTINUATION, b"stray", mask=masked)),
        st.just(encode_frame(Opcode.TEXT, b"x", mask=not masked)),
        st.just(encode_frame(Opcode.BINARY, b"b" * 200, mask=masked)),  # over the bound (100)
        st.binary(min_size=1, max_size=3),
    )
    return st.one_of(message, message, message, control, odd)


def _fragments(opcode: Opcode, payload: bytes, parts: int, masked: bool) -> bytes:
    size = max(1, -(-len(payload) // parts))
    pieces = [payload[i : i + size] for i in range(0, len(payload), size)] or [b""]
    frames = []
    for index, piece in enumerate(pieces):
        frames.append(
            encode_frame(
                opcode if index == 0 else Opcode.CONTINUATION,
                piece,
                fin=index == len(pieces) - 1,
                mask=masked,
            )
        )
    return b"".join(frames)


@settings(max_examples=400, deadline=None)
@given(st.booleans(), st.data())
def test_native_reader_hands_over_what_the_python_reader_and_filter_select(
    masked: bool, data: Any
) -> None:
    frames = data.draw(st.lists(data_frames(masked), max_size=8))
    binary = data.draw(st.sampled_from([(b"",), (), (b"\x00",)]))
    stream = b"".join(frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    python = MessageReader(masked=masked, max_message_bytes=100)
    c_reader = native().Reader(masked, 100, NEEDLES, binary)
    start = 0
    for end in [*cuts, len(stream)]:
        chunk = stream[start:end]
        start = end
        try:
            expected: list[tuple[int, bytes]] | int = reference_messages(
                python, chunk, NEEDLES, binary
            )
        except WebSocketProtocolError as error:
            expected = error.close_code
        try:
            got: list[tuple[int, bytes]] | int = c_reader.feed(chunk)
        except ValueError as error:
            got = error.args[0]  # (close code, reason)
        assert got == expected
        if isinstance(expected, int):
            return


def test_native_reader_needles_straddling_reads_and_the_empty_needle() -> None:
    frame = encode_frame(Opcode.TEXT, b'["1","1","room:a","phx_join",{}]', mask=True)
    for cut in range(1, len(frame)):
        reader = native().Reader(True, 1 << 20, (b"phx_join",), ())
        assert reader.feed(frame[:cut]) == []
        assert reader.feed(frame[cut:]) == [(1, b'["1","1","room:a","phx_join",{}]')]
    everything = native().Reader(False, 1 << 20, (b"",), ())
    assert everything.feed(encode_frame(Opcode.TEXT, b"")) == [(1, b"")]
    nothing = native().Reader(False, 1 << 20, (), ())
    assert nothing.feed(encode_frame(Opcode.TEXT, b"phx_join")) == []


def test_native_reader_limits_and_utf8() -> None:
    big = native().Reader(False, 1 << 24, (b"needle",), ())
    payload = b"a" * (1 << 23) + b"needle"  # 8 MiB and a needle at the very end
    frame = encode_frame(Opcode.TEXT, payload)
    got = []
    for start in range(0, len(frame), 65536):
        got += big.feed(frame[start : start + 65536])
    assert got == [(1, payload)]
    header = b"\x80\x7f" + ((1 << 24) + 1).to_bytes(8, "big")  # a continuation, 16 MiB + 1
    with pytest.raises(ValueError, match="message too big") as too_big:
        native().Reader(False, 1 << 24, (), ()).feed(
            encode_frame(Opcode.BINARY, b"", fin=False) + header
        )
    assert too_big.value.args == (1009, "message too big")
    for bad in (b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"ok\xe2\x82"):
        with pytest.raises(ValueError, match="invalid payload") as invalid:
            native().Reader(False, 100, (), ()).feed(encode_frame(Opcode.TEXT, bad))
        assert invalid.value.args[0] == 1007
    good = "ascii é € 😀".encode()
    assert native().Reader(False, 100, (b"",), ()).feed(encode_frame(Opcode.TEXT, good)) == [
        (1, good)
    ]


# -- the relay thread with a message filter ------------------------------------------------

PHOENIX_WIDE = ((b"phx_",), (b"",), (b"phx_close", b"phx_reply"), (b"",))
PHOENIX_NARROW = ((b"phx_",), (b"",), (b"phx_close",), (b"",))


class FilteredPair(Pair):
    """A socket pair relayed with a message filter (wide and narrow ids) and a 1 KiB bound."""

    def __init__(self, relay: Any, token: int, wide: int, narrow: int) -> None:
        self.relay = relay
        self.token = token
        self.client, client_inner = socket.socketpair()
        upstream_inner, self.app = socket.socketpair()
        for sock in (self.client, self.app):
            sock.settimeout(5)
        for inner in (client_inner, upstream_inner):
            inner.setblocking(False)
        self.slot = relay.add(
            client_inner.detach(), upstream_inner.detach(), token, b"", b"", b"", wide, narrow,
            1024,
        )  # fmt: skip

    def read_app(self, size: int) -> bytes:
        return read_up_to(self.app, size)


def messages(relay: Any, count: int) -> list[tuple[int, int, Any]]:
    return wait_events(relay, lambda seen: len(seen) >= count)


def test_masked_client_frames_pass_unchanged_and_matching_ones_reach_python(relay: Any) -> None:
    wide, narrow = relay.filter(*PHOENIX_WIDE), relay.filter(*PHOENIX_NARROW)
    pair = FilteredPair(relay, 21, wide, narrow)
    join = encode_frame(Opcode.TEXT, b'["1","1","room:a","phx_join",{}]', mask=True)
    push = encode_frame(Opcode.TEXT, b'["1","2","room:a","msg",{}]', mask=True)
    for cut in (5, len(join) - 3):  # the needle and the header split across reads
        pair.client.sendall(join[:cut])
        assert pair.read_app(cut) == join[:cut]
        pair.client.sendall(join[cut:] + push)
        assert pair.read_app(len(join) - cut + len(push)) == join[cut:] + push  # unaltered
    events = messages(relay, 2)
    assert events == [(21, native().EV_CLIENT_TEXT, b'["1","1","room:a","phx_join",{}]')] * 2
    # fragments: reassembled, handed once, relayed as they came
    parts = _fragments(Opcode.TEXT, b'["1","3","room:b","phx_join",{}]', 3, masked=True)
    pair.client.sendall(parts)
    assert pair.read_app(len(parts)) == parts
    assert messages(relay, 1) == [
        (21, native().EV_CLIENT_TEXT, b'["1","3","room:b","phx_join",{}]')
    ]


def test_the_wide_filter_applies_until_python_acknowledges(relay: Any) -> None:
    wide, narrow = relay.filter(*PHOENIX_WIDE), relay.filter(*PHOENIX_NARROW)
    pair = FilteredPair(relay, 22, wide, narrow)
    reply = encode_frame(Opcode.TEXT, b'["1","1","room:a","phx_reply",{"status":"ok"}]')
    pair.app.sendall(reply)  # nothing handed yet: the narrow filter, phx_reply does not pass
    assert pair.read_client(len(reply)) == reply
    join = encode_frame(Opcode.TEXT, b'["1","1","room:a","phx_join",{}]', mask=True)
    pair.client.sendall(join)
    assert pair.read_app(len(join)) == join
    pair.app.sendall(reply)  # the join is not acknowledged: the wide filter, it passes
    assert pair.read_client(len(reply)) == reply
    kinds = [kind for _, kind, _ in messages(relay, 2)]
    assert kinds == [native().EV_CLIENT_TEXT, native().EV_SERVER_TEXT]
    relay.update(pair.slot, 22, 2, narrow)  # Python: no join pending any more
    pair.app.sendall(reply)
    assert pair.read_client(len(reply)) == reply
    binary = encode_frame(Opcode.BINARY, b"\x02\x01\x01ab")
    pair.app.sendall(binary)  # the binary needle b"" passes every binary message
    assert pair.read_client(len(binary)) == binary
    assert [kind for _, kind, _ in messages(relay, 1)] == [native().EV_SERVER_BINARY]
    relay.update(pair.slot, 22, 1, relay.filter((), (), (), ()))
    pair.app.sendall(binary)
    assert pair.read_client(len(binary)) == binary
    assert wait_events(relay, lambda seen: False) == []


def test_a_message_over_the_bound_closes_with_1009_and_is_not_relayed(relay: Any) -> None:
    pair = FilteredPair(relay, 23, relay.filter(*PHOENIX_WIDE), relay.filter(*PHOENIX_NARROW))
    pair.client.sendall(encode_frame(Opcode.BINARY, b"x" * 2000, mask=True))
    assert pair.read_client(64) == encode_close_frame(1009, "message too big")
    assert pair.app.recv(10) == b""  # the app's side closed, the message not passed
    events = wait_events(relay, bool)
    assert events == [(23, native().EV_CLOSED, native().R_PROTOCOL_ERROR)]


def test_invalid_utf8_from_the_app_closes_with_1007(relay: Any) -> None:
    pair = FilteredPair(relay, 24, relay.filter(*PHOENIX_WIDE), relay.filter(*PHOENIX_NARROW))
    pair.app.sendall(encode_frame(Opcode.TEXT, b"ok") + encode_frame(Opcode.TEXT, b"\xff"))
    assert pair.read_client(64) == encode_close_frame(1007, "invalid payload")
    assert wait_events(relay, bool) == [(24, native().EV_CLOSED, native().R_PROTOCOL_ERROR)]


def test_fail_from_python_closes_with_its_code_and_posts_nothing(relay: Any) -> None:
    pair = FilteredPair(relay, 25, relay.filter(*PHOENIX_WIDE), relay.filter(*PHOENIX_NARROW))
    relay.fail(pair.slot, 25, 1008, b"")
    assert pair.read_client(64) == encode_close_frame(1008)
    assert pair.app.recv(10) == b""
    relay.fail(pair.slot, 25, 1008, b"")  # again: nothing
    assert wait_events(relay, lambda seen: False) == []
    assert relay.stats()[2] == 0 or pair.client.recv(10) == b""
