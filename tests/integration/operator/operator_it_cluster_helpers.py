"""Helpers of the operator integration tests on the real control plane: the operator as a real
subprocess (``wsgauge-operator --kubeconfig ...``), the chat workload, status polling."""

from __future__ import annotations

import copy
import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from operator_it_harness import STARTUP_TIMEOUT, VENV_BIN, Process, free_port, wait_for_port
from wsgauge_devcluster.testing import KubeCluster, eventually

REPO = Path(__file__).resolve().parents[3]
CRD = REPO / "crds" / "connectionstats.yaml"
EXAMPLE = REPO / "examples" / "chat-manual"


class OperatorProcess:
    """``wsgauge-operator`` watching one namespace, its stats server on a loopback port."""

    def __init__(self, kube: KubeCluster, namespace: str, log: Path, *extra: str) -> None:
        self.port = free_port()
        self._argv = [
            str(VENV_BIN / "wsgauge-operator"),
            "--kubeconfig", str(kube.kubeconfig),
            "--namespaces", namespace,
            "--listen", f"127.0.0.1:{self.port}",
            "--read-timeout", "3",
            "--startup-grace", "5",
            "--backoff-max", "1",
            "--status-interval", "500ms",
            "--min-status-interval", "200ms",
            "--log-level", "info",
            *extra,
        ]  # fmt: skip
        self._log = log
        self.process: Process | None = None
        self.start()

    def start(self) -> None:
        """(Re)start the process; wait until its stats server serves (or answers as a standby).

        The stats port opens at once and answers ``ok (starting)`` on ``/healthz`` until the
        controller runs: a port that accepts connections is not yet a server to query.
        """
        self.process = Process(self._argv, self._log)
        try:
            wait_for_port("127.0.0.1", self.port, timeout=STARTUP_TIMEOUT)
            eventually(self._started, timeout=60, interval=0.1, what="the operator started")
        except AssertionError:
            self.process.stop()  # the caller never got hold of it: do not leave it running
            raise

    def _started(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=5) as r:
                return b"starting" not in r.read()
        except OSError:  # a refused or cut connection: try again
            return False

    def stop(self) -> None:
        """SIGTERM and wait."""
        if self.process is not None:
            self.process.stop(timeout=15)
            self.process = None

    def get(self, path: str) -> bytes:
        """GET from the stats server."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as reply:
            return bytes(reply.read())

    def metric(self, name: str, **labels: str) -> float:
        """One sample of the operator's /metrics (0 if absent)."""
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in self.get("/metrics").decode().splitlines():
            if line.startswith("#"):
                continue
            series, _, value = line.rpartition(" ")
            series_name, _, label_text = series.partition("{")
            if series_name != name:
                continue
            have = ",".join(sorted(label_text.rstrip("}").split(","))) if label_text else ""
            if have == wanted:
                return float(value)
        return 0.0

    def output(self) -> str:
        """The operator's log so far."""
        return self._log.read_text(errors="replace")


MANIFEST = REPO / "deploy" / "local" / "metrics-api.yaml"
"""Registers a metrics API running on the host (a Service of type ExternalName)."""
COST = "controller.kubernetes.io/pod-deletion-cost"
APISERVICES = ("v1beta2.custom.metrics.k8s.io", "v1beta1.custom.metrics.k8s.io")


def apiservice_documents(namespace: str, port: int) -> list[dict[str, Any]]:
    """deploy/local/metrics-api.yaml with the Service in ``namespace`` on ``port``."""
    documents = [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc]
    service, *api_services = documents[1:]
    service["metadata"]["namespace"] = namespace
    service["spec"]["ports"][0]["port"] = port
    for api_service in api_services:
        api_service["spec"]["service"].update(namespace=namespace, port=port)
    return [service, *api_services]


def hpa_of(kube: KubeCluster, namespace: str, name: str = "chat") -> dict[str, Any] | None:
    result = kube.kubectl("get", "hpa", name, "-n", namespace, "-o", "json", check=False)
    return dict(json.loads(result.stdout)) if result.returncode == 0 else None


def event_reasons(kube: KubeCluster, namespace: str) -> list[str]:
    events = kube.get_json("events.v1.events.k8s.io", "-n", namespace)["items"]
    return [str(e.get("reason")) for e in events]


def costs(kube: KubeCluster, namespace: str) -> dict[str, str | None]:
    pods = kube.get_json("pods", "-n", namespace, "-l", "app=chat")["items"]
    return {p["metadata"]["name"]: (p["metadata"].get("annotations") or {}).get(COST) for p in pods}


def chat_deployment(
    namespace: str, replicas: int, name: str = "chat", liveness_failures: int | None = None
) -> dict[str, Any]:
    """examples/chat-manual/deployment.yaml, made quick to stop (no drain wait) for tests.
    ``liveness_failures`` sets the sidecar's livenessProbe failureThreshold (the kubelet
    restarts a sidecar that stays hung past period x threshold)."""
    deployment: dict[str, Any] = copy.deepcopy(
        yaml.safe_load((EXAMPLE / "deployment.yaml").read_text())
    )
    deployment["metadata"].update(name=name, namespace=namespace)
    deployment["spec"]["replicas"] = replicas
    pod_spec = deployment["spec"]["template"]["spec"]
    pod_spec["terminationGracePeriodSeconds"] = 3
    for container in pod_spec["containers"]:
        container.get("lifecycle", {}).pop("preStop", None)
        if container["name"] == "wsgauge-sidecar":
            container["args"] = [
                a
                for a in container["args"]
                if not a.startswith(("--drain-grace", "--drain-spread"))
            ] + ["--drain-grace=0", "--drain-spread=0", "--watch-heartbeat=1"]
            if liveness_failures is not None:
                container["livenessProbe"]["failureThreshold"] = liveness_failures
    return deployment


def connection_stats(namespace: str, name: str = "chat", **spec: Any) -> dict[str, Any]:
    """A ConnectionStats for the chat pods (no autoscaling: that is the next issue)."""
    body: dict[str, Any] = {
        "selector": {"matchLabels": {"app": "chat"}},
        "sidecarPort": "wsgauge-admin",
        "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "chat"},
        "capacity": {"maxConnectionsPerPod": 1000, "minReadyPods": 1},
        "statusInterval": "500ms",
    }
    body.update(spec)
    return {
        "apiVersion": "wsgauge.dev/v1alpha1",
        "kind": "ConnectionStats",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


def status_of(kube: KubeCluster, namespace: str, name: str = "chat") -> dict[str, Any]:
    """The ConnectionStats status ({} if none yet)."""
    result = kube.kubectl(
        "get", "connectionstats", name, "-n", namespace, "-o", "json", check=False
    )
    if result.returncode != 0:
        return {}
    return dict(json.loads(result.stdout).get("status") or {})


def condition_of(status: dict[str, Any], type_: str) -> tuple[str, str] | None:
    """(status, reason) of a condition in a status."""
    for item in status.get("conditions") or []:
        if item.get("type") == type_:
            return str(item.get("status")), str(item.get("reason"))
    return None


def _condition(pod: dict[str, Any], kind: str) -> str | None:
    for entry in pod["status"].get("conditions") or []:
        if entry.get("type") == kind:
            return str(entry.get("status"))
    return None


def running_pods(
    kube: KubeCluster, namespace: str, selector: str = "app=chat", serving: bool = False
) -> list[dict[str, Any]]:
    """Running pods with an IP, not being deleted, sorted by name. With ``serving``, only those
    whose containers are ready: on the real node a container runs before its program listens,
    and the sidecar's readinessProbe says when it serves (a frozen sidecar is running, not
    serving)."""
    pods = kube.get_json("pods", "-n", namespace, "-l", selector)["items"]
    alive = [
        p for p in pods
        if p["status"].get("phase") == "Running" and p["status"].get("podIP")
        and (not serving or _condition(p, "ContainersReady") == "True")
        and not p["metadata"].get("deletionTimestamp")
    ]  # fmt: skip
    return sorted(alive, key=lambda p: p["metadata"]["name"])


def gate_of(pod: dict[str, Any]) -> str | None:
    """The pod's wsgauge.dev/connections-ok condition status."""
    return _condition(pod, "wsgauge.dev/connections-ok")


def wait_status(
    kube: KubeCluster,
    namespace: str,
    predicate: Callable[[dict[str, Any]], bool],
    what: str,
    timeout: float = 30.0,
    name: str = "chat",
) -> dict[str, Any]:
    """Poll the status until predicate holds; the failure message shows the last status."""
    last: dict[str, Any] = {}

    def check() -> dict[str, Any] | None:
        nonlocal last
        last = status_of(kube, namespace, name)
        return last if last and predicate(last) else None

    try:
        return eventually(check, timeout=timeout, interval=0.3, what=what)
    except AssertionError as error:
        raise AssertionError(f"{error}; last status: {json.dumps(last)}") from None


def ready_pods(
    kube: KubeCluster, namespace: str, count: int, timeout: float = 60.0
) -> list[dict[str, Any]]:
    """Wait for exactly count running pods, all serving (containers ready) and with the gate
    condition True; return them. The operator opens the gate once the sidecar answers, which
    on the real node can be before the kubelet's readiness probe passed: a pod that is gated
    but not serving does not count towards the operator's minReadyPods either."""

    def check() -> list[dict[str, Any]] | None:
        pods = running_pods(kube, namespace)
        if len(pods) == count and all(
            gate_of(p) == "True" and _condition(p, "ContainersReady") == "True" for p in pods
        ):
            return pods
        return None

    return eventually(check, timeout=timeout, interval=0.5, what=f"{count} gated pods ready")


def wait_status_settled(
    kube: KubeCluster,
    namespace: str,
    predicate: Callable[[dict[str, Any]], bool],
    what: str,
    quiet: float = 3.0,
    timeout: float = 60.0,
    name: str = "chat",
) -> dict[str, Any]:
    """Wait until the status satisfies predicate AND its resourceVersion stayed the same for
    ``quiet`` seconds (several status intervals): nothing the operator still has to write.

    Needed before asserting "a restart with nothing changed writes nothing": the status can
    lag the fleet (e.g. ``pods.ready`` follows the kubelet's Ready condition, which trails
    the gate; a write held back by the status interval dies with a stopped operator).
    """
    stable_since: list[tuple[str, float]] = []
    last: dict[str, Any] = {}

    def check() -> dict[str, Any] | None:
        nonlocal last
        result = kube.kubectl(
            "get", "connectionstats", name, "-n", namespace, "-o", "json", check=False
        )
        if result.returncode != 0:
            return None
        body = json.loads(result.stdout)
        last = dict(body.get("status") or {})
        version = str(body["metadata"]["resourceVersion"])
        now = time.monotonic()
        if not last or not predicate(last):
            stable_since.clear()
            return None
        if not stable_since or stable_since[0][0] != version:
            stable_since[:] = [(version, now)]
            return None
        return last if now - stable_since[0][1] >= quiet else None

    try:
        return eventually(check, timeout=timeout, interval=0.3, what=what)
    except AssertionError as error:
        raise AssertionError(f"{error}; last status: {json.dumps(last)}") from None


def settle(seconds: float) -> None:
    """Let the operator see a change that must NOT have an effect (bounded)."""
    time.sleep(seconds)
