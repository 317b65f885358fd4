"""End to end on the real node (or any cluster ``KUBECONFIG`` names, e.g. kind's): wsgauge from
its images, installed by its chart, driving the real HPA, readiness gate and scale-down of the
injected chat example.

1. ``examples/chat`` in a namespace labelled for injection: the webhook adds the sidecar, the
   readiness gate and the app's preStop; the pods run on a kubelet node (on the devcluster: its
   real node) in containerd.
2. 120 sockets through the chat Service (kube-proxy), then autoscaling turned on in the
   ConnectionStats: the HPA the operator owns scales the Deployment to 6. The first pods hold
   more than ``maxConnectionsPerPod`` (50): they stay Running but are not Ready and not ready
   endpoints of the Service (the kubelet honours the readiness gate), so new sockets go
   elsewhere.
3. Sockets move off the full pods through the Service; every source agrees with the clients.
4. Most sockets close, the two busiest pods keep the most: the HPA scales to 2, the pods that go
   are the emptiest (deletion cost), their sidecars close with 1001 spread over the drain window
   while the app keeps its sockets open (preStop), the clients reconnect through the Service to
   the two that stay; every source agrees again.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial

import pytest
from e2e_harness import GOING_AWAY, client_session, eventually, get_json
from real_node_harness import (
    ServiceClient,
    apply_chat,
    apply_connection_stats,
    assert_counts_agree,
    chat_pods,
    cluster_nodes,
    condition,
    endpoint_readiness,
    held,
    ready_pods,
    routed_to_ready_pods,
    service_reaches,
    service_url,
)
from wsgauge_devcluster.deploy import ChartInstall
from wsgauge_devcluster.testing import KubeCluster

DRAIN_SPREAD = 10.0
"""The chart's injector.sidecar.drainSpread."""
CAPACITY = 50
"""maxConnectionsPerPod of examples/chat/connectionstats.yaml."""


async def replicas(kube: KubeCluster, namespace: str) -> int:
    return int((await get_json(kube, "deployment", "chat", "-n", namespace))["spec"]["replicas"])


@pytest.mark.timeout(600, func_only=True)  # the node wait, cluster start and install come before
async def test_chat_scales_steers_and_drains_on_the_real_node(
    kube: KubeCluster, release: ChartInstall, namespace: str
) -> None:
    await apply_chat(kube, namespace)

    # 1. Injected, scheduled on the real node, run by containerd, Ready through the gate.
    first = await eventually(lambda: ready_pods(kube, namespace, 2), 120, "2 chat pods Ready")
    nodes = await cluster_nodes(kube)
    for pod in first.values():
        containers = [c["name"] for c in pod["spec"]["containers"]]
        assert containers == ["app", "wsgauge-sidecar"], containers
        gates = [g["conditionType"] for g in pod["spec"].get("readinessGates") or []]
        assert "wsgauge.dev/connections-ok" in gates
        assert pod["spec"]["containers"][0]["lifecycle"]["preStop"], "no preStop on the app"
        assert pod["spec"]["nodeName"] in nodes, (pod["spec"]["nodeName"], nodes)
        for status in pod["status"]["containerStatuses"]:
            assert status["containerID"].startswith("containerd://"), status
    url = await service_url(kube, namespace)
    session = client_session()
    clients: list[ServiceClient] = []
    try:
        # 2. A surge through the Service; the HPA scales to 6; full pods leave the endpoints.
        await service_reaches(session, url, set(first))
        for _ in range(120):
            client = ServiceClient(session, url)
            await client.connect()
            clients.append(client)
        surge = held(clients)
        print(f"120 sockets through the Service: {surge}")
        assert set(surge) <= set(first)
        assert sum(surge.values()) == 120
        await apply_connection_stats(kube, namespace, autoscaling=True)
        started = time.monotonic()

        async def six() -> bool:
            return await replicas(kube, namespace) == 6

        await eventually(six, 120, "the HPA scales to 6")
        print(f"surge -> 6 replicas: {time.monotonic() - started:.1f}s")
        full = sorted(name for name, count in surge.items() if count > CAPACITY)
        assert full, f"no pod above {CAPACITY}: {surge}"

        async def out_of_service(names: list[str]) -> bool:
            pods = await chat_pods(kube, namespace)
            endpoints = await endpoint_readiness(kube, namespace)
            return all(
                pods[name]["status"]["phase"] == "Running"
                and condition(pods[name], "wsgauge.dev/connections-ok") == "False"
                and condition(pods[name], "Ready") == "False"
                and endpoints.get(name) is False
                for name in names
            )

        await eventually(
            lambda: out_of_service(full), 60, f"{full} Running, not Ready, not ready endpoints"
        )
        await eventually(
            lambda: _ready_count(kube, namespace, 6 - len(full)), 120, "the new pods Ready"
        )

        # kube-proxy programs the EndpointSlice change a moment after it is written (on every
        # node of the cluster).
        await eventually(
            lambda: routed_to_ready_pods(kube, namespace),
            60,
            "kube-proxy routes to the Ready pods only",
        )
        # New sockets go only to Ready pods.
        extra = [ServiceClient(session, url) for _ in range(10)]
        for client in extra:
            await client.connect()
        assert not {c.pod for c in extra} & set(full), "a socket reached a pod out of service"
        for client in extra:
            await client.close()

        # 3. Sockets move off the full pods (close, reconnect through the Service).
        async def move_excess(names: list[str]) -> None:
            counts = held(clients)
            movers = [
                client
                for name in names
                for client in [c for c in clients if c.pod == name][: counts[name] - 20]
            ]
            for client in movers:
                await client.close()
            for client in movers:
                await client.connect()
            print(f"after moving: {held(clients)}")

        await move_excess(full)
        # A pod that was under CAPACITY may take enough of the movers to go over it (120 sockets
        # split 48/72 leave 48 on one pod): it leaves the endpoints in turn, its excess moves too.
        for _ in range(3):
            over = sorted(name for name, count in held(clients).items() if count > CAPACITY)
            if not over:
                break
            await eventually(
                partial(out_of_service, over), 60, f"{over} Running, not Ready, not ready endpoints"
            )
            await eventually(
                lambda: routed_to_ready_pods(kube, namespace),
                60,
                "kube-proxy routes to the Ready pods only",
            )
            await move_excess(over)
        await eventually(lambda: ready_pods(kube, namespace, 6), 120, "6 pods Ready")
        await assert_counts_agree(kube, namespace, session, clients)

        # 4. Most sockets close; the two busiest keep the most: scale-down to 2 removes the rest.
        by_count = sorted(held(clients).items(), key=lambda item: (-item[1], item[0]))
        (busiest, count_a), (second, count_b) = by_count[0], by_count[1]
        keep = {busiest: min(count_a, 14), second: min(count_b, 10)}
        for index, (name, _) in enumerate(by_count[2:]):
            keep[name] = index % 4  # 0, 1, 2, 3, ...: the emptiest pods
        assert sum(keep.values()) > 20
        assert keep[second] > max(list(keep.values())[2:])
        for name, wanted in keep.items():
            for client in [c for c in clients if c.pod == name][wanted:]:
                await client.close()
        clients = [c for c in clients if c.pod is not None]
        kept = held(clients)
        assert kept == {k: v for k, v in keep.items() if v}, kept
        kept_on = {client: (client.pod, len(client.closes)) for client in clients}
        closed_at = time.monotonic()

        async def two() -> bool:
            return await replicas(kube, namespace) == 2

        await eventually(two, 120, "the HPA scales to 2")
        print(f"scale-down decided after {time.monotonic() - closed_at:.1f}s")

        async def only_busiest() -> bool:
            pods = (await get_json(kube, "pods", "-n", namespace, "-l", "app=chat"))["items"]
            return {p["metadata"]["name"] for p in pods} == {busiest, second}

        await eventually(only_busiest, 120, f"only {busiest} and {second} left")
        # Every socket of a removed pod got 1001, spread over the drain window, and came back
        # through the Service to a pod that stays.
        removed = {name: count for name, count in kept.items() if name not in (busiest, second)}
        closes = [x for c in clients for x in c.closes if x.pod in removed]
        assert all(x.code == GOING_AWAY for x in closes), closes
        # The HPA may remove pods in steps: a socket closed by a pod removed first can come back
        # on one removed later and be closed by it too. Each client's first close is the one
        # of the pod it was kept on.
        per_removed: dict[str, list[float]] = {}
        for client, (pod, earlier) in kept_on.items():
            if pod in removed:
                first = client.closes[earlier]
                assert first.pod == pod, (pod, client.closes)
                per_removed.setdefault(pod, []).append(first.at)
        assert {k: len(v) for k, v in per_removed.items()} == removed
        for times in per_removed.values():
            ordered = sorted(times)
            if len(ordered) > 1:
                assert ordered[-1] - ordered[0] > DRAIN_SPREAD / 4, ordered
        await eventually(
            lambda: _all_on(clients, {busiest, second}), 60, "every client back on a pod"
        )
        final = await assert_counts_agree(kube, namespace, session, clients)
        assert sum(final.values()) == sum(kept.values())
        status = (await get_json(kube, "connectionstats", "chat", "-n", namespace))["status"]
        assert status["desiredReplicas"] == 2
        reasons = {
            e.get("reason")
            for e in (await get_json(kube, "events.v1.events.k8s.io", "-n", namespace))["items"]
        }
        assert {"HPACreated", "ReplicasRecommended"} <= reasons, reasons
    finally:
        for client in clients:
            await client.close()
        await session.close()


async def _ready_count(kube: KubeCluster, namespace: str, count: int) -> bool:
    pods = await chat_pods(kube, namespace)
    return sum(condition(p, "Ready") == "True" for p in pods.values()) >= count


async def _all_on(clients: list[ServiceClient], pods: set[str]) -> bool:
    await asyncio.sleep(0)
    return all(c.pod in pods for c in clients)
