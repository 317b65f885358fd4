"""Faults on the real node (or any cluster ``KUBECONFIG`` names, e.g. kind's), with wsgauge
installed by its chart and the injected chat example.

- the kubelet restarted (devcluster only: it restarts the real node's kubelet process): the pods
  keep running (same container ids), the counts do not move;
- the operator pod deleted: the Deployment makes a new one, it takes the leader Lease and the same
  counts come back in the status and the metrics API;
- a chat pod evicted through the Eviction API: the PodDisruptionBudget refuses the eviction that
  would leave no chat pod, the one it admits makes the sidecar drain with 1001 spread over the
  window, the clients come back through the Service, nothing is lost or counted twice.
After each fault :func:`assert_counts_agree` compares every source with what the clients hold.
Times are printed (``-s``) and recorded in docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from e2e_harness import GOING_AWAY, client_session, eventually, get_json, kubectl
from real_node_harness import (
    ServiceClient,
    apply_chat,
    assert_counts_agree,
    chat_pods,
    held,
    ready_pods,
    service_reaches,
    service_url,
)
from wsgauge_devcluster.deploy import ChartInstall
from wsgauge_devcluster.processes import ManagedProcess
from wsgauge_devcluster.testing import KubeCluster

DEVCLUSTER = [sys.executable, "-m", "wsgauge_devcluster.cli"]


@pytest.fixture
async def chat(
    kube: KubeCluster, release: ChartInstall, namespace: str
) -> AsyncIterator[tuple[aiohttp.ClientSession, list[ServiceClient]]]:
    """The chat example (2 pods, no autoscaling) with 40 sockets through its Service."""
    await apply_chat(kube, namespace)
    pods = await eventually(lambda: ready_pods(kube, namespace, 2), 120, "2 chat pods Ready")
    url = await service_url(kube, namespace)
    session = client_session()
    clients = [ServiceClient(session, url) for _ in range(40)]
    try:
        await service_reaches(session, url, set(pods))
        for client in clients:
            await client.connect()
        await assert_counts_agree(kube, namespace, session, clients)
        yield session, clients
    finally:
        for client in clients:
            await client.close()
        await session.close()


def container_ids(pods: dict[str, dict[str, object]]) -> dict[str, list[str]]:
    """Pod -> its containers' IDs."""
    found: dict[str, list[str]] = {}
    for name, pod in pods.items():
        status = pod["status"]
        assert isinstance(status, dict)
        found[name] = sorted(c.get("containerID", "") for c in status["containerStatuses"])
    return found


@pytest.mark.timeout(300, func_only=True)  # the node wait, cluster start and install come before
@pytest.mark.devcluster_only("restarts the real node's kubelet, a process of the devcluster")
async def test_kubelet_restart_leaves_pods_and_counts_alone(
    kube: KubeCluster, namespace: str, chat: tuple[aiohttp.ClientSession, list[ServiceClient]]
) -> None:
    session, clients = chat
    assert kube.state_dir is not None
    before = container_ids(await chat_pods(kube, namespace))
    kubelet = ManagedProcess("kubelet", kube.state_dir / "run", "kubelet")
    pid = kubelet.pid()
    assert pid is not None, "the kubelet does not run"
    started = time.monotonic()
    assert kubelet.stop(10)
    result = await asyncio.to_thread(
        subprocess.run,
        [*DEVCLUSTER, "up"],
        capture_output=True,
        text=True,
        env=kube.env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert kubelet.pid() not in (None, pid)
    await eventually(lambda: ready_pods(kube, namespace, 2), 120, "pods Ready again")
    print(f"kubelet restart: node and pods Ready again after {time.monotonic() - started:.1f}s")
    assert container_ids(await chat_pods(kube, namespace)) == before, "containers restarted"
    assert all(c.closes == [] for c in clients), "a socket was closed by the restart"
    await assert_counts_agree(kube, namespace, session, clients)


@pytest.mark.timeout(300, func_only=True)  # the node wait, cluster start and install come before
async def test_operator_pod_deleted_new_leader_serves_the_same_counts(
    kube: KubeCluster,
    release: ChartInstall,
    namespace: str,
    chat: tuple[aiohttp.ClientSession, list[ServiceClient]],
) -> None:
    session, clients = chat
    selector = "app.kubernetes.io/component=operator"
    pods = (await get_json(kube, "pods", "-n", release.namespace, "-l", selector))["items"]
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    old = pods[0]["metadata"]["name"]
    lease_before = await _lease_holder(kube, release.namespace)
    started = time.monotonic()
    await kubectl(kube, "delete", "pod", old, "-n", release.namespace, "--wait=false")

    async def new_leader() -> str | None:
        holder = await _lease_holder(kube, release.namespace)
        return holder if holder and holder != lease_before and old not in holder else None

    holder = await eventually(new_leader, 120, "a new operator pod holding the Lease")
    print(f"operator pod deleted: new leader {holder} after {time.monotonic() - started:.1f}s")
    await assert_counts_agree(kube, namespace, session, clients)
    print(f"operator pod deleted: counts back after {time.monotonic() - started:.1f}s")


async def _lease_holder(kube: KubeCluster, namespace: str) -> str | None:
    leases = (await get_json(kube, "leases", "-n", namespace))["items"]
    holders = [
        str(item["spec"].get("holderIdentity") or "")
        for item in leases
        if "wsgauge" in item["metadata"]["name"]
    ]
    return holders[0] if holders else None


@pytest.mark.timeout(300, func_only=True)  # the node wait, cluster start and install come before
async def test_eviction_drains_gently_and_respects_the_budget(
    kube: KubeCluster, namespace: str, chat: tuple[aiohttp.ClientSession, list[ServiceClient]]
) -> None:
    session, clients = chat
    victim, other = sorted(held(clients), key=lambda name: -held(clients)[name])
    on_victim = held(clients)[victim]
    started = time.monotonic()
    assert _evict(kube, namespace, victim) == 201
    # The PDB (minAvailable 1) refuses the second eviction while the first pod drains.
    assert _evict(kube, namespace, other) == 429
    await eventually(lambda: _gone(kube, namespace, victim), 90, f"{victim} evicted and gone")
    closes = [x for c in clients for x in c.closes if x.pod == victim]
    assert len(closes) == on_victim, closes
    assert all(x.code == GOING_AWAY for x in closes), closes
    moments = sorted(x.at for x in closes)
    print(
        f"eviction: {on_victim} sockets closed with 1001 over "
        f"{moments[-1] - moments[0]:.1f}s, pod gone after {time.monotonic() - started:.1f}s"
    )
    assert moments[-1] - moments[0] > 2.5, moments  # spread, not all at once
    await eventually(lambda: ready_pods(kube, namespace, 2), 120, "a replacement pod Ready")
    assert victim not in held(clients)
    assert sum(held(clients).values()) == 40
    await assert_counts_agree(kube, namespace, session, clients)


def _evict(kube: KubeCluster, namespace: str, pod: str) -> int:
    """POST an Eviction for the pod; the HTTP status (201 done, 429 refused by a budget)."""
    body = json.dumps(
        {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": pod, "namespace": namespace},
        }
    )
    result = kube.kubectl(
        "create", "--raw", f"/api/v1/namespaces/{namespace}/pods/{pod}/eviction",
        "-f", "-", input_text=body, check=False,
    )  # fmt: skip
    if result.returncode == 0:
        return 201
    return 429 if "429" in result.stderr or "disruption budget" in result.stderr else 0


async def _gone(kube: KubeCluster, namespace: str, pod: str) -> bool:
    return pod not in await chat_pods(kube, namespace) and pod not in {
        p["metadata"]["name"]
        for p in (await get_json(kube, "pods", "-n", namespace, "-l", "app=chat"))["items"]
    }
