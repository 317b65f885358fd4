"""The processes under test: the upstream app and the proxies in front of it.

* :class:`EchoUpstream`: ``python -m benchmarks.echo_server`` (the ``path`` runs);
* :class:`DemoAppUpstream`: ``wsgauge-demo-app`` (its ``/socket/websocket``
  Phoenix endpoint, the ``phoenix`` runs);
* :class:`SidecarProxy`: ``wsgauge-sidecar`` in front of the upstream;
* :class:`~benchmarks.nginx.NginxProxy` (in :mod:`benchmarks.nginx`).

Each runs as a subprocess on a free ``127.0.0.1`` port with its output in a log
file of a temporary directory; :meth:`ManagedProcess.stop` ends it (signal, then
kill after a bound). A proxy tells which pids carry its cost (:meth:`pids`) and,
for the sidecar, how many sockets it counts.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from wsgauge_sidecar import __version__

from benchmarks.exceptions import BenchmarkError, ProcessStartError

LOOPBACK = "127.0.0.1"
BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
"""The repository root (the directory that holds ``benchmarks/``)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


class ManagedProcess:
    """A subprocess with its output in a log file, started and stopped within bounds."""

    name = "process"
    stop_signal = signal.SIGTERM

    def __init__(self) -> None:
        self.work_dir = Path(tempfile.mkdtemp(prefix=f"wsgauge-bench-{self.name}-"))
        self.log_path = self.work_dir / "output.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def argv(self) -> Sequence[str]:
        """The command line (set :attr:`port` first)."""
        raise NotImplementedError

    def cwd(self) -> Path:
        """The working directory of the process."""
        return self.work_dir

    async def start(self, timeout: float = 20.0) -> None:
        """Start the process and wait until its port accepts connections."""
        self.port = self.port or free_port()
        self.process = await asyncio.to_thread(self._spawn)
        await self.wait_port(self.port, timeout)

    def _spawn(self) -> subprocess.Popen[bytes]:
        with self.log_path.open("wb") as log:
            return subprocess.Popen(
                list(self.argv()),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.cwd(),
            )

    async def wait_port(self, port: int, timeout: float) -> None:
        """Wait until ``port`` accepts a connection (the process must stay alive meanwhile)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise ProcessStartError(
                    f"{self.name} exited with {code} before listening:\n{self.output()[-2000:]}"
                )
            if _port_open(port):
                return
            await asyncio.sleep(0.05)
        raise ProcessStartError(f"{self.name}: port {port} not open after {timeout} s")

    @property
    def pid(self) -> int:
        """The process id."""
        if self.process is None:
            raise BenchmarkError(f"{self.name} is not running")
        return self.process.pid

    def output(self) -> str:
        """What the process printed so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """Signal the process, kill it if it is still there after ``timeout``; remove its files."""
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(self.stop_signal)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        shutil.rmtree(self.work_dir, ignore_errors=True)


class EchoUpstream(ManagedProcess):
    """The benchmark's raw asyncio echo server."""

    name = "echo"

    def argv(self) -> Sequence[str]:
        listen = f"{LOOPBACK}:{self.port}"
        return [sys.executable, "-m", "benchmarks.echo_server", "--listen", listen]

    def cwd(self) -> Path:
        return REPO  # where ``benchmarks`` is importable


class DemoAppUpstream(ManagedProcess):
    """``wsgauge-demo-app`` (the Phoenix runs use its ``/socket/websocket``)."""

    name = "demo-app"

    def argv(self) -> Sequence[str]:
        return [str(BIN / "wsgauge-demo-app"), "--listen", f"{LOOPBACK}:{self.port}"]


class SidecarProxy(ManagedProcess):
    """``wsgauge-sidecar`` in front of ``upstream_port`` with topic rule ``rule``."""

    name = "sidecar"
    stop_signal = signal.SIGINT  # drain at once, no grace, no spread

    def __init__(
        self, upstream_port: int, rule: str, profile_to: Path | None = None, relay: str = "auto"
    ) -> None:
        self.relay = relay
        """``--relay``: ``auto`` (the native relay where the rule allows it) or ``python``."""
        if relay == "python":
            self.name = "sidecar-python"
        super().__init__()
        self.upstream_port = upstream_port
        self.rule = rule
        self.admin_port = free_port()
        self.profile_to = profile_to
        """Run under cProfile and write the statistics here when the sidecar exits."""

    def argv(self) -> Sequence[str]:
        command = [str(BIN / "wsgauge-sidecar")]
        if self.profile_to is not None:
            profile = str(self.profile_to)
            command = [sys.executable, "-m", "cProfile", "-o", profile, "-m", "wsgauge_sidecar"]
        return [
            *command,
            "--listen",
            f"{LOOPBACK}:{self.port}",
            "--admin-listen",
            f"{LOOPBACK}:{self.admin_port}",
            "--upstream",
            f"{LOOPBACK}:{self.upstream_port}",
            "--topic",
            self.rule,
            "--log-level",
            "warning",
            "--relay",
            self.relay,
        ]

    async def start(self, timeout: float = 20.0) -> None:
        await super().start(timeout)
        await self.wait_port(self.admin_port, timeout)

    def pids(self) -> list[int]:
        """The processes whose CPU and memory are the proxy's."""
        return [self.pid]

    def description(self) -> str:
        """Name and version for the report."""
        loop = "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
        relay = "Python relay" if self.relay == "python" else "native relay thread"
        return f"wsgauge-sidecar {__version__} ({loop}, {relay}, one process, `--topic` = the mode)"

    def counted_sockets(self) -> int:
        """``connections`` of the sidecar's ``/stats`` document."""
        url = f"http://{LOOPBACK}:{self.admin_port}/stats"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                document = json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise BenchmarkError(f"cannot read the sidecar's /stats: {error}") from None
        return int(document["connections"])
