"""The graphql-ws, mqtt, stomp and pusher rules with real client libraries through the real
sidecar (a process on loopback) in front of a real server library (graphql-ws's server, the
aedes MQTT broker) or a small test server (STOMP, Pusher; see ``js/server.js``).

After every step the sidecar's /stats must equal what the clients hold: subscribe,
re-subscribe, a refused subscription, unsubscribe, many sockets, an abrupt end of many
sockets (the client process is killed), a malformed message (that one socket is closed
with the rule's close code and nothing else changes) and a normal close.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from protocols_it_harness import NodeClients, NodeServer, ws_url
from sidecar_it_harness import RawWebSocket, SidecarProcess, mask_frame

Sub = tuple[str, str | None]
"""(topic, GraphQL query or None)."""


@dataclass(frozen=True)
class Case:
    """One protocol: its rule, path, topics and what the tests send."""

    protocol: str
    rule: str
    path: str
    a: Sub
    b: Sub
    refused: Sub
    refusal_closes: bool = False
    """The server closes the socket after refusing (STOMP ERROR)."""
    resubscribe: bool = False
    """Re-subscribing the same topic on one socket is a protocol step (MQTT)."""
    subprotocol: str | None = None
    malformed: bytes = b""
    malformed_opcode: int = 0x1
    close_code: int = 1007
    app_close_code: int | None = None
    """The app's own close code for the malformed message: the native relay passes a message on
    before Python reads it, so the app's close may reach the client first (graphql-ws: 4400)."""


CASES = [
    Case(
        "graphql", "graphql-ws", "/graphql",
        a=("OnTick", None), b=("greetings", "subscription { greetings }"),
        refused=("nope", "subscription { nope }"), subprotocol="graphql-transport-ws",
        malformed=b'{"type":"subscribe","id":1,"payload":{}}', app_close_code=4400,
    ),
    Case(
        "mqtt", "mqtt", "/mqtt", a=("chat/a", None), b=("chat/+", None),
        refused=("forbidden/x", None), resubscribe=True, subprotocol="mqtt",
        malformed=b"MQTT allows only binary messages", close_code=1003,
    ),
    Case(
        "stomp", "stomp", "/stomp", a=("/topic/a", None), b=("/queue/b", None),
        refused=("/forbidden/x", None), refusal_closes=True, subprotocol="v12.stomp",
        malformed=b"SUBSCRIBE\nno colon in this header\n\n\0",
    ),
    Case(
        "pusher", "pusher", "/app/app-key?protocol=7", a=("chat", None),
        b=("private-b", None), refused=("private-bad", None),
        malformed=b"pusher:unsubscribe is not json",
    ),
]  # fmt: skip


@pytest.fixture(params=CASES, ids=[case.protocol for case in CASES])
def case(request: pytest.FixtureRequest) -> Case:
    result: Case = request.param
    return result


@pytest.fixture
async def rig(case: Case) -> AsyncIterator[tuple[SidecarProcess, NodeServer, list[NodeClients]]]:
    """The protocol's server, a sidecar with its rule in front, and the client processes
    the test starts (all stopped at the end)."""
    server = await NodeServer(case.protocol).start()
    sidecar = SidecarProcess(server.port, "--topic", case.rule)
    clients: list[NodeClients] = []
    try:
        yield sidecar, server, clients
    finally:
        for group in clients:
            await group.kill()
        sidecar.stop()
        await server.stop()


async def held(*groups: NodeClients) -> dict[str, Any]:
    """What the client processes hold together."""
    connections, topics = 0, dict[str, int]()
    for group in groups:
        answer = await group.held()
        connections += answer["connections"]
        for topic, count in answer["topics"].items():
            topics[topic] = topics.get(topic, 0) + count
    return {"connections": connections, "topics": topics}


async def settles(sidecar: SidecarProcess, *groups: NodeClients) -> dict[str, Any]:
    """Wait until /stats equals what the clients hold; that holding."""
    expected = await held(*groups)
    await sidecar.wait_stats(
        lambda stats: (
            stats["connections"] == expected["connections"]
            and stats["topics"] == expected["topics"]
        )
    )
    return expected


async def test_counts_equal_what_the_clients_hold(
    case: Case, rig: tuple[SidecarProcess, NodeServer, list[NodeClients]]
) -> None:
    sidecar, _, started = rig
    url = ws_url(sidecar.port, case.path)
    clients = await NodeClients(case.protocol, url).start()
    started.append(clients)
    (a, query_a), (b, query_b) = case.a, case.b
    for sock in ("s1", "s2", "s3"):
        await clients.open(sock)
    assert (await settles(sidecar, clients))["connections"] == 3

    assert await clients.subscribe("s1", a, query_a)
    assert await clients.subscribe("s2", a, query_a)
    assert await clients.subscribe("s2", b, query_b)
    assert await clients.subscribe("s3", b, query_b)
    assert (await settles(sidecar, clients))["topics"] == {a: 2, b: 2}

    if case.resubscribe:  # the same filter again on s1: replaced, still one
        assert await clients.subscribe("s1", a, query_a)
        assert (await settles(sidecar, clients))["topics"] == {a: 2, b: 2}

    refused, query_refused = case.refused
    assert not await clients.subscribe("s3", refused, query_refused)
    expected = await settles(sidecar, clients)
    assert refused not in expected["topics"]
    if case.refusal_closes:
        assert expected == {"connections": 2, "topics": {a: 2, b: 1}}

    await clients.unsubscribe("s2", a)
    assert (await settles(sidecar, clients))["topics"][a] == 1

    many = await NodeClients(case.protocol, url).start()
    started.append(many)
    for index in range(20):
        await many.open(f"m{index}")
        assert await many.subscribe(f"m{index}", a, query_a)
    assert (await settles(sidecar, clients, many))["topics"][a] == 21
    await many.kill()  # 20 sockets end without a close handshake
    assert (await settles(sidecar, clients))["topics"][a] == 1

    await clients.close("s1")
    assert a not in (await settles(sidecar, clients))["topics"]


async def test_a_malformed_message_closes_that_socket_only(
    case: Case, rig: tuple[SidecarProcess, NodeServer, list[NodeClients]]
) -> None:
    sidecar, _, started = rig
    clients = await NodeClients(case.protocol, ws_url(sidecar.port, case.path)).start()
    started.append(clients)
    (a, query_a), (b, query_b) = case.a, case.b
    await clients.open("s1")
    await clients.open("s2")
    assert await clients.subscribe("s1", a, query_a)
    assert await clients.subscribe("s2", b, query_b)
    before = await settles(sidecar, clients)
    headers = {"Sec-WebSocket-Protocol": case.subprotocol} if case.subprotocol else {}
    bad = await RawWebSocket.connect(sidecar.port, case.path, headers=headers)
    await sidecar.wait_stats(lambda stats: stats["connections"] == 3)
    bad.writer.write(mask_frame(case.malformed_opcode, case.malformed))
    await bad.writer.drain()
    while True:  # the server may have spoken first (Pusher's connection_established)
        opcode, payload = await bad.read_frame()
        if opcode == 0x8:
            break
    assert int.from_bytes(payload[:2], "big") in (case.close_code, case.app_close_code)
    await bad.close_tcp()
    assert await settles(sidecar, clients) == before
    assert sidecar.metric("wsgauge_connections_closed_total", 'reason="protocol_error"') == 1
    # the other sockets still work
    await clients.unsubscribe("s1", a)
    assert (await settles(sidecar, clients))["topics"] == {b: 1}
