"""Bounded memory with a slow reader, and a bounded load test whose counts end at exactly zero."""

from __future__ import annotations

import asyncio
import random

from sidecar_it_harness import RawWebSocket, SidecarFactory

RELAY_PATHS = True
"""Tests that start sidecars run on both relay paths (``--relay python`` and ``native``)."""


async def test_slow_reader_costs_bounded_memory(start_sidecar: SidecarFactory) -> None:
    sidecar = start_sidecar("--socket-buffer-bytes", "65536")
    client = await RawWebSocket.connect(
        sidecar.port, "/ws/slow", receive_buffer=65536, stream_limit=65536
    )
    await sidecar.wait_stats(lambda d: d["connections"] == 1)
    baseline = sidecar.rss_bytes()
    count, size = 400, 256 * 1024  # the app tries to push 100 MiB at a client that reads nothing
    await client.send_text(f"flood:{count}:{size}")
    samples = []
    for _ in range(6):
        await asyncio.sleep(0.5)
        samples.append(sidecar.rss_bytes())
    relayed_while_stalled = sidecar.metric("wsgauge_relayed_bytes_total", 'direction="to_client"')
    assert relayed_while_stalled is not None
    # kernel socket buffers hold a few MiB; the sidecar itself at most 2 x 64 KiB
    assert relayed_while_stalled < 16 * 1024 * 1024, relayed_while_stalled
    assert max(samples) - baseline < 24 * 1024 * 1024, (baseline, samples)
    # now read: every message arrives intact, in order
    received = 0
    while True:
        opcode, payload = await client.read_frame(timeout=30)
        if opcode == 0x1:
            assert payload == b"flood done"
            break
        assert opcode == 0x2
        assert len(payload) == size
        received += 1
    assert received == count
    await client.send_close()
    await sidecar.wait_stats(lambda d: d["connections"] == 0)


async def test_two_thousand_sockets_in_random_order_end_at_zero(
    start_sidecar: SidecarFactory,
) -> None:
    sidecar = start_sidecar("--topic", "path:^/ws/(.+)", "--max-topics", "5")
    total = 2000
    rng = random.Random(20261126)
    semaphore = asyncio.Semaphore(64)

    async def open_one(index: int) -> RawWebSocket:
        async with semaphore:
            return await RawWebSocket.connect(sidecar.port, f"/ws/t{index % 8}")

    clients = await asyncio.gather(*(open_one(i) for i in range(total)))
    document = await sidecar.wait_stats(lambda d: d["connections"] == total, timeout=60)
    assert sum(document["topics"].values()) == total
    assert len(document["topics"]) == 6
    assert document["topics"]["_other"] == 3 * total // 8

    order = list(range(total))
    rng.shuffle(order)

    async def end_one(index: int) -> None:
        client = clients[index]
        async with semaphore:
            how = index % 3
            if how == 0:  # clean close handshake
                await client.send_close(1000)
                opcode, _ = await client.read_frame(timeout=30)
                assert opcode == 0x8
                await client.close_tcp()
            elif how == 1:  # RST
                client.reset()
            else:  # FIN without a close frame
                await client.close_tcp()

    await asyncio.gather(*(end_one(i) for i in order))
    document = await sidecar.wait_stats(lambda d: d["connections"] == 0, timeout=60)
    assert document["topics"] == {}
    assert document["opened"] == total
    assert document["closed"] == total
