"""Helpers of the operator integration tests: loopback ports, real sidecar processes, WebSocket
clients, the operator as a subprocess, and an async poll-with-deadline."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import aiohttp

T = TypeVar("T")
VENV_BIN = Path(sys.executable).parent


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on host right now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


STARTUP_TIMEOUT = 180.0
"""Seconds a process may take to listen: generous, since on a busy 2-core machine a Python
process with kopf and kubernetes takes tens of seconds just to import."""


def wait_for_port(host: str, port: int, timeout: float = STARTUP_TIMEOUT) -> None:
    """Block until something accepts connections on host:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            probe.settimeout(0.5)
            if probe.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {host}:{port} after {timeout}s")


class Process:
    """A child process with its output in a log file; stopped by pid, never by name."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self._log_file = log.open("ab")
        self.popen = subprocess.Popen(
            argv, stdout=self._log_file, stderr=subprocess.STDOUT, env=env or dict(os.environ)
        )

    def kill(self) -> None:
        """SIGKILL, and reap."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after timeout."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log_file.close()

    def output(self) -> str:
        """What the process wrote so far."""
        return self.log.read_text(errors="replace")


class SidecarPair:
    """wsgauge-demo-app + wsgauge-sidecar on one loopback address."""

    def __init__(self, ip: str, log_dir: Path, pod: str = "", *sidecar_args: str) -> None:
        self.ip = ip
        self.app_port = free_port(ip)
        self.data_port = free_port(ip)
        self.admin_port = free_port(ip)
        self.pod = pod
        self._log_dir = log_dir
        self._sidecar_args = sidecar_args
        self.app = Process(
            [str(VENV_BIN / "wsgauge-demo-app"), "--listen", f"{ip}:{self.app_port}"],
            log_dir / f"app-{ip}-{self.app_port}.log",
        )
        self.sidecar: Process | None = None
        self.start_sidecar()
        wait_for_port(ip, self.app_port)

    def start_sidecar(self) -> None:
        """(Re)start the sidecar process and wait until its admin port answers."""
        env = dict(os.environ)
        if self.pod:
            env["POD_NAME"] = self.pod
        self.sidecar = Process(
            [
                str(VENV_BIN / "wsgauge-sidecar"),
                "--listen",
                f"{self.ip}:{self.data_port}",
                "--admin-listen",
                f"{self.ip}:{self.admin_port}",
                "--upstream",
                f"{self.ip}:{self.app_port}",
                "--topic",
                "path:^/ws/([^/]+)",
                "--watch-heartbeat",
                "1",
                *self._sidecar_args,
            ],
            self._log_dir / f"sidecar-{self.ip}-{self.admin_port}.log",
            env,
        )
        wait_for_port(self.ip, self.admin_port)

    def stop(self) -> None:
        """Stop both processes."""
        if self.sidecar is not None:
            self.sidecar.stop()
        self.app.stop()


class Clients:
    """Real WebSocket clients holding sockets open through a sidecar."""

    def __init__(self) -> None:
        self.session = aiohttp.ClientSession()
        self.sockets: list[tuple[str, aiohttp.ClientWebSocketResponse]] = []

    async def open(self, ip: str, port: int, topic: str, count: int) -> None:
        """Open count sockets on /ws/<topic>."""
        for _ in range(count):
            ws = await self.session.ws_connect(f"http://{ip}:{port}/ws/{topic}", heartbeat=None)
            self.sockets.append((f"{ip}:{port}/{topic}", ws))

    async def close(self, ip: str, port: int, topic: str, count: int) -> None:
        """Close count of the sockets opened on /ws/<topic> at ip:port."""
        target = f"{ip}:{port}/{topic}"
        closed = 0
        for entry in list(self.sockets):
            if closed == count:
                break
            if entry[0] == target:
                await entry[1].close()
                self.sockets.remove(entry)
                closed += 1
        assert closed == count, f"only {closed} sockets to close on {target}"

    async def aclose(self) -> None:
        """Close everything."""
        for _, ws in self.sockets:
            await ws.close()
        self.sockets.clear()
        await self.session.close()


async def eventually_async(
    check: Callable[[], Awaitable[T | None] | T | None],
    timeout: float = 20.0,
    interval: float = 0.1,
    what: str = "",
) -> T:
    """Await check() until it returns something truthy; AssertionError with the last value."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        result = check()
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            result = await result
        last = result
        if result is not None and result is not False:
            return result  # type: ignore[return-value]
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")
