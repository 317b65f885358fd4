"""End to end on the real control plane with the real HPA controller: scale on live sockets.

``deploy/local/metrics-api.yaml`` registers the operator's metrics API; ``examples/chat`` runs
real sidecar + demo app processes (20 connections per pod wanted, 1..10 replicas, short
scale-down window). The operator is a real subprocess.

1. 120 sockets through the 2 pods' sidecars (round robin), then the ConnectionStats: the HPA
   the operator creates scales the Deployment to 6.
2. The clients spread over the 6 pods (20 each); ``kubectl get --raw`` shows the per-pod values.
3. Most sockets close, unevenly, the two original (oldest) pods among the emptiest: the HPA
   scales to 2 and the pods that go are the four emptiest, not the newest (the ReplicaSet's
   default); the sockets of the removed pods get 1001, spread over the drain window, and
   reconnect to the remaining pods; the remaining counts are right.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from apiservice_lock import custom_metrics_apiservice_lock
from e2e_harness import (
    GOING_AWAY,
    REPO,
    Client,
    OperatorProcess,
    PodPool,
    client_session,
    documents,
    eventually,
    free_port,
    get_json,
    kubectl,
    per_pod,
)
from wsgauge_devcluster.testing import KubeCluster

CRD = REPO / "crds" / "connectionstats.yaml"
METRICS_API = REPO / "deploy" / "local" / "metrics-api.yaml"
EXAMPLE = REPO / "examples" / "chat"
APISERVICES = ("v1beta2.custom.metrics.k8s.io", "v1beta1.custom.metrics.k8s.io")
DRAIN_SPREAD = 10.0
"""--drain-spread of examples/chat."""


async def live_pods(kube: KubeCluster, namespace: str) -> dict[str, dict[str, Any]]:
    """Running chat pods with an IP that are not being deleted."""
    pods = (await get_json(kube, "pods", "-n", namespace, "-l", "app=chat"))["items"]
    return {
        p["metadata"]["name"]: p
        for p in pods
        if p["status"].get("phase") == "Running"
        and p["status"].get("podIP")
        and not p["metadata"].get("deletionTimestamp")
    }


def condition(pod: dict[str, Any], type_: str) -> bool:
    return any(
        c["type"] == type_ and c["status"] == "True" for c in pod["status"].get("conditions") or []
    )


def gated(pod: dict[str, Any]) -> bool:
    return condition(pod, "wsgauge.dev/connections-ok")


async def _containers_ready(pods: Any, count: int) -> dict[str, dict[str, Any]] | None:
    found: dict[str, dict[str, Any]] = await pods
    ready = len(found) == count and all(condition(p, "ContainersReady") for p in found.values())
    return found if ready else None


async def replicas(kube: KubeCluster, namespace: str) -> int:
    return int((await get_json(kube, "deployment", "chat", "-n", namespace))["spec"]["replicas"])


async def served(kube: KubeCluster, namespace: str) -> dict[str, int]:
    """Per-pod values of the Pods metric, through the aggregation layer."""
    path = (
        f"/apis/custom.metrics.k8s.io/v1beta2/namespaces/{namespace}/pods/*/"
        "wsgauge_connections?labelSelector=app%3Dchat"
    )
    try:
        items = json.loads(await kubectl(kube, "get", "--raw", path))["items"]
    except AssertionError:
        return {}
    return {i["describedObject"]["name"]: int(i["value"]) for i in items}


def metrics_api_documents(port: int) -> list[dict[str, Any]]:
    """deploy/local/metrics-api.yaml (port changed only when 8443 is taken)."""
    docs = documents(METRICS_API)
    for doc in docs:
        if doc["kind"] == "Service":
            doc["spec"]["ports"][0]["port"] = port
        elif doc["kind"] == "APIService":
            doc["spec"]["service"]["port"] = port
    return docs


@pytest.mark.timeout(480)
async def test_hpa_scales_on_live_sockets_and_removes_the_emptiest_pods(
    kube: KubeCluster, namespace: str, tmp_path: Path
) -> None:
    await kubectl(kube, "apply", "-f", str(CRD))
    await kubectl(kube, "wait", "--for=condition=Established", "crd/connectionstats.wsgauge.dev")
    port = free_port(8443)
    with custom_metrics_apiservice_lock():
        operator = OperatorProcess(kube, namespace, port, tmp_path / "operator.log")
        session = client_session()
        pool = PodPool()
        clients: list[Client] = []
        try:
            await kubectl(
                kube, "apply", "-f", "-", input_text=yaml.safe_dump_all(metrics_api_documents(port))
            )
            await kubectl(kube, "apply", "-n", namespace, "-f", str(EXAMPLE / "deployment.yaml"))

            # 1. 120 sockets over the two pods, then the ConnectionStats (with autoscaling).
            first = await eventually(
                lambda: _containers_ready(live_pods(kube, namespace), 2), 90, "2 chat pods up"
            )
            pool.live.update({n: p["status"]["podIP"] for n, p in first.items()})
            for _ in range(120):
                client = Client(session, pool)
                await client.connect()
                clients.append(client)
            print("120 sockets open")
            assert sorted(per_pod(clients).values()) == [60, 60]
            await kubectl(
                kube, "apply", "-n", namespace, "-f", str(EXAMPLE / "connectionstats.yaml")
            )
            started = time.monotonic()
            await eventually(
                lambda: _equals(replicas(kube, namespace), 6), 120, "the HPA scales to 6"
            )
            print(f"surge -> 6 replicas: {time.monotonic() - started:.1f}s")
            # (the two first pods are over maxConnectionsPerPod 50: not Ready for now)
            six = await eventually(
                lambda: _containers_ready(live_pods(kube, namespace), 6), 90, "6 pods up"
            )
            new = sorted(set(six) - set(first))
            pool.live.update({n: p["status"]["podIP"] for n, p in six.items()})

            # 2. Spread: 20 per pod. The metrics API shows the per-pod values.
            for old in sorted(first):
                movers = [c for c in clients if c.pod == old][:40]
                for index, client in enumerate(movers):
                    await client.close()
                    await client.connect(pod=new[index % len(new)])
            assert per_pod(clients) == {name: 20 for name in six}
            await eventually(
                lambda: _equals(served(kube, namespace), {name: 20 for name in six}),
                60,
                "kubectl get --raw shows 20 per pod",
            )
            assert await replicas(kube, namespace) == 6
            await eventually(lambda: _all_gated(live_pods(kube, namespace), 6), 60, "6 pods ready")

            # 3. Most sockets close, unevenly; the two oldest pods among the emptiest.
            old_a, old_b = sorted(first)
            keep = {old_a: 1, old_b: 2, new[0]: 12, new[1]: 9, new[2]: 0, new[3]: 3}
            for name, wanted in keep.items():
                for client in [c for c in clients if c.pod == name][wanted:]:
                    await client.close()
            clients = [c for c in clients if c.pod is not None]
            assert per_pod(clients) == {k: v for k, v in keep.items() if v}
            closed_at = time.monotonic()
            refresher = asyncio.create_task(_refresh(kube, namespace, pool))
            try:
                await eventually(
                    lambda: _equals(replicas(kube, namespace), 2), 120, "the HPA scales to 2"
                )
                print(f"scale-down decided after {time.monotonic() - closed_at:.1f}s")
                remaining = await eventually(
                    lambda: _exactly(live_pods(kube, namespace), 2), 60, "2 pods left"
                )
                assert set(remaining) == {new[0], new[1]}, "the busiest pods must stay"
                await eventually(
                    lambda: _gone(kube, namespace, set(six) - set(remaining)),
                    90,
                    "removed pods gone",
                )
            finally:
                refresher.cancel()
            # Every socket of the removed pods got 1001 and reconnected to a remaining pod.
            closes = [x for c in clients for x in c.closes]
            by_pod: dict[str, list[float]] = {}
            for close in closes:
                assert close.code == GOING_AWAY, close
                by_pod.setdefault(close.pod, []).append(close.at)
            assert {pod: len(times) for pod, times in by_pod.items()} == {
                old_a: 1,
                old_b: 2,
                new[3]: 3,
            }
            drained = [c for c in clients if any(x.code == GOING_AWAY for x in c.closes)]
            assert len(drained) == 6
            for times in by_pod.values():  # spread over the drain window, not all at once
                if len(times) > 1:
                    gaps = [b - a for a, b in zip(sorted(times), sorted(times)[1:], strict=False)]
                    assert min(gaps) > DRAIN_SPREAD / 10, sorted(times)
            final = per_pod(clients)
            assert set(final) <= set(remaining) and sum(final.values()) == 27
            await eventually(
                lambda: _equals(served(kube, namespace), final),
                60,
                f"served per-pod values equal the clients' {final}",
            )
            status = (await get_json(kube, "connectionstats", "chat", "-n", namespace))["status"]
            assert status["connections"] == 27
            assert status["desiredReplicas"] == 2
            reasons = [
                e.get("reason")
                for e in (await get_json(kube, "events.v1.events.k8s.io", "-n", namespace))["items"]
            ]
            assert "HPACreated" in reasons and "ReplicasRecommended" in reasons
        finally:
            try:
                for client in clients:
                    await client.close()
                await session.close()
                await asyncio.to_thread(
                    kube.kubectl,
                    "delete", "apiservice", *APISERVICES, "--ignore-not-found", check=False,
                )  # fmt: skip
            finally:
                operator.stop()
            print(operator.output()[-8000:])


async def _exactly(pods: Any, count: int) -> dict[str, dict[str, Any]] | None:
    found: dict[str, dict[str, Any]] = await pods
    return found if len(found) == count else None


async def _all_gated(pods: Any, count: int) -> dict[str, dict[str, Any]] | None:
    found: dict[str, dict[str, Any]] = await pods
    return found if len(found) == count and all(gated(p) for p in found.values()) else None


async def _equals(value: Any, wanted: Any) -> bool:
    return bool(await value == wanted)


async def _gone(kube: KubeCluster, namespace: str, names: set[str]) -> bool:
    pods = (await get_json(kube, "pods", "-n", namespace, "-l", "app=chat"))["items"]
    return not names & {p["metadata"]["name"] for p in pods}


async def _refresh(kube: KubeCluster, namespace: str, pool: PodPool) -> None:
    """Keep the pool to pods not being deleted (what a load balancer would do), bounded."""
    for _ in range(600):
        found = await live_pods(kube, namespace)
        for name in list(pool.live):
            if name not in found:
                del pool.live[name]
        await asyncio.sleep(0.5)
