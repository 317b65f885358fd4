"""Test harness for the sidecar integration tests: real processes and raw clients over loopback.

* :class:`DemoAppProcess` / :class:`SidecarProcess` start ``wsgauge-demo-app`` and
  ``wsgauge-sidecar`` as subprocesses on free 127.0.0.1 ports and stop them again.
* :class:`RawWebSocket` is a minimal hand-rolled client over asyncio streams, for
  what library clients will not do: stall mid-handshake, reset the connection,
  stop reading, send malformed frames.
* :func:`eventually` polls a condition with a deadline (counts settle asynchronously).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def _wait_tcp(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open in {timeout} s:\n{log.read_text()}")


class _Process:
    """A subprocess whose output goes to a temporary log file."""

    def __init__(self, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.log_dir = Path(tempfile.mkdtemp(prefix="wsgauge-it-"))
        self.log_path = self.log_dir / "output.log"
        self._log_file = self.log_path.open("wb")
        full_env = {**os.environ, **(env or {})}
        self.process = subprocess.Popen(
            list(argv), stdout=self._log_file, stderr=subprocess.STDOUT, env=full_env
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, number: int) -> None:
        if self.process.poll() is None:
            self.process.send_signal(number)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        """Kill if still running; release the log."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self._log_file.close()
        shutil.rmtree(self.log_dir, ignore_errors=True)

    def rss_bytes(self) -> int:
        """Resident set size from /proc (Linux)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")


class DemoAppProcess(_Process):
    """``wsgauge-demo-app`` on a free port."""

    def __init__(self, port: int | None = None, report_to: str | None = None) -> None:
        self.port = port or free_port()
        argv = [str(BIN / "wsgauge-demo-app"), "--listen", f"{LOOPBACK}:{self.port}"]
        if report_to:
            argv += ["--report-to", report_to]
        super().__init__(argv)
        _wait_tcp(self.port, self.process, self.log_path)


class SidecarProcess(_Process):
    """``wsgauge-sidecar`` on free data and admin ports, in front of ``upstream_port``."""

    def __init__(
        self,
        upstream_port: int,
        *args: str,
        env: dict[str, str] | None = None,
        wait_data_port: bool = True,
        admin_host: str = LOOPBACK,
    ) -> None:
        self.port = free_port()
        self.admin_port = free_port()
        self.report_port = free_port()
        argv = [
            str(BIN / "wsgauge-sidecar"),
            "--listen", f"{LOOPBACK}:{self.port}",
            "--admin-listen", f"{admin_host}:{self.admin_port}",
            "--report-listen", f"{LOOPBACK}:{self.report_port}",
            "--upstream", f"{LOOPBACK}:{upstream_port}",
            "--upstream-check-interval", "0.2",
            "--log-level", "debug",
            *args,
        ]  # fmt: skip
        super().__init__(argv, env)
        try:
            _wait_tcp(self.admin_port, self.process, self.log_path)
            if wait_data_port:
                _wait_tcp(self.port, self.process, self.log_path)
        except RuntimeError:
            self.stop()  # nobody else holds it yet: do not leave it running
            raise

    @property
    def admin(self) -> str:
        return f"http://{LOOPBACK}:{self.admin_port}"

    @property
    def report(self) -> str:
        """The report listener's ``/report`` URL (report mode only)."""
        return f"http://{LOOPBACK}:{self.report_port}/report"

    @property
    def ws_base(self) -> str:
        return f"ws://{LOOPBACK}:{self.port}"

    def get(self, path: str) -> tuple[int, str]:
        """Blocking GET on the admin port: (status, body)."""
        try:
            with urllib.request.urlopen(self.admin + path, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def stats(self) -> dict[str, Any]:
        status, body = self.get("/stats")
        assert status == 200, body
        result: dict[str, Any] = json.loads(body)
        return result

    def send(
        self, method: str, path: str, body: object, base: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        """A JSON request to the admin port (or to ``base``): (status, decoded JSON answer)."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request((base or self.admin) + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def metric(self, name: str, labels: str = "") -> float | None:
        """The value of one sample in /metrics (``labels`` as in the text: ``reason="x"``)."""
        _, text = self.get("/metrics")
        wanted = f"{name}{{{labels}}}" if labels else name
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            if key == wanted:
                return float(value)
        return None

    async def wait_stats(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15
    ) -> dict[str, Any]:
        """Poll /stats until ``predicate`` holds; the matching document."""
        last: dict[str, Any] = {}

        def check() -> bool:
            nonlocal last
            last = self.stats()
            return predicate(last)

        await eventually(check, timeout=timeout, what=lambda: f"stats condition; last: {last}")
        return last

    def terminate_and_wait(self, timeout: float = 60) -> int:
        self.signal(signal.SIGTERM)
        return self.wait(timeout)


SidecarFactory = Callable[..., SidecarProcess]
"""The ``start_sidecar`` fixture: ``start_sidecar(*flags, upstream_port=None, **kwargs)``."""


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]],
    *,
    timeout: float = 15,
    interval: float = 0.05,
    what: str | Callable[[], str] = "condition",
) -> None:
    """Poll ``condition`` (sync or async) until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if inspect.iscoroutinefunction(condition):
            result = await condition()
        else:
            result = await asyncio.to_thread(condition)
        if result:
            return
        if time.monotonic() > deadline:
            description = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout} s waiting for {description}")
        await asyncio.sleep(interval)


# -- raw WebSocket client --------------------------------------------------------------------


def mask_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0) -> bytes:
    """A client (masked) frame."""
    key = os.urandom(4)
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    size = len(payload)
    if size < 126:
        header = bytes([first, 0x80 | size])
    elif size < 65536:
        header = bytes([first, 0x80 | 126]) + struct.pack("!H", size)
    else:
        header = bytes([first, 0x80 | 127]) + struct.pack("!Q", size)
    masked = bytes(byte ^ key[index % 4] for index, byte in enumerate(payload))
    return header + key + masked


class RawWebSocket:
    """A bare-bones client over asyncio streams (for abusive behaviour in tests)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.response_head = b""

    @classmethod
    async def open_tcp(
        cls, port: int, *, receive_buffer: int | None = None, stream_limit: int = 2**24
    ) -> RawWebSocket:
        """A TCP connection; ``stream_limit`` bounds what the client itself buffers unread."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (LOOPBACK, port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=stream_limit)
        return cls(reader, writer)

    @staticmethod
    def upgrade_request(path: str, headers: dict[str, str] | None = None) -> bytes:
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            "Host: test",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    @classmethod
    async def connect(
        cls, port: int, path: str, *, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> RawWebSocket:
        """Open and complete the handshake (asserts 101)."""
        client = await cls.open_tcp(port, **kwargs)
        client.writer.write(cls.upgrade_request(path, headers))
        await client.writer.drain()
        client.response_head = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 10)
        assert client.response_head.startswith(b"HTTP/1.1 101"), client.response_head
        return client

    async def send_text(self, text: str) -> None:
        self.writer.write(mask_frame(0x1, text.encode()))
        await self.writer.drain()

    async def send_close(self, code: int = 1000) -> None:
        self.writer.write(mask_frame(0x8, struct.pack("!H", code)))
        await self.writer.drain()

    async def read_frame(self, timeout: float = 10) -> tuple[int, bytes]:
        """(opcode, payload) of the next server frame (unfragmented frames only)."""
        head = await asyncio.wait_for(self.reader.readexactly(2), timeout)
        size = head[1] & 0x7F
        if size == 126:
            size = struct.unpack("!H", await self.reader.readexactly(2))[0]
        elif size == 127:
            size = struct.unpack("!Q", await self.reader.readexactly(8))[0]
        payload = await asyncio.wait_for(self.reader.readexactly(size), timeout)
        return head[0] & 0x0F, payload

    def reset(self) -> None:
        """Abort with RST (SO_LINGER 0)."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    async def close_tcp(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()
