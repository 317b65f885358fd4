"""Phoenix channels mode: topics counted from phx_join replies, left on leave/close/error."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import pytest
import websockets
from sidecar_it_harness import RawWebSocket, SidecarFactory, SidecarProcess, mask_frame

RELAY_PATHS = True
"""Tests that start sidecars run on both relay paths (``--relay python`` and ``native``)."""


class PhoenixClient:
    """A tiny Phoenix channels client (v1 objects or v2 arrays) over ``websockets``."""

    def __init__(self, ws: websockets.ClientConnection, v2: bool) -> None:
        self.ws = ws
        self.v2 = v2
        self._refs = itertools.count(1)
        self.join_refs: dict[str, str] = {}

    @classmethod
    async def connect(cls, sidecar: SidecarProcess, v2: bool) -> PhoenixClient:
        query = "?vsn=2.0.0" if v2 else "?vsn=1.0.0"
        ws = await websockets.connect(f"{sidecar.ws_base}/socket/websocket{query}")
        return cls(ws, v2)

    async def push(self, topic: str, event: str, payload: object = None) -> dict[str, Any]:
        """Send a message and return the server's reply to it."""
        ref = str(next(self._refs))
        join_ref = ref if event == "phx_join" else self.join_refs.get(topic)
        if event == "phx_join":
            self.join_refs[topic] = ref
        if self.v2:
            await self.ws.send(json.dumps([join_ref, ref, topic, event, payload or {}]))
        else:
            await self.ws.send(json.dumps({"topic": topic, "event": event,
                                           "payload": payload or {}, "ref": ref}))  # fmt: skip
        while True:
            message = await self.receive()
            if message["event"] == "phx_reply" and message["ref"] == ref:
                return message

    async def receive(self) -> dict[str, Any]:
        raw = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
        if self.v2:
            join_ref, ref, topic, event, payload = raw
            return {"join_ref": join_ref, "ref": ref, "topic": topic, "event": event,
                    "payload": payload}  # fmt: skip
        result: dict[str, Any] = raw
        return result

    async def receive_event(self, event: str) -> dict[str, Any]:
        for _ in range(20):
            message = await self.receive()
            if message["event"] == event:
                return message
        raise AssertionError(f"no {event}")


@pytest.fixture
def phoenix_sidecar(start_sidecar: SidecarFactory) -> SidecarProcess:
    return start_sidecar("--topic", "phoenix")


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
async def test_join_leave_error_and_refused_join(phoenix_sidecar: SidecarProcess, v2: bool) -> None:
    sidecar = phoenix_sidecar
    alice = await PhoenixClient.connect(sidecar, v2)
    bob = await PhoenixClient.connect(sidecar, v2)
    document = await sidecar.wait_stats(lambda d: d["connections"] == 2)
    assert document["topics"] == {}  # connected, in no channel yet
    assert (await alice.push("room:lobby", "phx_join"))["payload"]["status"] == "ok"
    assert (await alice.push("room:news", "phx_join"))["payload"]["status"] == "ok"
    assert (await bob.push("room:lobby", "phx_join"))["payload"]["status"] == "ok"
    await sidecar.wait_stats(lambda d: d["topics"] == {"room:lobby": 2, "room:news": 1})
    # heartbeats and refused joins change nothing
    assert (await alice.push("phoenix", "heartbeat"))["payload"]["status"] == "ok"
    assert (await bob.push("deny:secret", "phx_join"))["payload"]["status"] == "error"
    # a rejoin of a joined topic is not counted twice
    assert (await bob.push("room:lobby", "phx_join"))["payload"]["status"] == "ok"
    # a broadcast passes through to both
    await alice.push("room:lobby", "shout", {"body": "hi"})
    assert (await bob.receive_event("shout"))["payload"] == {"body": "hi"}
    document = sidecar.stats()
    assert document["topics"] == {"room:lobby": 2, "room:news": 1}
    assert document["connections"] == 2
    # phx_leave
    assert (await alice.push("room:news", "phx_leave"))["payload"]["status"] == "ok"
    await alice.receive_event("phx_close")
    await sidecar.wait_stats(lambda d: d["topics"] == {"room:lobby": 2})
    # the channel crashes: phx_error leaves the topic
    # (the crash event gets no reply, only phx_error)
    if v2:
        await bob.ws.send(
            json.dumps([bob.join_refs["room:lobby"], "99", "room:lobby", "crash", {}])
        )
    else:
        await bob.ws.send(json.dumps({"topic": "room:lobby", "event": "crash", "payload": {},
                                      "ref": "99"}))  # fmt: skip
    error = await bob.receive_event("phx_error")
    assert error["topic"] == "room:lobby"
    await sidecar.wait_stats(lambda d: d["topics"] == {"room:lobby": 1})
    # closing the socket leaves everything it is in
    await alice.ws.close()
    await sidecar.wait_stats(lambda d: d["connections"] == 1 and d["topics"] == {})
    await bob.ws.close()
    await sidecar.wait_stats(lambda d: d["connections"] == 0 and d["topics"] == {})


async def test_extensions_are_not_negotiated(phoenix_sidecar: SidecarProcess) -> None:
    client = await RawWebSocket.connect(
        phoenix_sidecar.port,
        "/socket/websocket?vsn=2.0.0",
        headers={"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"},
    )
    assert b"sec-websocket-extensions" not in client.response_head.lower()
    await client.close_tcp()
    # a library client that offers compression gets a plain socket, and it works
    ws = await websockets.connect(
        f"{phoenix_sidecar.ws_base}/socket/websocket?vsn=2.0.0", compression="deflate"
    )
    assert ws.response is not None
    assert "Sec-WebSocket-Extensions" not in ws.response.headers
    client_v2 = PhoenixClient(ws, v2=True)
    assert (await client_v2.push("room:z", "phx_join"))["payload"]["status"] == "ok"
    await phoenix_sidecar.wait_stats(lambda d: d["topics"] == {"room:z": 1})
    await ws.close()
    await phoenix_sidecar.wait_stats(lambda d: d["connections"] == 0)


async def test_path_mode_passes_compression_through(sidecar: SidecarProcess) -> None:
    ws = await websockets.connect(f"{sidecar.ws_base}/ws/z", compression="deflate")
    assert ws.response is not None
    assert "permessage-deflate" in (ws.response.headers.get("Sec-WebSocket-Extensions") or "")
    await ws.send("compressed " * 100)
    assert await asyncio.wait_for(ws.recv(), 10) == "compressed " * 100
    await ws.close()
    await sidecar.wait_stats(lambda d: d["connections"] == 0 and d["closed"] == 1)


async def test_invalid_phoenix_message_closes_that_socket_with_1007(
    phoenix_sidecar: SidecarProcess,
) -> None:
    sidecar = phoenix_sidecar
    good = await PhoenixClient.connect(sidecar, v2=True)
    assert (await good.push("room:a", "phx_join"))["payload"]["status"] == "ok"
    bad = await RawWebSocket.connect(sidecar.port, "/socket/websocket?vsn=2.0.0")
    await sidecar.wait_stats(lambda d: d["connections"] == 2)
    # only messages that can change topics are decoded (docs/sidecar.md): a broken join is
    await bad.send_text('["1","1","room:b","phx_join",{')
    opcode, payload = await bad.read_frame()
    assert opcode == 0x8
    assert int.from_bytes(payload[:2], "big") == 1007
    await sidecar.wait_stats(lambda d: d["connections"] == 1 and d["topics"] == {"room:a": 1})
    assert sidecar.metric("wsgauge_connections_closed_total", 'reason="protocol_error"') == 1
    # a compressed (RSV1) frame cannot appear in phoenix mode: 1002
    worse = await RawWebSocket.connect(sidecar.port, "/socket/websocket?vsn=2.0.0")
    worse.writer.write(mask_frame(0x1, b"[]", rsv=4))
    opcode, payload = await worse.read_frame()
    assert opcode == 0x8
    assert int.from_bytes(payload[:2], "big") == 1002
    await sidecar.wait_stats(lambda d: d["connections"] == 1)
    assert (await good.push("room:a", "ping"))["payload"]["status"] == "ok"
    await good.ws.close()
    await sidecar.wait_stats(lambda d: d["connections"] == 0 and d["topics"] == {})
