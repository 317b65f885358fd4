"""The benchmark's WebSocket client and echo server, which frame with the sidecar's
``wsframes`` and take their handshake keys from the ``websockets`` library: a handshake, a
Phoenix-style request/reply, closed-loop round trips of every frame size class, and a close,
all on loopback."""

from __future__ import annotations

import asyncio
import socket

import pytest
from websockets.utils import accept_key

from benchmarks.echo_server import serve
from benchmarks.loadgen import open_socket, text_frame


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_accept_value_is_the_rfc_6455_example() -> None:
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
async def test_round_trips_through_the_echo_server(size: int) -> None:
    port = free_port()
    ready = asyncio.Event()
    server = asyncio.create_task(serve("127.0.0.1", port, ready))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        bench = await open_socket("127.0.0.1", port, "/ws/room0", "127.0.0.1", timeout=10)
        try:
            await asyncio.wait_for(bench.request_reply(b"join", b"\x01\x02\x03\x04"), 10)
            assert bench.counter.frames_completed == 1
            frame = text_frame(b"x" * size, b"\x05\x06\x07\x08")
            await asyncio.wait_for(bench.round_trips(frame, 20, timed=True), 10)
            assert bench.counter.frames_completed == 21
            assert bench.times is not None
            assert len(bench.times) == 20
        finally:
            bench.close()
    finally:
        server.cancel()
        with pytest.raises(asyncio.CancelledError):
            await server
