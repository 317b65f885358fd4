"""KEDA on the local cluster, installed from its own manifests with images built here.

KEDA's operator, metrics server and admission webhooks are compiled from KEDA's Go module by
``hack/build-keda.sh`` (one pinned 2.x release, cached by version under ``~/.cache/wsgauge/keda``,
with KEDA's ``config/`` kustomize tree beside the binaries). This module:

- builds ``<registry>/keda:<KEDA version>``: the three binaries on the Debian-made base of the
  wsgauge images (``images/keda/Dockerfile``; nothing is pulled), and loads it into the real
  node's containerd;
- renders KEDA's release manifests as KEDA makes its ``keda-<version>.yaml``
  (``kubectl kustomize`` of ``config/default``: CRDs, RBAC, the ``keda`` namespace, the three
  Deployments, the ``v1beta1.external.metrics.k8s.io`` APIService) through an overlay that
  changes only what this cluster needs: the image names (the local image,
  ``imagePullPolicy: IfNotPresent``) and, because the cluster has no DNS server, the metrics
  server's ``--metrics-service-address`` (the ``keda-operator`` Service's ClusterIP) with
  ``--metrics-service-grpc-authority`` set to the name KEDA's certificate carries;
- applies them with ``kubectl apply --server-side`` (as KEDA's install guide does) and waits
  until the Deployments are Available and the APIService reports Available.

CLI (``wsgauge-devcluster keda`` runs the same install on the running devcluster)::

    python -m wsgauge_devcluster.keda build            # binaries (cached) and the image
    python -m wsgauge_devcluster.keda render [--operator-address IP:PORT]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from wsgauge_devcluster import images
from wsgauge_devcluster.docker_engine import (
    DockerEngineError,
    Log,
    docker,
    docker_env,
    engine_in_use,
    ensure_docker_engine,
)
from wsgauge_devcluster.exceptions import DevClusterError
from wsgauge_devcluster.processes import file_lock
from wsgauge_devcluster.settings import REPO_ROOT

__all__ = [
    "APISERVICE",
    "KedaError",
    "KedaInstall",
    "build_image",
    "ensure_built",
    "keda_version",
    "render",
]

BUILD_SCRIPT = REPO_ROOT / "hack" / "build-keda.sh"
DOCKERFILE = REPO_ROOT / "images" / "keda" / "Dockerfile"
BINARIES = ("keda", "keda-adapter", "keda-admission-webhooks")
"""What hack/build-keda.sh builds into ``<KEDA dir>/bin`` (the image's three commands)."""
KEDA_NAMESPACE = "keda"
"""The namespace KEDA's manifests install into."""
DEPLOYMENTS = ("keda-operator", "keda-metrics-apiserver", "keda-admission")
APISERVICE = "v1beta1.external.metrics.k8s.io"
"""KEDA's APIService (KEDA serves external metrics; custom.metrics.k8s.io stays free)."""
UPSTREAM_IMAGES = (
    "ghcr.io/kedacore/keda",
    "ghcr.io/kedacore/keda-metrics-apiserver",
    "ghcr.io/kedacore/keda-admission-webhooks",
)
"""The image names in KEDA's manifests, all replaced by the one local image."""
GRPC_AUTHORITY = "keda-operator.keda.svc.cluster.local"
"""A name the certificate of KEDA's gRPC metrics service carries (KEDA makes it for
``keda-operator.keda.svc.<cluster domain>``)."""
GRPC_PORT = 9666
BUILD_TIMEOUT = 7200


class KedaError(DevClusterError):
    """Building, rendering, installing or removing KEDA failed."""


# --- the binaries and the image --------------------------------------------------------------


def ensure_built(log: Log) -> Path:
    """Run hack/build-keda.sh (returns at once when the binaries are cached); its directory.

    The script's progress lines go to stderr as they come.
    """
    started = time.monotonic()
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)],
        stdout=subprocess.PIPE,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        raise KedaError(f"hack/build-keda.sh failed (exit {result.returncode})")
    directory = Path(result.stdout.strip().splitlines()[-1])
    if time.monotonic() - started > 5:
        log(f"KEDA built in {time.monotonic() - started:.0f} s")
    return directory


def keda_version(directory: Path) -> str:
    """The KEDA version of a build directory (``.../keda-v2.21.0`` -> ``2.21.0``)."""
    name = directory.name
    if not name.startswith("keda-v"):
        raise KedaError(f"{directory}: not a KEDA directory of hack/build-keda.sh")
    return name.removeprefix("keda-v")


def image_ref(directory: Path, registry: str | None = None) -> str:
    """``<registry>/keda:<KEDA version>``."""
    registry = registry or os.environ.get("IMAGE_REGISTRY") or images.DEFAULT_REGISTRY
    return f"{registry.rstrip('/')}/keda:{keda_version(directory)}"


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _image_label(ref: str, label: str) -> str | None:
    result = subprocess.run(
        docker("image", "inspect", "--format", f'{{{{ index .Config.Labels "{label}" }}}}', ref),
        env=docker_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.stdout.strip() if result.returncode == 0 else None


def build_image(log: Log, directory: Path, registry: str | None = None) -> str:
    """Build the KEDA image unless one with the same content key exists; returns its ref.

    The key hashes the binaries, the Dockerfile and the base image's id.
    """
    ref = image_ref(directory, registry)
    registry = ref.rsplit("/keda:", 1)[0]
    with engine_in_use(), file_lock(images.cache_dir() / "build.lock"):
        try:
            ensure_docker_engine(log)
        except DockerEngineError as error:
            raise KedaError(str(error)) from error
        base = images.ensure_base_image(log, registry)
        digest = hashlib.sha256(DOCKERFILE.read_bytes())
        digest.update((images.image_id(base) or base).encode())
        for name in BINARIES:
            digest.update(_file_digest(directory / "bin" / name).encode())
        key = digest.hexdigest()[:12]
        if _image_label(ref, "dev.wsgauge.keda.key") == key:
            log(f"{ref} is there (content key {key})")
            return ref
        context = images.cache_dir() / "context" / "keda"
        shutil.rmtree(context, ignore_errors=True)
        context.mkdir(parents=True)
        shutil.copy2(DOCKERFILE, context / "Dockerfile")
        for name in BINARIES:
            shutil.copy2(directory / "bin" / name, context / name)
        started = time.monotonic()
        log(f"building {ref} on {base}")
        argv = images.build_argv(context / "Dockerfile", context, ref, base)
        argv[-1:-1] = ["--build-arg", f"KEDA_VERSION={keda_version(directory)}"]
        argv[-1:-1] = ["--label", f"dev.wsgauge.keda.key={key}"]
        result = subprocess.run(
            argv, env=docker_env(), capture_output=True, text=True, timeout=1800, check=False
        )
        shutil.rmtree(context, ignore_errors=True)
        if result.returncode != 0:
            raise KedaError(f"docker build {ref} failed: {result.stderr.strip()[-800:]}")
        log(f"built {ref} in {time.monotonic() - started:.1f} s")
    return ref


# --- KEDA's manifests ------------------------------------------------------------------------


def overlay(image: str, operator_address: str | None) -> dict[str, Any]:
    """The kustomization over KEDA's ``config/default``: the local image for all three
    Deployments, and the metrics server's way to the operator when there is no DNS."""
    name, _, tag = image.rpartition(":")
    patches: list[dict[str, Any]] = [
        {
            "target": {"kind": "Deployment", "namespace": KEDA_NAMESPACE},
            "patch": json.dumps(
                [
                    {
                        "op": "replace",
                        "path": "/spec/template/spec/containers/0/imagePullPolicy",
                        "value": "IfNotPresent",
                    }
                ]
            ),
        }
    ]
    if operator_address:
        args = [
            f"--metrics-service-address={operator_address}",
            f"--metrics-service-grpc-authority={GRPC_AUTHORITY}",
        ]
        patches.append(
            {
                "target": {"kind": "Deployment", "name": "keda-metrics-apiserver"},
                "patch": json.dumps(
                    [
                        {"op": "add", "path": "/spec/template/spec/containers/0/args/-", "value": a}
                        for a in args
                    ]
                ),
            }
        )
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["../config/default"],
        "images": [
            {"name": upstream, "newName": name, "newTag": tag} for upstream in UPSTREAM_IMAGES
        ],
        "patches": patches,
    }


def render(
    kubectl: Path, directory: Path, image: str, operator_address: str | None = None
) -> list[dict[str, Any]]:
    """``kubectl kustomize`` of the overlay (written beside KEDA's config/); the documents."""
    target = directory / f"overlay-{os.getpid()}"
    target.mkdir(exist_ok=True)
    try:
        (target / "kustomization.yaml").write_text(
            yaml.safe_dump(overlay(image, operator_address), sort_keys=False)
        )
        result = subprocess.run(
            [str(kubectl), "kustomize", str(target)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        shutil.rmtree(target, ignore_errors=True)
    if result.returncode != 0:
        raise KedaError(f"kubectl kustomize of KEDA's config failed: {result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


# --- install and remove ----------------------------------------------------------------------


@dataclass(frozen=True)
class KedaInstall:
    """KEDA installed on one cluster from the manifests :func:`render` makes."""

    kubeconfig: Path
    """Admin kubeconfig of the cluster."""
    bin_dir: Path
    """Where kubectl is."""
    directory: Path
    """hack/build-keda.sh's KEDA directory (binaries and config/)."""
    image: str
    """The KEDA image (loaded into the node's containerd)."""
    timeout_seconds: float = 420.0
    """How long to wait for KEDA to become available (its operator first makes certificates,
    which the kubelet then mounts into the metrics server: a minute or two)."""
    extra_env: dict[str, str] = field(default_factory=dict)

    def kubectl(
        self, *args: str, input_text: str | None = None, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """kubectl against this cluster (no check)."""
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), **self.extra_env}
        return subprocess.run(
            [str(self.bin_dir / "kubectl"), *args],
            input=input_text,
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
        )

    def _apply(self, documents: Sequence[dict[str, Any]]) -> None:
        text = "---\n".join(yaml.safe_dump(doc, sort_keys=False) for doc in documents)
        result = self.kubectl(
            "apply", "--server-side", "--force-conflicts", "-f", "-", input_text=text
        )
        if result.returncode != 0:
            raise KedaError(f"kubectl apply of KEDA's manifests failed: {result.stderr.strip()}")

    def operator_address(self) -> str | None:
        """``<ClusterIP>:9666`` of the keda-operator Service, None before it exists."""
        found = self.kubectl(
            "get", "service", "keda-operator", "-n", KEDA_NAMESPACE,
            "-o", "jsonpath={.spec.clusterIP}",
        )  # fmt: skip
        address = found.stdout.strip() if found.returncode == 0 else ""
        return f"{address}:{GRPC_PORT}" if address and address != "None" else None

    def manifests(self) -> list[dict[str, Any]]:
        """What :meth:`install` applies (the operator's address filled in once it has one)."""
        kubectl = self.bin_dir / "kubectl"
        return render(kubectl, self.directory, self.image, self.operator_address())

    def install(self, log: Log) -> None:
        """Apply KEDA's manifests, then wait until KEDA is available."""
        started = time.monotonic()
        if self.operator_address() is None:
            # first the namespace and the operator's Service: its ClusterIP goes into the
            # metrics server's arguments
            first = [
                doc
                for doc in render(self.bin_dir / "kubectl", self.directory, self.image)
                if doc["kind"] == "Namespace"
                or (doc["kind"] == "Service" and doc["metadata"]["name"] == "keda-operator")
            ]
            self._apply(first)
        documents = self.manifests()
        log(f"kubectl apply --server-side: KEDA {keda_version(self.directory)}, {len(documents)} "
            f"objects, image {self.image}")  # fmt: skip
        self._apply(documents)
        self.wait_available(log)
        log(f"KEDA available after {time.monotonic() - started:.1f} s")

    def wait_available(self, log: Log) -> None:
        """The three Deployments rolled out, the external metrics APIService Available."""
        deadline = time.monotonic() + self.timeout_seconds
        for deployment in DEPLOYMENTS:
            remaining = max(1.0, deadline - time.monotonic())
            log(f"waiting for deployment/{deployment} in {KEDA_NAMESPACE}")
            result = self.kubectl(
                "rollout", "status", f"deployment/{deployment}", "-n", KEDA_NAMESPACE,
                f"--timeout={int(remaining)}s", timeout=remaining + 10,
            )  # fmt: skip
            if result.returncode != 0:
                pods = self.kubectl("get", "pods", "-n", KEDA_NAMESPACE, "-o", "wide").stdout
                raise KedaError(f"{deployment} did not become available: {result.stderr}\n{pods}")
        last = "no status yet"
        while time.monotonic() < deadline:
            found = self.kubectl("get", "apiservice", APISERVICE, "-o", "json")
            if found.returncode == 0:
                conditions = json.loads(found.stdout).get("status", {}).get("conditions", [])
                available = [c for c in conditions if c.get("type") == "Available"]
                if available and available[0].get("status") == "True":
                    log(f"{APISERVICE} Available")
                    return
                last = available[0].get("message", "") if available else "no status yet"
            time.sleep(1)
        raise KedaError(f"{APISERVICE} did not become Available: {last}")

    def uninstall(self, log: Log) -> None:
        """``kubectl delete`` of the same manifests (ScaledObjects should be gone first: their
        finalizer needs the operator). Waits until the namespace is gone."""
        documents = self.manifests()
        text = "---\n".join(yaml.safe_dump(doc, sort_keys=False) for doc in documents)
        result = self.kubectl(
            "delete", "--ignore-not-found", "--wait=true", "--timeout=180s", "-f", "-",
            input_text=text, timeout=240,
        )  # fmt: skip
        log(result.stdout.strip() or result.stderr.strip())
        if result.returncode != 0:
            raise KedaError(f"kubectl delete of KEDA's manifests failed: {result.stderr.strip()}")


# --- CLI -------------------------------------------------------------------------------------


def _stderr_log(message: str) -> None:
    print(f"[keda {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``build`` | ``render [--operator-address IP:PORT]``."""
    parser = argparse.ArgumentParser(
        prog="python -m wsgauge_devcluster.keda",
        description="KEDA built from its Go module (hack/build-keda.sh) for the local cluster. "
        "Install it on the running devcluster with: wsgauge-devcluster keda",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build", help="the binaries (cached by version) and the image")
    rendering = commands.add_parser("render", help="print the manifests that are applied")
    rendering.add_argument("--operator-address", help="the keda-operator Service's IP:9666")
    rendering.add_argument("--kubectl", default="kubectl", help="kubectl to run kustomize with")
    args = parser.parse_args(argv)
    try:
        directory = ensure_built(_stderr_log)
        if args.command == "build":
            ref = build_image(_stderr_log, directory)
            print(ref)
        else:
            kubectl = Path(shutil.which(args.kubectl) or args.kubectl)
            documents = render(kubectl, directory, image_ref(directory), args.operator_address)
            print("---\n".join(yaml.safe_dump(doc, sort_keys=False) for doc in documents))
    except (KedaError, images.ImageBuildError) as error:
        _stderr_log(f"error: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
