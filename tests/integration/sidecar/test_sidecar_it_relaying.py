"""What the relay must carry unchanged, on both relay paths: permessage-deflate, fragmented
messages, 16 MiB messages, every close code, churn; and which relay runs, said at start."""

from __future__ import annotations

import asyncio
import os
import random

import aiohttp
from sidecar_it_harness import RawWebSocket, SidecarFactory, SidecarProcess, mask_frame

RELAY_PATHS = True
"""Tests that start sidecars run on both relay paths (``--relay python`` and ``native``)."""


def _relay_said(sidecar: SidecarProcess) -> str:
    line = next(line for line in sidecar.output().splitlines() if "topic rule" in line)
    return line.rpartition("relay ")[2]


async def test_the_start_line_and_metrics_say_which_relay_runs(
    start_sidecar: SidecarFactory, relay_path: str
) -> None:
    sidecar = start_sidecar()
    assert _relay_said(sidecar).startswith(relay_path)
    assert sidecar.metric("wsgauge_native_relay") == (1.0 if relay_path == "native" else 0.0)
    phoenix = start_sidecar("--topic", "phoenix")  # reads frames: the same relay, pre-filtering
    assert _relay_said(phoenix).startswith(relay_path)
    assert phoenix.metric("wsgauge_native_relay") == (1.0 if relay_path == "native" else 0.0)


async def test_deflate_fragments_and_16_mib_messages_pass_unchanged(
    start_sidecar: SidecarFactory,
) -> None:
    sidecar = start_sidecar()
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{sidecar.ws_base}/ws/big", compress=15, max_msg_size=0) as ws,
    ):
        assert ws.compress == 15  # permessage-deflate negotiated through the sidecar
        for size in (0, 125, 126, 65535, 65536, 16 * 2**20):
            payload = os.urandom(size)
            await ws.send_bytes(payload)
            reply = await ws.receive(timeout=60)
            assert reply.type == aiohttp.WSMsgType.BINARY
            assert reply.data == payload
        await sidecar.wait_stats(lambda stats: stats["topics"] == {"/ws/big": 1})
    await sidecar.wait_stats(lambda stats: stats["connections"] == 0)
    assert sidecar.metric("wsgauge_connections_closed_total", 'reason="normal"') == 1.0

    # a fragmented binary message (three frames, pings between them) from a raw client
    raw = await RawWebSocket.connect(sidecar.port, "/ws/fragments")
    parts = [os.urandom(3000), os.urandom(70000), os.urandom(10)]
    raw.writer.write(
        mask_frame(0x2, parts[0], fin=False)
        + mask_frame(0x9, b"ping")
        + mask_frame(0x0, parts[1], fin=False)
        + mask_frame(0x0, parts[2])
    )
    await raw.writer.drain()
    received: list[tuple[int, bytes]] = []
    while not any(opcode == 0x2 for opcode, _ in received):
        received.append(await raw.read_frame(timeout=30))
    assert (0xA, b"ping") in received  # the app's pong passed through
    assert [payload for opcode, payload in received if opcode == 0x2] == [b"".join(parts)]
    await raw.send_close(1000)
    assert (await raw.read_frame())[0] == 0x8
    await raw.close_tcp()
    await sidecar.wait_stats(lambda stats: stats["connections"] == 0)


async def test_every_close_code_reaches_the_client_and_counts_as_normal(
    start_sidecar: SidecarFactory,
) -> None:
    sidecar = start_sidecar()
    codes = [1000, 1001, 1003, 1008, 1011, 3000, 4999]
    async with aiohttp.ClientSession() as session:
        for code in codes:
            async with session.ws_connect(f"{sidecar.ws_base}/ws/close") as ws:
                await ws.send_str(f"close:{code}")
                message = await ws.receive(timeout=10)
                assert message.type == aiohttp.WSMsgType.CLOSE
                assert message.data == code
    await sidecar.wait_stats(
        lambda stats: stats["connections"] == 0 and stats["closed"] == len(codes)
    )
    assert sidecar.metric("wsgauge_connections_closed_total", 'reason="normal"') == len(codes)


async def test_churn_of_sockets_ended_every_way_ends_at_zero(start_sidecar: SidecarFactory) -> None:
    sidecar = start_sidecar()
    rng = random.Random(19)
    total = 600

    async def one(index: int) -> None:
        raw = await RawWebSocket.connect(sidecar.port, f"/ws/churn{index % 7}")
        await raw.send_text("hello")
        assert await raw.read_frame() == (0x1, b"hello")
        way = rng.choice(("close", "reset", "fin", "app"))
        if way == "close":
            await raw.send_close(1000)
            assert (await raw.read_frame())[0] == 0x8
            await raw.close_tcp()
        elif way == "reset":
            raw.reset()
        elif way == "fin":
            await raw.close_tcp()
        else:
            await raw.send_text("close:1000")
            assert (await raw.read_frame())[0] == 0x8
            await raw.close_tcp()

    for start in range(0, total, 100):
        await asyncio.gather(*(one(index) for index in range(start, start + 100)))
    stats = await sidecar.wait_stats(lambda stats: stats["connections"] == 0, timeout=60)
    assert stats["opened"] == total
    assert stats["closed"] == total
    assert stats["topics"] == {}
