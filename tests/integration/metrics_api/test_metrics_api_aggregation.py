"""On the real control plane: APIService -> ExternalName localhost -> our server -> kubectl.

The manifests of ``deploy/local/metrics-api.yaml`` are applied with three changes for the test:
the Service lives in the test's namespace, the port is a free one, and instead of
``insecureSkipTLSVerify`` the APIService carries our self-signed certificate as ``caBundle``
(so the aggregator really verifies the serving certificate). The request-header CA is read
from ``kube-system/extension-apiserver-authentication`` with ``KubeApi.request_header_auth``.
The second test lets the real HPA controller (kube-controller-manager) scale a Deployment of
simulated pods on the served Pods metric, with the HPA manifest from ``hpa.build_hpa``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from apiservice_lock import custom_metrics_apiservice_lock
from wsgauge_devcluster.testing import KubeCluster
from wsgauge_operator.autoscaling.hpa import build_hpa
from wsgauge_operator.kube.kubeapi import KubeApi
from wsgauge_operator.metrics_api.server import (
    MetricsApiServer,
    MetricsApiSettings,
    start_metrics_api,
)
from wsgauge_operator.model.metrics_source import (
    ConnectionStatsMetrics,
    PodMetrics,
    StaticMetricsSource,
)
from wsgauge_operator.model.settings import KubeSettings

MANIFEST = Path(__file__).resolve().parents[3] / "deploy" / "local" / "metrics-api.yaml"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def local_manifests(namespace: str, port: int, ca_bundle: bytes) -> list[dict[str, Any]]:
    documents = [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc]
    kinds = [doc["kind"] for doc in documents]
    assert kinds == ["Namespace", "Service", "APIService", "APIService"]
    service = documents[1]
    assert service["spec"]["type"] == "ExternalName"
    assert service["spec"]["externalName"] == "localhost"
    service["metadata"]["namespace"] = namespace
    service["spec"]["ports"][0]["port"] = port
    for api_service in documents[2:]:
        spec = api_service["spec"]
        spec["service"].update(namespace=namespace, port=port)
        del spec["insecureSkipTLSVerify"]
        spec["caBundle"] = base64.b64encode(ca_bundle).decode()
    return documents[1:]


async def kubectl(
    kube: KubeCluster, *args: str, input_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    """kubectl in a thread: the server under test runs on this event loop."""
    return await asyncio.to_thread(kube.kubectl, *args, input_text=input_text, check=False)


async def eventually_raw(
    kube: KubeCluster, path: str, deadline_seconds: float = 90.0
) -> dict[str, Any]:
    deadline = time.monotonic() + deadline_seconds
    last = ""
    while time.monotonic() < deadline:
        result = await kubectl(kube, "get", "--raw", path)
        if result.returncode == 0:
            return dict(json.loads(result.stdout))
        last = result.stderr
        await asyncio.sleep(1.0)
    raise AssertionError(f"kubectl get --raw {path} kept failing: {last}")


@pytest.fixture
def apiservice_lock() -> Iterator[None]:
    """Only one suite at a time registers custom.metrics.k8s.io (cluster-wide)."""
    with custom_metrics_apiservice_lock():
        yield


@pytest.fixture
async def served(
    kube: KubeCluster, namespace: str, apiservice_lock: None
) -> AsyncIterator[tuple[MetricsApiServer, StaticMetricsSource]]:
    api = KubeApi(KubeSettings(kubeconfig=str(kube.kubeconfig)))
    try:
        auth = await api.request_header_auth()
    finally:
        await api.close()
    now = datetime.now(UTC).replace(microsecond=0)
    source = StaticMetricsSource(
        pods=[
            PodMetrics(namespace, "chat-a", {"app": "chat"}, 7, {"stream": 5}, now, True),
            PodMetrics(namespace, "chat-b", {"app": "chat"}, 21, {"stream": 1}, now, True),
            PodMetrics(namespace, "chat-gone", {"app": "chat"}, 3, {}, now, False),
        ],
        connection_stats=[ConnectionStatsMetrics(namespace, "chat", 28, {"stream": 6}, now, 2)],
    )
    settings = MetricsApiSettings(
        host="127.0.0.1",
        port=free_port(),
        self_signed_hosts=("localhost", "127.0.0.1", f"wsgauge-metrics-api.{namespace}.svc"),
        client_ca_pem=auth.client_ca_pem,
        allowed_names=auth.allowed_names,
        max_metric_age_seconds=3600,
    )
    server = await start_metrics_api(settings, source, clock=lambda: now)
    try:
        yield server, source
    finally:
        await server.stop()


async def test_kubectl_reads_metrics_through_the_aggregation_layer(
    kube: KubeCluster, namespace: str, served: tuple[MetricsApiServer, StaticMetricsSource]
) -> None:
    server, _ = served
    documents = local_manifests(namespace, server.port, server.serving_cert_pem)
    applied = await kubectl(kube, "apply", "-f", "-", input_text=yaml.safe_dump_all(documents))
    assert applied.returncode == 0, applied.stderr
    try:
        base = "/apis/custom.metrics.k8s.io"
        pods = await eventually_raw(
            kube, f"{base}/v1beta2/namespaces/{namespace}/pods/*/wsgauge_connections"
        )
        assert pods["kind"] == "MetricValueList"
        assert [(i["describedObject"]["name"], i["value"]) for i in pods["items"]] == [
            ("chat-a", "7"),
            ("chat-b", "21"),
        ]
        topic = await eventually_raw(
            kube,
            f"{base}/v1beta1/namespaces/{namespace}/pods/*/wsgauge_connections"
            "?labelSelector=app%3Dchat&metricLabelSelector=topic%3Dstream",
        )
        assert [(i["metricName"], i["value"]) for i in topic["items"]] == [
            ("wsgauge_connections", "5"),
            ("wsgauge_connections", "1"),
        ]
        total = await eventually_raw(
            kube,
            f"{base}/v1beta2/namespaces/{namespace}/connectionstats.wsgauge.dev/chat/"
            "wsgauge_connections",
        )
        assert total["items"][0]["value"] == "28"
        available = await kubectl(
            kube,
            "get",
            "apiservice",
            "v1beta2.custom.metrics.k8s.io",
            "-o",
            "jsonpath={.status.conditions[?(@.type=='Available')].status}",
        )
        assert available.stdout == "True"
        missing = await kubectl(
            kube, "get", "--raw", f"{base}/v1beta2/namespaces/{namespace}/pods/chat-gone/x"
        )
        assert missing.returncode != 0
        assert "NotFound" in missing.stderr or "not found" in missing.stderr.lower()
    finally:
        await kubectl(
            kube,
            "delete",
            "apiservice",
            "v1beta2.custom.metrics.k8s.io",
            "v1beta1.custom.metrics.k8s.io",
            "--ignore-not-found",
        )


DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: chat}
spec:
  replicas: 2
  selector: {matchLabels: {app: chat}}
  template:
    metadata: {labels: {app: chat}}
    spec:
      # a simulated node: the image does not exist here, the HPA only needs Running pods
      nodeSelector: {wsgauge.dev/pod-runner: "true"}
      tolerations:
        - {key: wsgauge.dev/simulated, operator: Equal, value: "true", effect: NoSchedule}
      containers: [{name: app, image: registry.k8s.io/pause:3.10}]
"""


async def running_pods(kube: KubeCluster, namespace: str) -> list[str]:
    result = await kubectl(kube, "get", "pods", "-n", namespace, "-l", "app=chat", "-o", "json")
    if result.returncode != 0:
        return []
    return sorted(
        pod["metadata"]["name"]
        for pod in json.loads(result.stdout)["items"]
        if pod.get("status", {}).get("phase") == "Running"
    )


async def test_real_hpa_controller_scales_on_the_served_metric(
    kube: KubeCluster, namespace: str, served: tuple[MetricsApiServer, StaticMetricsSource]
) -> None:
    """The HPA controller of kube-controller-manager reads our Pods metric and acts on it."""
    server, source = served
    documents = local_manifests(namespace, server.port, server.serving_cert_pem)
    applied = await kubectl(kube, "apply", "-f", "-", input_text=yaml.safe_dump_all(documents))
    assert applied.returncode == 0, applied.stderr
    try:
        created = await kubectl(kube, "apply", "-n", namespace, "-f", "-", input_text=DEPLOYMENT)
        assert created.returncode == 0, created.stderr
        deadline = time.monotonic() + 90
        pods: list[str] = []
        while time.monotonic() < deadline and len(pods) < 2:
            pods = await running_pods(kube, namespace)
            await asyncio.sleep(0.5)
        assert len(pods) == 2, f"pods not running: {pods}"
        now = datetime.now(UTC).replace(microsecond=0)
        for name in ("chat-a", "chat-b", "chat-gone"):
            source.remove_pod(namespace, name)
        for name in pods:  # 120 sockets over 2 pods, 20 per pod wanted: 6 replicas
            source.set_pod(PodMetrics(namespace, name, {"app": "chat"}, 60, {}, now, True))
        hpa = build_hpa(
            {
                "metadata": {"name": "chat", "namespace": namespace, "uid": "not-a-real-owner"},
                "spec": {
                    "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "chat"},
                    "autoscaling": {
                        "minReplicas": 1,
                        "maxReplicas": 10,
                        "targetConnectionsPerPod": 20,
                    },
                },
            }
        )
        assert hpa is not None
        del hpa["metadata"]["ownerReferences"]  # no ConnectionStats here: the GC would delete it
        made = await kubectl(kube, "apply", "-f", "-", input_text=json.dumps(hpa))
        assert made.returncode == 0, made.stderr
        deadline = time.monotonic() + 120
        replicas = 2
        while time.monotonic() < deadline and replicas != 6:
            result = await kubectl(
                kube,
                "get",
                "deployment",
                "chat",
                "-n",
                namespace,
                "-o",
                "jsonpath={.spec.replicas}",
            )
            replicas = int(result.stdout or 0)
            await asyncio.sleep(1.0)
        status = await kubectl(kube, "get", "hpa", "chat", "-n", namespace, "-o", "json")
        assert replicas == 6, status.stdout
        metric = json.loads(status.stdout)["status"]["currentMetrics"][0]["pods"]
        assert metric["metric"]["name"] == "wsgauge_connections"
    finally:
        await kubectl(
            kube,
            "delete",
            "apiservice",
            "v1beta2.custom.metrics.k8s.io",
            "v1beta1.custom.metrics.k8s.io",
            "--ignore-not-found",
        )
