"""The upstream of the ``path`` runs: a small, fast WebSocket echo server on raw asyncio.

``python -m benchmarks.echo_server --listen 127.0.0.1:PORT``. Every path
accepts an upgrade; text and binary messages (read by the sidecar's
:class:`~wsgauge_sidecar.wsframes.MessageReader`) are echoed back unfragmented, pings
answered with pongs, a close frame answered with a close frame (then the server
closes TCP). Plain HTTP requests get 404. uvloop is used when installed. The
same server sits behind the direct connection, the sidecar and nginx, so the
three see exactly the same app.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from typing import cast

from websockets.utils import accept_key
from wsgauge_contract import Address
from wsgauge_sidecar.exceptions import WebSocketProtocolError
from wsgauge_sidecar.wsframes import MessageReader, Opcode, encode_frame

MAX_HEAD_BYTES = 16384
HEAD_END = b"\r\n\r\n"
"""End of an HTTP head."""
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""Larger messages drop the connection."""


class EchoConnection(asyncio.Protocol):
    """One client connection: the handshake, then echo."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._head = bytearray()
        self._reader: MessageReader | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        if reader is None:
            self._head += data
            end = self._head.find(HEAD_END)
            if end < 0:
                if len(self._head) > MAX_HEAD_BYTES:
                    self._abort()
                return
            rest = bytes(self._head[end + 4 :])
            if not self._answer_handshake(bytes(self._head[:end])):
                return
            self._head.clear()
            reader = self._reader = MessageReader(masked=True, max_message_bytes=MAX_MESSAGE_BYTES)
            if not rest:
                return
            data = rest
        try:
            messages = reader.feed(data)
        except WebSocketProtocolError:
            self._abort()
            return
        transport = self.transport
        assert transport is not None
        for opcode, payload in messages:
            if opcode in (Opcode.TEXT, Opcode.BINARY):
                transport.write(encode_frame(opcode, payload))
            elif opcode == Opcode.PING:
                transport.write(encode_frame(Opcode.PONG, payload))
            elif opcode == Opcode.CLOSE:
                transport.write(encode_frame(Opcode.CLOSE, payload[:2]))
                transport.close()
                return

    def _answer_handshake(self, head: bytes) -> bool:
        transport = self.transport
        assert transport is not None
        key = b""
        upgrade = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"sec-websocket-key":
                key = value.strip()
            elif name == b"upgrade" and value.strip().lower() == b"websocket":
                upgrade = True
        if not (upgrade and key):
            transport.write(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            transport.close()
            return False
        transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_key(key.decode()).encode() + b"\r\n\r\n"
        )
        return True

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def serve(host: str, port: int, ready: asyncio.Event | None = None) -> None:
    """Serve until cancelled or SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(EchoConnection, host, port, reuse_address=True, backlog=4096)
    stop = asyncio.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(number, stop.set)
    bound = server.sockets[0].getsockname()
    print(f"echo server listening on {bound[0]}:{bound[1]}", file=sys.stderr, flush=True)
    if ready is not None:
        ready.set()
    async with server:
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m benchmarks.echo_server --listen HOST:PORT``."""
    parser = argparse.ArgumentParser(prog="benchmarks.echo_server", description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (default 127.0.0.1:0)")
    args = parser.parse_args(argv)
    listen = Address.parse_listen(str(args.listen))
    try:
        import uvloop  # noqa: PLC0415 (optional dependency)
    except ImportError:
        asyncio.run(serve(listen.host, listen.port))
        return
    uvloop.run(serve(listen.host, listen.port))


if __name__ == "__main__":
    main()
