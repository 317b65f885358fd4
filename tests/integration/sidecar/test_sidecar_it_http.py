"""Plain HTTP passes through the data port unchanged; admin paths there belong to the app."""

from __future__ import annotations

import asyncio

import aiohttp
from sidecar_it_harness import RawWebSocket, SidecarProcess


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[bytes, bytes]:
    """Send one request, read one response with a Content-Length body: (head, body)."""
    writer.write(request)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    body = await asyncio.wait_for(reader.readexactly(length), 10)
    return head, body


async def test_keep_alive_several_requests_on_one_connection(sidecar: SidecarProcess) -> None:
    client = await RawWebSocket.open_tcp(sidecar.port)
    reader, writer = client.reader, client.writer
    for number in range(5):
        head, body = await _exchange(
            reader, writer, f"GET /item/{number} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
        )
        assert head.startswith(b"HTTP/1.1 200"), head
        assert body == f"demo app: GET /item/{number}\n".encode()
    # POST with a body on the same connection
    payload = b"x" * 100_000
    head, body = await _exchange(
        reader,
        writer,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/octet-stream\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload,
    )
    assert head.startswith(b"HTTP/1.1 200")
    assert body == payload
    # a body far larger than the relay buffer (backpressure must not stall it)
    payload = bytes(range(256)) * 12_000
    head, body = await _exchange(
        reader,
        writer,
        b"POST /echo HTTP/1.1\r\nHost: t\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload,
    )
    assert head.startswith(b"HTTP/1.1 200")
    assert body == payload
    # two pipelined requests in one write are answered in order
    writer.write(b"GET /p1 HTTP/1.1\r\nHost: t\r\n\r\nGET /p2 HTTP/1.1\r\nHost: t\r\n\r\n")
    for name in (b"/p1", b"/p2"):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        assert await reader.readexactly(length) == b"demo app: GET " + name + b"\n"
    await client.close_tcp()
    assert sidecar.stats()["opened"] == 0  # plain HTTP is never counted


async def test_chunked_request_and_response_bodies(sidecar: SidecarProcess) -> None:
    async def chunks() -> object:
        for part in (b"alpha-", b"beta-", b"gamma"):
            yield part

    async with aiohttp.ClientSession() as session:
        base = f"http://127.0.0.1:{sidecar.port}"
        big = bytes(range(256)) * 16_000  # first request of a fresh connection, 4 MB body
        async with session.post(f"{base}/echo", data=big) as response:
            assert await response.read() == big
        async with session.get(f"{base}/chunked?chunks=4") as response:
            assert response.status == 200
            assert response.headers.get("Transfer-Encoding") == "chunked"
            assert await response.text() == "".join(f"chunk {n}\n" for n in range(4))
        async with session.post(f"{base}/echo", data=chunks()) as response:  # chunked upload
            assert await response.read() == b"alpha-beta-gamma"
        async with session.head(f"{base}/") as response:  # no body after a HEAD answer
            assert response.status == 200
        async with session.get(f"{base}/") as response:
            assert await response.text() == "hello from the wsgauge demo app\n"


async def test_long_poll_passes_through(sidecar: SidecarProcess) -> None:
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{sidecar.port}/slow?seconds=1.5"
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=20)) as response:
            assert response.status == 200
            assert await response.text() == "slow answer after 1.5 s\n"


async def test_data_port_does_not_serve_admin_paths(sidecar: SidecarProcess) -> None:
    async with aiohttp.ClientSession() as session:
        for path in ("/stats", "/metrics", "/readyz", "/stats/watch", "/report"):
            async with session.get(f"http://127.0.0.1:{sidecar.port}{path}") as response:
                assert response.headers.get("X-Demo-App") == "1"
                assert await response.text() == f"demo app: GET {path}\n"
    status, _ = sidecar.get("/stats")
    assert status == 200


async def test_bad_request_heads_get_4xx(
    sidecar: SidecarProcess,
) -> None:
    client = await RawWebSocket.open_tcp(sidecar.port)
    client.writer.write(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    answer = await asyncio.wait_for(client.reader.read(), 10)
    assert answer.startswith(b"HTTP/1.1 400"), answer
    client = await RawWebSocket.open_tcp(sidecar.port)
    client.writer.write(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"y" * 40_000 + b"\r\n\r\n")
    answer = await asyncio.wait_for(client.reader.read(), 10)
    assert answer.startswith(b"HTTP/1.1 431"), answer


async def test_half_closed_client_still_gets_its_long_poll_answer(sidecar: SidecarProcess) -> None:
    client = await RawWebSocket.open_tcp(sidecar.port)
    client.writer.write(b"GET /slow?seconds=0.5 HTTP/1.1\r\nHost: t\r\n\r\n")
    client.writer.write_eof()  # the client sends FIN right after its request
    answer = await asyncio.wait_for(client.reader.read(), 20)  # ends: the sidecar closes after
    assert answer.startswith(b"HTTP/1.1 200")
    assert answer.endswith(b"slow answer after 0.5 s\n")
