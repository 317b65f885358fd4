"""Cluster side of ``make demo``: the local cluster, kubectl, the operator process, pod listings.

Building blocks of ``demo/cluster_demo.py``, importable on their own (``sys.path`` holding
``demo/``): :func:`ensure_cluster` starts or reuses the local control plane
(``wsgauge-devcluster``), :class:`Kubectl` runs kubectl asynchronously against it,
:class:`OperatorProcess` runs ``wsgauge-operator`` as a child process with its log in a file,
:func:`list_pods` reads the pods of the demo Deployment, and :func:`autoscaling_flags` finds out
whether this operator build has the custom metrics API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
"""The repository (demo/ lives directly below it)."""

BIN_DIR = Path(sys.executable).parent
"""The venv's bin directory (console scripts of wsgauge)."""


class DemoError(Exception):
    """Something the demo cannot go on without; the message tells the user what to do."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def port_taken(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port."""
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def executable(name: str) -> Path:
    """A console script of this venv, or DemoError naming the fix."""
    path = BIN_DIR / name
    if not path.exists():
        raise DemoError(f"{path} is missing: run 'make venv' (or 'make demo', which does it)")
    return path


@dataclass(frozen=True)
class ClusterHandle:
    """The local cluster the demo talks to."""

    kubeconfig: Path
    """Admin kubeconfig of the cluster."""
    bin_dir: Path
    """Directory holding kubectl (and the control plane binaries)."""
    started_by_demo: bool
    """True when the demo had to start the cluster (it was not running)."""

    @property
    def state_dir(self) -> Path:
        """The cluster's state directory (the kubeconfig lives directly in it)."""
        return self.kubeconfig.parent

    @property
    def env(self) -> dict[str, str]:
        """Environment for child processes: KUBECONFIG set, kubectl first on PATH."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = f"{self.bin_dir}:{env.get('PATH', '')}"
        return env


def parse_exports(text: str) -> tuple[Path, Path]:
    """KUBECONFIG and the PATH addition from ``wsgauge-devcluster up|env`` output."""
    kubeconfig: Path | None = None
    bin_dir: Path | None = None
    for line in text.splitlines():
        if line.startswith("export KUBECONFIG="):
            kubeconfig = Path(line.split("=", 1)[1].strip())
        elif line.startswith("export PATH="):
            bin_dir = Path(line.split("=", 1)[1].split(":", 1)[0].strip())
    if kubeconfig is None or bin_dir is None:
        raise DemoError(f"unexpected output of wsgauge-devcluster: {text.strip()!r}")
    return kubeconfig, bin_dir


def ensure_cluster(say: Any = print) -> ClusterHandle:
    """Start the local cluster unless it runs; remember which it was."""
    devcluster = str(executable("wsgauge-devcluster"))
    status = subprocess.run([devcluster, "status"], capture_output=True, text=True, check=False)
    running = status.returncode == 0
    if running:
        say("local cluster already running: reusing it (and leaving it running)")
    else:
        say("starting the local cluster (wsgauge-devcluster up; ~15 s the first time) ...")
    # Progress goes to stderr (shown to the user), the export lines to stdout.
    up = subprocess.run([devcluster, "up"], stdout=subprocess.PIPE, text=True, check=False)
    if up.returncode != 0:
        raise DemoError(
            "wsgauge-devcluster up failed (see its message above). Missing binaries: "
            "'make k8s-bins'; a port in use: another cluster or WSGAUGE_APISERVER_PORT"
        )
    kubeconfig, bin_dir = parse_exports(up.stdout)
    if not (bin_dir / "kubectl").exists():
        raise DemoError(f"kubectl missing in {bin_dir}: run 'make k8s-bins'")
    return ClusterHandle(kubeconfig=kubeconfig, bin_dir=bin_dir, started_by_demo=not running)


class Kubectl:
    """kubectl against one cluster, run as asyncio child processes (the event loop keeps going)."""

    def __init__(self, cluster: ClusterHandle) -> None:
        self.cluster = cluster
        self.path = str(cluster.bin_dir / "kubectl")

    async def run(
        self, *args: str, input_text: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> tuple[int, str, str]:
        """(returncode, stdout, stderr); DemoError when check is set and kubectl fails."""
        child = await asyncio.create_subprocess_exec(
            self.path,
            *args,
            stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.cluster.env,
            start_new_session=True,  # Ctrl-C reaches the demo, which then cleans up with kubectl
        )
        try:
            data = input_text.encode() if input_text is not None else None
            out, err = await asyncio.wait_for(child.communicate(data), timeout)
        except (TimeoutError, asyncio.CancelledError):
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            await child.wait()
            raise
        code = child.returncode if child.returncode is not None else -1
        stdout, stderr = out.decode(), err.decode()
        if check and code != 0:
            raise DemoError(f"kubectl {' '.join(args)} failed: {stderr.strip()}")
        return code, stdout, stderr

    async def text(self, *args: str, input_text: str | None = None, timeout: float = 60.0) -> str:
        """stdout of a kubectl command that must succeed."""
        return (await self.run(*args, input_text=input_text, timeout=timeout))[1]

    async def get_json(self, *args: str) -> Any:
        """``kubectl get ... -o json``, decoded."""
        return json.loads(await self.text("get", *args, "-o", "json"))

    async def exists(self, *args: str) -> bool:
        """Whether ``kubectl get ARGS`` finds the object."""
        code, _, _ = await self.run("get", *args, "-o", "name", check=False)
        return code == 0


@dataclass(frozen=True)
class PodInfo:
    """What the demo needs to know about one pod of the demo Deployment."""

    name: str
    """Pod name."""
    ip: str
    """Pod IP (a 127.x address on the local cluster), '' before it has one."""
    ready: bool
    """Condition Ready is True."""
    deleting: bool
    """deletionTimestamp is set (draining or gone soon)."""
    created: str
    """creationTimestamp (RFC 3339, sorts by time)."""
    deletion_cost: str
    """controller.kubernetes.io/pod-deletion-cost annotation ('' when unset)."""

    @property
    def serving(self) -> bool:
        """Ready, not being deleted, with an IP: a client may connect to it."""
        return self.ready and not self.deleting and bool(self.ip)


def pod_info(pod: Mapping[str, Any]) -> PodInfo:
    """PodInfo of one pod object from the API."""
    metadata = pod.get("metadata", {})
    status = pod.get("status", {})
    conditions = status.get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    annotations = metadata.get("annotations") or {}
    return PodInfo(
        name=metadata.get("name", ""),
        ip=status.get("podIP") or "",
        ready=ready,
        deleting=bool(metadata.get("deletionTimestamp")),
        created=metadata.get("creationTimestamp", ""),
        deletion_cost=annotations.get("controller.kubernetes.io/pod-deletion-cost", ""),
    )


async def list_pods(kubectl: Kubectl, namespace: str, selector: str) -> list[PodInfo]:
    """The pods of a label selector, oldest first."""
    listing = await kubectl.get_json("pods", "-n", namespace, "-l", selector)
    pods = [pod_info(item) for item in listing.get("items", [])]
    return sorted(pods, key=lambda p: (p.created, p.name))


def autoscaling_flags(help_text: str, metrics_port: int) -> list[str] | None:
    """Operator flags that turn the custom metrics API on, or None if this build has none."""
    if "--metrics-api-listen" not in help_text or "--metrics-api " not in help_text:
        return None
    return ["--metrics-api=true", f"--metrics-api-listen=127.0.0.1:{metrics_port}"]


def operator_help() -> str:
    """``wsgauge-operator --help`` (to detect what this build supports)."""
    result = subprocess.run(
        [str(executable("wsgauge-operator")), "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    return result.stdout


class OperatorProcess:
    """``wsgauge-operator`` as a child process in its own session, output in a log file."""

    def __init__(self, cluster: ClusterHandle, log_path: Path, args: Sequence[str]) -> None:
        self.cluster = cluster
        self.log_path = log_path
        self.args = list(args)
        self.child: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Start it (the log file is truncated)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.child = await asyncio.create_subprocess_exec(
                str(executable("wsgauge-operator")),
                "--kubeconfig",
                str(self.cluster.kubeconfig),
                *self.args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.cluster.env,
                # Own session: Ctrl-C in the terminal reaches the demo only, which stops the
                # operator itself, after its clients and before deleting what it applied.
                start_new_session=True,
            )

    @property
    def pid(self) -> int | None:
        """Process id while started."""
        return self.child.pid if self.child is not None else None

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the operator's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def check_alive(self) -> None:
        """DemoError with the end of its log if the operator has exited."""
        if self.child is not None and self.child.returncode is not None:
            raise DemoError(
                f"the operator exited (status {self.child.returncode}); end of "
                f"{self.log_path}:\n{self.log_tail()}"
            )

    async def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds."""
        child = self.child
        if child is None or child.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(child.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            await child.wait()
