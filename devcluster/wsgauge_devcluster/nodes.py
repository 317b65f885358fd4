"""The nodes the pod runner plays: registration, Ready status heartbeats, Lease renewal, and each
node's pool of loopback pod IPs (node i: 127.<100+i>.x.y, x.y from 0.2 up; the node is .0.1)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiohttp

from wsgauge_devcluster.exceptions import DevClusterError, KubeApiError
from wsgauge_devcluster.kubeapi import JsonObject, KubeApi
from wsgauge_devcluster.settings import RunnerSettings
from wsgauge_devcluster.supervisor import now_rfc3339

LOG = logging.getLogger("wsgauge.podrunner.nodes")

SIMULATED_TAINT: JsonObject = {
    "key": "wsgauge.dev/simulated",
    "value": "true",
    "effect": "NoSchedule",
}
"""Keeps ordinary pods off simulated nodes when a real node runs beside them; a pod that
wants a simulated node tolerates it and selects `wsgauge.dev/pod-runner: "true"`."""

_API_ERRORS = (KubeApiError, aiohttp.ClientError, OSError, TimeoutError)


def now_micro() -> str:
    """Current UTC time in the Kubernetes MicroTime format (Lease renewTime)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class NodeAgent:
    """One node: identity plus its pod IP pool."""

    name: str
    """Node name."""
    node_ip: str
    """The node's InternalIP and every pod's hostIP (127.<100+i>.0.1)."""
    kubelet_version: str = "v0.0.0"
    """Reported kubelet version."""
    max_pods: int = 2000
    """pods capacity."""
    tainted: bool = False
    """Carry SIMULATED_TAINT (a real node runs beside this one)."""
    _by_uid: dict[str, str] = field(default_factory=dict)
    _used: set[str] = field(default_factory=set)

    @property
    def _prefix(self) -> tuple[int, int]:
        first, second, *_ = (int(p) for p in self.node_ip.split("."))
        return first, second

    def _in_pool(self, ip: str) -> bool:
        parts = ip.split(".")
        return (
            len(parts) == 4
            and all(p.isdigit() for p in parts)
            and (int(parts[0]), int(parts[1])) == self._prefix
            and ip != self.node_ip
        )

    def allocate(self, uid: str, previous: str | None = None) -> str:
        """The pod's IP: its previous one if it is ours and free, else the lowest free one."""
        if uid in self._by_uid:
            return self._by_uid[uid]
        if previous and self._in_pool(previous) and previous not in self._used:
            chosen = previous
        else:
            first, second = self._prefix
            for index in range(2, 65534):
                candidate = f"{first}.{second}.{index // 256}.{index % 256}"
                if candidate not in self._used and index % 256 not in (0, 255):
                    chosen = candidate
                    break
            else:
                raise DevClusterError(f"node {self.name}: pod IP pool exhausted")
        self._by_uid[uid] = chosen
        self._used.add(chosen)
        return chosen

    def release(self, uid: str) -> None:
        """Free the pod's IP."""
        ip = self._by_uid.pop(uid, None)
        if ip is not None:
            self._used.discard(ip)

    def node_object(self) -> JsonObject:
        """The Node to create."""
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": {
                    "kubernetes.io/hostname": self.name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "wsgauge.dev/pod-runner": "true",
                },
            },
            "spec": {"taints": [SIMULATED_TAINT]} if self.tainted else {},
        }

    def status(self) -> JsonObject:
        """The node status (Ready, capacity, addresses), heartbeat times set to now."""
        now = now_rfc3339()
        resources = {
            "cpu": "64",
            "memory": "256Gi",
            "pods": str(self.max_pods),
            "ephemeral-storage": "1Ti",
        }

        def condition(kind: str, status: str, reason: str) -> JsonObject:
            return {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": "wsgauge pod runner",
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }

        return {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                condition("Ready", "True", "KubeletReady"),
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": self.node_ip},
                {"type": "Hostname", "address": self.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": uuid.uuid5(uuid.NAMESPACE_DNS, self.name).hex,
                "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_DNS, self.name)),
                "bootID": str(uuid.uuid5(uuid.NAMESPACE_URL, self.name)),
                "kernelVersion": "wsgauge",
                "osImage": "wsgauge pod runner",
                "containerRuntimeVersion": "wsgauge://0.1.0",
                "kubeletVersion": self.kubelet_version,
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }


async def _register(api: KubeApi, node: NodeAgent) -> str:
    """Create the node if needed, set its status; returns its uid."""
    try:
        created = await api.create("/api/v1/nodes", node.node_object())
    except KubeApiError as error:
        if error.status != 409:
            raise
        created = await api.get(f"/api/v1/nodes/{node.name}")
        wanted = node.node_object()["spec"].get("taints")
        if created.get("spec", {}).get("taints") != wanted:
            # a node kept in etcd from a run of the other kind: its taints follow this run's
            await api.patch(f"/api/v1/nodes/{node.name}", {"spec": {"taints": wanted}})
    await _heartbeat_status(api, node)
    uid: str = created["metadata"]["uid"]
    return uid


async def _heartbeat_status(api: KubeApi, node: NodeAgent) -> None:
    # A merge patch replaces the conditions list as a whole; this node has no foreign conditions.
    await api.patch(f"/api/v1/nodes/{node.name}/status", {"status": node.status()})


async def _renew_lease(api: KubeApi, node: NodeAgent, node_uid: str, duration: int) -> None:
    path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node.name}"
    spec = {"holderIdentity": node.name, "leaseDurationSeconds": duration, "renewTime": now_micro()}
    try:
        await api.patch(path, {"spec": spec})
    except KubeApiError as error:
        if error.status != 404:
            raise
        await api.create(
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
            {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": node.name,
                    "namespace": "kube-node-lease",
                    "ownerReferences": [
                        {"apiVersion": "v1", "kind": "Node", "name": node.name, "uid": node_uid}
                    ],
                },
                "spec": spec,
            },
        )


async def run_node_heartbeats(
    api: KubeApi, nodes: list[NodeAgent], settings: RunnerSettings
) -> None:
    """Register the nodes, then renew Leases and refresh node status forever (errors retried)."""
    uids: dict[str, str] = {}
    loop = asyncio.get_running_loop()
    last_status = 0.0
    interval = settings.lease_duration_seconds / 4
    while True:
        try:
            for node in nodes:
                if node.name not in uids:
                    uids[node.name] = await _register(api, node)
                    LOG.info("node %s registered (ip %s)", node.name, node.node_ip)
            refresh = loop.time() - last_status >= settings.node_status_interval_seconds
            for node in nodes:
                await _renew_lease(api, node, uids[node.name], settings.lease_duration_seconds)
                if refresh:
                    await _heartbeat_status(api, node)
            if refresh:
                last_status = loop.time()
        except _API_ERRORS as error:
            LOG.warning("node heartbeat failed (will retry): %s", error)
            uids.clear()  # the API may have lost them (etcd wiped): re-register
            await asyncio.sleep(1.0)
            continue
        except Exception:  # top-level boundary of the heartbeat loop: log, retry
            LOG.exception("node heartbeat failed unexpectedly (will retry)")
            await asyncio.sleep(5.0)
            continue
        await asyncio.sleep(interval)
