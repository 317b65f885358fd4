"""Cluster side of ``make demo``: the local cluster, the wsgauge release, kubectl, pod listings.

Building blocks of ``demo/cluster_demo.py``, importable on their own (``sys.path`` holding
``demo/``): :func:`ensure_cluster` starts or reuses the local cluster (``wsgauge-devcluster up``:
control plane and the real node ``wsgauge-node``), :class:`ReleaseLock` is the file lock the
tests hold while they install or uninstall the release ``wsgauge``, :func:`install_release`
installs wsgauge with its chart (``helm upgrade --install``, as ``wsgauge-devcluster deploy``),
:class:`Kubectl` runs kubectl asynchronously against the cluster, and :func:`pod_info`,
:func:`endpoint_readiness`, :func:`injected_summary` read the API objects the demo shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsgauge_devcluster.deploy import ChartInstall, DeployError
from wsgauge_devcluster.images import project_version

REPO_ROOT = Path(__file__).resolve().parent.parent
"""The repository (demo/ lives directly below it)."""

BIN_DIR = Path(sys.executable).parent
"""The venv's bin directory (console scripts of wsgauge)."""

RELEASE = "wsgauge"
"""The Helm release of wsgauge (the one ``wsgauge-devcluster deploy`` and the e2e tests use)."""
RELEASE_NAMESPACE = "wsgauge-system"
"""Its namespace."""
GATE = "wsgauge.dev/connections-ok"
"""The pod condition behind the readiness gate the injector adds."""
NODE = "wsgauge-node"
"""The devcluster's real node (kubelet + containerd)."""

LOCK_PATH = Path(tempfile.gettempdir()) / "wsgauge-custom-metrics-apiservice.lock"
"""The lock file of tests/apiservice_lock.py: held by whoever (un)installs the release."""

Say = Callable[[str], None]


class DemoError(Exception):
    """Something the demo cannot go on without; the message tells the user what to do."""


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
    """Directory holding kubectl and helm."""
    started_by_demo: bool
    """True when the demo had to start the cluster (it was not running)."""

    @property
    def state_dir(self) -> Path:
        """The cluster's state directory (the kubeconfig lives directly in it)."""
        return self.kubeconfig.parent

    @property
    def env(self) -> dict[str, str]:
        """Environment for child processes: KUBECONFIG set, kubectl and helm first on PATH, then
        this Python's scripts (kubectl-wsgauge, found by kubectl as the plugin ``wsgauge``)."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        scripts = Path(sys.executable).parent
        env["PATH"] = f"{self.bin_dir}:{scripts}:{env.get('PATH', '')}"
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


def ensure_cluster(say: Say = print) -> ClusterHandle:
    """``wsgauge-devcluster up`` (idempotent: reuses a running cluster); remember which it was."""
    devcluster = str(executable("wsgauge-devcluster"))
    status = subprocess.run([devcluster, "status"], capture_output=True, text=True, check=False)
    running = status.returncode == 0
    if running:
        say("local cluster already running: reusing it (and leaving it running)")
    else:
        say("starting the local cluster (wsgauge-devcluster up; a minute or two the first time)")
    # Progress goes to stderr (shown to the user), the export lines to stdout. 'up' also loads
    # images that 'make images' rebuilt into the node's containerd.
    up = subprocess.run([devcluster, "up"], stdout=subprocess.PIPE, text=True, check=False)
    if up.returncode != 0:
        raise DemoError(
            "wsgauge-devcluster up failed (see its message above). Missing binaries: "
            "'make k8s-bins'; missing node packages: 'make node-deps'"
        )
    kubeconfig, bin_dir = parse_exports(up.stdout)
    for tool in ("kubectl", "helm"):
        if not (bin_dir / tool).exists():
            raise DemoError(f"{tool} missing in {bin_dir}: run 'make k8s-bins'")
    return ClusterHandle(kubeconfig=kubeconfig, bin_dir=bin_dir, started_by_demo=not running)


class ReleaseLock:
    """The tests' lock on the release (``tests/apiservice_lock.py``, same file, ``flock``).

    The e2e tests install and uninstall release ``wsgauge`` while they hold it; the demo holds
    it from its install until its namespace is gone, so neither pulls the release from under
    the other. Waiting polls (the event loop keeps going, Ctrl-C works) and is bounded."""

    def __init__(self, path: Path = LOCK_PATH) -> None:
        self.path = path
        self.descriptor: int | None = None

    def try_acquire(self) -> bool:
        """Take the lock if it is free right now."""
        if self.descriptor is not None:
            return True
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            return False
        self.descriptor = descriptor
        return True

    async def acquire(self, timeout: float, say: Say) -> None:
        """Wait (bounded, a progress line every 30 s) until the lock is ours."""
        started = time.monotonic()
        told = started - 30.0
        while not self.try_acquire():
            waited = time.monotonic() - started
            if waited > timeout:
                raise DemoError(
                    f"{self.path} is still held after {timeout:.0f} s (a test run uses the "
                    "release wsgauge): run the demo again when it is done, or raise --lock-wait"
                )
            if time.monotonic() - told >= 30.0:
                say(
                    f"   waiting for {self.path} ({waited:.0f} s): a test is using the release "
                    f"{RELEASE}; the demo waits up to {timeout:.0f} s"
                )
                told = time.monotonic()
            await asyncio.sleep(0.5)

    def release(self) -> None:
        """Let go (no-op when not held)."""
        if self.descriptor is None:
            return
        with contextlib.suppress(OSError):
            fcntl.flock(self.descriptor, fcntl.LOCK_UN)
        os.close(self.descriptor)
        self.descriptor = None


def release_installed(cluster: ClusterHandle) -> bool:
    """Whether ``helm status wsgauge -n wsgauge-system`` finds the release."""
    result = subprocess.run(
        [str(cluster.bin_dir / "helm"), "status", RELEASE, "-n", RELEASE_NAMESPACE],
        capture_output=True,
        text=True,
        env=cluster.env,
        check=False,
        timeout=60,
    )
    return result.returncode == 0


def install_release(cluster: ClusterHandle, say: Say) -> None:
    """``helm upgrade --install`` of charts/wsgauge with the local images (as
    ``wsgauge-devcluster deploy``); waits until the
    operator, the injector and the custom metrics APIServices are Available. Blocking: run it
    in a thread."""
    install = ChartInstall(
        kubeconfig=cluster.kubeconfig,
        bin_dir=cluster.bin_dir,
        image_tag=project_version(),
        namespace=RELEASE_NAMESPACE,
        release=RELEASE,
        timeout_seconds=360.0,
    )
    try:
        install.install(lambda line: say(f"   {line}"))
    except DeployError as error:
        raise DemoError(f"installing wsgauge with its chart failed: {error}") from None


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


def _condition(status: Mapping[str, Any], kind: str) -> str:
    """'True', 'False' or '' (absent) of one pod condition."""
    for entry in status.get("conditions") or []:
        if entry.get("type") == kind:
            return str(entry.get("status", ""))
    return ""


@dataclass(frozen=True)
class PodInfo:
    """What the demo needs to know about one pod of the demo Deployment."""

    name: str
    """Pod name."""
    ip: str
    """Pod IP (10.244.0.x on the real node), '' before it has one."""
    node: str
    """The node it runs on ('' before it is scheduled)."""
    ready: bool
    """Condition Ready is True."""
    gate: str
    """Condition wsgauge.dev/connections-ok: 'True', 'False' or '' (not set yet)."""
    deleting: bool
    """deletionTimestamp is set (draining or gone soon)."""
    created: str
    """creationTimestamp (RFC 3339, sorts by time)."""
    deletion_cost: str
    """controller.kubernetes.io/pod-deletion-cost annotation ('' when unset)."""

    @property
    def serving(self) -> bool:
        """Ready and not being deleted: a ready endpoint of the Service."""
        return self.ready and not self.deleting and bool(self.ip)


def pod_info(pod: Mapping[str, Any]) -> PodInfo:
    """PodInfo of one pod object from the API."""
    metadata = pod.get("metadata", {})
    status = pod.get("status", {})
    annotations = metadata.get("annotations") or {}
    return PodInfo(
        name=metadata.get("name", ""),
        ip=status.get("podIP") or "",
        node=(pod.get("spec") or {}).get("nodeName") or "",
        ready=_condition(status, "Ready") == "True",
        gate=_condition(status, GATE),
        deleting=bool(metadata.get("deletionTimestamp")),
        created=metadata.get("creationTimestamp", ""),
        deletion_cost=annotations.get("controller.kubernetes.io/pod-deletion-cost", ""),
    )


def endpoint_readiness(slices: Mapping[str, Any]) -> dict[str, bool]:
    """Pod name -> ``conditions.ready`` of its endpoint, from an EndpointSlice list."""
    found: dict[str, bool] = {}
    for item in slices.get("items") or []:
        if item.get("kind", "EndpointSlice") != "EndpointSlice":
            continue
        for endpoint in item.get("endpoints") or []:
            target = (endpoint.get("targetRef") or {}).get("name")
            if target:
                found[target] = bool((endpoint.get("conditions") or {}).get("ready"))
    return found


def injected_summary(pod: Mapping[str, Any]) -> list[str]:
    """What the injector added to a chat pod, in a few lines (containers, gate, preStop)."""
    spec = pod.get("spec") or {}
    lines = []
    for container in spec.get("containers") or []:
        ports = ",".join(
            f"{p.get('name') or ''}:{p.get('containerPort')}".lstrip(":")
            for p in container.get("ports") or []
        )
        pre_stop = (container.get("lifecycle") or {}).get("preStop")
        extras = [f"ports {ports}"] if ports else []
        if pre_stop:
            command = (pre_stop.get("exec") or {}).get("command")
            sleep = (pre_stop.get("sleep") or {}).get("seconds")
            if sleep is not None:
                extras.append(f"preStop sleep {sleep}s")
            elif command:
                extras.append(f"preStop {' '.join(map(str, command))}")
            else:
                extras.append("preStop")
        lines.append(
            f"container {container.get('name')}: {container.get('image')}"
            + (f"  ({'; '.join(extras)})" if extras else "")
        )
    gates = [g.get("conditionType") for g in spec.get("readinessGates") or []]
    lines.append(f"readinessGates: {', '.join(map(str, gates)) or '-'}")
    lines.append(f"node: {spec.get('nodeName') or '-'}")
    return lines
