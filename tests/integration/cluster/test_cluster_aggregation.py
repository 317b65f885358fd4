"""API aggregation reaches a server on loopback through a Service of type ExternalName
(externalName: localhost) with --enable-aggregator-routing off, and the real HPA controller scales
a Deployment on a Pods metric that this small custom-metrics server serves."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from wsgauge_devcluster.pki import make_ca, make_signed
from wsgauge_devcluster.testing import KubeCluster, eventually, on_simulated_node

pytestmark = pytest.mark.cluster

GROUP_VERSION = "custom.metrics.k8s.io/v1beta2"
METRIC = "test_connections"
PER_POD_VALUE = 100


@dataclass
class MetricsServer:
    port: int
    ca_pem: bytes
    requests: list[str]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _metrics_app(kube: KubeCluster, requests: list[str]) -> web.Application:
    async def discovery(request: web.Request) -> web.Response:
        requests.append(request.path)
        return web.json_response(
            {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": GROUP_VERSION,
                "resources": [
                    {
                        "name": f"pods/{METRIC}",
                        "singularName": "",
                        "namespaced": True,
                        "kind": "MetricValueList",
                        "verbs": ["get"],
                    }
                ],
            }
        )

    async def pods_metric(request: web.Request) -> web.Response:
        requests.append(f"{request.path}?{request.query_string}")  # path percent-decoded
        namespace, metric = request.match_info["namespace"], request.match_info["metric"]
        if metric != METRIC:
            return web.json_response({"kind": "Status", "code": 404}, status=404)
        selector = request.query.get("labelSelector", "")
        args = ["pods", "-n", namespace] + (["-l", selector] if selector else [])
        pods = await asyncio.to_thread(kube.get_json, *args)
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        items = [
            {
                "describedObject": {
                    "kind": "Pod",
                    "namespace": namespace,
                    "name": pod["metadata"]["name"],
                    "apiVersion": "/v1",
                },
                "metric": {"name": metric},
                "timestamp": now,
                "windowSeconds": 5,
                "value": str(PER_POD_VALUE),
            }
            for pod in pods["items"]
        ]
        return web.json_response(
            {"kind": "MetricValueList", "apiVersion": GROUP_VERSION, "metadata": {}, "items": items}
        )

    app = web.Application()
    app.router.add_get(f"/apis/{GROUP_VERSION}", discovery)
    app.router.add_get(
        f"/apis/{GROUP_VERSION}/namespaces/{{namespace}}/pods/*/{{metric}}", pods_metric
    )
    return app


@pytest.fixture
def metrics_server(kube: KubeCluster, namespace: str, tmp_path: Path) -> Iterator[MetricsServer]:
    """A TLS custom-metrics server on 127.0.0.1 (own loop in a thread). The aggregator verifies
    the name <service>.<namespace>.svc even for an ExternalName Service, so the certificate
    carries that name."""
    make_ca(tmp_path, "ca", "test-metrics-ca")
    make_signed(
        tmp_path, "server", "ca", "metrics",
        dns_names=(f"metrics.{namespace}.svc", "localhost"), ip_addresses=("127.0.0.1",),
    )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(tmp_path / "server.crt"), str(tmp_path / "server.key"))
    port = _free_port()
    requests: list[str] = []
    loop = asyncio.new_event_loop()
    started = threading.Event()
    runner = web.AppRunner(_metrics_app(kube, requests))

    async def start() -> None:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
        started.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)
    try:
        yield MetricsServer(port, (tmp_path / "ca.crt").read_bytes(), requests)
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def _available(kube: KubeCluster, name: str) -> dict[str, Any] | None:
    service: dict[str, Any] = kube.get_json("apiservice", name)
    conditions = {c["type"]: c for c in service.get("status", {}).get("conditions", [])}
    return service if conditions.get("Available", {}).get("status") == "True" else None


def test_apiservice_via_externalname_localhost_drives_the_hpa(
    kube: KubeCluster, namespace: str, metrics_server: MetricsServer
) -> None:
    # APIServices are cluster-wide: another suite (the operator's) may hold this group right now
    eventually(
        lambda: (
            "custom.metrics.k8s.io" not in kube.kubectl("get", "apiservices", "-o", "name").stdout
        ),
        timeout=120,
        interval=1,
        what="no other custom.metrics.k8s.io APIService (another test suite holds it)",
    )
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "metrics", "namespace": namespace},
            "spec": {
                "type": "ExternalName",
                "externalName": "localhost",
                "ports": [{"name": "https", "port": metrics_server.port}],
            },
        }
    )
    apiservice = "v1beta2.custom.metrics.k8s.io"
    kube.apply(
        {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": apiservice},
            "spec": {
                "group": "custom.metrics.k8s.io",
                "version": "v1beta2",
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
                "service": {"namespace": namespace, "name": "metrics", "port": metrics_server.port},
                "caBundle": base64.b64encode(metrics_server.ca_pem).decode(),
            },
        }
    )
    try:
        eventually(lambda: _available(kube, apiservice), 60, 0.5, "APIService Available")
        discovery = json.loads(kube.kubectl("get", "--raw", f"/apis/{GROUP_VERSION}").stdout)
        assert discovery["resources"][0]["name"] == f"pods/{METRIC}"
        assert f"/apis/{GROUP_VERSION}" in metrics_server.requests

        kube.apply(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "ws", "namespace": namespace},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": {"app": "ws"}},
                    "template": {
                        "metadata": {"labels": {"app": "ws"}},
                        "spec": on_simulated_node(
                            {
                                "terminationGracePeriodSeconds": 1,
                                "containers": [{"name": "ws", "image": "example/ws:1"}],
                            }
                        ),
                    },
                },
            }
        )
        kube.apply(
            {
                "apiVersion": "autoscaling/v2",
                "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": "ws", "namespace": namespace},
                "spec": {
                    "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ws"},
                    "minReplicas": 1,
                    "maxReplicas": 3,
                    "metrics": [
                        {
                            "type": "Pods",
                            "pods": {
                                "metric": {"name": METRIC},
                                "target": {"type": "AverageValue", "averageValue": "50"},
                            },
                        }
                    ],
                },
            }
        )
        # each pod reports 100 against a target of 50: the HPA doubles until maxReplicas
        eventually(
            lambda: kube.get_json("deployment", "ws", "-n", namespace)["spec"]["replicas"] == 3,
            timeout=120,
            interval=1,
            what="HPA scaling the Deployment to 3",
        )
        hpa = kube.get_json("hpa", "ws", "-n", namespace)
        current = hpa["status"]["currentMetrics"][0]["pods"]["current"]["averageValue"]
        assert current == str(PER_POD_VALUE)
        assert any(f"/pods/*/{METRIC}" in path for path in metrics_server.requests)
    finally:
        kube.kubectl("delete", "apiservice", apiservice, "--wait=false", check=False)
