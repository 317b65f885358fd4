"""Every way a counted socket can end uncounts it exactly once; failed handshakes never count."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import pytest
import websockets
from sidecar_it_harness import (
    DemoAppProcess,
    RawWebSocket,
    SidecarFactory,
    SidecarProcess,
    mask_frame,
)

RELAY_PATHS = True
"""Tests that start sidecars run on both relay paths (``--relay python`` and ``native``)."""


async def test_clean_close_from_client(sidecar: SidecarProcess) -> None:
    ws = await websockets.connect(f"{sidecar.ws_base}/ws/a")
    await sidecar.wait_stats(lambda d: d["connections"] == 1)
    await ws.close(code=1000)
    assert ws.close_code == 1000
    document = await sidecar.wait_stats(lambda d: d["connections"] == 0)
    assert document["closed"] == 1
    assert document["topics"] == {}
    assert sidecar.metric("wsgauge_connections_closed_total", 'reason="normal"') == 1


async def test_clean_close_from_server(sidecar: SidecarProcess) -> None:
    ws = await websockets.connect(f"{sidecar.ws_base}/ws/a")
    await sidecar.wait_stats(lambda d: d["connections"] == 1)
    await ws.send("close:4000")
    with pytest.raises(websockets.ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 10)
    assert ws.close_code == 4000  # the app's own close frame passes through unchanged
    await sidecar.wait_stats(lambda d: d["connections"] == 0 and d["closed"] == 1)
    assert sidecar.metric("wsgauge_connections_closed_total", 'reason="normal"') == 1


async def test_client_reset_with_rst(sidecar: SidecarProcess) -> None:
    clients = [await RawWebSocket.connect(sidecar.port, "/ws/rst") for _ in range(3)]
    await sidecar.wait_stats(lambda d: d["connections"] == 3)
    clients[0].reset()
    await sidecar.wait_stats(lambda d: d["connections"] == 2 and d["topics"] == {"/ws/rst": 2})
    clients[1].reset()
    await clients[2].close_tcp()  # FIN without a close frame
    document = await sidecar.wait_stats(lambda d: d["connections"] == 0)
    assert document["closed"] == 3
    assert sidecar.metric("wsgauge_connections_closed_total", 'reason="client_gone"') == 3


async def test_upstream_drops_connection(sidecar: SidecarProcess) -> None:
    ws = await websockets.connect(f"{sidecar.ws_base}/ws/a")
    await sidecar.wait_stats(lambda d: d["connections"] == 1)
    await ws.send("drop")  # the app aborts its TCP connection
    with pytest.raises(websockets.ConnectionClosedError):
        await asyncio.wait_for(ws.recv(), 10)
    await sidecar.wait_stats(lambda d: d["connections"] == 0)
    assert sidecar.metric("wsgauge_connections_closed_total", 'reason="upstream_gone"') == 1


async def test_upstream_killed(start_sidecar: SidecarFactory) -> None:
    app = DemoAppProcess()
    try:
        sidecar = start_sidecar(upstream_port=app.port)
        sockets = [await websockets.connect(f"{sidecar.ws_base}/ws/k") for _ in range(5)]
        await sidecar.wait_stats(lambda d: d["connections"] == 5)
        app.signal(signal.SIGKILL)
        app.wait(10)
        for ws in sockets:
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
        document = await sidecar.wait_stats(lambda d: d["connections"] == 0)
        assert document["topics"] == {}
        assert document["closed"] == 5
        # and the upstream is now down: new upgrades get 502 and are not counted
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(f"{sidecar.ws_base}/ws/k")
        assert refused.value.response.status_code == 502
        assert sidecar.stats()["opened"] == 5
        assert (
            sidecar.metric("wsgauge_handshake_failures_total", 'reason="upstream_unreachable"') == 1
        )
    finally:
        app.stop()


async def test_rejected_handshake_is_not_counted(sidecar: SidecarProcess) -> None:
    with pytest.raises(websockets.InvalidStatus) as rejected:
        await websockets.connect(f"{sidecar.ws_base}/status/403")
    assert rejected.value.response.status_code == 403
    # the app's answer came through; nothing was counted
    document = sidecar.stats()
    assert document["connections"] == 0
    assert document["opened"] == 0
    assert sidecar.metric("wsgauge_handshake_failures_total", 'reason="upstream_rejected"') == 1


async def test_stalled_handshake_times_out_uncounted(start_sidecar: SidecarFactory) -> None:
    sidecar = start_sidecar("--handshake-timeout", "0.5")
    client = await RawWebSocket.open_tcp(sidecar.port)
    request = RawWebSocket.upgrade_request("/ws/stall")
    client.writer.write(request[:30])  # half a request head, then nothing
    await client.writer.drain()
    answer = await asyncio.wait_for(client.reader.read(), 10)  # until the sidecar closes
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert sidecar.stats()["opened"] == 0
    assert sidecar.metric("wsgauge_handshake_failures_total", 'reason="handshake_timeout"') == 1
    # a normal client right after is fine
    ws = await websockets.connect(f"{sidecar.ws_base}/ws/ok")
    await sidecar.wait_stats(lambda d: d["connections"] == 1)
    await ws.close()
    await sidecar.wait_stats(lambda d: d["connections"] == 0)


async def test_client_gone_mid_handshake_is_not_counted(sidecar: SidecarProcess) -> None:
    client = await RawWebSocket.open_tcp(sidecar.port)
    client.writer.write(RawWebSocket.upgrade_request("/ws/x")[:-2])
    await client.writer.drain()
    client.reset()
    await asyncio.sleep(0.2)
    assert sidecar.stats()["opened"] == 0


async def test_max_connections_refuses_new_upgrades(start_sidecar: SidecarFactory) -> None:
    sidecar = start_sidecar("--max-connections", "3")
    sockets = [await websockets.connect(f"{sidecar.ws_base}/ws/cap") for _ in range(3)]
    await sidecar.wait_stats(lambda d: d["connections"] == 3)
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(f"{sidecar.ws_base}/ws/cap")
    assert refused.value.response.status_code == 503
    assert sidecar.metric("wsgauge_handshake_failures_total", 'reason="capacity"') == 1
    # existing sockets are untouched and still relay
    await sockets[0].send("still here")
    assert await asyncio.wait_for(sockets[0].recv(), 10) == "still here"
    assert sidecar.stats()["capacity"] == {
        "max": 3,
        "readyBelow": None,
        "topics": {},
        "upgradesPerSecond": None,
    }
    await sockets[0].close()
    await sidecar.wait_stats(lambda d: d["connections"] == 2)
    sockets[0] = await websockets.connect(f"{sidecar.ws_base}/ws/cap")  # room again
    await sidecar.wait_stats(lambda d: d["connections"] == 3)
    for ws in sockets:
        await ws.close()
    await sidecar.wait_stats(lambda d: d["connections"] == 0)


async def test_malformed_client_frame_closes_only_that_socket(sidecar: SidecarProcess) -> None:
    good = await websockets.connect(f"{sidecar.ws_base}/ws/p")
    bad = await RawWebSocket.connect(sidecar.port, "/ws/p")
    await sidecar.wait_stats(lambda d: d["connections"] == 2)
    bad.writer.write(mask_frame(0x3, b"hello"))  # reserved opcode: a protocol error for the app
    await bad.writer.drain()
    opcode, payload = await bad.read_frame()  # the app's close frame comes through
    assert opcode == 0x8
    assert int.from_bytes(payload[:2], "big") == 1002
    await bad.send_close(1002)
    # then the connection ends: FIN, or RST when the app closed with our reply still unread
    with contextlib.suppress(ConnectionResetError):
        await asyncio.wait_for(bad.reader.read(), 10)
    await sidecar.wait_stats(lambda d: d["connections"] == 1)
    await good.send("ok?")
    assert await asyncio.wait_for(good.recv(), 10) == "ok?"
    await good.close()
    await sidecar.wait_stats(lambda d: d["connections"] == 0)


async def test_upstream_not_answering_an_upgrade_gets_504(start_sidecar: SidecarFactory) -> None:
    sidecar = start_sidecar("--handshake-timeout", "0.5")
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(f"{sidecar.ws_base}/slow?seconds=5")  # the app stalls
    assert refused.value.response.status_code == 504
    assert sidecar.stats()["opened"] == 0
    assert sidecar.metric("wsgauge_handshake_failures_total", 'reason="upstream_timeout"') == 1
