"""`wsgauge-devcluster deploy`: installs the chart as users do, with the local images.

`helm upgrade --install` of ``charts/wsgauge`` into ``wsgauge-system`` (by default), images from
the local prefix (``wsgauge/...:<version>``, already loaded into the node), then waits until the
operator and injector Deployments are Available and every ``custom.metrics.k8s.io`` APIService
reports Available through the chart's Service and CA. Nothing is patched behind the chart's back.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from wsgauge_devcluster.exceptions import DevClusterError
from wsgauge_devcluster.settings import REPO_ROOT

CHART = REPO_ROOT / "charts" / "wsgauge"
"""The chart in this repository."""

APISERVICES = ("v1beta2.custom.metrics.k8s.io", "v1beta1.custom.metrics.k8s.io")
"""What the chart registers (when metricsApi.enabled)."""

Log = Callable[[str], None]


class DeployError(DevClusterError):
    """helm failed or the release did not become available in time."""


@dataclass(frozen=True)
class ChartInstall:
    """One installation of the chart on a cluster."""

    kubeconfig: Path
    """Admin kubeconfig of the cluster."""
    bin_dir: Path
    """Where helm and kubectl are."""
    image_registry: str = "wsgauge"
    """Image prefix (image.registry)."""
    image_tag: str = ""
    """Image tag (empty: the chart's appVersion)."""
    namespace: str = "wsgauge-system"
    """Namespace of the release."""
    release: str = "wsgauge"
    """Release name."""
    values: Sequence[str] = field(default_factory=tuple)
    """Extra `--set` arguments (KEY=VALUE)."""
    timeout_seconds: float = 300.0
    """How long to wait for the release to become available."""

    def _run(self, *argv: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        env = {
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{self.bin_dir}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(Path.home()),
        }
        return subprocess.run(
            argv, capture_output=True, text=True, env=env, timeout=timeout, check=False
        )

    def kubectl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """kubectl against this cluster (no check)."""
        return self._run(str(self.bin_dir / "kubectl"), *args)

    def helm_arguments(self) -> list[str]:
        """The `helm upgrade --install` command line."""
        sets = [f"image.registry={self.image_registry}", "image.pullPolicy=IfNotPresent"]
        if self.image_tag:
            sets.append(f"image.tag={self.image_tag}")
        sets.extend(self.values)
        return [
            str(self.bin_dir / "helm"), "upgrade", "--install", self.release, str(CHART),
            "--namespace", self.namespace, "--create-namespace",
            # the CRD is cluster-wide and kept on uninstall: it may carry the ownership of an
            # earlier release (or of none, applied from crds/); helm refuses it without this
            "--take-ownership",
            *[word for item in sets for word in ("--set", item)],
        ]  # fmt: skip

    def install(self, log: Log) -> None:
        """Install or upgrade, then wait until it is available."""
        started = time.monotonic()
        log(f"helm upgrade --install {self.release} {CHART} -n {self.namespace}")
        result = self._run(*self.helm_arguments(), timeout=self.timeout_seconds)
        if result.returncode != 0:
            raise DeployError(f"helm failed: {result.stderr.strip() or result.stdout.strip()}")
        self.wait_available(log)
        log(f"wsgauge available in {self.namespace} after {time.monotonic() - started:.1f}s")

    def uninstall(self, log: Log) -> None:
        """helm uninstall (the CRD stays, as the chart keeps it)."""
        helm = str(self.bin_dir / "helm")
        result = self._run(helm, "uninstall", self.release, "-n", self.namespace, "--wait")
        log(result.stdout.strip() or result.stderr.strip())

    def _deployments(self) -> list[str]:
        listing = self.kubectl(
            "get", "deployments", "-n", self.namespace,
            "-l", f"app.kubernetes.io/instance={self.release}", "-o", "name",
        )  # fmt: skip
        return listing.stdout.split()

    def _apiservices_available(self) -> tuple[bool, str]:
        pending = []
        for name in APISERVICES:
            found = self.kubectl("get", "apiservice", name, "-o", "json")
            if found.returncode != 0:
                return True, ""  # the metrics API is turned off in this release
            conditions = json.loads(found.stdout).get("status", {}).get("conditions", [])
            available = [c for c in conditions if c.get("type") == "Available"]
            if not available or available[0].get("status") != "True":
                message = available[0].get("message", "") if available else "no status yet"
                pending.append(f"{name}: {message}")
        return not pending, "; ".join(pending)

    def wait_available(self, log: Log) -> None:
        """Deployments Available (rollout status), then the APIServices Available."""
        deadline = time.monotonic() + self.timeout_seconds
        for deployment in self._deployments():
            remaining = max(1.0, deadline - time.monotonic())
            log(f"waiting for {deployment} to be available")
            result = self._run(
                str(self.bin_dir / "kubectl"), "rollout", "status", deployment,
                "-n", self.namespace, f"--timeout={int(remaining)}s",
                timeout=remaining + 10,
            )  # fmt: skip
            if result.returncode != 0:
                pods = self.kubectl("get", "pods", "-n", self.namespace, "-o", "wide").stdout
                raise DeployError(
                    f"{deployment} did not become available: {result.stderr.strip()}\n{pods}"
                )
        last = ""
        while time.monotonic() < deadline:
            ready, last = self._apiservices_available()
            if ready:
                log("custom.metrics.k8s.io APIServices Available")
                return
            time.sleep(1)
        raise DeployError(f"the metrics APIServices did not become Available: {last}")
