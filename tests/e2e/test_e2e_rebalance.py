"""End to end on the real node: rebalance after scale-out (``spec.rebalance``).

1. ``examples/chat`` (2 pods) with a ConnectionStats whose rebalance is switched off; 200 sockets
   through the chat Service; every source agrees with the clients.
2. The rebalance is switched on and the Deployment scaled to 4: the operator holds the two full
   pods out of service (readiness condition ``Rebalancing``, never below minReadyPods) and sends
   their sidecars signed shed orders; they close a bounded share of their sockets with 1012,
   spread out; the clients reconnect through the Service to the new pods.
3. Within a bounded time every pod is within the tolerance of the average; no pod closed more
   than the bound in any minute; no client was lost (every close was a 1012 followed by a
   reconnect); the rebalance reports itself done (status, Event) and releases its holds; every
   source agrees with the clients again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from typing import Any

import pytest
import yaml
from e2e_harness import SERVICE_RESTART, client_session, eventually, get_json, kubectl
from real_node_harness import (
    EXAMPLE,
    ServiceClient,
    apply_chat,
    assert_counts_agree,
    chat_pods,
    condition,
    held,
    ready_pods,
    service_reaches,
    service_url,
)
from wsgauge_devcluster.deploy import ChartInstall
from wsgauge_devcluster.testing import KubeCluster

SOCKETS = 200
TOLERANCE = 0.2
SHARE = 0.3
"""maxShedPerMinute: a pod that held 100 sheds at most 30 in any minute."""
WINDOW = 60.0


async def apply_rebalancing(kube: KubeCluster, namespace: str, enabled: bool) -> None:
    """The chat ConnectionStats without autoscaling or a per-pod limit, with spec.rebalance."""
    document = yaml.safe_load((EXAMPLE / "connectionstats.yaml").read_text())
    spec = document["spec"]
    del spec["autoscaling"]
    spec["capacity"] = {"minReadyPods": 1}
    spec["rebalance"] = {
        "enabled": enabled,
        "tolerance": TOLERANCE,
        "maxShedPerMinute": SHARE,
        "closeCode": SERVICE_RESTART,
        "spread": "5s",
    }
    await kubectl(kube, "apply", "-n", namespace, "-f", "-", input_text=json.dumps(document))


@pytest.mark.timeout(900, func_only=True)  # the node wait and install come before
async def test_scale_out_from_two_to_four_pods_rebalances_the_sockets(
    kube: KubeCluster, release: ChartInstall, namespace: str
) -> None:
    await apply_chat(kube, namespace)
    await apply_rebalancing(kube, namespace, enabled=False)
    first = await eventually(lambda: ready_pods(kube, namespace, 2), 120, "2 chat pods Ready")
    url = await service_url(kube, namespace)
    session = client_session()
    clients: list[ServiceClient] = []
    reconnecting: list[int] = []
    """Clients without a socket (reconnecting), sampled every 0.2 s."""
    peak: dict[str, int] = {}
    """The most sockets each pod held at a sample."""
    sampling = True

    async def sample() -> None:
        while sampling:
            now_held = held(clients)
            reconnecting.append(len(clients) - sum(now_held.values()))
            for name, count in now_held.items():
                peak[name] = max(peak.get(name, 0), count)
            await asyncio.sleep(0.2)

    sampler: asyncio.Task[None] | None = None
    try:
        # 1. Two pods, 200 sockets through the Service, every source agrees.
        await service_reaches(session, url, set(first))
        for _ in range(SOCKETS):
            client = ServiceClient(session, url)
            await client.connect()
            clients.append(client)
        before = await assert_counts_agree(kube, namespace, session, clients)
        print(f"{SOCKETS} sockets on 2 pods: {before}")
        assert set(before) <= set(first)
        assert sum(before.values()) == SOCKETS
        sampler = asyncio.create_task(sample())

        # 2. Rebalance on, scale to 4.
        await apply_rebalancing(kube, namespace, enabled=True)
        started = time.monotonic()
        await kubectl(kube, "scale", "deployment", "chat", "-n", namespace, "--replicas=4")

        async def four_running() -> dict[str, Any] | None:
            # the old pods are held out of service meanwhile: Running, not necessarily Ready
            current = await chat_pods(kube, namespace)
            running = all(p["status"].get("phase") == "Running" for p in current.values())
            return current if len(current) == 4 and running else None

        await eventually(four_running, 180, "4 chat pods Running")

        async def balanced() -> dict[str, int] | None:
            if any(client.pod is None for client in clients):
                return None  # reconnects in flight
            counts = {name: 0 for name in await chat_pods(kube, namespace)}
            for name, count in held(clients).items():
                counts[name] = counts.get(name, 0) + count
            if len(counts) != 4:
                return None
            band = max(1.0, TOLERANCE * SOCKETS / 4)
            ok = all(abs(c - SOCKETS / 4) <= band for c in counts.values())
            return counts if ok else None

        after = await eventually(balanced, 420, "every pod within the tolerance of the average")
        took = time.monotonic() - started
        print(f"balanced after {took:.1f}s: {after}")

        # 3. It stops: status inactive, Event, holds released; counts agree.
        async def done() -> dict[str, Any] | None:
            status = (await get_json(kube, "connectionstats", "chat", "-n", namespace))["status"]
            rebalance = status.get("rebalance") or {}
            return rebalance if rebalance.get("active") is False else None

        final_status = await eventually(done, 60, "status.rebalance.active false")
        print(f"status.rebalance: {final_status}")
        band = max(1.0, TOLERANCE * SOCKETS / 4)
        needed = sum(max(0, math.ceil(c - SOCKETS / 4 - band)) for c in before.values())
        assert final_status["shedTotal"] >= needed, (final_status, before)
        reasons = {
            e.get("reason")
            for e in (await get_json(kube, "events.v1.events.k8s.io", "-n", namespace))["items"]
        }
        assert {"RebalanceStarted", "RebalanceShed", "Rebalanced"} <= reasons, reasons
        assert "RebalanceRefused" not in reasons

        async def released() -> bool:
            current = await chat_pods(kube, namespace)
            return len(current) == 4 and all(
                condition(p, "wsgauge.dev/connections-ok") == "True" for p in current.values()
            )

        await eventually(released, 60, "every pod's connections-ok condition True again")
        final = await assert_counts_agree(kube, namespace, session, clients)
        assert sum(final.values()) == SOCKETS
    finally:
        sampling = False
        if sampler is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        for client in clients:
            await client.close()
        await session.close()

    # No client was lost: every close was a rebalance close (1012) and was followed by a
    # reconnect (every client holds a socket at the end, checked above).
    closes = [x for c in clients for x in c.closes]
    assert closes, "the rebalance closed nothing"
    assert all(x.code == SERVICE_RESTART for x in closes), {x.code for x in closes}
    # The shed bound: per pod, in any window of a minute, at most SHARE of the most it held.
    bounds = {pod: max(1, math.floor(SHARE * count)) for pod, count in peak.items()}
    for pod in sorted({x.pod for x in closes}):
        times = sorted(x.at for x in closes if x.pod == pod)
        worst = max(sum(1 for t in times if s <= t < s + WINDOW) for s in times)
        print(f"{pod}: peak {peak[pod]}, {len(times)} closes, at most {worst} in a minute "
              f"(bound {bounds[pod]})")  # fmt: skip
        assert worst <= bounds[pod], (pod, worst, bounds[pod])
    # The total held by the clients only dipped by reconnects in flight, never by more than
    # what the pods may shed at once.
    deepest = max(reconnecting, default=0)
    print(f"{len(reconnecting)} samples; at most {deepest} reconnects in flight at once")
    assert deepest <= sum(bounds.values())
