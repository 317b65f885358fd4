"""The sidecar's ``/stats/ws`` on a real ``wsgauge-sidecar`` process, with real WebSocket
clients: the document on connect and on change, answers, errors, the origin rule, the bound
on a client that never reads, and the bound on the number of clients."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest
import websockets
from sidecar_it_harness import SidecarFactory, eventually
from websockets.asyncio.client import ClientConnection


async def _next(client: ClientConnection, timeout: float = 10) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await asyncio.wait_for(client.recv(), timeout))
    return message


async def _until(client: ClientConnection, predicate: Any, timeout: float = 15) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        left = deadline - asyncio.get_running_loop().time()
        assert left > 0, "no matching message in time"
        message = await _next(client, left)
        if predicate(message):
            return message


async def test_local_stats_on_connect_on_change_and_on_request(
    start_sidecar: SidecarFactory,
) -> None:
    sidecar = start_sidecar()
    live_url = f"ws://127.0.0.1:{sidecar.admin_port}/stats/ws"
    async with websockets.connect(live_url) as live:
        first = await _next(live)
        assert first["type"] == "local"
        assert first["stats"]["connections"] == 0
        assert first["seq"] == first["stats"]["seq"]
        clients = [await websockets.connect(f"{sidecar.ws_base}/ws/stream") for _ in range(3)]
        news = await _until(live, lambda m: m["stats"]["connections"] == 3)
        assert news["stats"]["topics"] == {"/ws/stream": 3}
        assert news["seq"] > first["seq"]
        await clients[0].close()
        await _until(live, lambda m: m["stats"]["connections"] == 2)
        await live.send(json.dumps({"get": "local", "id": 42}))
        answer = await _until(live, lambda m: m.get("id") == 42)
        assert answer["type"] == "local"
        assert answer["stats"] == sidecar.stats() | {"seq": answer["stats"]["seq"]}
        await live.send('{"get": "cluster"}')
        error = await _until(live, lambda m: m["type"] == "error")
        assert "one of: local" in error["error"]
        await live.send("[")
        error = await _until(live, lambda m: m["type"] == "error")
        assert "not JSON" in error["error"]
        # still open and still live after the errors
        for client in clients[1:]:
            await client.close()
        await _until(live, lambda m: m["type"] == "local" and m["stats"]["connections"] == 0)


async def test_the_origin_rule_and_the_upgrade_check(start_sidecar: SidecarFactory) -> None:
    sidecar = start_sidecar()
    live_url = f"ws://127.0.0.1:{sidecar.admin_port}/stats/ws"
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(live_url, origin=websockets.Origin("http://evil.example"))
    assert refused.value.response.status_code == 403
    same = websockets.Origin(f"http://127.0.0.1:{sidecar.admin_port}")
    async with websockets.connect(live_url, origin=same) as live:
        assert (await _next(live))["type"] == "local"
    status, body = sidecar.get("/stats/ws")  # plain GET, no upgrade
    assert status == 400
    assert "WebSocket upgrade" in json.loads(body)["error"]


async def test_too_many_clients_get_503(start_sidecar: SidecarFactory) -> None:
    sidecar = start_sidecar("--live-max-clients", "2")
    live_url = f"ws://127.0.0.1:{sidecar.admin_port}/stats/ws"
    first = await websockets.connect(live_url)
    second = await websockets.connect(live_url)
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(live_url)
    assert refused.value.response.status_code == 503
    await first.close()

    async def admitted() -> bool:
        try:
            third = await websockets.connect(live_url)
        except websockets.InvalidStatus:
            return False
        await third.close()
        return True

    deadline = asyncio.get_running_loop().time() + 15
    while not await admitted():
        assert asyncio.get_running_loop().time() < deadline, "slot not released"
        await asyncio.sleep(0.1)
    await second.close()


def _upgrade(port: int) -> bytes:
    return (
        f"GET /stats/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def _masked_text(payload: bytes) -> bytes:
    assert len(payload) < 126
    key = b"\x01\x02\x03\x04"
    masked = bytes(byte ^ key[index % 4] for index, byte in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + key + masked


async def test_a_client_that_never_reads_is_cut(start_sidecar: SidecarFactory) -> None:
    """Requests answered into a socket nobody reads: the sidecar cuts it (its buffers stay
    bounded) and goes on serving."""
    sidecar = start_sidecar("--live-send-timeout", "1")
    rss_before = sidecar.rss_bytes()
    raw = socket.create_connection(("127.0.0.1", sidecar.admin_port))
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.sendall(_upgrade(sidecar.admin_port))
    request = _masked_text(b'{"get":"local"}')
    raw.setblocking(False)
    cut = False
    deadline = asyncio.get_running_loop().time() + 60
    sent = 0
    while not cut:
        assert asyncio.get_running_loop().time() < deadline, f"not cut after {sent} requests"
        try:
            raw.send(request * 64)
            sent += 64
        except BlockingIOError:
            await asyncio.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            cut = True
    raw.close()
    assert sent > 64  # it was answering until its send buffer filled
    await eventually(lambda: sidecar.get("/healthz")[0] == 200, timeout=10)
    async with websockets.connect(f"ws://127.0.0.1:{sidecar.admin_port}/stats/ws") as live:
        assert (await _next(live))["type"] == "local"
    assert sidecar.rss_bytes() < rss_before + 64 * 1024 * 1024
