"""Helpers for the chart tests on a real cluster: helm runs, a local injector process, pods."""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wsgauge_devcluster.testing import KubeCluster, eventually

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "wsgauge"
CRD_NAME = "connectionstats.wsgauge.dev"
METRICS_APISERVICES = ("v1beta1.custom.metrics.k8s.io", "v1beta2.custom.metrics.k8s.io")


def helm(kube: KubeCluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run helm against the cluster."""
    result = subprocess.run(
        [str(kube.helm_path), *args],
        capture_output=True,
        text=True,
        env=kube.env,
        check=False,
        timeout=240,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)}:\n{result.stdout}\n{result.stderr}")
    return result


def uninstall(kube: KubeCluster, release: str, namespace: str, timeout: float = 60) -> None:
    """helm uninstall, retried while the API server is away (a restart by another test)."""

    def done() -> bool:
        result = helm(kube, "uninstall", release, "--namespace", namespace, check=False)
        return result.returncode == 0 or "not found" in result.stderr

    eventually(done, timeout=timeout, interval=2, what=f"helm uninstall {release}")


def kubectl_input(kube: KubeCluster, stdin: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run kubectl with a document on stdin (never raises)."""
    return kube.kubectl(*args, input_text=stdin, check=False, timeout=120)


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def apiservices_present(kube: KubeCluster) -> list[str]:
    """The custom.metrics.k8s.io APIServices registered right now."""
    return [
        name
        for name in METRICS_APISERVICES
        if kube.kubectl("get", "apiservice", name, check=False).returncode == 0
    ]


class LocalInjector:
    """The injector as a local process on loopback, with the chart's own TLS secret and config."""

    def __init__(self, kube: KubeCluster, namespace: str, release: str, port: int, workdir: Path):
        self.port = port
        secret = kube.get_json("secret", f"{release}-wsgauge-injector-tls", "-n", namespace)
        config = kube.get_json("configmap", f"{release}-wsgauge-injector", "-n", namespace)
        workdir.mkdir(parents=True, exist_ok=True)
        self.ca_file = workdir / "ca.crt"
        for key in ("ca.crt", "tls.crt", "tls.key"):
            (workdir / key).write_bytes(base64.b64decode(secret["data"][key]))
        (workdir / "injector.json").write_text(config["data"]["injector.json"])
        env = dict(os.environ)
        env.update(
            WSGAUGE_INJECTOR_LISTEN=f"127.0.0.1:{port}",
            WSGAUGE_INJECTOR_CERT_FILE=str(workdir / "tls.crt"),
            WSGAUGE_INJECTOR_KEY_FILE=str(workdir / "tls.key"),
            WSGAUGE_INJECTOR_CONFIG=str(workdir / "injector.json"),
        )
        self.log = (workdir / "injector.log").open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "wsgauge_operator.injector.server"],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        eventually(self.healthy, timeout=30, what="local injector /healthz")

    def healthy(self) -> bool:
        """Whether /healthz answers over TLS verified with the chart's CA."""
        if self.process.poll() is not None:
            raise AssertionError(f"injector exited with {self.process.returncode}")
        context = ssl.create_default_context(cafile=str(self.ca_file))
        try:
            with urllib.request.urlopen(
                f"https://127.0.0.1:{self.port}/healthz", timeout=2, context=context
            ) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        """Terminate the process (SIGTERM, then SIGKILL)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.log.close()


def pod_manifest(
    name: str, namespace: str, annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    """A pod that never gets scheduled (its nodeSelector matches no node): only its spec matters."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations or {}},
        "spec": {
            "nodeSelector": {"wsgauge.dev/chart-test": "no-such-node"},
            "containers": [
                {"name": "app", "image": "example.com/chat:1", "ports": [{"containerPort": 8081}]}
            ],
        },
    }


def create_pod(kube: KubeCluster, manifest: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """kubectl create the pod; stdout is the object as the API server stored it (JSON)."""
    return kubectl_input(kube, json.dumps(manifest), "create", "-f", "-", "-o", "json")


def can_i(kube: KubeCluster, subject: str, *args: str) -> bool:
    """kubectl auth can-i as a ServiceAccount."""
    result = kube.kubectl("auth", "can-i", *args, f"--as={subject}", check=False)
    answer = result.stdout.strip()
    assert answer in ("yes", "no"), f"can-i {args}: {result.stdout} {result.stderr}"
    return answer == "yes"


def leftovers(kube: KubeCluster, kinds: Sequence[str], selector: str) -> list[str]:
    """Objects of these kinds (all namespaces) that carry the label selector."""
    found: list[str] = []
    for kind in kinds:
        result = kube.kubectl("get", kind, "-A", "-l", selector, "-o", "name", check=False)
        found += result.stdout.split()
    return found
