"""Harness of the protocol integration tests: real servers and real client libraries in Node.

* :class:`NodeServer` runs ``js/server.js PROTOCOL PORT`` (graphql-ws's server, the aedes
  MQTT broker, small STOMP and Pusher test servers) on a free loopback port.
* :class:`NodeClients` runs ``js/client.js PROTOCOL URL``, one process holding any number
  of sockets of the real client library (graphql-ws, mqtt, @stomp/stompjs, pusher-js), and
  sends it one command at a time: open a socket, subscribe (answered once the server
  confirmed or refused), unsubscribe, close, and ``held`` (what the clients hold).
  Killing the process (``kill``) drops all its sockets at once, without a close handshake.

The npm packages come from ``js/package-lock.json`` (``make protocol-js`` runs ``npm ci``).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
from pathlib import Path
from typing import Any

from sidecar_it_harness import LOOPBACK, free_port

JS = Path(__file__).resolve().parent / "js"


def node() -> str:
    """The node binary; a clear error when node or the npm packages are missing."""
    binary = shutil.which("node")
    assert binary is not None, "node is not installed (the protocol tests run real JS clients)"
    assert (JS / "node_modules").is_dir(), (
        f"npm packages missing in {JS}: run `make protocol-js` (npm ci from package-lock.json)"
    )
    return binary


class NodeServer:
    """``node js/server.js PROTOCOL PORT``, started by :meth:`start`."""

    def __init__(self, protocol: str) -> None:
        self.protocol = protocol
        self.port = free_port()
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> NodeServer:
        self.process = await asyncio.create_subprocess_exec(
            node(), str(JS / "server.js"), self.protocol, str(self.port),
            stdout=asyncio.subprocess.PIPE, cwd=JS,
        )  # fmt: skip
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 30)
        assert line.startswith(b"listening"), f"{self.protocol} server did not start: {line!r}"
        return self

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()


class NodeClients:
    """``node js/client.js PROTOCOL URL``: real client library sockets, driven by commands."""

    def __init__(self, protocol: str, url: str) -> None:
        self.protocol = protocol
        self.url = url
        self.process: asyncio.subprocess.Process | None = None
        self._n = 0

    async def start(self) -> NodeClients:
        self.process = await asyncio.create_subprocess_exec(
            node(), str(JS / "client.js"), self.protocol, self.url,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=JS,
        )  # fmt: skip
        assert self.process.stdout is not None
        ready = await asyncio.wait_for(self.process.stdout.readline(), 30)
        assert json.loads(ready) == {"ready": True}
        return self

    async def command(self, cmd: str, timeout: float = 30, **fields: Any) -> dict[str, Any]:
        """Send one command; its answer (an ``error`` answer fails the test)."""
        process = self.process
        assert process is not None
        assert process.stdin is not None
        assert process.stdout is not None
        self._n += 1
        process.stdin.write(json.dumps({"n": self._n, "cmd": cmd, **fields}).encode() + b"\n")
        await process.stdin.drain()
        line = await asyncio.wait_for(process.stdout.readline(), timeout)
        answer: dict[str, Any] = json.loads(line)
        assert answer.get("n") == self._n, answer
        assert "error" not in answer, f"{self.protocol} client {cmd} {fields}: {answer['error']}"
        return answer

    async def open(self, sock: str) -> None:
        await self.command("open", sock=sock)

    async def subscribe(self, sock: str, topic: str, query: str | None = None) -> bool:
        """Subscribe; True when the server confirmed it, False when it refused."""
        fields: dict[str, Any] = {"sock": sock, "topic": topic}
        if query is not None:
            fields["query"] = query
        granted: bool = (await self.command("sub", **fields))["granted"]
        return granted

    async def unsubscribe(self, sock: str, topic: str) -> None:
        await self.command("unsub", sock=sock, topic=topic)

    async def close(self, sock: str) -> None:
        await self.command("close", sock=sock)

    async def held(self) -> dict[str, Any]:
        """``{"connections": open sockets, "topics": {topic: sockets holding it}}``."""
        return await self.command("held")

    async def kill(self) -> None:
        """SIGKILL: every socket of this process ends without a close handshake."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()


def ws_url(port: int, path: str) -> str:
    return f"ws://{LOOPBACK}:{port}{path}"
