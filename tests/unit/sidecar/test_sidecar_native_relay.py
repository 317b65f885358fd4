"""The native relay (``wsgauge_sidecar._native_relay``): its tracker against the Python one, and
the relay thread over real socket pairs (bytes both ways, a drain's close frame at a frame
boundary, close events with their reasons, backpressure)."""

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
from wsgauge_sidecar.wsframes import FrameBoundaryTracker, Opcode, encode_close_frame, encode_frame

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
        received = b""
        while len(received) < size:
            chunk = self.client.recv(size - len(received))
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
