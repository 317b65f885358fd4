"""Locates the Kubernetes, etcd and helm binaries built and cached by hack/build-k8s.sh."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from wsgauge_devcluster.exceptions import BinaryMissingError
from wsgauge_devcluster.settings import REPO_ROOT

BUILD_SCRIPT = REPO_ROOT / "hack" / "build-k8s.sh"
"""The script that builds and caches the binaries."""

REQUIRED = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kubelet",
    "kube-proxy",
    "helm",
)
"""Every binary the cluster and the tests use."""


@dataclass(frozen=True)
class Binaries:
    """Absolute paths of the cached binaries."""

    bin_dir: Path
    """The cache directory holding all of them (goes on PATH)."""

    def path(self, name: str) -> Path:
        """Path of one binary, by name."""
        return self.bin_dir / name

    @property
    def kubernetes_version(self) -> str:
        """The pinned release, e.g. v1.37.2 (from the cache directory name)."""
        match = re.match(r"k8s-(v[0-9.]+)", self.bin_dir.name)
        return match.group(1) if match else "unknown"

    def missing(self) -> list[str]:
        """Names of required binaries that are absent or not executable."""
        return [n for n in REQUIRED if not os.access(self.path(n), os.X_OK)]

    def require(self) -> None:
        """Raise BinaryMissingError naming what is absent and how to build it."""
        absent = self.missing()
        if absent:
            raise BinaryMissingError(
                f"missing binaries in {self.bin_dir}: {', '.join(absent)}. Build them with "
                f"`make k8s-bins` or `{BUILD_SCRIPT}` (first build takes tens of minutes)."
            )


def locate() -> Binaries:
    """Ask the build script where its cache lives (env WSGAUGE_K8S_BIN_DIR overrides)."""
    override = os.environ.get("WSGAUGE_K8S_BIN_DIR")
    if override:
        return Binaries(Path(override).resolve())
    result = subprocess.run(
        [str(BUILD_SCRIPT), "--print-bin-dir"], check=True, capture_output=True, text=True
    )
    return Binaries(Path(result.stdout.strip()))
