"""KEDA for real on the real node: KEDA's operator, metrics server and admission webhooks built from
KEDA's Go module (hack/build-keda.sh), run as pods from an image built here, installed from
KEDA's own manifests (its CRDs, its ``v1beta1.external.metrics.k8s.io`` APIService), scaling
``examples/chat`` on the wsgauge operator's KEDA endpoint (docs/keda.md).

1. wsgauge is installed by its chart with its custom metrics APIService turned off
   (``metricsApi.enabled=false``, as docs/keda.md tells users): no
   ``custom.metrics.k8s.io`` APIService is registered; KEDA's external metrics one is Available.
2. ``examples/chat`` (its ConnectionStats without the autoscaling section) and
   ``examples/chat-keda/scaledobject.yaml`` with the operator's Service address: KEDA creates its
   HPA on an External metric of the ``metrics-api`` trigger, and scales the idle Deployment to 1.
3. A surge of sockets through the chat Service: the endpoint, the External metric through the
   aggregation layer and the HPA read the clients' total; the Deployment goes to
   ``ceil(sockets / 20)`` replicas, then back to 1 when the sockets close. The seconds from the
   surge to the new replica count are printed.
4. For comparison, the same surge with the HPA the operator owns on the wsgauge metrics API
   (chart upgraded with the APIService on, the ScaledObject deleted, the ConnectionStats with
   its autoscaling section): its seconds are printed beside KEDA's (docs/keda.md lists them).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from apiservice_lock import custom_metrics_apiservice_lock
from e2e_harness import client_session, eventually, get_json, kubectl
from real_node_harness import (
    Pending,
    ServiceClient,
    apply_chat,
    apply_connection_stats,
    chat_pods,
    ready_pods,
    service_reaches,
    service_url,
)
from wsgauge_devcluster import images, keda
from wsgauge_devcluster.deploy import APISERVICES, ChartInstall
from wsgauge_devcluster.images import image_tag
from wsgauge_devcluster.testing import KubeCluster

REPO = Path(__file__).resolve().parents[2]
SCALED_OBJECT = REPO / "examples" / "chat-keda" / "scaledobject.yaml"
KEDA_STATS = REPO / "examples" / "chat-keda" / "connectionstats.yaml"
EXAMPLE_HOST = "wsgauge-operator.wsgauge-system.svc"
"""The operator's address in the example's URL (replaced: the cluster has no DNS)."""
SURGE = 100
"""Sockets opened at once: ceil(100 / 20) = 5 replicas."""
TARGET = 20
"""targetValue of the example (and targetConnectionsPerPod of examples/chat)."""
GATE = "wsgauge.dev/connections-ok"
"""The readiness gate the chart's injector adds."""
STATS_PORT = 8090
"""The operator Service's stats port (chart default): the KEDA endpoint is served there."""


@pytest.fixture(scope="module")
def keda_directory() -> Path:
    """KEDA's binaries and config/ from hack/build-keda.sh (built when not cached)."""
    try:
        return keda.ensure_built(print)
    except keda.KedaError as error:
        pytest.fail(f"KEDA cannot be built: {error}", pytrace=False)


@pytest.fixture(scope="module")
def wsgauge_without_metrics_api(kube: KubeCluster) -> Iterator[ChartInstall]:
    """The chart with its custom metrics APIService off (holds the APIService lock: the other
    e2e modules and the metrics API suites register it)."""
    install = ChartInstall(
        kubeconfig=kube.kubeconfig,
        bin_dir=kube.bin_dir,
        image_tag=image_tag(),
        values=("operator.statusInterval=1s", "metricsApi.enabled=false"),
    )
    with custom_metrics_apiservice_lock():
        install.install(print)
        try:
            yield install
        finally:
            install.uninstall(print)


@pytest.fixture(scope="module")
def keda_installed(kube: KubeCluster, keda_directory: Path) -> Iterator[keda.KedaInstall]:
    """KEDA's image built and loaded into the node, its manifests applied; removed after."""
    ref = keda.build_image(print, keda_directory)
    images.load_into(kube.containerd_socket, [ref], print)
    install = keda.KedaInstall(kube.kubeconfig, kube.bin_dir, keda_directory, ref)
    install.install(print)
    try:
        yield install
    finally:
        install.uninstall(print)


def quantity(text: str) -> float:
    """A Kubernetes quantity as the metrics APIs write it (``100``, ``99500m``, ``1k``)."""
    suffixes = {"m": 1e-3, "k": 1e3, "M": 1e6}
    if text and text[-1] in suffixes:
        return float(text[:-1]) * suffixes[text[-1]]
    return float(text)


async def replicas(kube: KubeCluster, namespace: str) -> int:
    return int((await get_json(kube, "deployment", "chat", "-n", namespace))["spec"]["replicas"])


async def seconds_to_replicas(
    kube: KubeCluster, namespace: str, wanted: int, since: float, timeout: float = 180
) -> float:
    """Seconds from ``since`` (monotonic) until the Deployment's spec.replicas is ``wanted``
    (polled; the poll's resolution is the time one kubectl call takes)."""
    deadline = time.monotonic() + timeout
    seen = -1
    while time.monotonic() < deadline:
        seen = await replicas(kube, namespace)
        if seen == wanted:
            return time.monotonic() - since
        await asyncio.sleep(0.1)
    raise AssertionError(f"chat has {seen} replicas, not {wanted}, after {timeout}s")


async def surge(
    session: aiohttp.ClientSession, url: str, timings: dict[str, float], path: str
) -> tuple[list[ServiceClient], float]:
    """SURGE sockets through the Service at once; (clients, monotonic time of the last one).
    How long opening them took goes into ``timings``."""
    clients = [ServiceClient(session, url) for _ in range(SURGE)]
    started = time.monotonic()
    await asyncio.gather(*(client.connect() for client in clients))
    timings[f"{path}: opening the {SURGE} sockets"] = time.monotonic() - started
    return clients, time.monotonic()


async def hpa_reads(kube: KubeCluster, namespace: str, name: str, value: float) -> Any:
    """The HPA's current metric, once it reads ``value`` (per pod or in total)."""
    found = await kubectl(
        kube, "get", "hpa", name, "-n", namespace, "-o", "json", "--ignore-not-found"
    )
    if not found.strip():
        return Pending({"hpa": "not yet created"})
    hpa = json.loads(found)
    current = (hpa.get("status") or {}).get("currentMetrics") or []
    for metric in current:
        for source in metric.values():
            if not isinstance(source, dict) or "current" not in source:
                continue
            got = source["current"].get("averageValue") or source["current"].get("value")
            if got is not None and quantity(str(got)) == value:
                return hpa
    return Pending({"currentMetrics": current, "conditions": hpa["status"].get("conditions")})


async def close_all(clients: list[ServiceClient]) -> float:
    """Close every socket; the monotonic time after the last."""
    await asyncio.gather(*(client.close() for client in clients))
    return time.monotonic()


async def scaled_object_ready(kube: KubeCluster, namespace: str) -> Any:
    found = await get_json(kube, "scaledobject", "chat", "-n", namespace)
    conditions = {c["type"]: c["status"] for c in found.get("status", {}).get("conditions", [])}
    return found if conditions.get("Ready") == "True" else Pending(conditions)


@pytest.mark.keda
@pytest.mark.devcluster_only("KEDA's image is loaded straight into the real node's containerd")
@pytest.mark.timeout(1500, func_only=True)  # the node wait, cluster start and install come before
async def test_keda_scales_chat_on_the_operator_endpoint(
    kube: KubeCluster,
    wsgauge_without_metrics_api: ChartInstall,
    keda_installed: keda.KedaInstall,
    namespace: str,
) -> None:
    # 1. wsgauge's custom metrics APIService off; KEDA's external metrics APIService Available.
    for name in APISERVICES:
        found = await asyncio.to_thread(kube.kubectl, "get", "apiservice", name, check=False)
        assert found.returncode != 0, f"{name} is registered: {found.stdout}"
    external = await get_json(kube, "apiservice", keda.APISERVICE)
    available = {c["type"]: c["status"] for c in external["status"]["conditions"]}
    assert available == {"Available": "True"}, external["status"]
    assert external["spec"]["service"] == {
        "name": "keda-metrics-apiserver",
        "namespace": "keda",
        "port": 443,
    }
    keda_pods = (await get_json(kube, "pods", "-n", "keda"))["items"]
    for pod in keda_pods:
        for status in pod["status"]["containerStatuses"]:
            assert status["containerID"].startswith("containerd://"), status
            assert status["image"].endswith(keda_installed.image.split("/", 1)[1]), status

    # 2. The chat example without its autoscaling section, and the ScaledObject.
    keda_stats = yaml.safe_load(KEDA_STATS.read_text())
    chat_stats = yaml.safe_load((REPO / "examples" / "chat" / "connectionstats.yaml").read_text())
    del chat_stats["spec"]["autoscaling"]
    assert keda_stats == chat_stats, "examples/chat-keda/connectionstats.yaml drifted"
    await apply_chat(kube, namespace)
    await kubectl(kube, "apply", "-n", namespace, "-f", str(KEDA_STATS))
    await eventually(lambda: ready_pods(kube, namespace, 2), 120, "2 chat pods Ready")
    operator = await get_json(kube, "service", "wsgauge-operator", "-n", "wsgauge-system")
    endpoint = (
        f"http://{operator['spec']['clusterIP']}:{STATS_PORT}"
        f"/keda/namespaces/{namespace}/connectionstats/chat"
    )
    document = yaml.safe_load(SCALED_OBJECT.read_text())
    trigger = document["spec"]["triggers"][0]["metadata"]
    trigger["url"] = endpoint
    await kubectl(kube, "apply", "-n", namespace, "-f", "-", input_text=json.dumps(document))
    session = client_session()
    clients: list[ServiceClient] = []
    timings: dict[str, float] = {}
    try:
        await eventually(lambda: scaled_object_ready(kube, namespace), 60, "ScaledObject Ready")
        hpa = await eventually(
            lambda: hpa_reads(kube, namespace, "keda-hpa-chat", 0.0), 90, "KEDA's HPA reads 0"
        )
        (metric,) = hpa["spec"]["metrics"]
        assert metric["type"] == "External", metric
        assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": str(TARGET)}
        metric_name = metric["external"]["metric"]["name"]
        selector = metric["external"]["metric"]["selector"]["matchLabels"]
        await eventually(
            lambda: _replicas_are(kube, namespace, 1), 120, "KEDA scales the idle chat to 1"
        )
        url = await service_url(kube, namespace)
        await eventually(lambda: ready_pods(kube, namespace, 1), 120, "1 chat pod Ready")
        await service_reaches(session, url, set(await chat_pods(kube, namespace)))

        # 3. The surge: endpoint, External metric, HPA; replicas up, then down again.
        clients, last = await surge(session, url, timings, "KEDA")
        wanted = math.ceil(SURGE / TARGET)
        timings["KEDA up"] = await seconds_to_replicas(kube, namespace, wanted, last)
        print(
            f"KEDA: {SURGE} sockets -> {wanted} replicas {timings['KEDA up']:.1f}s after the last"
        )
        raw = (
            f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric_name}"
            f"?labelSelector={','.join(f'{k}%3D{v}' for k, v in selector.items())}"
        )

        async def endpoint_and_metric_read_the_surge() -> Any:
            async with session.get(endpoint, timeout=aiohttp.ClientTimeout(total=10)) as reply:
                answer = await reply.json()
            items = json.loads(await kubectl(kube, "get", "--raw", raw))["items"]
            values = [quantity(i["value"]) for i in items]
            ok = (
                reply.status == 200
                and answer["connections"] == SURGE
                and answer["stale"] is False
                and values == [float(SURGE)]
            )
            return answer if ok else Pending({"endpoint": answer, "external metric": values})

        answer = await eventually(
            endpoint_and_metric_read_the_surge, 30, f"endpoint and External metric read {SURGE}"
        )
        print(f"KEDA endpoint: {answer}")
        await eventually(
            lambda: hpa_reads(kube, namespace, "keda-hpa-chat", SURGE / wanted), 60,
            f"KEDA's HPA reads {SURGE / wanted} per pod",
        )  # fmt: skip
        await eventually(
            lambda: serving(kube, namespace, wanted), 180, f"{wanted} pods serving or full"
        )
        closed = await close_all(clients)
        clients = []
        timings["KEDA down"] = await seconds_to_replicas(kube, namespace, 1, closed)
        print(f"KEDA: sockets closed -> 1 replica {timings['KEDA down']:.1f}s later")

        # 4. The same surge with the operator's own HPA on the wsgauge metrics API.
        await kubectl(kube, "delete", "scaledobject", "chat", "-n", namespace, "--wait=true")
        await eventually(
            lambda: _hpa_gone(kube, namespace, "keda-hpa-chat"), 60, "KEDA's HPA deleted"
        )
        with_api = ChartInstall(
            kubeconfig=kube.kubeconfig,
            bin_dir=kube.bin_dir,
            image_tag=image_tag(),
            values=("operator.statusInterval=1s",),
        )
        await asyncio.to_thread(with_api.install, print)
        await apply_connection_stats(kube, namespace, autoscaling=True)
        await eventually(lambda: hpa_reads(kube, namespace, "chat", 0.0), 90, "the HPA reads 0")
        await eventually(lambda: ready_pods(kube, namespace, 1), 120, "1 chat pod Ready")
        clients, last = await surge(session, url, timings, "wsgauge metrics API")
        timings["wsgauge metrics API up"] = await seconds_to_replicas(kube, namespace, wanted, last)
        print(
            f"wsgauge metrics API: {SURGE} sockets -> {wanted} replicas "
            f"{timings['wsgauge metrics API up']:.1f}s after the last"
        )
        closed = await close_all(clients)
        clients = []
        timings["wsgauge metrics API down"] = await seconds_to_replicas(kube, namespace, 1, closed)
        print(f"surge -> replicas, seconds: {json.dumps(timings)}")
    finally:
        await close_all(clients)
        await session.close()
        await asyncio.to_thread(
            kube.kubectl, "delete", "scaledobject", "chat", "-n", namespace,
            "--ignore-not-found", "--wait=true", check=False, timeout=120,
        )  # fmt: skip


async def serving(kube: KubeCluster, namespace: str, count: int) -> dict[str, str] | Pending:
    """Pod -> state once ``count`` chat pods exist and each is Ready, or out of service because it
    holds more than ``maxConnectionsPerPod`` (the surge lands on the one pod there was: its
    readiness gate says OverCapacity while the new pods take the new sockets)."""
    states: dict[str, str] = {}
    for name, pod in (await chat_pods(kube, namespace)).items():
        conditions = {c["type"]: c for c in pod["status"].get("conditions") or []}
        gate = conditions.get(GATE, {})
        if conditions.get("Ready", {}).get("status") == "True":
            states[name] = "Ready"
        elif gate.get("status") == "False" and gate.get("reason") == "OverCapacity":
            states[name] = "OverCapacity"
        else:
            states[name] = f"not ready ({gate.get('reason')})"
    done = len(states) == count and all(s in ("Ready", "OverCapacity") for s in states.values())
    return states if done else Pending(states)


async def _replicas_are(kube: KubeCluster, namespace: str, count: int) -> bool:
    return await replicas(kube, namespace) == count


async def _hpa_gone(kube: KubeCluster, namespace: str, name: str) -> bool:
    found = await kubectl(kube, "get", "hpa", name, "-n", namespace, "--ignore-not-found")
    return not found.strip()
