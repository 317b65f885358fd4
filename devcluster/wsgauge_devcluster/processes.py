"""Background processes with pid files and log files: start detached, check, stop by pid; and
the file lock that serializes whoever starts or stops them."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from wsgauge_devcluster.exceptions import PortInUseError


@dataclass(frozen=True)
class ManagedProcess:
    """A named background process whose pid and log live in a run directory."""

    name: str
    """Component name (file stem of the pid and log files)."""
    run_dir: Path
    """Directory holding <name>.pid and <name>.log."""
    match: str
    """A substring of its /proc/<pid>/cmdline; guards against a recycled pid."""

    @property
    def pid_file(self) -> Path:
        """Where the pid is written."""
        return self.run_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        """Where stdout and stderr go."""
        return self.run_dir / f"{self.name}.log"

    def pid(self) -> int | None:
        """The pid if the process described by the pid file is alive, else None."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid, self.match) else None

    def start(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> int:
        """Start detached (own session), append output to the log, write the pid file."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            log.write(
                f"\n===== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {self.name}\n".encode()
            )
            log.flush()
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=dict(env) if env is not None else None,
            )
        self.pid_file.write_text(f"{proc.pid}\n")
        # Right after exec the kernel may not have set up the new argv yet (cmdline reads
        # empty), which would look like "not our process": wait for it, briefly.
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(OSError):
                if Path(f"/proc/{proc.pid}/cmdline").read_bytes():
                    break
            time.sleep(0.01)
        return proc.pid

    def stop(self, timeout: float) -> bool:
        """SIGTERM, then SIGKILL after timeout. True if something was running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        terminate_pid(pid, timeout, self.match)
        self.pid_file.unlink(missing_ok=True)
        return True


def pid_alive(pid: int, match: str = "") -> bool:
    """True if pid runs (not a zombie) and its command line contains match."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    if state in ("Z", "X"):
        return False
    return match in cmdline


def terminate_pid(pid: int, timeout: float, match: str = "") -> None:
    """Send SIGTERM to pid, wait up to timeout for it to go, then SIGKILL it."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid, match):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and pid_alive(pid, match):
        time.sleep(0.05)


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if nothing listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) != 0


def require_free_ports(ports: Mapping[str, int]) -> None:
    """Raise PortInUseError naming every taken port."""
    taken = [
        f"{name} needs 127.0.0.1:{port}" for name, port in ports.items() if not port_free(port)
    ]
    if taken:
        raise PortInUseError(
            "ports already in use (another cluster or program?): "
            + "; ".join(taken)
            + ". Stop it, or choose other ports with WSGAUGE_APISERVER_PORT / WSGAUGE_ETCD_PORT."
        )


@contextlib.contextmanager
def file_lock(path: Path, shared: bool = False) -> Iterator[None]:
    """Hold an exclusive (``shared``: a shared) flock on ``path`` (created with its directory)
    across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
