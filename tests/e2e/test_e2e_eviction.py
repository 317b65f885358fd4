"""End to end on the real node (or any cluster ``KUBECONFIG`` names, e.g. kind's): an evicted pod
drains like a scaled-down one.

An eviction (the Eviction API, and ``kubectl drain``, which uses it) ends in the same SIGTERM as
a scale-down, so the sidecar runs the same drain. The chat example is injected with
``wsgauge.dev/drain-close-code: "1012"``, ``drain-mode: batches`` and 3 batches:

1. 30 sockets through the chat Service over the 2 chat pods; each sidecar's ``/metrics`` shows
   the configured close code.
2. The busier pod is evicted through the Eviction API (``pods/eviction``; the chat PDB allows
   one): every socket it held gets close code 1012 exactly once, in at most 3 jittered batches
   spread over the drain window, and comes back through the Service; every source agrees with
   the clients (nothing lost, nothing counted twice).
3. The busier pod is then evicted by ``kubectl drain`` of its node with a pod selector
   (uncordoned afterwards, whatever happens): the same again.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import aiohttp
import pytest
import yaml
from e2e_harness import SERVICE_RESTART, Close, client_session, eventually, get_json, kubectl
from real_node_harness import (
    ADMIN_PORT,
    EXAMPLE,
    ServiceClient,
    apply_connection_stats,
    assert_counts_agree,
    chat_pods,
    held,
    ready_pods,
    routed_to_ready_pods,
    service_reaches,
    service_url,
)
from wsgauge_devcluster.deploy import ChartInstall
from wsgauge_devcluster.testing import KubeCluster

CLIENTS = 30
DRAIN_GRACE = 2.0
DRAIN_SPREAD = 9.0
DRAIN_BATCHES = 3
BATCH_GAP = 1.0
"""Seconds between two closes seen by the clients that separate two batches: the sockets of one
batch get their close frames in the same moment, so they arrive well within this."""


async def apply_chat_draining_in_batches(kube: KubeCluster, namespace: str) -> None:
    """examples/chat with the drain annotations of this test (close code 1012, 3 batches)."""
    await kubectl(kube, "label", "namespace", namespace, "wsgauge.dev/injection=enabled")
    deployment = yaml.safe_load((EXAMPLE / "deployment.yaml").read_text())
    deployment["spec"]["template"]["metadata"]["annotations"].update(
        {
            "wsgauge.dev/drain-close-code": str(SERVICE_RESTART),
            "wsgauge.dev/drain-mode": "batches",
            "wsgauge.dev/drain-batches": str(DRAIN_BATCHES),
            "wsgauge.dev/drain-grace": str(DRAIN_GRACE),
            "wsgauge.dev/drain-spread": str(DRAIN_SPREAD),
        }
    )
    await kubectl(kube, "apply", "-n", namespace, "-f", "-", input_text=json.dumps(deployment))
    for name in ("service.yaml", "pdb.yaml"):
        await kubectl(kube, "apply", "-n", namespace, "-f", str(EXAMPLE / name))
    await apply_connection_stats(kube, namespace, autoscaling=False)


async def metric(session: aiohttp.ClientSession, pod: dict[str, Any], name: str) -> float:
    """One unlabelled metric of a pod's sidecar ``/metrics``."""
    url = f"http://{pod['status']['podIP']}:{ADMIN_PORT}/metrics"
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as reply:
        text = await reply.text()
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in {url}")


async def evict(kube: KubeCluster, namespace: str, pod: str) -> bool:
    """POST an Eviction to ``pods/<pod>/eviction``; False while the PDB refuses it (429)."""
    body = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": pod, "namespace": namespace},
    }
    result = await asyncio.to_thread(
        kube.kubectl,
        "create", "--raw", f"/api/v1/namespaces/{namespace}/pods/{pod}/eviction", "-f", "-",
        input_text=json.dumps(body), check=False,
    )  # fmt: skip
    if result.returncode != 0:
        print(f"eviction of {pod} not granted yet: {result.stderr.strip()}")
    return result.returncode == 0


async def pod_gone(kube: KubeCluster, namespace: str, pod: str) -> bool:
    pods = (await get_json(kube, "pods", "-n", namespace, "-l", "app=chat"))["items"]
    return pod not in {p["metadata"]["name"] for p in pods}


def busiest(clients: list[ServiceClient]) -> str:
    counts = held(clients)
    return max(sorted(counts), key=lambda name: counts[name])


async def assert_drained_in_batches(
    clients: list[ServiceClient], victim: str, earlier: dict[int, int]
) -> list[Close]:
    """Every client that was on ``victim`` got one 1012 from it and is back on another pod;
    the closes form at most DRAIN_BATCHES batches spread over the drain window."""
    on_victim = [c for c in clients if id(c) in earlier]

    async def all_back() -> bool:
        await asyncio.sleep(0)
        return all(
            len(c.closes) > earlier[id(c)] and c.pod not in (None, victim) for c in on_victim
        )

    await eventually(all_back, 120, f"every client of {victim} closed and back on another pod")
    closes = [c.closes[earlier[id(c)]] for c in on_victim]
    assert all(x.pod == victim and x.code == SERVICE_RESTART for x in closes), closes
    times = sorted(x.at for x in closes)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    batches = 1 + sum(gap > BATCH_GAP for gap in gaps)
    span = times[-1] - times[0]
    print(
        f"{victim}: {len(closes)} sockets closed with {SERVICE_RESTART} in {batches} batches "
        f"over {span:.2f}s (spread {DRAIN_SPREAD}s, {DRAIN_BATCHES} batches), at "
        f"{[round(t - times[0], 2) for t in times]}"
    )
    assert batches <= DRAIN_BATCHES, times
    if len(closes) >= DRAIN_BATCHES:  # first and last batch lie in slots 0 and 2 of 3
        assert span > DRAIN_SPREAD / DRAIN_BATCHES, times
    return closes


@pytest.mark.timeout(600, func_only=True)  # the node wait, cluster start and install come before
async def test_evicted_pods_drain_like_scale_down(
    kube: KubeCluster, release: ChartInstall, namespace: str
) -> None:
    await apply_chat_draining_in_batches(kube, namespace)
    first = await eventually(lambda: ready_pods(kube, namespace, 2), 180, "2 chat pods Ready")
    url = await service_url(kube, namespace)
    session = client_session()
    clients: list[ServiceClient] = []
    try:
        for pod in first.values():
            assert await metric(session, pod, "wsgauge_drain_close_code") == SERVICE_RESTART
            assert await metric(session, pod, "wsgauge_drain_batches") == DRAIN_BATCHES
        await service_reaches(session, url, set(first))
        for _ in range(CLIENTS):
            client = ServiceClient(session, url)
            await client.connect()
            clients.append(client)
        print(f"{CLIENTS} sockets through the Service: {held(clients)}")
        await assert_counts_agree(kube, namespace, session, clients)

        # 2. The Eviction API (retried while the PDB does not allow it yet).
        victim = busiest(clients)
        earlier = {id(c): len(c.closes) for c in clients if c.pod == victim}
        await eventually(lambda: evict(kube, namespace, victim), 120, f"eviction of {victim}")
        await assert_drained_in_batches(clients, victim, earlier)
        await eventually(lambda: pod_gone(kube, namespace, victim), 120, f"{victim} deleted")
        await eventually(lambda: ready_pods(kube, namespace, 2), 180, "a replacement Ready")
        # the next drain's clients can only go to the replacement: wait until kube-proxy has it
        await eventually(
            lambda: routed_to_ready_pods(kube, namespace),
            60,
            "kube-proxy routes to the replacement",
        )
        after_eviction = await assert_counts_agree(kube, namespace, session, clients)
        assert sum(after_eviction.values()) == CLIENTS

        # 3. kubectl drain of the node, limited to the busier pod; uncordoned in any case.
        victim = busiest(clients)
        earlier = {id(c): len(c.closes) for c in clients if c.pod == victim}
        await kubectl(kube, "label", "pod", victim, "-n", namespace, "wsgauge-e2e/drain=this")
        node = (await get_json(kube, "pod", victim, "-n", namespace))["spec"]["nodeName"]
        try:
            drained = await asyncio.to_thread(
                kube.kubectl,
                "drain", node, "--pod-selector", "wsgauge-e2e/drain=this",
                "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=150s",
                check=False, timeout=180,
            )  # fmt: skip
            assert drained.returncode == 0, drained.stderr
            await assert_drained_in_batches(clients, victim, earlier)
        finally:
            await asyncio.to_thread(kube.kubectl, "uncordon", node, check=False)
        assert await pod_gone(kube, namespace, victim)
        await eventually(lambda: ready_pods(kube, namespace, 2), 180, "a replacement Ready")
        final = await assert_counts_agree(kube, namespace, session, clients)
        assert sum(final.values()) == CLIENTS
        assert victim not in await chat_pods(kube, namespace)
    finally:
        for client in clients:
            await client.close()
        await session.close()
