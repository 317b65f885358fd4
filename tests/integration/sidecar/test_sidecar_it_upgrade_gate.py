"""The upgrade gate: every socket the sidecar relays after a 101 as a WebSocket is counted.

A request whose ``Upgrade`` names ``websocket`` is the only way to a counted socket: with
a method other than GET it is refused with 400 before it reaches the app (the app could
otherwise switch protocols on a socket the sidecar never counted: past
``--max-connections``, Phoenix joins unseen, no 1001 on drain). An app that switches to
``websocket`` on a request that did not ask for it gets its client a 502. A switch to
another protocol the request asked for (``h2c``) stays a plain, uncounted tunnel.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
from collections.abc import AsyncIterator

import pytest
from sidecar_it_harness import RawWebSocket, SidecarFactory, mask_frame


def _upgrade(method: str, path: str, *, upgrade: str | None = "websocket",
             connection: str | None = "Upgrade") -> bytes:  # fmt: skip
    lines = [f"{method} {path} HTTP/1.1", "Host: test", "Content-Length: 0"]
    if upgrade is not None:
        lines.append(f"Upgrade: {upgrade}")
    if connection is not None:
        lines.append(f"Connection: {connection}")
    lines += [f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
              "Sec-WebSocket-Version: 13"]  # fmt: skip
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _answer(port: int, request: bytes) -> bytes:
    """Send ``request`` on a new connection; the response head."""
    client = await RawWebSocket.open_tcp(port)
    client.writer.write(request)
    await client.writer.drain()
    try:
        return await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 10)
    finally:
        await client.close_tcp()


@contextlib.asynccontextmanager
async def _switching_app(always: bytes | None = None) -> AsyncIterator[int]:
    """An app that answers every request with 101 naming ``always``, or else what the
    request's ``Upgrade`` named (``websocket`` if nothing), then echoes; yields its port."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            head = await reader.readuntil(b"\r\n\r\n")
            protocol = b"websocket"
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"upgrade":
                    protocol = value.strip()
            protocol = always or protocol
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: " + protocol
                         + b"\r\nConnection: Upgrade\r\n\r\n")  # fmt: skip
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()


@pytest.mark.parametrize("method", ["POST", "PUT", "OPTIONS"])
async def test_a_non_get_websocket_upgrade_is_refused_before_the_app(
    start_sidecar: SidecarFactory, method: str
) -> None:
    """The demo app (aiohttp) would answer a POST upgrade with 101: the sidecar refuses it."""
    sidecar = start_sidecar("--topic", "phoenix", "--max-connections", "1")
    answer = await _answer(sidecar.port, _upgrade(method, "/socket/websocket?vsn=2.0.0"))
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert sidecar.metric("wsgauge_handshake_failures_total", 'reason="bad_request"') == 1
    # the one allowed socket is still free for a real (GET) upgrade, and its join counts
    client = await RawWebSocket.connect(sidecar.port, "/socket/websocket?vsn=2.0.0")
    await client.send_text(json.dumps(["1", "1", "room:a", "phx_join", {}]))
    await sidecar.wait_stats(lambda d: d["connections"] == 1 and d["topics"] == {"room:a": 1})
    refused = await _answer(sidecar.port, _upgrade("GET", "/socket/websocket?vsn=2.0.0"))
    assert refused.startswith(b"HTTP/1.1 503 "), refused
    await client.close_tcp()


async def test_every_get_naming_websocket_that_gets_101_is_counted(
    start_sidecar: SidecarFactory,
) -> None:
    """A lenient app upgrades without ``Connection: upgrade``: that socket is counted too."""
    async with _switching_app() as app_port:
        sidecar = start_sidecar("--max-connections", "1", upstream_port=app_port)
        client = await RawWebSocket.open_tcp(sidecar.port)
        client.writer.write(_upgrade("GET", "/ws/lenient", connection=None))
        head = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101 "), head
        await sidecar.wait_stats(
            lambda d: d["connections"] == 1 and d["topics"] == {"/ws/lenient": 1}
        )
        refused = await _answer(sidecar.port, _upgrade("GET", "/ws/more", connection=None))
        assert refused.startswith(b"HTTP/1.1 503 "), refused
        await client.close_tcp()
        await sidecar.wait_stats(lambda d: d["connections"] == 0)


async def test_a_switch_to_websocket_nobody_asked_for_gets_502(
    start_sidecar: SidecarFactory,
) -> None:
    async with _switching_app(always=b"websocket") as app_port:
        sidecar = start_sidecar(upstream_port=app_port)
        for request in (
            b"GET /plain HTTP/1.1\r\nHost: t\r\n\r\n",
            _upgrade("GET", "/other", upgrade="h2c"),  # asked for h2c, not websocket
        ):
            answer = await _answer(sidecar.port, request)
            assert answer.startswith(b"HTTP/1.1 502 "), answer
        assert sidecar.stats()["opened"] == 0


async def test_a_switch_to_another_asked_protocol_stays_an_uncounted_tunnel(
    start_sidecar: SidecarFactory,
) -> None:
    async with _switching_app() as app_port:
        sidecar = start_sidecar(upstream_port=app_port)
        client = await RawWebSocket.open_tcp(sidecar.port)
        client.writer.write(_upgrade("GET", "/tunnel", upgrade="h2c", connection="Upgrade"))
        head = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101 "), head
        assert b"Upgrade: h2c" in head, head
        frame = mask_frame(0x1, b"not a websocket")
        client.writer.write(frame)
        assert await asyncio.wait_for(client.reader.readexactly(len(frame)), 10) == frame
        document = sidecar.stats()
        assert document["connections"] == 0
        assert document["opened"] == 0
        await client.close_tcp()
