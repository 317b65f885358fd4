"""Socket.IO, Action Cable, Centrifugo and Supabase Realtime through the real sidecar.

Each protocol's real client library (socket.io-client, @rails/actioncable, centrifuge,
@supabase/realtime-js) talks through a ``wsgauge-sidecar`` process to a real server library
(socket.io) or a small server of the protocol (js/servers/). After every step (subscribe,
refused subscribe, a subscription the server ends, unsubscribe, abrupt close, normal close,
many sockets) the sidecar's /stats must equal what the clients' libraries hold. Each runs
with the protocol's own ``--topic`` rule and with ``--topic auto`` (which must pick the
protocol from the accepted subprotocol or the URL, and show it per topic in /stats). A
malformed message closes that one socket with 1007 and loses no count elsewhere.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import socketio
import websockets
from js_clients_harness import ClientDriver, NodeServer
from sidecar_it_harness import DemoAppProcess, RawWebSocket, SidecarProcess


def signed_stream_name(name: str) -> str:
    """A Turbo Streams signed stream name (the signature is not checked by the sidecar)."""
    return base64.b64encode(json.dumps(name).encode()).decode() + "--" + "ab12" * 16


def action_cable_topic(identifier: str) -> str:
    """The wire topic the test expects for an Action Cable identifier."""
    params = json.loads(identifier)
    if params["channel"] == "Turbo::StreamsChannel":
        return str(json.loads(base64.b64decode(params["signed_stream_name"].split("--")[0])))
    return str(params["channel"])


@dataclass(frozen=True)
class Case:
    """One protocol: its rule, server, client library and topics."""

    rule: str
    server: str
    client: str
    path: str
    """The URL path the client library connects to (through the sidecar)."""
    topics: tuple[Any, Any]
    """Two topics as the client library names them."""
    refused: Any
    """A topic the server refuses."""
    topic_of: Callable[[Any], str]
    """What the library holds -> the topic name the sidecar must count it under."""
    raw_path: str
    """Path and headers of a raw WebSocket that sends the malformed message."""
    raw_headers: tuple[tuple[str, str], ...]
    malformed: str
    """A client message the rule must read and cannot parse."""
    app_close_code: int | None = None
    """The server library's own close code for ``malformed`` (0: a close frame without one):
    the native relay passes a message on before Python reads it, so the server's own close may
    reach the client first (socket.io closes on a packet it cannot decode)."""
    server_leave: bool = True
    """The test server can end a subscription on its own initiative."""
    http_scheme: bool = False
    supabase: bool = False
    """Join names are Supabase channel names: the wire topic is ``realtime:NAME``."""

    def wire(self, topic: Any) -> str:
        """The topic the sidecar counts a join of ``topic`` under."""
        if self.supabase:
            return f"realtime:{topic}"
        if isinstance(topic, dict):
            return self.topic_of(json.dumps(topic))
        return self.topic_of(topic)


CASES = {
    "socketio": Case(
        rule="socketio",
        server="socketio",
        client="socketio",
        path="",
        http_scheme=True,
        topics=("/chat", "/"),
        refused="/admin",
        topic_of=str,
        raw_path="/socket.io/?EIO=4&transport=websocket",
        raw_headers=(),
        malformed="40/chat,{not json",
        app_close_code=0,
    ),
    "socketio-demo": Case(
        rule="socketio",
        server="demo",
        client="socketio",
        path="",
        http_scheme=True,
        topics=("/chat", "/"),
        refused="/deny",
        topic_of=str,
        raw_path="/socket.io/?EIO=4&transport=websocket",
        raw_headers=(),
        malformed="44/x,{",
        server_leave=False,
    ),
    "actioncable": Case(
        rule="actioncable",
        server="actioncable",
        client="actioncable",
        path="/cable",
        topics=(
            {"channel": "ChatChannel", "room": "1"},
            {
                "channel": "Turbo::StreamsChannel",
                "signed_stream_name": signed_stream_name("gid://app/Room/1"),
            },
        ),
        refused={"channel": "RejectedChannel"},
        topic_of=action_cable_topic,
        raw_path="/cable",
        raw_headers=(("Sec-WebSocket-Protocol", "actioncable-v1-json"),),
        malformed='{"command":"subscribe","identifier":',
        server_leave=False,
    ),
    "centrifugo": Case(
        rule="centrifugo",
        server="centrifugo",
        client="centrifugo",
        path="/connection/websocket",
        topics=("news", "chat:1"),
        refused="private:x",
        topic_of=str,
        raw_path="/connection/websocket",
        raw_headers=(),
        malformed='{"id":1,"subscribe":{"channel":',
        app_close_code=3501,  # the test server's "bad request" (Centrifugo's own code)
    ),
    "supabase": Case(
        rule="phoenix",
        server="supabase",
        client="supabase",
        path="/realtime/v1",
        topics=("room1", "room2"),
        refused="private-room",
        topic_of=str,
        raw_path="/realtime/v1/websocket?vsn=2.0.0",
        raw_headers=(),
        malformed='["1","1","realtime:x","phx_join",',
        app_close_code=1011,  # the test server ends the socket, as Phoenix's crashing process
        supabase=True,
    ),
}


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> Case:
    return CASES[str(request.param)]


@pytest.fixture
def server(js_clients: Path, case: Case) -> Iterator[NodeServer | DemoAppProcess]:
    process = DemoAppProcess() if case.server == "demo" else NodeServer(js_clients, case.server)
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(params=["own", "auto"])
def sidecar(
    request: pytest.FixtureRequest, case: Case, server: NodeServer | DemoAppProcess
) -> Iterator[SidecarProcess]:
    rule = case.rule if request.param == "own" else "auto"
    process = SidecarProcess(server.port, "--topic", rule)
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
async def driver(
    js_clients: Path, case: Case, sidecar: SidecarProcess
) -> AsyncIterator[ClientDriver]:
    base = f"http://127.0.0.1:{sidecar.port}" if case.http_scheme else sidecar.ws_base
    process = await ClientDriver.start(js_clients, case.client, base + case.path)
    try:
        yield process
    finally:
        await process.stop()


async def counts_match(sidecar: SidecarProcess, driver: ClientDriver, case: Case) -> dict[str, Any]:
    """Wait until /stats equals what the libraries hold; the matching document."""
    connections, topics = driver.expected(case.topic_of)
    return await sidecar.wait_stats(
        lambda stats: stats["connections"] == connections and stats["topics"] == topics,
        timeout=30,
    )


async def test_counts_equal_what_the_client_libraries_hold(
    case: Case, sidecar: SidecarProcess, driver: ClientDriver
) -> None:
    first, second = case.topics
    for client in ("c0", "c1", "c2"):
        assert await driver.step("open", client) == "open"
    await counts_match(sidecar, driver, case)
    assert await driver.step("join", "c0", first) == "joined"
    assert await driver.step("join", "c0", second) == "joined"
    assert await driver.step("join", "c1", first) == "joined"
    stats = await counts_match(sidecar, driver, case)
    assert stats["topics"] == {case.wire(first): 2, case.wire(second): 1}

    assert await driver.step("join", "c2", case.refused) == "refused"
    await counts_match(sidecar, driver, case)
    if case.server_leave:
        assert await driver.step("server_leave", "c0", second) == "left"
        await counts_match(sidecar, driver, case)
    assert await driver.step("leave", "c1", first) is None
    before = await counts_match(sidecar, driver, case)
    await driver.step("kill", "c0")  # abrupt: no close frame, no Socket.IO/Phoenix goodbye
    stats = await counts_match(sidecar, driver, case)
    assert stats["connections"] == before["connections"] - 1
    assert await driver.step("open", "c3") == "open"
    assert await driver.step("join", "c3", second) == "joined"
    await counts_match(sidecar, driver, case)
    assert await driver.step("close", "c3") == "closed"  # a normal close
    await counts_match(sidecar, driver, case)

    for number in range(30):  # many sockets
        await driver.step("open", f"m{number}")
        assert await driver.step("join", f"m{number}", first) == "joined"
    stats = await counts_match(sidecar, driver, case)
    assert stats["topics"][case.wire(first)] == 30
    for number in range(0, 30, 2):
        await driver.step("kill", f"m{number}")
    stats = await counts_match(sidecar, driver, case)
    assert stats["topics"][case.wire(first)] == 15
    if "topicProtocols" in stats:
        expected = "phoenix" if case.rule == "phoenix" else case.rule
        assert stats["topicProtocols"][case.wire(first)] == expected


async def test_a_malformed_message_closes_only_that_socket(
    case: Case, sidecar: SidecarProcess, driver: ClientDriver
) -> None:
    first, _ = case.topics
    for client in ("c0", "c1"):
        await driver.step("open", client)
        await driver.step("join", client, first)
    before = await counts_match(sidecar, driver, case)
    raw = await RawWebSocket.connect(sidecar.port, case.raw_path, headers=dict(case.raw_headers))
    await sidecar.wait_stats(lambda stats: stats["connections"] == before["connections"] + 1)
    await raw.send_text(case.malformed)
    while True:
        opcode, payload = await raw.read_frame(timeout=15)
        if opcode == 0x8:
            break
    assert int.from_bytes(payload[:2], "big") in (1007, case.app_close_code)
    await raw.close_tcp()
    after = await counts_match(sidecar, driver, case)
    assert after["topics"] == before["topics"]
    assert after["connections"] == before["connections"]


@pytest.mark.parametrize("rule", ["socketio", "auto"])
async def test_python_socketio_client(js_clients: Path, rule: str) -> None:
    """python-socketio's AsyncClient against the socket.io server, through the sidecar."""
    server = NodeServer(js_clients, "socketio")
    sidecar = SidecarProcess(server.port, "--topic", rule)
    clients = [socketio.AsyncClient(reconnection=False) for _ in range(3)]
    try:
        url = f"http://127.0.0.1:{sidecar.port}"
        for client in clients[:2]:
            await client.connect(url, namespaces=["/", "/chat"], transports=["websocket"])
        await clients[2].connect(url, namespaces=["/news"], transports=["websocket"])
        await sidecar.wait_stats(
            lambda stats: (
                stats["connections"] == 3 and stats["topics"] == {"/": 2, "/chat": 2, "/news": 1}
            )
        )
        with pytest.raises(socketio.exceptions.ConnectionError):
            await socketio.AsyncClient(reconnection=False).connect(
                url, namespaces=["/admin"], transports=["websocket"], wait_timeout=10
            )
        await clients[0].disconnect()
        await sidecar.wait_stats(
            lambda stats: (
                stats["connections"] == 2 and stats["topics"] == {"/": 1, "/chat": 1, "/news": 1}
            )
        )
    finally:
        for client in clients:
            await client.disconnect()
        sidecar.stop()
        server.stop()


async def test_auto_keeps_compression_only_where_no_message_is_read() -> None:
    """Under ``auto``, a Socket.IO socket never negotiates permessage-deflate (its messages are
    read); a socket counted by its path keeps it. The client offers it both times."""
    app = DemoAppProcess()
    sidecar = SidecarProcess(app.port, "--topic", "auto")
    try:
        base = sidecar.ws_base
        async with websockets.connect(f"{base}/socket.io/?EIO=4&transport=websocket") as ws:
            assert ws.response is not None
            assert "Sec-WebSocket-Extensions" not in ws.response.headers
            await ws.recv()  # the Engine.IO open packet
            await ws.send("40/chat,")
            assert str(await ws.recv()).startswith("40/chat,")
            stats = await sidecar.wait_stats(lambda stats: stats["topics"] == {"/chat": 1})
            assert stats["topicProtocols"] == {"/chat": "socketio"}
        async with websockets.connect(f"{base}/ws/room") as ws:
            assert ws.response is not None
            assert "permessage-deflate" in ws.response.headers["Sec-WebSocket-Extensions"]
            await ws.send("x" * 2000)  # compressed both ways, relayed untouched
            assert await ws.recv() == "x" * 2000
            stats = await sidecar.wait_stats(lambda stats: stats["topics"] == {"/ws/room": 1})
            assert stats["topicProtocols"] == {"/ws/room": "path"}
    finally:
        sidecar.stop()
        app.stop()
