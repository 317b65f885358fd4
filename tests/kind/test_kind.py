"""wsgauge on a kind cluster of one control plane and two workers, from images built here.

1. Smoke: the chart installed, the injected chat example Ready, one socket through the chat
   Service counted in ``kubectl get wss``.
2. Two workers: ``status.nodes`` lists both with the pods and sockets the clients hold there;
   ``kubectl drain`` of a worker holding sockets evicts its chat pods, their sidecars close the
   sockets with 1001 spread over the drain window, the clients land on the other worker, and
   every source agrees (nothing counted twice or lost); the HPA scale-up then places pods on
   both workers.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from e2e_harness import GOING_AWAY, client_session, eventually, get_json, kubectl
from real_node_harness import (
    ServiceClient,
    apply_chat,
    apply_connection_stats,
    assert_counts_agree,
    chat_pods,
    held,
    ready_pods,
    service_reaches,
    service_url,
)
from wsgauge_devcluster.deploy import ChartInstall
from wsgauge_devcluster.testing import KubeCluster

DRAIN_SPREAD = 10.0
"""The chart's injector.sidecar.drainSpread."""


async def wss_connections(kube: KubeCluster, namespace: str) -> str:
    """The Connections column of ``kubectl get wss`` for the chat ConnectionStats."""
    table = await kubectl(kube, "get", "wss", "chat", "-n", namespace, "--no-headers",
                          "-o", "custom-columns=CONNECTIONS:.status.connections")  # fmt: skip
    return table.strip()


@pytest.mark.timeout(900)
async def test_one_socket_counted_on_kind(
    kube: KubeCluster, release: ChartInstall, namespace: str
) -> None:
    await apply_chat(kube, namespace)
    await eventually(lambda: ready_pods(kube, namespace, 2), 300, "2 chat pods Ready")
    url = await service_url(kube, namespace)
    session = client_session()
    client = ServiceClient(session, url)
    try:
        await client.connect(attempts=60)

        async def one() -> bool:
            return await wss_connections(kube, namespace) == "1"

        await eventually(one, 60, "kubectl get wss shows 1 connection")
        listing = await kubectl(kube, "get", "wss", "-n", namespace)
        print(listing)
        assert "chat" in listing
    finally:
        await client.close()
        await session.close()


def workers_of(pods: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Pod name -> node name."""
    return {name: pod["spec"]["nodeName"] for name, pod in pods.items()}


def per_node(clients: list[ServiceClient], nodes: dict[str, str]) -> dict[str, int]:
    """Sockets per node as the clients hold them."""
    counts: dict[str, int] = {}
    for pod, count in held(clients).items():
        counts[nodes[pod]] = counts.get(nodes[pod], 0) + count
    return counts


async def status_nodes(kube: KubeCluster, namespace: str) -> dict[str, tuple[int, int]]:
    """``status.nodes`` of the chat ConnectionStats: node -> (pods, connections)."""
    status = (await get_json(kube, "connectionstats", "chat", "-n", namespace)).get("status", {})
    return {
        entry["name"]: (int(entry.get("pods", 0)), int(entry.get("connections", 0)))
        for entry in status.get("nodes") or []
    }


@pytest.mark.timeout(1500)
async def test_drain_a_worker_holding_sockets(
    kube: KubeCluster, release: ChartInstall, namespace: str
) -> None:
    workers = sorted(
        item["metadata"]["name"]
        for item in (await get_json(kube, "nodes"))["items"]
        if "node-role.kubernetes.io/control-plane" not in item["metadata"]["labels"]
    )
    assert len(workers) == 2, workers
    await apply_chat(kube, namespace)
    await kubectl(kube, "scale", "deployment", "chat", "-n", namespace, "--replicas=4")

    async def four_on_both() -> dict[str, dict[str, Any]] | None:
        pods = await ready_pods(kube, namespace, 4)
        return pods if pods and set(workers_of(pods).values()) == set(workers) else None

    pods = await eventually(four_on_both, 300, "4 chat pods Ready on both workers")
    url = await service_url(kube, namespace)
    session = client_session()
    clients: list[ServiceClient] = []
    drained = ""
    try:
        await service_reaches(session, url, set(pods))
        for _ in range(24):
            client = ServiceClient(session, url)
            await client.connect()
            clients.append(client)
        nodes = workers_of(pods)
        expected = per_node(clients, nodes)
        assert set(expected) == set(workers), expected
        await assert_counts_agree(kube, namespace, session, clients)

        async def nodes_listed() -> bool:
            listed = await status_nodes(kube, namespace)
            pods_per_node = {w: list(nodes.values()).count(w) for w in workers}
            return listed == {w: (pods_per_node[w], expected[w]) for w in workers}

        await eventually(nodes_listed, 60, f"status.nodes lists both workers with {expected}")

        # Drain the worker holding the most sockets.
        drained = max(workers, key=lambda w: (expected[w], w))
        other = next(w for w in workers if w != drained)
        evicted = {name for name, node in nodes.items() if node == drained}
        on_drained = {pod: count for pod, count in held(clients).items() if pod in evicted}
        started = time.monotonic()
        await kubectl(kube, "drain", drained, "--ignore-daemonsets", "--delete-emptydir-data",
                      "--timeout=600s")  # fmt: skip
        print(f"drained {drained} in {time.monotonic() - started:.1f}s")

        async def settled() -> dict[str, dict[str, Any]] | None:
            current = await ready_pods(kube, namespace, 4)
            if not current or set(workers_of(current).values()) != {other}:
                return None
            return current if all(c.pod in current for c in clients) else None

        after = await eventually(settled, 300, f"4 pods Ready on {other}, every client back")
        closes = [x for c in clients for x in c.closes if x.pod in evicted]
        assert all(x.code == GOING_AWAY for x in closes), closes
        per_pod: dict[str, list[float]] = {}
        for close in closes:
            per_pod.setdefault(close.pod, []).append(close.at)
        assert {k: len(v) for k, v in per_pod.items()} == on_drained
        for times in per_pod.values():
            ordered = sorted(times)
            if len(ordered) > 1:
                assert ordered[-1] - ordered[0] > DRAIN_SPREAD / 4, ordered
        final = await assert_counts_agree(kube, namespace, session, clients)
        assert sum(final.values()) == len(clients)

        async def only_other() -> bool:
            return await status_nodes(kube, namespace) == {other: (4, len(clients))}

        await eventually(only_other, 60, f"status.nodes: all on {other}")
        assert set(workers_of(after).values()) == {other}

        # Both workers again; the HPA's scale-up places pods on both.
        await kubectl(kube, "uncordon", drained)
        drained = ""
        await apply_connection_stats(kube, namespace, autoscaling=True)
        for _ in range(120):
            client = ServiceClient(session, url)
            await client.connect()
            clients.append(client)

        async def scaled_onto_both() -> dict[str, dict[str, Any]] | None:
            current = await chat_pods(kube, namespace)
            running = {n: p for n, p in current.items() if p["status"].get("phase") == "Running"}
            spread = set(workers_of(running).values())
            return running if len(running) > 4 and spread == set(workers) else None

        scaled = await eventually(scaled_onto_both, 300, "HPA scale-up onto both workers")
        print(f"after the scale-up: {workers_of(scaled)}")
    finally:
        if drained:
            await kubectl(kube, "uncordon", drained)
        for client in clients:
            await client.close()
        await session.close()
