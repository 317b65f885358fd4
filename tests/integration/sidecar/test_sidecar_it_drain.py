"""Drain on SIGTERM: not ready at once, upgrades refused after the grace, 1001s spread, exit 0."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import aiohttp
import pytest
import websockets
from sidecar_it_harness import RawWebSocket, SidecarFactory
from wsgauge_contract import StatsDocument, WatchStreamDecoder

RELAY_PATHS = True
"""Tests that start sidecars run on both relay paths (``--relay python`` and ``native``)."""


async def _watch(url: str, documents: list[StatsDocument]) -> None:
    decoder = WatchStreamDecoder()
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        async for chunk in response.content.iter_any():
            documents.extend(e for e in decoder.feed(chunk) if isinstance(e, StatsDocument))


async def test_drain_closes_every_socket_with_1001_spread_out(
    start_sidecar: SidecarFactory,
) -> None:
    sidecar = start_sidecar(
        "--drain-grace", "1.5", "--drain-spread", "3", "--watch-min-interval", "0"
    )
    count = 12
    sockets = [await websockets.connect(f"{sidecar.ws_base}/ws/d{i % 3}") for i in range(count)]
    await sidecar.wait_stats(lambda d: d["connections"] == count)
    closed_at: dict[int, float] = {}

    async def wait_close(index: int, ws: websockets.ClientConnection) -> None:
        await asyncio.wait_for(ws.wait_closed(), 60)
        closed_at[index] = time.monotonic()

    waiters = [asyncio.create_task(wait_close(i, ws)) for i, ws in enumerate(sockets)]
    documents: list[StatsDocument] = []
    watcher = asyncio.create_task(_watch(f"{sidecar.admin}/stats/watch", documents))
    await asyncio.sleep(0.3)
    sidecar.signal(signal.SIGTERM)
    # not ready at once, while still accepting upgrades
    status, reason = await asyncio.to_thread(sidecar.get, "/readyz")
    for _ in range(50):
        if status == 503:
            break
        await asyncio.sleep(0.02)
        status, reason = await asyncio.to_thread(sidecar.get, "/readyz")
    assert (status, reason) == (503, "draining")
    # after the grace, new upgrades are refused with 503
    refused = False
    refused_status = 0
    for _ in range(100):
        try:
            late = await websockets.connect(f"{sidecar.ws_base}/ws/late")
        except websockets.InvalidStatus as error:
            refused_status = error.response.status_code
            refused = True
            break
        sockets.append(late)  # accepted during the grace: drained like the others
        waiters.append(asyncio.create_task(wait_close(len(sockets) - 1, late)))
        await asyncio.sleep(0.1)
    assert refused
    assert refused_status == 503
    assert await asyncio.to_thread(sidecar.wait, 60) == 0
    await asyncio.gather(*waiters)
    watcher.cancel()
    # every client got 1001 from the drain
    assert [ws.close_code for ws in sockets] == [1001] * len(sockets)
    # the closes were spread: they did not all happen at once, and the count went down in steps
    times = sorted(closed_at.values())
    assert times[-1] - times[0] >= 0.5 * 3 * (count - 1) / count
    draining = [d.connections for d in documents if d.draining]
    assert draining
    assert draining[-1] == 0
    after_peak = draining[draining.index(max(draining)) :]  # (upgrades in the grace add some)
    assert after_peak == sorted(after_peak, reverse=True)
    assert len(set(after_peak)) >= count // 2
    assert documents[-1].ready is False


async def test_drain_in_jittered_batches_with_1012(start_sidecar: SidecarFactory) -> None:
    """--drain-mode batches: each socket gets one 1012; the closes come in at most 3 batches."""
    sidecar = start_sidecar(
        "--drain-grace", "0.2", "--drain-spread", "3", "--drain-mode", "batches",
        "--drain-batches", "3", "--drain-close-code", "1012",
    )  # fmt: skip
    status, metrics = await asyncio.to_thread(sidecar.get, "/metrics")
    assert status == 200
    assert "wsgauge_drain_close_code 1012.0" in metrics
    assert "wsgauge_drain_batches 3.0" in metrics
    count = 9
    sockets = [await websockets.connect(f"{sidecar.ws_base}/ws/b{i % 2}") for i in range(count)]
    await sidecar.wait_stats(lambda d: d["connections"] == count)
    closed_at: list[float] = []

    async def wait_close(ws: websockets.ClientConnection) -> None:
        await asyncio.wait_for(ws.wait_closed(), 60)
        closed_at.append(time.monotonic())

    waiters = [asyncio.create_task(wait_close(ws)) for ws in sockets]
    sidecar.signal(signal.SIGTERM)
    assert await asyncio.to_thread(sidecar.wait, 60) == 0
    await asyncio.gather(*waiters)
    assert [ws.close_code for ws in sockets] == [1012] * count
    assert [ws.close_reason for ws in sockets] == ["service restart"] * count
    # batches 0 and 2 lie in slots [0, 1) and [2, 3): more than a slot apart
    times = sorted(closed_at)
    assert times[-1] - times[0] > 1.0, times
    output = sidecar.output()
    assert "closing 9 sockets with 1012 (batches)" in output
    assert "9/9 sockets sent 1012" in output


async def test_drain_without_sockets_exits_after_grace(start_sidecar: SidecarFactory) -> None:
    sidecar = start_sidecar("--drain-grace", "0.2", "--drain-spread", "5")
    sidecar.signal(signal.SIGTERM)
    assert await asyncio.to_thread(sidecar.wait, 30) == 0
    assert "drain: done" in sidecar.output()


@pytest.mark.parametrize("signal_number", [signal.SIGINT])
async def test_sigint_drains_at_once(start_sidecar: SidecarFactory, signal_number: int) -> None:
    sidecar = start_sidecar("--drain-grace", "30", "--drain-spread", "30")
    sockets = [await websockets.connect(f"{sidecar.ws_base}/ws/i") for _ in range(3)]
    await sidecar.wait_stats(lambda d: d["connections"] == 3)
    sidecar.signal(signal_number)
    assert await asyncio.to_thread(sidecar.wait, 20) == 0
    for ws in sockets:
        await asyncio.wait_for(ws.wait_closed(), 10)
        assert ws.close_code == 1001


@pytest.mark.parametrize("rule", ["path", "phoenix"])
async def test_drain_close_lands_on_a_frame_boundary_mid_stream(
    start_sidecar: SidecarFactory, rule: str
) -> None:
    """The app is streaming big frames when the drain comes: the client still gets a clean 1001."""
    sidecar = start_sidecar("--topic", rule, "--drain-grace", "0.3", "--drain-spread", "0")
    path = "/ws/stream" if rule == "path" else "/socket/websocket?vsn=2.0.0"
    ws = await websockets.connect(f"{sidecar.ws_base}{path}", max_size=2**20, max_queue=4)
    await sidecar.wait_stats(lambda d: d["connections"] == 1)
    # the app streams ~300 MB: far more than can pass during the test
    if rule == "path":
        await ws.send("flood:3000:100003")
    else:
        await ws.send(json.dumps(["1", "1", "room:f", "phx_join", {}]))
        await ws.send(json.dumps(["1", "2", "room:f", "flood", {"count": 3000, "size": 100003}]))
    sizes: list[int] = []
    for _ in range(30):  # the stream is flowing
        sizes.append(len(await asyncio.wait_for(ws.recv(), 10)))
    sidecar.signal(signal.SIGTERM)

    async def receive_until_closed() -> None:
        for _ in range(3000):
            sizes.append(len(await asyncio.wait_for(ws.recv(), 10)))

    with pytest.raises(websockets.ConnectionClosed):
        await receive_until_closed()
    assert ws.close_code == 1001, ws.close_reason  # not a 1002/1006 from a torn frame
    assert sizes.count(sizes[-1]) >= len(sizes) - 2  # every streamed message arrived whole
    assert await asyncio.to_thread(sidecar.wait, 30) == 0


async def test_drain_log_counts_each_closed_socket_once(start_sidecar: SidecarFactory) -> None:
    """Sockets that got their 1001 but have not answered it yet are not closed (or counted)
    again by the sweep for late upgrades at the end of the spread."""
    sidecar = start_sidecar("--drain-grace", "0.2", "--drain-spread", "0.4")
    count = 4
    clients = [await RawWebSocket.connect(sidecar.port, f"/ws/q{i}") for i in range(count)]
    await sidecar.wait_stats(lambda d: d["connections"] == count)
    sidecar.signal(signal.SIGTERM)
    for client in clients:  # each gets exactly one 1001 and does not answer it
        opcode, payload = await client.read_frame(timeout=20)
        assert (opcode, int.from_bytes(payload[:2], "big")) == (0x8, 1001)
    assert await asyncio.to_thread(sidecar.wait, 60) == 0
    output = sidecar.output()
    assert f"drain: done, {count} sockets closed by the drain" in output, output
    for client in clients:
        await client.close_tcp()
