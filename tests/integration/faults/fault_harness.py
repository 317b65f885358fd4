"""The fault tests' rig and their one checker.

A :class:`FaultRig` is the chat workload (real sidecar + demo-app processes run by the devcluster
pod runner), a ConnectionStats, the real operator as a subprocess with its custom metrics API on
loopback, and real WebSocket clients (``e2e_harness.Client``: one socket each, reconnecting to
another pod after a 1001 drain).

:func:`assert_counts_agree` is the claim checked after every fault: the count each sidecar's
``/stats`` shows, the ConnectionStats status, the operator's in-memory view, the custom metrics
API (Pods metric per pod and the Object metric total, asked directly over TLS with the
aggregator's own front-proxy client certificate) and the KEDA endpoint all equal what the clients
hold. Frozen (SIGSTOPped) pods are expected to be left out and counted unreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from e2e_harness import Client, PodPool, client_session, per_pod
from operator_it_cluster_helpers import (
    CRD,
    OperatorProcess,
    chat_deployment,
    connection_stats,
    ready_pods,
    running_pods,
    status_of,
)
from operator_it_harness import free_port
from wsgauge_devcluster.testing import KubeCluster

ADMIN_PORT = 9090
"""The sidecar admin port in the chat pods."""
METRIC_PATH = "/apis/custom.metrics.k8s.io/v1beta2/namespaces/{ns}"


def front_proxy_ssl(kube: KubeCluster) -> ssl.SSLContext:
    """TLS client context with the aggregator's front-proxy client certificate (what the
    kube-apiserver presents when it proxies to the metrics API)."""
    if kube.state_dir is None:
        raise AssertionError("the fault tests need the local devcluster (its front-proxy cert)")
    pki = kube.state_dir / "pki"
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the operator's serving cert is self-signed
    context.load_cert_chain(pki / "front-proxy-client.crt", pki / "front-proxy-client.key")
    return context


@dataclass
class Agreement:
    """What every source said when they agreed."""

    held: dict[str, int]
    """Open sockets per pod as the clients hold them."""
    total: int
    """Sum over the reporting (not frozen) pods."""
    status: dict[str, Any]
    """The ConnectionStats status."""


@dataclass
class FaultRig:
    """One namespace's chat workload, its operator and clients."""

    kube: KubeCluster
    namespace: str
    operator: OperatorProcess
    metrics_port: int
    session: aiohttp.ClientSession
    tls: ssl.SSLContext
    pool: PodPool = field(default_factory=PodPool)
    clients: list[Client] = field(default_factory=list)

    # ----- pods ---------------------------------------------------------------------------
    async def live_pods(self, serving: bool = False) -> dict[str, str]:
        """Running, not terminating chat pods (with ``serving``: whose containers are ready):
        name -> pod IP."""
        pods = await asyncio.to_thread(running_pods, self.kube, self.namespace, "app=chat", serving)
        return {p["metadata"]["name"]: p["status"]["podIP"] for p in pods}

    async def serving(self, count: int) -> dict[str, str] | None:
        """The serving pods when there are exactly ``count``."""
        live = await self.live_pods(serving=True)
        return live if len(live) == count else None

    async def refresh_pool(self) -> dict[str, str]:
        """Point new clients at the pods that serve now."""
        live = await self.live_pods(serving=True)
        self.pool.live.clear()
        self.pool.live.update(live)
        return live

    def pid(self, pod: str, container: str) -> int | None:
        """Pid of a container process (from the pod runner's pid file)."""
        return self.kube.container_pid(self.namespace, pod, container)

    async def kubectl(self, *args: str) -> str:
        """kubectl in this namespace, off the event loop; raises on failure."""
        result = await asyncio.to_thread(self.kube.kubectl, *args, "-n", self.namespace)
        return str(result.stdout)

    # ----- clients ------------------------------------------------------------------------
    async def connect(self, count: int, pod: str | None = None) -> None:
        """Open ``count`` more sockets (round robin, or all to ``pod``)."""
        for _ in range(count):
            client = Client(self.session, self.pool)
            await client.connect(pod)
            self.clients.append(client)

    async def close_some(self, count: int, pod: str | None = None) -> None:
        """Close ``count`` open sockets (on ``pod``, or anywhere) from the client side."""
        open_clients = [c for c in self.clients if c.pod is not None and pod in (None, c.pod)]
        open_clients = open_clients[:count]
        await asyncio.gather(*(c.close() for c in open_clients))
        for client in open_clients:
            self.clients.remove(client)

    def held(self) -> dict[str, int]:
        """Open sockets per pod, as the clients see them."""
        return per_pod(self.clients)

    def forget_closed(self) -> None:
        """Drop clients whose socket the server closed (and that did not reconnect)."""
        self.clients = [c for c in self.clients if c.pod is not None]

    # ----- the sources --------------------------------------------------------------------
    async def sidecar_connections(self, ip: str) -> int | None:
        """``connections`` of a sidecar's /stats (None when it does not answer)."""
        try:
            async with self.session.get(
                f"http://{ip}:{ADMIN_PORT}/stats", timeout=aiohttp.ClientTimeout(total=2)
            ) as reply:
                return int((await reply.json())["connections"])
        except (aiohttp.ClientError, OSError, TimeoutError, KeyError, ValueError):
            return None

    async def _get_json(self, url: str, tls: bool) -> tuple[int, Any]:
        try:
            async with self.session.get(
                url, ssl=self.tls if tls else False, timeout=aiohttp.ClientTimeout(total=3)
            ) as reply:
                return reply.status, json.loads(await reply.read() or b"null")
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as error:
            return 0, repr(error)

    async def metrics_api_pods(self) -> dict[str, int] | None:
        """Pods metric per pod from the operator's custom metrics API."""
        path = METRIC_PATH.format(ns=self.namespace) + "/pods/*/wsgauge_connections"
        code, body = await self._get_json(f"https://127.0.0.1:{self.metrics_port}{path}", True)
        if code != 200:
            return None
        return {i["describedObject"]["name"]: int(i["value"]) for i in body["items"]}

    async def metrics_api_total(self) -> int | None:
        """Object metric (the ConnectionStats total) from the custom metrics API."""
        path = (
            METRIC_PATH.format(ns=self.namespace)
            + "/connectionstats.wsgauge.dev/chat/wsgauge_connections"
        )
        code, body = await self._get_json(f"https://127.0.0.1:{self.metrics_port}{path}", True)
        return int(body["items"][0]["value"]) if code == 200 else None

    async def keda(self) -> tuple[int, Any]:
        """The KEDA endpoint's (HTTP status, document)."""
        path = f"/keda/namespaces/{self.namespace}/connectionstats/chat"
        return await self._get_json(f"http://127.0.0.1:{self.operator.port}{path}", False)

    async def operator_summary(self) -> dict[str, Any]:
        """The operator's in-memory status of the ConnectionStats ({} if none)."""
        code, body = await self._get_json(
            f"http://127.0.0.1:{self.operator.port}/stats/{self.namespace}/chat", False
        )
        return dict(body.get("status") or {}) if code == 200 else {}

    async def status(self) -> dict[str, Any]:
        """The ConnectionStats status as written to the API."""
        return await asyncio.to_thread(status_of, self.kube, self.namespace)

    async def mismatches(
        self, frozen: Collection[str] = (), api_down: bool = False
    ) -> tuple[list[str], Agreement]:
        """Every disagreement between the clients and the sources (empty: all agree). With
        ``api_down`` the Kubernetes API is not asked: the pods are the pool's, the status is not
        compared (it cannot be written), the operator's memory, metrics API and KEDA are."""
        live = dict(self.pool.live) if api_down else await self.live_pods()
        held = self.held()
        problems: list[str] = []
        stray = set(held) - set(live)
        if stray:
            problems.append(f"clients hold sockets on pods that are gone: {sorted(stray)}")
        counted = {name: held.get(name, 0) for name in live if name not in frozen}
        total = sum(counted.values())
        for name, ip in live.items():
            if name in frozen:
                continue
            seen = await self.sidecar_connections(ip)
            if seen != counted[name]:
                problems.append(f"sidecar /stats of {name}: {seen}, clients hold {counted[name]}")
        status: dict[str, Any] = {"connections": total, "pods": {"reporting": len(counted)}}
        if not api_down:
            status = await self.status()
        pods = status.get("pods") or {}
        if status.get("connections") != total:
            problems.append(f"status.connections {status.get('connections')} != {total}")
        if pods.get("reporting") != len(counted) or pods.get("unreachable", 0) != len(frozen):
            problems.append(f"status.pods {pods} (want reporting {len(counted)}, "
                            f"unreachable {len(frozen)})")  # fmt: skip
        summary = await self.operator_summary()
        if summary.get("connections") != total:
            problems.append(f"operator memory connections {summary.get('connections')} != {total}")
        served = await self.metrics_api_pods()
        if served != counted:
            problems.append(f"metrics API pods {served} != {counted}")
        served_total = await self.metrics_api_total()
        if served_total != total:
            problems.append(f"metrics API object total {served_total} != {total}")
        code, keda = await self.keda()
        if code != 200 or keda.get("connections") != total or keda.get("stale"):
            problems.append(f"KEDA endpoint {code} {keda}")
        return problems, Agreement(held, total, status)

    async def wait_for(self, what: str, check: Any, timeout: float = 45.0) -> Any:
        """Await ``check()`` until truthy (bounded; interval 0.3 s)."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = await check()
            if last:
                return last
            await asyncio.sleep(0.3)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


async def assert_counts_agree(
    rig: FaultRig,
    frozen: Collection[str] = (),
    timeout: float = 45.0,
    what: str = "",
    api_down: bool = False,
) -> Agreement:
    """Wait (bounded) until /stats, status, operator memory, metrics API and KEDA all equal what
    the clients hold; AssertionError listing the disagreements otherwise. ``api_down``: see
    :meth:`FaultRig.mismatches`."""
    deadline = time.monotonic() + timeout
    problems: list[str] = []
    while True:
        problems, agreement = await rig.mismatches(frozen, api_down)
        if not problems:
            return agreement
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"counts disagree after {timeout:.0f}s ({what}):\n  " + "\n  ".join(problems)
            )
        await asyncio.sleep(0.5)


@contextlib.asynccontextmanager
async def fault_rig(
    kube: KubeCluster,
    namespace: str,
    log_dir: Path,
    replicas: int,
    liveness_failures: int | None = None,
    **spec: Any,
) -> AsyncIterator[FaultRig]:
    """The chat Deployment (``replicas`` pods, all gated ready; ``liveness_failures`` see
    :func:`chat_deployment`), its ConnectionStats (``spec`` added), the operator with the
    metrics API; clients closed and operator stopped afterwards."""
    await asyncio.to_thread(kube.kubectl, "apply", "-f", str(CRD))
    await asyncio.to_thread(
        kube.kubectl, "wait", "--for=condition=Established", "crd/connectionstats.wsgauge.dev"
    )
    await asyncio.to_thread(
        kube.apply, chat_deployment(namespace, replicas, liveness_failures=liveness_failures)
    )
    await asyncio.to_thread(kube.apply, connection_stats(namespace, **spec))
    metrics_port = free_port()
    operator = await asyncio.to_thread(
        OperatorProcess,
        kube,
        namespace,
        log_dir / "operator.log",
        "--metrics-api", "true",
        "--metrics-api-listen", f"127.0.0.1:{metrics_port}",
    )  # fmt: skip
    rig = FaultRig(kube, namespace, operator, metrics_port, client_session(), front_proxy_ssl(kube))
    try:
        await asyncio.to_thread(ready_pods, kube, namespace, replicas, 90.0)
        # the operator opens the gate as soon as a sidecar answers; the kubelet's readiness
        # probe (every 2 s) says a moment later that the containers serve
        await rig.wait_for(f"{replicas} pods serving", lambda: rig.serving(replicas), timeout=60)
        await rig.refresh_pool()
        yield rig
    finally:
        with contextlib.suppress(TimeoutError):  # cleanup must reach the operator stop
            await asyncio.wait_for(
                asyncio.gather(*(c.close() for c in rig.clients), return_exceptions=True), 30
            )
        await rig.session.close()
        operator.stop()
