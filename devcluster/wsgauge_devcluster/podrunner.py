"""The pod runner: our kubelet stand-in (`python -m wsgauge_devcluster.podrunner`, started by `up`).

- Registers Ready nodes wsgauge-node-1..N and renews their Leases (kube-node-lease) so the node
  lifecycle controller keeps them Ready.
- Watches pods bound to its nodes (re-lists and re-watches after errors, e.g. an API restart).
- Gives each pod a distinct loopback IP: node i hands out 127.<100+i>.x.y (never 127.0.0.1).
- Runs containers whose image names wsgauge-sidecar / wsgauge-demo-app as real local processes
  bound to the pod IP (see containers.py); other containers are simulated (running, ready).
- Patches pod status (strategic merge: only the conditions it owns, never readiness gates).
- On deletion: preStop sleep, SIGTERM, SIGKILL after the grace period, then deletes with grace 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import time
from pathlib import Path

import aiohttp

from wsgauge_devcluster.containers import (
    PodContext,
    http_readiness_probe,
    launch_plan,
    prestop_delay,
    program_for_container,
)
from wsgauge_devcluster.exceptions import KubeApiError
from wsgauge_devcluster.kubeapi import STRATEGIC_MERGE_PATCH, JsonObject, KubeApi, KubeConfig
from wsgauge_devcluster.nodes import NodeAgent, run_node_heartbeats
from wsgauge_devcluster.processes import pid_alive, terminate_pid
from wsgauge_devcluster.settings import RunnerSettings
from wsgauge_devcluster.supervisor import ContainerRuntime, now_rfc3339

LOG = logging.getLogger("wsgauge.podrunner")

OWNED_CONDITIONS = ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")
"""Pod condition types the runner sets; every other type (readiness gates...) is left alone."""

API_ERRORS = (KubeApiError, aiohttp.ClientError, OSError, TimeoutError)
"""Errors that mean "the API is unhappy or away": retried, never fatal."""


def pod_key(pod: JsonObject) -> str:
    """namespace_name, also the directory name under pods/."""
    return f"{pod['metadata']['namespace']}_{pod['metadata']['name']}"


def pod_path(pod: JsonObject) -> str:
    """API path of a pod."""
    meta = pod["metadata"]
    return f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"


class PodWorker:
    """Plays one pod from binding to deletion."""

    def __init__(self, runner: PodRunner, pod: JsonObject, node: NodeAgent, pod_ip: str) -> None:
        self.runner = runner
        self.pod = pod
        self.node = node
        self.pod_ip = pod_ip
        self.uid: str = pod["metadata"]["uid"]
        self.key = pod_key(pod)
        self.changed = asyncio.Event()
        self.gone = False
        self.containers: list[ContainerRuntime] = []
        self._transitions: dict[str, tuple[str, str]] = {
            c["type"]: (c.get("status", ""), c.get("lastTransitionTime") or now_rfc3339())
            for c in pod.get("status", {}).get("conditions") or []
        }
        self._start_time: str = pod.get("status", {}).get("startTime") or now_rfc3339()
        self._last_sent: JsonObject | None = None
        self.task: asyncio.Task[None] | None = None

    def update(self, pod: JsonObject) -> None:
        """A newer version of the pod arrived from the watch."""
        self.pod = pod
        self.changed.set()

    def mark_gone(self) -> None:
        """The pod object no longer exists."""
        self.gone = True
        self.changed.set()

    def _context(self) -> PodContext:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        return PodContext(
            name=meta["name"],
            namespace=meta["namespace"],
            uid=self.uid,
            node_name=spec.get("nodeName", ""),
            pod_ip=self.pod_ip,
            host_ip=self.node.node_ip,
            service_account=spec.get("serviceAccountName") or "default",
            labels=meta.get("labels") or {},
            annotations=meta.get("annotations") or {},
        )

    def _start_containers(self) -> None:
        settings = self.runner.settings
        pod_dir = settings.state_dir / "pods" / self.key
        context = self._context()
        restart_policy = self.pod["spec"].get("restartPolicy") or "Always"
        for container in self.pod["spec"].get("containers") or []:
            image = container.get("image") or ""
            program = program_for_container(container)
            plan = None
            if program is not None:
                plan = launch_plan(program, container, context, settings.venv_bin, os.environ)
                if plan.skipped_env:
                    LOG.warning(
                        "pod %s container %s: env not resolvable here, left out: %s",
                        self.key, container["name"], ", ".join(plan.skipped_env),
                    )  # fmt: skip
            runtime = ContainerRuntime(
                name=container["name"],
                image=image,
                plan=plan,
                probe=http_readiness_probe(container) if plan is not None else None,
                pod_ip=self.pod_ip,
                pod_dir=pod_dir,
                restart_policy=restart_policy,
                notify=self.changed.set,
                probe_session=self.runner.probe_session,
                backoff_max=settings.restart_backoff_max_seconds,
                logger=LOG.getChild(self.key),
            )
            self.containers.append(runtime)
            runtime.start()
        LOG.info(
            "pod %s on %s: ip %s, containers %s",
            self.key,
            self.node.name,
            self.pod_ip,
            ", ".join(f"{c.name}({'sim' if c.simulated else 'process'})" for c in self.containers),
        )

    async def run(self) -> None:
        """Start the containers, keep the status current, handle deletion."""
        phase = self.pod.get("status", {}).get("phase")
        terminal = phase in ("Succeeded", "Failed")
        if not terminal and not self.pod["metadata"].get("deletionTimestamp"):
            self._start_containers()
        self.changed.set()  # publish the first status at once
        retry: float | None = None  # no timer while in sync: thousands of idle pods cost nothing
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), retry)
                self.changed.clear()
                if self.gone:
                    await self._stop_all(grace=2.0)
                    return
                if self.pod["metadata"].get("deletionTimestamp"):
                    await self._terminate_and_delete()
                    return
                if not terminal:
                    retry = None if await self._sync_status() else 2.0
        finally:
            self.runner.forget(self)

    def _grace_seconds(self) -> float:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds", 30)
        return float(grace)

    async def _stop_all(self, grace: float) -> None:
        deadline = time.monotonic() + grace
        specs = {c["name"]: c for c in self.pod["spec"].get("containers") or []}
        await asyncio.gather(
            *(
                c.stop(prestop_delay(specs.get(c.name, {})) if grace > 0 else 0.0, deadline)
                for c in self.containers
            )
        )

    async def _terminate_and_delete(self) -> None:
        grace = self._grace_seconds()
        LOG.info("pod %s: terminating (grace %.0fs)", self.key, grace)
        await self._stop_all(grace)
        try:
            await self.runner.api.delete(
                pod_path(self.pod),
                {"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}},
            )
            LOG.info("pod %s: deleted", self.key)
        except KubeApiError as error:
            if error.status not in (404, 409):
                LOG.warning("pod %s: delete failed: %s", self.key, error)
        except API_ERRORS as error:
            LOG.warning("pod %s: delete failed: %s", self.key, error)

    def _condition(self, kind: str, status: bool) -> JsonObject:
        value = "True" if status else "False"
        previous = self._transitions.get(kind)
        if previous is None or previous[0] != value:
            self._transitions[kind] = (value, now_rfc3339())
        return {
            "type": kind,
            "status": value,
            "lastTransitionTime": self._transitions[kind][1],
            "lastProbeTime": None,
        }

    def desired_status(self) -> JsonObject:
        """The status fields the runner owns, as it sees the pod now."""
        statuses = [c.status() for c in self.containers]
        containers_ready = bool(statuses) and all(s["ready"] for s in statuses)
        current = {
            c["type"]: c.get("status") for c in self.pod.get("status", {}).get("conditions") or []
        }
        gates = [g["conditionType"] for g in self.pod["spec"].get("readinessGates") or []]
        gates_ok = all(current.get(g) == "True" for g in gates)
        finished = [s for s in statuses if s["state"]["terminated"] is not None]
        phase = "Running"
        if statuses and len(finished) == len(statuses):
            ok = all(s["state"]["terminated"]["exitCode"] == 0 for s in finished)
            phase = "Succeeded" if ok else "Failed"
        return {
            "phase": phase,
            "hostIP": self.node.node_ip,
            "hostIPs": [{"ip": self.node.node_ip}],
            "podIP": self.pod_ip,
            "podIPs": [{"ip": self.pod_ip}],
            "startTime": self._start_time,
            "conditions": [
                self._condition("PodReadyToStartContainers", True),
                self._condition("Initialized", True),
                self._condition("ContainersReady", containers_ready),
                self._condition("Ready", containers_ready and gates_ok and phase == "Running"),
            ],
            "containerStatuses": statuses,
        }

    async def _sync_status(self) -> bool:
        """Patch the status if it changed; False means "failed, retry soon"."""
        desired = self.desired_status()
        if desired == self._last_sent:
            return True
        try:
            updated = await self.runner.api.patch(
                pod_path(self.pod) + "/status", {"status": desired}, STRATEGIC_MERGE_PATCH
            )
        except KubeApiError as error:
            if error.status == 404:
                self.gone = True
                self.changed.set()
                return True
            LOG.warning("pod %s: status patch failed: %s", self.key, error)
            return False
        except API_ERRORS as error:
            LOG.warning("pod %s: status patch failed (will retry): %s", self.key, error)
            return False
        self._last_sent = desired
        if updated.get("metadata", {}).get("uid") == self.uid:
            self.pod = updated
        return True


class PodRunner:
    """Owns the nodes, the pod watch and one PodWorker per pod."""

    def __init__(self, settings: RunnerSettings, kubeconfig: Path, kubelet_version: str) -> None:
        self.settings = settings
        self.kubeconfig = kubeconfig
        self.nodes = {
            name: NodeAgent(
                name=name,
                node_ip=f"127.{settings.ip_second_octet_base + index}.0.1",
                kubelet_version=kubelet_version,
                max_pods=settings.max_pods,
                tainted=settings.simulated_taint,
            )
            for index, name in enumerate(settings.node_names(), start=1)
        }
        self.workers: dict[str, PodWorker] = {}
        self._api: KubeApi | None = None
        self._probe_session: aiohttp.ClientSession | None = None
        self._stop = asyncio.Event()

    @property
    def api(self) -> KubeApi:
        """The API client (set while running)."""
        assert self._api is not None
        return self._api

    @property
    def probe_session(self) -> aiohttp.ClientSession:
        """HTTP session for readiness probes (set while running)."""
        assert self._probe_session is not None
        return self._probe_session

    def forget(self, worker: PodWorker) -> None:
        """A worker finished: drop it and free its IP."""
        if self.workers.get(worker.uid) is worker:
            del self.workers[worker.uid]
        worker.node.release(worker.uid)

    def _kill_stale_processes(self) -> None:
        """Processes left by a previous runner (pid files under pods/) are stopped."""
        for pid_file in (self.settings.state_dir / "pods").glob("*/*.pid"):
            with contextlib.suppress(OSError, ValueError):
                pid = int(pid_file.read_text().strip())
                if pid_alive(pid, "wsgauge-"):
                    LOG.info("stopping stale pod process %d (%s)", pid, pid_file)
                    terminate_pid(pid, 5.0, "wsgauge-")
            pid_file.unlink(missing_ok=True)

    def _handle(self, event_type: str, pod: JsonObject) -> None:
        node = self.nodes.get(pod.get("spec", {}).get("nodeName") or "")
        if node is None:
            return
        uid = pod["metadata"]["uid"]
        worker = self.workers.get(uid)
        if event_type == "DELETED":
            if worker is not None:
                worker.mark_gone()
            return
        if worker is not None:
            worker.update(pod)
            return
        pod_ip = node.allocate(uid, pod.get("status", {}).get("podIP"))
        worker = PodWorker(self, pod, node, pod_ip)
        self.workers[uid] = worker
        worker.task = asyncio.create_task(self._run_worker(worker), name=f"pod {worker.key}")

    @staticmethod
    async def _run_worker(worker: PodWorker) -> None:
        try:
            await worker.run()
        except asyncio.CancelledError:
            raise
        except Exception:  # top-level boundary of one pod's task: log it, keep the runner
            LOG.exception("pod %s: worker failed", worker.key)

    async def _watch_pods(self) -> None:
        params = {"fieldSelector": "spec.nodeName!="}
        while not self._stop.is_set():
            try:
                listing = await self.api.get("/api/v1/pods", params)
                seen = set()
                for pod in listing.get("items", []):
                    seen.add(pod["metadata"]["uid"])
                    self._handle("ADDED", pod)
                for uid, worker in list(self.workers.items()):
                    if uid not in seen:
                        worker.mark_gone()
                version = listing["metadata"]["resourceVersion"]
                while not self._stop.is_set():
                    async for event in self.api.watch("/api/v1/pods", version, params):
                        obj = event["object"]
                        version = obj["metadata"].get("resourceVersion", version)
                        if event["type"] != "BOOKMARK":
                            self._handle(event["type"], obj)
            except API_ERRORS as error:
                LOG.warning("pod watch interrupted (%s); re-listing", error)
                await asyncio.sleep(1.0)
            except Exception:  # top-level boundary of the watch loop: log, re-list
                LOG.exception("pod watch failed unexpectedly; re-listing")
                await asyncio.sleep(1.0)

    async def run(self) -> None:
        """Run until SIGTERM/SIGINT; then stop the pod processes (pods stay in the API)."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop.set)
        self._kill_stale_processes()
        config = KubeConfig.load(self.kubeconfig, self.settings.state_dir / "run")
        async with KubeApi(config) as api, aiohttp.ClientSession() as probe_session:
            self._api = api
            self._probe_session = probe_session
            tasks = [
                asyncio.create_task(
                    run_node_heartbeats(api, list(self.nodes.values()), self.settings)
                ),
                asyncio.create_task(self._watch_pods()),
            ]
            await self._stop.wait()
            LOG.info("stopping: terminating pod processes")
            for task in tasks:
                task.cancel()
            workers = list(self.workers.values())
            for worker in workers:
                if worker.task is not None:
                    worker.task.cancel()
            await asyncio.gather(*(w.task for w in workers if w.task), return_exceptions=True)
            await asyncio.gather(*(w._stop_all(grace=5.0) for w in workers), return_exceptions=True)
            await asyncio.gather(*tasks, return_exceptions=True)
        LOG.info("stopped")


def main() -> None:
    """Entry point of `python -m wsgauge_devcluster.podrunner`."""
    parser = argparse.ArgumentParser(description="wsgauge pod runner (kubelet stand-in)")
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--kubelet-version", default=RunnerSettings().kubelet_version)
    parser.add_argument("--ip-base", type=int, default=100, help="pod IPs 127.<base+i>.x.y")
    parser.add_argument(
        "--taint-simulated",
        action="store_true",
        help="taint the nodes wsgauge.dev/simulated=true:NoSchedule (a real node runs beside)",
    )
    options = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = RunnerSettings(
        state_dir=options.state_dir.resolve(),
        node_count=options.nodes,
        ip_second_octet_base=options.ip_base,
        simulated_taint=options.taint_simulated,
    )
    asyncio.run(PodRunner(settings, options.kubeconfig, options.kubelet_version).run())


if __name__ == "__main__":
    main()
