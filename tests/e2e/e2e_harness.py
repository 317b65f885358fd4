"""Helpers of the end-to-end tests: the operator as a real subprocess, kubectl in threads, and
WebSocket clients that pick pods round robin and reconnect elsewhere when a pod drains (1001)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from wsgauge_devcluster.testing import KubeCluster

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
DATA_PORT = 8080
"""The sidecar's data port in the chat pods (the pod runner binds it to the pod IP)."""
GOING_AWAY = 1001
SERVICE_RESTART = 1012
"""The rebalance's close code (by default): the client reconnects, as after a 1001."""


def free_port(preferred: int | None = None) -> int:
    """``preferred`` when it is free on 127.0.0.1, else any free port."""
    for candidate in ([preferred] if preferred else []) + [0]:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    raise AssertionError("no free port")


def wait_for_port(port: int, timeout: float = 180.0) -> None:
    """Block until something accepts on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            probe.settimeout(0.5)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class OperatorProcess:
    """``wsgauge-operator`` with its metrics API, as a real subprocess (stopped by pid)."""

    def __init__(self, kube: KubeCluster, namespace: str, metrics_port: int, log: Path) -> None:
        self.stats_port = free_port()
        self.log = log
        self._log_file = log.open("ab")
        argv = [
            str(VENV_BIN / "wsgauge-operator"),
            "--kubeconfig", str(kube.kubeconfig),
            "--namespaces", namespace,
            "--listen", f"127.0.0.1:{self.stats_port}",
            "--metrics-api", "true",
            "--metrics-api-listen", f"127.0.0.1:{metrics_port}",
            "--status-interval", "1s",
        ]  # fmt: skip
        self.popen = subprocess.Popen(
            argv, stdout=self._log_file, stderr=subprocess.STDOUT, env=dict(os.environ)
        )
        wait_for_port(self.stats_port)
        wait_for_port(metrics_port)

    def stop(self) -> None:
        """SIGTERM, SIGKILL after 15 s."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        self._log_file.close()

    def output(self) -> str:
        """The log so far."""
        return self.log.read_text(errors="replace")


async def kubectl(kube: KubeCluster, *args: str, input_text: str | None = None) -> str:
    """kubectl in a thread (the clients live on this event loop); raises on failure."""
    result = await asyncio.to_thread(kube.kubectl, *args, input_text=input_text, check=False)
    if result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)}: {result.stderr}")
    return str(result.stdout)


async def get_json(kube: KubeCluster, *args: str) -> Any:
    """``kubectl get ... -o json`` parsed."""
    return json.loads(await kubectl(kube, "get", *args, "-o", "json"))


def documents(path: Path) -> list[dict[str, Any]]:
    """The YAML documents of a file."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@dataclass
class Close:
    """A socket closed by the server."""

    pod: str
    code: int | None
    at: float


@dataclass
class PodPool:
    """Pods clients may connect to (name -> IP), handed out round robin."""

    live: dict[str, str] = field(default_factory=dict)
    _turn: itertools.count[int] = field(default_factory=itertools.count)

    def pick(self, exclude: set[str]) -> tuple[str, str]:
        """The next pod in turn (never one in ``exclude``)."""
        names = sorted(n for n in self.live if n not in exclude)
        if not names:
            raise AssertionError(f"no pod to connect to (live: {sorted(self.live)})")
        name = names[next(self._turn) % len(names)]
        return name, self.live[name]


class HeldSocket:
    """One client WebSocket held open; records the server's closes and, after a 1001 or a 1012,
    connects again (where to is the subclass's ``reconnect``)."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session
        self.pod: str | None = None
        self.closes: list[Close] = []
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def _hold(self, ws: aiohttp.ClientWebSocketResponse, pod: str) -> None:
        self._ws = ws
        self.pod = pod
        self._task = asyncio.create_task(self._read())

    async def reconnect(self, gone: str) -> None:
        """Connect again after the server closed with 1001 or 1012 on pod ``gone``."""
        raise NotImplementedError

    async def _read(self) -> None:
        assert self._ws is not None
        async for _ in self._ws:
            pass
        if self._stopping:
            return
        code = self._ws.close_code
        gone = self.pod or ""
        self.closes.append(Close(gone, code, time.monotonic()))
        self.pod = None
        if code in (GOING_AWAY, SERVICE_RESTART):
            await self.reconnect(gone)

    async def close(self) -> None:
        """Close from the client side (1000) and stop."""
        self._stopping = True
        if self._ws is not None:
            await self._ws.close()
        if self._task is not None:
            await asyncio.wait_for(self._task, 10)
        self.pod = None


class Client(HeldSocket):
    """One WebSocket on /ws/room through a pod's sidecar; reconnects elsewhere after 1001."""

    def __init__(self, session: aiohttp.ClientSession, pool: PodPool) -> None:
        super().__init__(session)
        self._pool = pool

    async def connect(self, pod: str | None = None, exclude: str | None = None) -> None:
        """Connect to ``pod`` or the next pod in turn (at most 10 attempts)."""
        self._stopping = False
        refused = {exclude} if exclude else set()
        for _ in range(10):
            name, ip = (pod, self._pool.live[pod]) if pod else self._pool.pick(refused)
            try:
                ws = await asyncio.wait_for(
                    self._session.ws_connect(
                        f"http://{ip}:{DATA_PORT}/ws/room",
                        heartbeat=None,
                        timeout=aiohttp.ClientWSTimeout(ws_close=5),
                    ),
                    5,
                )
            except (aiohttp.ClientError, OSError, TimeoutError) as error:
                print(f"connect to {name} failed: {error!r}")
                await asyncio.sleep(0.2)
                refused.add(name)
                pod = None
                continue
            self._hold(ws, name)
            return
        raise AssertionError("could not connect after 10 attempts")

    async def reconnect(self, gone: str) -> None:
        """Another pod in turn."""
        await self.connect(exclude=gone)


def client_session() -> aiohttp.ClientSession:
    """A client session without aiohttp's default limit of 100 connections."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))


def per_pod(clients: list[Client]) -> dict[str, int]:
    """Open sockets per pod as the clients see them."""
    counts: dict[str, int] = {}
    for client in clients:
        if client.pod is not None:
            counts[client.pod] = counts.get(client.pod, 0) + 1
    return counts


async def eventually(check: Any, timeout: float, what: str, interval: float = 1.0) -> Any:
    """Await ``check()`` until truthy (bounded); AssertionError with the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
