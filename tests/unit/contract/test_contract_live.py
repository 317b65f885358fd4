"""The live view's messages (``/stats/ws``): requests, the outbox bounds, the origin rule, and
one client's session against an in-memory socket."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wsgauge_contract.live import (
    CLOSE_POLICY,
    CLOSE_UNSUPPORTED,
    MAX_REQUEST_BYTES,
    OPERATOR_GETS,
    PUSH,
    SIDECAR_GETS,
    LiveOutbox,
    LiveRequest,
    LiveRequestError,
    cluster_message,
    connectionstats_message,
    encode_message,
    error_message,
    local_message,
    origin_allowed,
    parse_request,
)
from wsgauge_contract.live_session import LiveClients, LiveSettings, serve_live


def test_parse_requests() -> None:
    assert parse_request('{"get": "local"}', SIDECAR_GETS) == LiveRequest("local")
    assert parse_request('{"get": "local", "id": 7}', SIDECAR_GETS) == LiveRequest(
        "local", request_id=7
    )
    assert parse_request('{"get": "cluster", "id": "a"}', OPERATOR_GETS) == LiveRequest(
        "cluster", request_id="a"
    )
    text = '{"get": "connectionstats", "namespace": "prod", "name": "chat"}'
    assert parse_request(text, OPERATOR_GETS) == LiveRequest("connectionstats", "prod", "chat")


@pytest.mark.parametrize(
    ("text", "allowed", "message", "request_id"),
    [
        ("not json", SIDECAR_GETS, "not JSON", None),
        ("[1]", SIDECAR_GETS, "JSON object", None),
        ('{"get": "cluster"}', SIDECAR_GETS, "one of: local", None),
        ('{"get": "local"}', OPERATOR_GETS, "one of: cluster, connectionstats", None),
        ('{"get": "local", "id": 3, "x": 1}', SIDECAR_GETS, "unknown keys: x", 3),
        ('{"get": "local", "id": true}', SIDECAR_GETS, "'id'", None),
        ('{"get": "local", "id": [1]}', SIDECAR_GETS, "'id'", None),
        ('{"get": "connectionstats", "name": "a", "id": "q"}', OPERATOR_GETS, "namespace", "q"),
        ('{"get": "connectionstats", "namespace": "a", "name": ""}', OPERATOR_GETS, "name", None),
        (
            '{"get": "local", "pad": "' + "x" * MAX_REQUEST_BYTES + '"}',
            SIDECAR_GETS,
            "larger",
            None,
        ),
    ],
)
def test_bad_requests_say_why(
    text: str, allowed: frozenset[str], message: str, request_id: str | int | None
) -> None:
    with pytest.raises(LiveRequestError, match=message) as caught:
        parse_request(text, allowed)
    assert caught.value.request_id == request_id


@given(st.text(max_size=300))
def test_any_text_is_a_request_or_a_live_request_error(text: str) -> None:
    try:
        request = parse_request(text, OPERATOR_GETS)
    except LiveRequestError:
        return
    assert request.get in OPERATOR_GETS


@given(
    st.dictionaries(
        st.sampled_from(["get", "id", "namespace", "name", "other"]),
        st.one_of(
            st.none(), st.booleans(), st.integers(), st.text(max_size=20), st.lists(st.integers())
        ),
    )
)
def test_any_object_is_a_request_or_a_live_request_error(body: dict[str, Any]) -> None:
    try:
        request = parse_request(json.dumps(body), OPERATOR_GETS)
    except LiveRequestError:
        return
    assert request.get == body["get"]


def test_messages() -> None:
    stats = {"pod": "p", "connections": 2, "seq": 5}
    assert local_message(stats) == {"type": "local", "seq": 5, "stats": stats}
    assert local_message(stats, 1)["id"] == 1
    assert cluster_message({"seq": 9}, "x") == {
        "type": "cluster",
        "seq": 9,
        "cluster": {"seq": 9},
        "id": "x",
    }
    assert connectionstats_message("ns", "n", {"a": 1}) == {
        "type": "connectionstats",
        "namespace": "ns",
        "name": "n",
        "connectionStats": {"a": 1},
    }
    assert error_message("bad", 2) == {"type": "error", "error": "bad", "id": 2}
    assert json.loads(encode_message({"a": [1, 2]})) == {"a": [1, 2]}
    assert " " not in encode_message({"a": [1, 2]})


@pytest.mark.parametrize(
    ("origin", "host", "allowed"),
    [
        (None, None, True),  # not a browser
        (None, "x:1", True),
        ("http://127.0.0.1:8090", "127.0.0.1:8090", True),
        ("http://LOCALHOST:8090", "localhost:8090", True),
        ("https://wsgauge.example", "wsgauge.example", True),
        ("https://wsgauge.example", "wsgauge.example:443", True),
        ("http://wsgauge.example", "wsgauge.example:80", True),
        ("http://[::1]:8090", "[::1]:8090", True),
        ("http://evil.example", "127.0.0.1:8090", False),
        ("http://127.0.0.1:9999", "127.0.0.1:8090", False),
        ("https://wsgauge.example", "wsgauge.example:80", False),
        ("null", "127.0.0.1:8090", False),
        ("file://", "127.0.0.1:8090", False),
        ("http://127.0.0.1:8090", None, False),
    ],
)
def test_origin_rule(origin: str | None, host: str | None, allowed: bool) -> None:
    assert origin_allowed(origin, host) is allowed


def test_outbox_coalesces_pushes_and_bounds_answers() -> None:
    outbox = LiveOutbox(max_pending_answers=2)
    assert outbox.take() is PUSH  # the first document at once
    assert outbox.take() is None
    for _ in range(100):
        outbox.note_change()
    assert len(outbox) == 1
    first, second = LiveRequest("local", request_id=1), LiveRequest("local", request_id=2)
    assert outbox.add_request(first)
    assert outbox.add_request(second)
    assert not outbox.add_request(LiveRequest("local"))  # over the bound
    assert len(outbox) == 3
    assert outbox.take() is first  # answers before the push
    assert outbox.take() is second
    assert outbox.take() is PUSH
    assert outbox.take() is None
    assert not outbox.push_due


def test_live_clients_limit() -> None:
    clients = LiveClients(2)
    assert clients.admit()
    assert clients.admit()
    assert not clients.admit()
    clients.release()
    assert clients.admit()


class MemorySocket:
    """A LiveSocket in memory; ``stalled`` makes every send wait forever (a client that
    never reads)."""

    def __init__(self, *, stalled: bool = False) -> None:
        self.sent: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None
        self.aborted = False
        self.stalled = stalled
        self.frames: asyncio.Queue[str | bytes | None] = asyncio.Queue()

    async def send_text(self, text: str) -> None:
        if self.stalled:
            await asyncio.Event().wait()
        self.sent.append(json.loads(text))

    async def close(self, code: int, reason: str) -> None:
        if self.stalled:
            await asyncio.Event().wait()
        self.closed = (code, reason)

    def abort(self) -> None:
        self.aborted = True

    async def incoming(self) -> AsyncIterator[str | bytes]:
        while (frame := await self.frames.get()) is not None:
            yield frame


class CountingSource:
    """A LiveSource whose document is a counter; ``bump`` changes it."""

    allowed = SIDECAR_GETS

    def __init__(self) -> None:
        self.value = 0
        self.pushes = 0
        self._changed = asyncio.Event()

    def bump(self) -> None:
        self.value += 1
        self._changed.set()

    def push(self) -> dict[str, Any]:
        self.pushes += 1
        return local_message({"seq": self.value})

    def answer(self, request: LiveRequest) -> dict[str, Any]:
        return local_message({"seq": self.value}, request.request_id)

    async def wait_change(self) -> None:
        await self._changed.wait()
        self._changed.clear()


async def eventually(check: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_session_pushes_latest_answers_and_ends_when_the_client_leaves() -> None:
    socket, source = MemorySocket(), CountingSource()
    settings = LiveSettings(min_interval=0.05)
    session = asyncio.ensure_future(serve_live(socket, socket.incoming(), source, settings))
    await eventually(lambda: len(socket.sent) == 1)
    assert socket.sent[0] == {"type": "local", "seq": 0, "stats": {"seq": 0}}
    for _ in range(50):  # a burst of changes: coalesced, the latest always arrives
        source.bump()
    await eventually(lambda: socket.sent[-1]["seq"] == 50)
    assert source.pushes < 50
    await socket.frames.put('{"get": "local", "id": "q"}')
    await eventually(lambda: socket.sent[-1].get("id") == "q")
    await socket.frames.put('{"get": "nope"}')
    await eventually(lambda: socket.sent[-1]["type"] == "error")
    assert "one of: local" in socket.sent[-1]["error"]
    await socket.frames.put(None)
    assert await session == "client closed"
    assert not socket.aborted


async def test_a_client_that_never_reads_is_cut() -> None:
    socket, source = MemorySocket(stalled=True), CountingSource()
    settings = LiveSettings(send_timeout=0.2)
    reason = await asyncio.wait_for(
        serve_live(socket, socket.incoming(), source, settings), timeout=10
    )
    assert reason == "cut: not reading"
    assert socket.aborted


async def test_a_client_that_asks_without_reading_is_closed() -> None:
    socket, source = MemorySocket(stalled=True), CountingSource()
    settings = LiveSettings(send_timeout=0.5, max_pending_answers=3)
    for _ in range(10):
        await socket.frames.put('{"get": "local"}')
    session = serve_live(socket, socket.incoming(), source, settings)
    # the close frame cannot be sent either (the client reads nothing): cut after send_timeout
    assert await asyncio.wait_for(session, timeout=20) in (
        "too many unanswered requests",
        "cut: not reading",
    )
    assert socket.aborted


async def test_binary_frames_close_the_socket() -> None:
    socket, source = MemorySocket(), CountingSource()
    await socket.frames.put(b"\x00")
    reason = await serve_live(socket, socket.incoming(), source, LiveSettings())
    assert reason == "binary frame"
    assert socket.closed is not None
    assert socket.closed[0] == CLOSE_UNSUPPORTED
    assert CLOSE_POLICY == 1008
