"""One container of a pod, as the pod runner plays it: a real local process (our sidecar or demo
app) supervised with restarts, back-off and an httpGet readiness probe, or a simulated container
that is simply running and ready. Produces the container's status for the pod's status patch."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from wsgauge_devcluster.containers import HttpProbe, LaunchPlan

RESET_BACKOFF_AFTER_SECONDS = 60.0
"""A process that ran this long restarts without back-off next time."""


def now_rfc3339() -> str:
    """Current UTC time in the Kubernetes Time format."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ContainerRuntime:
    """Runs (or simulates) one container and tracks its Kubernetes container status."""

    def __init__(
        self,
        *,
        name: str,
        image: str,
        plan: LaunchPlan | None,
        probe: HttpProbe | None,
        pod_ip: str,
        pod_dir: Path,
        restart_policy: str,
        notify: Callable[[], None],
        probe_session: aiohttp.ClientSession,
        backoff_max: float,
        logger: logging.Logger,
    ) -> None:
        self.name = name
        self.image = image
        self.plan = plan
        self.probe = probe
        self.pod_ip = pod_ip
        self.pod_dir = pod_dir
        self.restart_policy = restart_policy
        self._notify = notify
        self._probe_session = probe_session
        self._backoff_max = backoff_max
        self._log = logger
        self.restart_count = 0
        self.ready = False
        self.started_at: str | None = None
        self.container_id = ""
        self.waiting_reason: str | None = "ContainerCreating"
        self.terminated: dict[str, Any] | None = None
        self.last_terminated: dict[str, Any] | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def simulated(self) -> bool:
        """True when no real process backs this container."""
        return self.plan is None

    @property
    def pid_file(self) -> Path:
        """<pods>/<ns>_<pod>/<container>.pid while the process runs."""
        return self.pod_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        """<pods>/<ns>_<pod>/<container>.log (appended across restarts)."""
        return self.pod_dir / f"{self.name}.log"

    @property
    def pid(self) -> int | None:
        """Pid of the running process, if any."""
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    def start(self) -> None:
        """Begin running (a supervision task for real containers)."""
        if self.simulated:
            self.started_at = now_rfc3339()
            self.container_id = f"wsgauge://simulated/{self.name}"
            self.waiting_reason = None
            self.ready = True
            return
        self._tasks.append(asyncio.create_task(self._supervise(), name=f"supervise {self.name}"))

    async def _spawn(self) -> asyncio.subprocess.Process:
        assert self.plan is not None
        self.pod_dir.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            log.write(f"===== {now_rfc3339()} start: {' '.join(self.plan.argv)}\n".encode())
            log.flush()
            process = await asyncio.create_subprocess_exec(
                *self.plan.argv,
                env=self.plan.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid_file.write_text(f"{process.pid}\n")
        return process

    async def _supervise(self) -> None:
        backoff = 1.0
        while not self._stopping:
            try:
                process = await self._spawn()
            except OSError as error:
                self._log.error("container %s could not start: %s", self.name, error)
                self.waiting_reason = "RunContainerError"
                self._notify()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._backoff_max)
                continue
            self._process = process
            began = time.monotonic()
            self.started_at = now_rfc3339()
            self.container_id = f"wsgauge://{process.pid}"
            self.waiting_reason = None
            self.terminated = None
            self._log.info("container %s started as pid %d", self.name, process.pid)
            self._notify()
            probe_task = asyncio.create_task(self._probe_loop(), name=f"probe {self.name}")
            exit_code = await process.wait()
            probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe_task
            self.pid_file.unlink(missing_ok=True)
            self.ready = False
            record = {
                "exitCode": exit_code if exit_code >= 0 else 128 - exit_code,
                "reason": "Completed" if exit_code == 0 else "Error",
                "startedAt": self.started_at,
                "finishedAt": now_rfc3339(),
                "containerID": self.container_id,
            }
            if exit_code < 0:
                record["signal"] = -exit_code
            self._log.info(
                "container %s (pid %d) exited with %d", self.name, process.pid, exit_code
            )
            if self._stopping:
                self.terminated = record
                self._notify()
                return
            restart = self.restart_policy == "Always" or (
                self.restart_policy == "OnFailure" and exit_code != 0
            )
            if not restart:
                self.terminated = record
                self._notify()
                return
            self.last_terminated = record
            if time.monotonic() - began > RESET_BACKOFF_AFTER_SECONDS:
                backoff = 1.0
            self.waiting_reason = "CrashLoopBackOff"
            self._notify()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._backoff_max)
            self.restart_count += 1

    async def _probe_once(self, probe: HttpProbe) -> bool:
        url = f"{probe.scheme}://{self.pod_ip}:{probe.port}{probe.path}"
        try:
            async with self._probe_session.get(
                url,
                timeout=aiohttp.ClientTimeout(total=probe.timeout),
                ssl=False,
                headers={"User-Agent": "kube-probe/wsgauge-podrunner"},
            ) as response:
                return 200 <= response.status < 400
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False

    async def _probe_loop(self) -> None:
        probe = self.probe
        if probe is None:
            self.ready = True
            self._notify()
            return
        await asyncio.sleep(probe.initial_delay)
        successes = failures = 0
        while True:
            ok = await self._probe_once(probe)
            successes, failures = (successes + 1, 0) if ok else (0, failures + 1)
            was = self.ready
            if ok and successes >= probe.success_threshold:
                self.ready = True
            elif not ok and (failures >= probe.failure_threshold or not was):
                self.ready = False
            if self.ready != was:
                self._log.info("container %s ready=%s", self.name, self.ready)
                self._notify()
            await asyncio.sleep(probe.period)

    async def stop(self, prestop_seconds: float, deadline: float) -> None:
        """preStop delay, SIGTERM, SIGKILL at deadline (a time.monotonic() value)."""
        if self.simulated:
            await asyncio.sleep(max(0.0, min(prestop_seconds, deadline - time.monotonic())))
            self.ready = False
            self.terminated = {
                "exitCode": 0,
                "reason": "Completed",
                "startedAt": self.started_at,
                "finishedAt": now_rfc3339(),
            }
            return
        if prestop_seconds > 0:
            await asyncio.sleep(max(0.0, min(prestop_seconds, deadline - time.monotonic())))
        self._stopping = True
        process = self._process
        if process is not None and process.returncode is None:
            self._log.info("container %s: SIGTERM to pid %d", self.name, process.pid)
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                self._log.info("container %s: SIGKILL to pid %d", self.name, process.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
                    # a SIGSTOPped process must be continued to die promptly
                    os.kill(process.pid, signal.SIGCONT)
                await process.wait()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.pid_file.unlink(missing_ok=True)

    def status(self) -> dict[str, Any]:
        """This container's entry of pod.status.containerStatuses (all state keys present, so a
        strategic merge patch replaces the old state)."""
        state: dict[str, Any] = {"running": None, "waiting": None, "terminated": None}
        if self.terminated is not None:
            state["terminated"] = self.terminated
        elif self.waiting_reason is not None:
            state["waiting"] = {"reason": self.waiting_reason}
        else:
            state["running"] = {"startedAt": self.started_at}
        last: dict[str, Any] = {"running": None, "waiting": None, "terminated": None}
        if self.last_terminated is not None:
            last["terminated"] = self.last_terminated
        running = state["running"] is not None
        return {
            "name": self.name,
            "image": self.image,
            "imageID": f"wsgauge://{self.image}",
            "containerID": self.container_id or None,
            "ready": self.ready and running,
            "started": running,
            "restartCount": self.restart_count,
            "state": state,
            "lastState": last,
        }
