"""Bursts of Phoenix channel joins and leaves on one sidecar: thousands, pipelined, none miscounted.

Twenty real sockets each send 400 ``phx_join``/``phx_leave`` pairs without waiting for replies
(16,000 messages through one sidecar as fast as the clients can write), over 50 topics, so that
many sockets join and leave the same topic at the same moment. Each socket then joins
``room:final`` (every other one also ``room:extra``). Whatever the interleaving, the sidecar's
``/stats`` must end exactly at what the sockets hold, its topic table must hold no topic that was
left, and no socket may be closed by it. The achieved rate is printed, not asserted.
"""

from __future__ import annotations

import asyncio
import json
import time

import websockets
from sidecar_it_harness import RawWebSocket, SidecarFactory, SidecarProcess, mask_frame

RELAY_PATHS = True
"""Tests that start sidecars run on both relay paths (``--relay python`` and ``native``)."""

SOCKETS = 20
PAIRS_PER_SOCKET = 400
BURST_TOPICS = 50
PENDING_JOINS_BOUND = 1000  # unanswered joins per socket (docs/sidecar.md)


def _v2(join_ref: str | None, ref: str, topic: str, event: str) -> str:
    return json.dumps([join_ref, ref, topic, event, {}])


async def _burst(ws: websockets.ClientConnection, index: int) -> None:
    """Send every join/leave pair at once, then read until every one of them is answered."""
    refs = 0
    frames = []
    for pair in range(PAIRS_PER_SOCKET):
        topic = f"burst:{(index + pair) % BURST_TOPICS}"
        join_ref = str(refs := refs + 1)
        frames.append(_v2(join_ref, join_ref, topic, "phx_join"))
        frames.append(_v2(join_ref, str(refs := refs + 1), topic, "phx_leave"))
    for frame in frames:
        await ws.send(frame)
    replies = 0
    while replies < len(frames):
        message = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if message[3] == "phx_reply":
            assert message[4]["status"] == "ok", message
            replies += 1


async def _join(ws: websockets.ClientConnection, ref: str, topic: str) -> None:
    await ws.send(_v2(ref, ref, topic, "phx_join"))
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if message[3] == "phx_reply" and message[1] == ref:
            assert message[4]["status"] == "ok", message
            return


async def test_thousands_of_pipelined_joins_and_leaves_end_exactly_at_what_sockets_hold(
    start_sidecar: SidecarFactory,
) -> None:
    sidecar: SidecarProcess = start_sidecar("--topic", "phoenix")
    sockets = [
        await websockets.connect(f"{sidecar.ws_base}/socket/websocket?vsn=2.0.0")
        for _ in range(SOCKETS)
    ]
    await sidecar.wait_stats(lambda d: d["connections"] == SOCKETS)
    started = time.monotonic()
    await asyncio.gather(*(_burst(ws, index) for index, ws in enumerate(sockets)))
    elapsed = time.monotonic() - started
    events = 2 * SOCKETS * PAIRS_PER_SOCKET
    print(f"{events} joins+leaves through one sidecar in {elapsed:.1f} s: {events / elapsed:.0f}/s")

    # every burst topic was left by every socket: nothing of them may remain
    await sidecar.wait_stats(lambda d: d["topics"] == {})
    for index, ws in enumerate(sockets):
        await _join(ws, "f1", "room:final")
        if index % 2 == 0:
            await _join(ws, "f2", "room:extra")
    document = await sidecar.wait_stats(
        lambda d: d["topics"] == {"room:final": SOCKETS, "room:extra": SOCKETS // 2}
    )
    assert document["connections"] == SOCKETS
    assert document["closed"] == 0  # the burst closed no socket

    # the sockets still work after the burst, and closing them empties everything
    for ws in sockets:
        await ws.close()
    await sidecar.wait_stats(lambda d: d["connections"] == 0 and d["topics"] == {})


async def _pipeline_joins(sidecar: SidecarProcess, joins: int) -> RawWebSocket:
    """One socket writes ``joins`` joins of distinct topics at once, before reading anything."""
    client = await RawWebSocket.connect(sidecar.port, "/socket/websocket?vsn=2.0.0")
    client.writer.write(b"".join(
        mask_frame(0x1, _v2(str(ref), str(ref), f"pipe:{ref}", "phx_join").encode())
        for ref in range(joins)
    ))  # fmt: skip
    await client.writer.drain()
    return client


async def test_a_thousand_joins_pipelined_on_one_socket_are_all_counted(
    start_sidecar: SidecarFactory,
) -> None:
    """Every join the app accepts is counted, however many wait for their replies at once."""
    joins = PENDING_JOINS_BOUND
    sidecar = start_sidecar("--topic", "phoenix", "--max-topics", str(joins))
    client = await _pipeline_joins(sidecar, joins)
    accepted = 0
    while accepted < joins:
        opcode, payload = await client.read_frame()
        assert opcode == 0x1, (opcode, payload)
        message = json.loads(payload)
        accepted += message[3] == "phx_reply" and message[4]["status"] == "ok"
    document = await sidecar.wait_stats(lambda d: sum(d["topics"].values()) >= joins)
    assert document["topics"] == {f"pipe:{ref}": 1 for ref in range(joins)}
    assert document["connections"] == 1
    assert document["closed"] == 0
    await client.close_tcp()
    await sidecar.wait_stats(lambda d: d["connections"] == 0 and d["topics"] == {})


async def test_joins_beyond_the_pending_bound_close_the_socket_with_1008(
    start_sidecar: SidecarFactory,
) -> None:
    """Past the bound the socket is closed with a clear code instead of being miscounted."""
    sidecar = start_sidecar("--topic", "phoenix")
    other = await RawWebSocket.connect(sidecar.port, "/socket/websocket?vsn=2.0.0")
    await other.send_text(_v2("1", "1", "room:other", "phx_join"))
    await sidecar.wait_stats(lambda d: d["topics"] == {"room:other": 1})
    client = await _pipeline_joins(sidecar, 3 * PENDING_JOINS_BOUND)
    code = None
    for _ in range(3 * PENDING_JOINS_BOUND + 1):
        opcode, payload = await client.read_frame()
        if opcode == 0x8:
            code = int.from_bytes(payload[:2], "big")
            break
    assert code == 1008, code
    await client.close_tcp()
    document = await sidecar.wait_stats(lambda d: d["connections"] == 1)
    assert document["topics"] == {"room:other": 1}
    assert sidecar.metric("wsgauge_connections_closed_total", 'reason="protocol_error"') == 1
    await other.close_tcp()
