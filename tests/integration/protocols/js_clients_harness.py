"""Harness of the protocol integration tests: real client libraries driven from Python.

* :class:`NodeServer` runs one of ``js/servers/*.js`` (a real server library, or a small
  server of the protocol where none installs) on a free loopback port.
* :class:`ClientDriver` runs ``js/driver.js`` with one client library and sends it steps
  (open, join, leave, server_leave, kill, close); each answer carries what every client
  holds according to its library, which is what the sidecar's counts must equal.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sidecar_it_harness import LOOPBACK, _Process, _wait_tcp, free_port


class NodeServer(_Process):
    """``node js/servers/NAME.js PORT`` on a free loopback port."""

    def __init__(self, js_dir: Path, name: str) -> None:
        self.port = free_port()
        super().__init__(["node", str(js_dir / "servers" / f"{name}.js"), str(self.port)])
        _wait_tcp(self.port, self.process, self.log_path)


class ClientDriver:
    """``node js/driver.js PROTOCOL URL``: one process holding many library clients."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.held: dict[str, list[Any]] = {}
        """Client -> what its library holds (topics, or identifiers for Action Cable)."""

    @classmethod
    async def start(cls, js_dir: Path, protocol: str, url: str) -> ClientDriver:
        process = await asyncio.create_subprocess_exec(
            "node", str(js_dir / "driver.js"), protocol, url,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, limit=2**22,
        )  # fmt: skip
        return cls(process)

    async def step(self, op: str, client: str, topic: object = None) -> object:
        """Run one step; returns the library's outcome (``joined``, ``refused``, ...)."""
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        line = json.dumps({"op": op, "client": client, "topic": topic}) + "\n"
        self.process.stdin.write(line.encode())
        await self.process.stdin.drain()
        raw = await asyncio.wait_for(self.process.stdout.readline(), 60)
        assert raw, f"driver exited during {op} {client} {topic}"
        answer = json.loads(raw)
        self.held = answer["held"]
        assert "error" not in answer, answer["error"]
        return answer["result"]

    def expected(self, topic_of: Callable[[Any], str]) -> tuple[int, dict[str, int]]:
        """(open sockets, sockets per topic) that the clients' own state implies."""
        counts: Counter[str] = Counter()
        for items in self.held.values():
            counts.update({topic_of(item) for item in items})
        return len(self.held), dict(counts)

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


def http_url(port: int, path: str = "") -> str:
    return f"http://{LOOPBACK}:{port}{path}"
