"""End to end on the real node: a reconnect storm after a pod is lost, flattened by the sidecars.

``examples/chat`` with 3 pods whose sidecars admit at most ``RATE`` upgrades per second
(``wsgauge.dev/max-upgrades-per-second``, the sidecar's ``--max-upgrades-per-second``) holds
``SOCKETS`` (3,000) clients through the chat Service. One pod is deleted at once (``--force
--grace-period=0``): its clients all reconnect immediately, through the Service, to the
survivors. Well-behaved clients come back after the ``Retry-After`` of a 503.

What is checked:

- the storm hit the limit: the survivors refused upgrades (``refused.rate_limited`` in their
  ``/stats``) and the clients got 503s whose ``Retry-After`` is jittered (several values, all
  whole seconds of at least 1);
- it was flattened to the rate: between any two samples of a survivor's ``/stats`` taken during
  the storm, the sockets it opened are at most one bucket (``RATE``) plus ``RATE`` per second of
  the time between the first request's send and the second reply's receipt (a bound that load on
  the machine can only make easier to meet, never harder);
- no socket lost or double-counted: every client holds a socket again at the end, and every
  sidecar, the custom metrics API and the ConnectionStats status equal what the clients hold
  (total ``SOCKETS`` exactly).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from dataclasses import dataclass

import aiohttp
import pytest
import yaml
from e2e_harness import client_session, eventually, kubectl
from real_node_harness import (
    ADMIN_PORT,
    EXAMPLE,
    assert_counts_agree,
    chat_pods,
    ready_pods,
    service_reaches,
    service_url,
)
from wsgauge_devcluster.deploy import ChartInstall
from wsgauge_devcluster.testing import KubeCluster

SOCKETS = 3000
RATE = 40
"""Upgrades per second each sidecar admits (its token bucket also holds ``RATE``)."""
REPLICAS = 3
ATTEMPTS = 400
"""Connection attempts of one client before the test gives up on it (bounded retries)."""


@dataclass
class Sample:
    """One read of a sidecar's ``/stats``: when it was asked and answered, what it said."""

    sent: float
    received: float
    opened: int
    refused: int


class StormClient:
    """One socket through the chat Service that reconnects at once whenever it is closed and,
    on a 503, comes back after its ``Retry-After`` (what a well-behaved client library does)."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self._session = session
        self._url = url
        self.pod: str | None = None
        self.retry_afters: list[int] = []
        self.closes = 0
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._stopping = False

    async def run(self) -> None:
        """Connect, hold until closed, connect again; until :meth:`stop`."""
        while not self._stopping:
            await self._connect()
            assert self._ws is not None
            async for _ in self._ws:
                pass
            self.pod = None
            if self._stopping:
                return
            self.closes += 1

    async def _connect(self) -> None:
        last: BaseException | None = None
        for _ in range(ATTEMPTS):
            try:
                ws = await asyncio.wait_for(
                    self._session.ws_connect(self._url, heartbeat=None), timeout=20
                )
            except aiohttp.WSServerHandshakeError as error:
                last = error
                header = error.headers.get("Retry-After") if error.headers else None
                if error.status == 503 and header is not None:
                    self.retry_afters.append(int(header))
                    await asyncio.sleep(int(header) + random.random())
                else:
                    await asyncio.sleep(0.3)
                continue
            except (aiohttp.ClientError, OSError, TimeoutError) as error:
                last = error  # the Service still routes to the lost pod for a moment
                await asyncio.sleep(0.3)
                continue
            await ws.send_str("whoami")
            reply = await asyncio.wait_for(ws.receive(), timeout=20)
            if reply.type == aiohttp.WSMsgType.TEXT and str(reply.data).startswith("pod:"):
                self._ws = ws
                self.pod = str(reply.data).removeprefix("pod:")
                return
            last = AssertionError(f"unexpected first message {reply!r}")
            await ws.close()
        raise AssertionError(f"could not connect after {ATTEMPTS} attempts: {last!r}")

    async def stop(self) -> None:
        self._stopping = True
        if self._ws is not None:
            await self._ws.close()


async def apply_storm_chat(kube: KubeCluster, namespace: str) -> None:
    """examples/chat with REPLICAS pods, the upgrade rate limit, room for 1,500 sockets in the
    demo app, and its ConnectionStats without autoscaling or a per-pod capacity."""
    await kubectl(kube, "label", "namespace", namespace, "wsgauge.dev/injection=enabled")
    deployment = yaml.safe_load((EXAMPLE / "deployment.yaml").read_text())
    deployment["spec"]["replicas"] = REPLICAS
    template = deployment["spec"]["template"]
    template["metadata"]["annotations"]["wsgauge.dev/max-upgrades-per-second"] = str(RATE)
    for container in template["spec"]["containers"]:
        container["resources"]["limits"]["memory"] = "512Mi"
    await kubectl(kube, "apply", "-n", namespace, "-f", "-", input_text=json.dumps(deployment))
    await kubectl(kube, "apply", "-n", namespace, "-f", str(EXAMPLE / "service.yaml"))
    stats = yaml.safe_load((EXAMPLE / "connectionstats.yaml").read_text())
    del stats["spec"]["autoscaling"]
    stats["spec"]["capacity"] = {"minReadyPods": 1}
    await kubectl(kube, "apply", "-n", namespace, "-f", "-", input_text=json.dumps(stats))


async def read_stats(session: aiohttp.ClientSession, ip: str) -> Sample:
    sent = time.monotonic()
    url = f"http://{ip}:{ADMIN_PORT}/stats"
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as reply:
        document = json.loads(await reply.text())
    received = time.monotonic()
    refused = int((document.get("refused") or {}).get("rate_limited", 0))
    return Sample(sent, received, int(document["opened"]), refused)


def worst_excess(samples: list[Sample]) -> tuple[float, str]:
    """The largest ``opened - bound`` over every pair of samples (<= 0: the rate held)."""
    worst, where = float("-inf"), ""
    for i, first in enumerate(samples):
        for second in samples[i + 1 :]:
            bound = RATE + RATE * (second.received - first.sent)
            excess = (second.opened - first.opened) - bound
            if excess > worst:
                worst = excess
                where = f"{second.opened - first.opened} opened, bound {bound:.0f}"
    return worst, where


@pytest.mark.timeout(1200, func_only=True)  # the node wait and install come before
async def test_a_reconnect_storm_is_flattened_to_the_rate_and_loses_no_socket(
    kube: KubeCluster, release: ChartInstall, namespace: str
) -> None:
    await apply_storm_chat(kube, namespace)
    first = await eventually(
        lambda: ready_pods(kube, namespace, REPLICAS), 180, f"{REPLICAS} chat pods Ready"
    )
    url = await service_url(kube, namespace)
    session = client_session()
    clients = [StormClient(session, url) for _ in range(SOCKETS)]
    tasks: list[asyncio.Task[None]] = []
    try:
        await service_reaches(session, url, set(first))
        # 1. SOCKETS clients through the Service (the rate limit spreads their arrival too).
        tasks = [asyncio.create_task(client.run()) for client in clients]

        async def all_connected() -> bool:
            for task in tasks:
                if task.done():
                    task.result()  # a client that gave up fails the test with its reason
            return all(client.pod is not None for client in clients)

        await eventually(all_connected, 600, f"{SOCKETS} clients connected", interval=2)
        before = await assert_counts_agree(kube, namespace, session, clients, timeout=120)
        print(f"{SOCKETS} sockets on {REPLICAS} pods: {before}")
        assert sum(before.values()) == SOCKETS

        # 2. The pod holding the most sockets is lost at once; its clients storm the others.
        pods = await chat_pods(kube, namespace)
        victim = max(before, key=lambda name: before[name])
        survivors = {name: pod["status"]["podIP"] for name, pod in pods.items() if name != victim}
        storming = before[victim]
        samples: dict[str, list[Sample]] = {name: [] for name in survivors}
        sampling = True

        async def sample() -> None:
            while sampling:
                for name, ip in survivors.items():
                    samples[name].append(await read_stats(session, ip))
                await asyncio.sleep(0.5)

        sampler = asyncio.create_task(sample())
        await kubectl(
            kube, "delete", "pod", victim, "-n", namespace,
            "--grace-period=0", "--force", "--wait=false",
        )  # fmt: skip

        async def storm_absorbed() -> bool:
            # the lost pod's sockets close when its containers are killed, a moment after the
            # delete returns: until then its clients still count as connected
            return not any(client.pod == victim for client in clients) and await all_connected()

        try:
            await eventually(storm_absorbed, 600, "every client connected again", interval=1)
        finally:
            sampling = False
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        for name, ip in survivors.items():
            samples[name].append(await read_stats(session, ip))

        # 3. Nothing lost or double-counted: every source equals what the clients hold.
        after = await assert_counts_agree(kube, namespace, session, clients, timeout=120)
        print(f"after the storm of {storming} reconnects: {after}")
        assert sum(after.values()) == SOCKETS
        assert victim not in after
        reconnected = sum(client.closes for client in clients)
        assert reconnected >= storming, (reconnected, storming)
    finally:
        for client in clients:
            await client.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await session.close()

    # The storm hit the limit, and the clients were told to come back at jittered times.
    refused = {name: s[-1].refused - s[0].refused for name, s in samples.items()}
    print(f"refused during the storm: {refused}")
    assert sum(refused.values()) > 0, "the storm never reached the rate limit"
    retry_afters = [value for client in clients for value in client.retry_afters]
    assert retry_afters, "no client was told to come back later"
    assert min(retry_afters) >= 1
    assert len(set(retry_afters)) > 1, f"Retry-After not jittered: {set(retry_afters)}"
    # Flattened to the rate: no survivor opened more than its bucket allows in any window.
    for name, series in samples.items():
        opened = series[-1].opened - series[0].opened
        excess, where = worst_excess(series)
        took = series[-1].received - series[0].sent
        print(f"{name}: {opened} opened in {took:.1f} s over {len(series)} samples; "
              f"tightest window: {where}")  # fmt: skip
        assert excess <= 0, (name, where)
