"""The fleet simulator, parent side: sidecar endpoints in worker processes plus their pod objects.

:class:`FleetSimulator` starts :mod:`benchmarks.fleet.sim_worker` processes (at most
``per_process`` endpoints each: two file descriptors per followed endpoint against a limit of
20000), registers one Node that no pod runner serves, kept Ready by the devcluster's own
heartbeat loop (:func:`wsgauge_devcluster.nodes.run_node_heartbeats`), and creates one pod per
endpoint bound to that node, with ``status.podIP`` pointing at the endpoint, phase Running and
Ready, with bounded concurrency. It then changes counts on request and cleans everything up
(pods deleted with grace 0, since no kubelet would ever confirm a graceful deletion).

Pod IPs: endpoint ``i`` listens on ``127.<base + i // 62500>.<(i // 250) % 250>.<i % 250 + 2>``,
the node is ``127.<base>.0.1``; the devcluster nodes use ``127.<100 + n>``, so keep ``base`` away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsgauge_devcluster.exceptions import KubeApiError
from wsgauge_devcluster.kubeapi import KubeApi
from wsgauge_devcluster.nodes import NodeAgent, run_node_heartbeats
from wsgauge_devcluster.settings import RunnerSettings
from wsgauge_devcluster.supervisor import now_rfc3339

from benchmarks.exceptions import BenchmarkError

LOG = logging.getLogger("wsgauge.bench.fleet")

POD_LABEL = "wsgauge.dev/fleet-sim"
"""Every simulated pod carries this label (value: the simulator's node name)."""
GROUP_LABEL = "fleet-group"
"""The group (one ConnectionStats per group) of a simulated pod."""


def endpoint_ip(base: int, index: int) -> str:
    """The loopback address of endpoint ``index``."""
    second = base + index // 62500
    if second > 254:
        raise BenchmarkError(f"endpoint {index}: no loopback address left above 127.{base}")
    return f"127.{second}.{(index // 250) % 250}.{index % 250 + 2}"


@dataclass(frozen=True)
class SimulatorSettings:
    """Shape of one simulated fleet."""

    namespace: str = "fleet"
    """Namespace of the pods (must exist)."""
    node_name: str = "wsgauge-fleet-sim"
    """The simulated node (no pod runner serves it)."""
    ip_base: int = 200
    """Second octet of the endpoint addresses (see the module docstring)."""
    port: int = 9090
    """The admin port every endpoint listens on (the ConnectionStats' ``sidecarPort``)."""
    per_process: int = 2500
    """Endpoints per worker process."""
    heartbeat: float = 5.0
    """Blank-line heartbeat of the watch streams (the sidecar's ``--watch-heartbeat``)."""
    create_concurrency: int = 32
    """Pod API calls in flight at once."""
    work_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "wsgauge-fleet")
    """Worker configs and logs."""


@dataclass
class _WorkerProcess:
    process: asyncio.subprocess.Process
    first: int
    count: int
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    next_id: int = 0

    async def call(self, command: dict[str, Any]) -> dict[str, Any]:
        async with self.lock:
            assert self.process.stdin is not None
            assert self.process.stdout is not None
            self.next_id += 1
            command = {**command, "id": self.next_id}
            self.process.stdin.write(json.dumps(command).encode() + b"\n")
            await self.process.stdin.drain()
            line = await self.process.stdout.readline()
            if not line:
                raise BenchmarkError(f"simulator worker {self.process.pid} exited")
            answer: dict[str, Any] = json.loads(line)
            if not answer.get("ok"):
                raise BenchmarkError(f"simulator worker {self.process.pid}: {answer}")
            return answer


class FleetSimulator:
    """N simulated sidecars and their pods; use as ``async with``."""

    def __init__(
        self, api: KubeApi, settings: SimulatorSettings, extra_apis: Sequence[KubeApi] = ()
    ) -> None:
        self.api = api
        self._pod_apis = [api, *extra_apis]
        """Clients pod creation and deletion are spread over (each has its own connections)."""
        self.settings = settings
        self.workers: list[_WorkerProcess] = []
        self.pods: dict[int, str] = {}
        """Endpoint index -> pod name, for the pods that exist."""
        self.groups: dict[int, str] = {}
        """Endpoint index -> group label value."""
        self.probe_counts: dict[int, int] = {}
        """Endpoint index -> its probe count (as last set)."""
        self.bg: dict[int, int] = {}
        """Endpoint index -> its bg count as last set by :meth:`set_counts` (not churn)."""
        self.node = NodeAgent(name=settings.node_name, node_ip=f"127.{settings.ip_base}.0.1")
        self._heartbeat: asyncio.Task[None] | None = None
        self._size = 0

    # -- processes ----------------------------------------------------------------------------

    async def start_endpoints(self, size: int) -> None:
        """Start the worker processes serving endpoints ``0 .. size-1``."""
        self._size = size
        work = self.settings.work_dir
        work.mkdir(parents=True, exist_ok=True)
        for first in range(0, size, self.settings.per_process):
            count = min(self.settings.per_process, size - first)
            config = {
                "port": self.settings.port,
                "heartbeat": self.settings.heartbeat,
                "endpoints": [
                    {
                        "ip": endpoint_ip(self.settings.ip_base, i),
                        "pod": self.pod_name(i),
                        "namespace": self.settings.namespace,
                        "node": self.settings.node_name,
                    }
                    for i in range(first, first + count)
                ],
            }
            path = work / f"worker-{self.settings.node_name}-{first}.json"
            path.write_text(json.dumps(config))
            log = (work / f"worker-{self.settings.node_name}-{first}.log").open("ab")
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "benchmarks.fleet.sim_worker", str(path),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log,
                limit=64 * 1024 * 1024,
            )  # fmt: skip
            log.close()
            self.workers.append(_WorkerProcess(process, first, count))
        for worker in self.workers:
            assert worker.process.stdout is not None
            line = await asyncio.wait_for(worker.process.stdout.readline(), 300)
            ready = json.loads(line) if line else {"ready": False, "error": "exited"}
            if not ready.get("ready"):
                raise BenchmarkError(f"simulator worker failed: {ready}")

    def worker_pids(self) -> list[int]:
        """Pids of the worker processes."""
        return [w.process.pid for w in self.workers]

    def _worker_of(self, index: int) -> _WorkerProcess:
        return self.workers[index // self.settings.per_process]

    def pod_name(self, index: int) -> str:
        """The pod of endpoint ``index``."""
        return f"sim-{index:05d}"

    # -- counts --------------------------------------------------------------------------------

    async def set_counts(self, counts: dict[int, tuple[int, int]]) -> float:
        """Set (bg, probe) of endpoints; returns the latest CLOCK_MONOTONIC time of application."""
        by_worker: dict[int, list[list[int]]] = {}
        for index, (bg, probe) in counts.items():
            worker = self._worker_of(index)
            by_worker.setdefault(worker.first, []).append([index - worker.first, bg, probe])
            self.bg[index], self.probe_counts[index] = bg, probe
        answers = await asyncio.gather(
            *(
                self._worker_of(first).call({"op": "set", "items": items})
                for first, items in by_worker.items()
            )
        )
        return max(float(a["at"]) for a in answers) if answers else 0.0

    async def probe(self, index: int) -> tuple[float, int]:
        """One more ``probe`` socket on endpoint ``index``: (CLOCK_MONOTONIC time, new count)."""
        worker = self._worker_of(index)
        answer = await worker.call({"op": "probe", "index": index - worker.first})
        self.probe_counts[index] = int(answer["probe"])
        return float(answer["at"]), int(answer["probe"])

    async def churn(self, rate_per_second: float, seed: int = 1) -> None:
        """Background bg changes at ``rate_per_second`` over the whole fleet (0 stops)."""
        share = rate_per_second / max(1, len(self.workers))
        await asyncio.gather(
            *(w.call({"op": "churn", "rate": share, "seed": seed + w.first}) for w in self.workers)
        )

    async def counts(self) -> dict[int, tuple[int, int]]:
        """Endpoint index -> (bg, probe) as the endpoints hold them now (churn included)."""
        answers = await asyncio.gather(*(w.call({"op": "totals"}) for w in self.workers))
        return {
            worker.first + offset: (int(bg), int(probe))
            for worker, answer in zip(self.workers, answers, strict=True)
            for offset, (bg, probe) in enumerate(answer["per_endpoint"])
        }

    async def totals(self, indexes: Sequence[int] | None = None) -> tuple[int, int]:
        """(sum of bg, sum of probe) over the given endpoints (default: those with a pod)."""
        wanted = set(self.pods if indexes is None else indexes)
        answers = await asyncio.gather(*(w.call({"op": "totals"}) for w in self.workers))
        bg = probe = 0
        for worker, answer in zip(self.workers, answers, strict=True):
            for offset, (one_bg, one_probe) in enumerate(answer["per_endpoint"]):
                if worker.first + offset in wanted:
                    bg += one_bg
                    probe += one_probe
        return bg, probe

    # -- Kubernetes objects -------------------------------------------------------------------

    async def start_node(self) -> None:
        """Register the node and keep it Ready (Lease and status heartbeats) in the background."""
        self._heartbeat = asyncio.create_task(
            run_node_heartbeats(self.api, [self.node], RunnerSettings(max_pods=200000))
        )
        for _ in range(100):
            with contextlib.suppress(KubeApiError):
                await self.api.get(f"/api/v1/nodes/{self.node.name}")
                return
            await asyncio.sleep(0.1)
        raise BenchmarkError(f"node {self.node.name} was not registered")

    def _pod_body(self, index: int, group: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": self.pod_name(index),
                "namespace": self.settings.namespace,
                "labels": {POD_LABEL: self.settings.node_name, GROUP_LABEL: group},
            },
            "spec": {
                "nodeName": self.node.name,
                "terminationGracePeriodSeconds": 0,
                "containers": [
                    {
                        "name": "sidecar",
                        "image": "wsgauge/fleet-sim-endpoint",
                        "ports": [{"name": "wsgauge-admin", "containerPort": self.settings.port}],
                    }
                ],
            },
        }

    def _pod_status(self, index: int) -> dict[str, Any]:
        now = now_rfc3339()
        ip = endpoint_ip(self.settings.ip_base, index)
        conditions = [
            {"type": kind, "status": "True", "lastTransitionTime": now}
            for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
        ]
        return {
            "status": {
                "phase": "Running",
                "podIP": ip,
                "podIPs": [{"ip": ip}],
                "hostIP": self.node.node_ip,
                "hostIPs": [{"ip": self.node.node_ip}],
                "startTime": now,
                "conditions": conditions,
                "containerStatuses": [
                    {
                        "name": "sidecar",
                        "image": "wsgauge/fleet-sim-endpoint",
                        "imageID": "",
                        "ready": True,
                        "started": True,
                        "restartCount": 0,
                        "state": {"running": {"startedAt": now}},
                    }
                ],
            }
        }

    async def create_pods(self, groups: dict[int, str]) -> None:
        """Create (and mark Running/Ready) the pods of the given endpoints -> group."""
        limit = asyncio.Semaphore(self.settings.create_concurrency)
        base = f"/api/v1/namespaces/{self.settings.namespace}/pods"

        async def one(index: int, group: str) -> None:
            async with limit:
                name = self.pod_name(index)
                api = self._pod_apis[index % len(self._pod_apis)]
                await api.create(base, self._pod_body(index, group))
                await api.patch(f"{base}/{name}/status", self._pod_status(index))
                self.pods[index] = name
                self.groups[index] = group

        await asyncio.gather(*(one(i, g) for i, g in groups.items()))

    async def delete_pods(self, indexes: Sequence[int]) -> None:
        """Delete pods at once (grace 0)."""
        limit = asyncio.Semaphore(self.settings.create_concurrency)
        base = f"/api/v1/namespaces/{self.settings.namespace}/pods"

        async def one(index: int) -> None:
            async with limit:
                api = self._pod_apis[index % len(self._pod_apis)]
                with contextlib.suppress(KubeApiError):
                    await api.delete(f"{base}/{self.pod_name(index)}", {"gracePeriodSeconds": 0})
                self.pods.pop(index, None)
                self.groups.pop(index, None)

        await asyncio.gather(*(one(i) for i in indexes))

    # -- lifecycle -----------------------------------------------------------------------------

    async def close(self) -> None:
        """Delete every simulated pod, the node and its lease; stop the workers."""
        namespace = self.settings.namespace
        with contextlib.suppress(KubeApiError):
            await self.api.request(
                "DELETE",
                f"/api/v1/namespaces/{namespace}/pods",
                {"gracePeriodSeconds": 0},
                params={"labelSelector": f"{POD_LABEL}={self.settings.node_name}"},
                timeout=120,
            )
        self.pods.clear()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
            with contextlib.suppress(KubeApiError):
                await self.api.delete(f"/api/v1/nodes/{self.node.name}")
            with contextlib.suppress(KubeApiError):
                await self.api.delete(
                    f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node.name}"
                )
        for worker in self.workers:
            if worker.process.returncode is None:
                with contextlib.suppress(BenchmarkError, BrokenPipeError, ConnectionError):
                    await asyncio.wait_for(worker.call({"op": "stop"}), 30)
            try:
                await asyncio.wait_for(worker.process.wait(), 10)
            except TimeoutError:
                worker.process.kill()
                await worker.process.wait()
        self.workers.clear()

    async def __aenter__(self) -> FleetSimulator:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def connection_stats_body(
    namespace: str,
    name: str,
    *,
    node_name: str,
    group: str | None,
    port: int,
    status_interval: str = "2s",
) -> dict[str, Any]:
    """A ConnectionStats selecting the simulated pods of one group (None: all of them)."""
    labels = {POD_LABEL: node_name}
    if group is not None:
        labels[GROUP_LABEL] = group
    return {
        "apiVersion": "wsgauge.dev/v1alpha1",
        "kind": "ConnectionStats",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": labels},
            "sidecarPort": port,
            "statusInterval": status_interval,
        },
    }


def connection_stats_path(namespace: str, name: str = "") -> str:
    """API path of the ConnectionStats collection, or of one of them."""
    base = f"/apis/wsgauge.dev/v1alpha1/namespaces/{namespace}/connectionstats"
    return f"{base}/{name}" if name else base
