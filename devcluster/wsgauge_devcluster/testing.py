"""Test-side handle on a running cluster (used by tests/conftest.py): kubectl/helm paths, the
kubeconfig, a kubectl runner, the host pid of a container (a real node's containerd task or a pod
runner process), and a poll-with-deadline helper."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from wsgauge_devcluster.realnode import socket_dir_for

T = TypeVar("T")


SIMULATED_PLACEMENT: dict[str, Any] = {
    "nodeSelector": {"wsgauge.dev/pod-runner": "true"},
    "tolerations": [
        {
            "key": "wsgauge.dev/simulated",
            "operator": "Equal",
            "value": "true",
            "effect": "NoSchedule",
        }
    ],
}
"""Pod spec fields that put a pod on the pod runner's simulated nodes (which carry a taint when
a real node runs beside them); for tests of the simulator itself and for pods of images that do
not exist."""


def on_simulated_node(pod_spec: dict[str, Any]) -> dict[str, Any]:
    """The pod spec, placed on a simulated node (SIMULATED_PLACEMENT merged in)."""
    return {**pod_spec, **SIMULATED_PLACEMENT}


def eventually(
    check: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.5, what: str = ""
) -> T:
    """Call check until it returns something other than None/False; AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last is not None and last is not False:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what or check!r}")


@dataclass(frozen=True)
class KubeCluster:
    """A reachable cluster and the tools to drive it."""

    kubeconfig: Path
    """Admin kubeconfig."""
    bin_dir: Path
    """Directory with kubectl and helm (and the control plane binaries)."""
    state_dir: Path | None
    """Our devcluster's state directory; None when the cluster is not ours (e.g. kind)."""
    version: str
    """The pinned Kubernetes version the binaries were built for."""

    @property
    def kubectl_path(self) -> Path:
        """kubectl binary."""
        return self.bin_dir / "kubectl"

    @property
    def helm_path(self) -> Path:
        """helm binary."""
        return self.bin_dir / "helm"

    @property
    def env(self) -> dict[str, str]:
        """Environment for subprocesses: KUBECONFIG set, bin_dir first on PATH."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = f"{self.bin_dir}:{env.get('PATH', '')}"
        return env

    def kubectl(
        self,
        *args: str,
        input_text: str | None = None,
        check: bool = True,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl with this cluster's kubeconfig; raises on failure when check is set."""
        result = subprocess.run(
            [str(self.kubectl_path), *args],
            input=input_text,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}"
            )
        return result

    def apply(self, manifest: Mapping[str, Any] | Sequence[Mapping[str, Any]] | str) -> None:
        """kubectl apply -f - of a manifest (dict, list of dicts, or YAML/JSON text)."""
        if isinstance(manifest, str):
            text = manifest
        elif isinstance(manifest, Mapping):
            text = json.dumps(manifest)
        else:
            text = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(manifest)})
        self.kubectl("apply", "-f", "-", input_text=text)

    def get_json(self, *args: str) -> Any:
        """kubectl get ... -o json, decoded."""
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def pod_dir(self, namespace: str, pod: str) -> Path:
        """Where the pod runner keeps <container>.pid and <container>.log of a pod."""
        if self.state_dir is None:
            raise AssertionError("pod processes exist only on the local devcluster")
        return self.state_dir / "pods" / f"{namespace}_{pod}"

    @property
    def containerd_socket(self) -> Path:
        """The real node's containerd socket (devcluster only)."""
        if self.state_dir is None:
            raise AssertionError("the containerd socket is known only on the local devcluster")
        return socket_dir_for(self.state_dir) / "containerd.sock"

    def container_pid(self, namespace: str, pod: str, container: str) -> int | None:
        """Host pid of a container's main process, None if it is not running: on the real node
        the containerd task of the container's current ID, on a simulated node the pod runner's
        process (sidecar/demo-app)."""
        found = self.kubectl("get", "pod", pod, "-n", namespace, "-o", "json", check=False)
        if found.returncode != 0:
            return None
        status = json.loads(found.stdout).get("status", {})
        for entry in status.get("containerStatuses") or []:
            if entry.get("name") != container or "running" not in entry.get("state", {}):
                continue
            runtime, _, container_id = str(entry.get("containerID", "")).partition("://")
            if runtime == "containerd":
                return self._containerd_task_pid(container_id)
        try:
            return int((self.pod_dir(namespace, pod) / f"{container}.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def _containerd_task_pid(self, container_id: str) -> int | None:
        listing = subprocess.run(
            ["ctr", "-a", str(self.containerd_socket), "-n", "k8s.io", "tasks", "ls"],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        ).stdout
        for line in listing.splitlines()[1:]:
            words = line.split()
            if len(words) >= 3 and words[0] == container_id and words[2] == "RUNNING":
                return int(words[1])
        return None
