"""Helpers of the end-to-end tests on a real cluster (the devcluster's real node, or any cluster
``KUBECONFIG`` names whose pod and Service IPs the host can route to, such as ``make
kind-e2e``'s): wsgauge installed by its chart, the chat example injected by the chart's webhook,
and clients that connect through the chat Service (kube-proxy picks the pod) and learn which pod
they landed on from the demo app (``whoami``).

:func:`assert_counts_agree` is the claim checked at every checkpoint: each sidecar's ``/stats``,
the ConnectionStats status and the custom metrics API (through the aggregation layer) equal what
the clients hold.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import yaml
from e2e_harness import HeldSocket, eventually, get_json, kubectl
from wsgauge_devcluster.testing import KubeCluster

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "chat"
NODE = "wsgauge-node"
"""The devcluster's real node."""
ADMIN_PORT = 9090
"""The injected sidecar's admin port."""


async def apply_chat(kube: KubeCluster, namespace: str) -> None:
    """Label the namespace for injection, apply examples/chat (Deployment, Service, PDB) and
    its ConnectionStats without the autoscaling section (the pods' readiness gate opens once
    the operator follows them)."""
    await kubectl(kube, "label", "namespace", namespace, "wsgauge.dev/injection=enabled")
    for name in ("deployment.yaml", "service.yaml", "pdb.yaml"):
        await kubectl(kube, "apply", "-n", namespace, "-f", str(EXAMPLE / name))
    await apply_connection_stats(kube, namespace, autoscaling=False)


async def apply_connection_stats(kube: KubeCluster, namespace: str, autoscaling: bool) -> None:
    """examples/chat/connectionstats.yaml, with or without its autoscaling section."""
    document = yaml.safe_load((EXAMPLE / "connectionstats.yaml").read_text())
    if not autoscaling:
        del document["spec"]["autoscaling"]
    await kubectl(kube, "apply", "-n", namespace, "-f", "-", input_text=json.dumps(document))


def condition(pod: dict[str, Any], type_: str) -> str | None:
    """The status of a pod condition, None when absent."""
    for entry in pod["status"].get("conditions") or []:
        if entry["type"] == type_:
            return str(entry["status"])
    return None


async def chat_pods(kube: KubeCluster, namespace: str) -> dict[str, dict[str, Any]]:
    """Chat pods that are not being deleted, by name."""
    pods = (await get_json(kube, "pods", "-n", namespace, "-l", "app=chat"))["items"]
    return {p["metadata"]["name"]: p for p in pods if not p["metadata"].get("deletionTimestamp")}


async def ready_pods(kube: KubeCluster, namespace: str, count: int) -> dict[str, Any] | None:
    """The chat pods when exactly ``count`` exist and all are Ready."""
    pods = await chat_pods(kube, namespace)
    if len(pods) == count and all(condition(p, "Ready") == "True" for p in pods.values()):
        return pods
    return None


async def endpoint_readiness(kube: KubeCluster, namespace: str) -> dict[str, bool]:
    """Pod name -> ``conditions.ready`` of its endpoint in the chat Service's EndpointSlices."""
    slices = await get_json(
        kube, "endpointslices", "-n", namespace, "-l", "kubernetes.io/service-name=chat"
    )
    found: dict[str, bool] = {}
    for item in slices["items"]:
        for endpoint in item.get("endpoints") or []:
            target = (endpoint.get("targetRef") or {}).get("name")
            if target:
                found[target] = bool((endpoint.get("conditions") or {}).get("ready"))
    return found


async def kube_proxy_destinations(
    kube: KubeCluster, namespace: str, service: str
) -> dict[str, set[str]]:
    """Pod IPs each kube-proxy sends new connections to for ``namespace/service`` right now, by
    where it runs: the KUBE-SEP chains its KUBE-SVC chain jumps to, read from the nat table
    (iptables mode). On the devcluster that is the real node's own table (kube-proxy is a host
    process); on another cluster each kube-proxy pod's (``k8s-app=kube-proxy``, host network,
    ``kubectl exec ... iptables-save``). The EndpointSlice says what should be routed; this says
    what kube-proxy has programmed."""
    if kube.state_dir is not None:
        return {NODE: _nat_destinations(await _host_nat_table(), namespace, service)}
    proxies = await get_json(kube, "pods", "-n", "kube-system", "-l", "k8s-app=kube-proxy")
    found: dict[str, set[str]] = {}
    for pod in proxies["items"]:
        table = await kubectl(kube, "exec", "-n", "kube-system", pod["metadata"]["name"], "--",
                              "iptables-save", "-t", "nat")  # fmt: skip
        found[pod["spec"]["nodeName"]] = _nat_destinations(table, namespace, service)
    if not found:
        raise AssertionError("no kube-proxy pod (k8s-app=kube-proxy in kube-system) to read")
    return found


async def routed_to_ready_pods(kube: KubeCluster, namespace: str) -> bool:
    """Whether every kube-proxy sends new connections of the chat Service to exactly its Ready
    pods: kube-proxy programs an EndpointSlice change a moment after it is written, so a pod
    that just turned Ready may not take sockets yet (and one that left may still get some)."""
    pods = await chat_pods(kube, namespace)
    ready = {p["status"]["podIP"] for p in pods.values() if condition(p, "Ready") == "True"}
    programmed = await kube_proxy_destinations(kube, namespace, "chat")
    return all(destinations == ready for destinations in programmed.values())


async def _host_nat_table() -> str:
    process = await asyncio.create_subprocess_exec(
        "iptables-save", "-t", "nat",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    if process.returncode != 0:
        raise AssertionError(f"iptables-save failed: {err.decode(errors='replace')}")
    return out.decode()


def _nat_destinations(table: str, namespace: str, service: str) -> set[str]:
    """The ``--to-destination`` IPs of ``namespace/service`` in an ``iptables-save`` nat table."""
    rules = [line.split() for line in table.splitlines() if line.startswith("-A ")]
    label = f'"{namespace}/{service}:'
    service_chains = {
        words[words.index("-j") + 1]
        for words in rules
        if words[1] == "KUBE-SERVICES" and "-j" in words and label in " ".join(words)
        and words[words.index("-j") + 1].startswith("KUBE-SVC-")
    }  # fmt: skip
    endpoint_chains = {
        words[words.index("-j") + 1]
        for words in rules
        if words[1] in service_chains and "-j" in words
        and words[words.index("-j") + 1].startswith("KUBE-SEP-")
    }  # fmt: skip
    return {
        words[words.index("--to-destination") + 1].rsplit(":", 1)[0]
        for words in rules
        if words[1] in endpoint_chains and "--to-destination" in words
    }


async def cluster_nodes(kube: KubeCluster) -> set[str]:
    """The nodes pods may land on: the real node on the devcluster, else every node."""
    if kube.state_dir is not None:
        return {NODE}
    return {item["metadata"]["name"] for item in (await get_json(kube, "nodes"))["items"]}


async def service_url(kube: KubeCluster, namespace: str) -> str:
    """ws:// URL of the chat Service's ClusterIP (reached from the host through kube-proxy)."""
    service = await get_json(kube, "service", "chat", "-n", namespace)
    return f"ws://{service['spec']['clusterIP']}:80/ws/room"


class ServiceClient(HeldSocket):
    """One WebSocket through the chat Service; after a 1001 it reconnects through the Service."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        super().__init__(session)
        self.url = url

    async def connect(self, attempts: int = 20) -> None:
        """Connect, ask the app which pod answered (bounded retries while endpoints change)."""
        self._stopping = False
        last: BaseException | None = None
        for _ in range(attempts):
            try:
                ws = await asyncio.wait_for(
                    self._session.ws_connect(self.url, heartbeat=None), timeout=5
                )
                await ws.send_str("whoami")
                reply = await asyncio.wait_for(ws.receive(), timeout=5)
            except (aiohttp.ClientError, OSError, TimeoutError) as error:
                last = error
                await asyncio.sleep(0.3)
                continue
            if reply.type != aiohttp.WSMsgType.TEXT or not str(reply.data).startswith("pod:"):
                last = AssertionError(f"unexpected first message {reply!r}")
                await ws.close()
                await asyncio.sleep(0.3)
                continue
            self._hold(ws, str(reply.data).removeprefix("pod:"))
            return
        raise AssertionError(f"could not connect through {self.url}: {last!r}")

    async def reconnect(self, gone: str) -> None:
        """Through the Service again (it no longer routes to the draining pod)."""
        await self.connect()


async def service_reaches(
    session: aiohttp.ClientSession, url: str, pods: set[str], timeout: float = 60
) -> None:
    """Probe through the Service until sockets have landed on every one of ``pods``: kube-proxy
    follows a new ready endpoint a moment after the EndpointSlice shows it. Probes are closed."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    for _ in range(400):  # bounded in count and in time
        if pods <= seen or time.monotonic() > deadline:
            break
        probe = ServiceClient(session, url)
        await probe.connect()
        seen.add(probe.pod or "")
        await probe.close()
        await asyncio.sleep(0.05)
    missing = pods - seen
    assert not missing, f"the Service did not reach {sorted(missing)} within {timeout}s"


class Pending(dict[str, Any]):
    """What the sources said while they still differ (falsy, shown when the wait times out)."""

    def __bool__(self) -> bool:
        return False


class HoldsSocket(Protocol):
    """A client that knows which pod its socket is on (None: it holds none right now)."""

    @property
    def pod(self) -> str | None: ...


def held(clients: Sequence[HoldsSocket]) -> dict[str, int]:
    """Open sockets per pod as the clients hold them."""
    counts: dict[str, int] = {}
    for client in clients:
        if client.pod is not None:
            counts[client.pod] = counts.get(client.pod, 0) + 1
    return counts


async def sidecar_counts(
    session: aiohttp.ClientSession, pods: dict[str, dict[str, Any]]
) -> dict[str, int]:
    """Each pod's sidecar ``/stats`` connections (pods with no socket left out)."""
    counts: dict[str, int] = {}
    for name, pod in pods.items():
        if not pod["status"].get("podIP"):
            continue  # not started yet: it holds no socket
        url = f"http://{pod['status']['podIP']}:{ADMIN_PORT}/stats"
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as reply:
            document = json.loads(await reply.text())
        if document["connections"]:
            counts[name] = int(document["connections"])
    return counts


async def served_per_pod(kube: KubeCluster, namespace: str) -> dict[str, int]:
    """The Pods metric per pod through the aggregation layer (pods at 0 left out)."""
    path = (
        f"/apis/custom.metrics.k8s.io/v1beta2/namespaces/{namespace}/pods/*/"
        "wsgauge_connections?labelSelector=app%3Dchat"
    )
    try:
        items = json.loads(await kubectl(kube, "get", "--raw", path))["items"]
    except AssertionError:
        return {}
    values = {i["describedObject"]["name"]: int(i["value"]) for i in items}
    return {name: value for name, value in values.items() if value}


async def assert_counts_agree(
    kube: KubeCluster,
    namespace: str,
    session: aiohttp.ClientSession,
    clients: Sequence[HoldsSocket],
    timeout: float = 60,
) -> dict[str, int]:
    """Every source equals what the clients hold (bounded wait for the sources to catch up).

    What the clients hold is read again at every try, after the sources: a socket that moves
    meanwhile (a reconnect after a close ordered earlier) is a new state both sides must reach,
    not a difference. Returns the clients' counts the sources agreed with.
    """

    async def agree() -> dict[str, Any]:
        pods = await chat_pods(kube, namespace)
        sources: dict[str, Any] = {
            "sidecars": await sidecar_counts(session, pods),
            "metrics API": await served_per_pod(kube, namespace),
        }
        status = (await get_json(kube, "connectionstats", "chat", "-n", namespace))["status"]
        sources["status"] = {"total": int(status.get("connections", -1))}
        wanted = held(clients)
        sources["clients"] = wanted
        ok = (
            sources["sidecars"] == wanted
            and sources["metrics API"] == wanted
            and sources["status"]["total"] == sum(wanted.values())
        )
        return sources if ok else Pending(sources)

    agreed = await eventually(agree, timeout, "every source equals what the clients hold")
    return dict(agreed["clients"])
