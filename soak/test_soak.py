"""``make soak``: clients churning through the local cluster for SOAK_MINUTES (default 20) with
faults injected at random, ending with a zero-drift check.

Four chat pods (real sidecar + demo-app processes), the real operator with its metrics API, and
60-140 real WebSocket clients that come and go every second. Every ~15 s one fault chosen at
random (seeded: ``SOAK_SEED``): sidecar SIGKILL, sidecar SIGSTOP for 5 s, app SIGKILL, operator
SIGKILL + restart, pod deletion (its sockets drain with 1001 and reconnect elsewhere). After each
fault the fault tests' checker (:func:`fault_harness.assert_counts_agree`: sidecar ``/stats``,
status, operator memory, metrics API, KEDA vs what the clients hold) must pass; the run fails
at the first drift that does not resolve within 60 s. The summary is printed and written to
``soak/last-result.json`` (quoted in docs/reliability.md).

Not part of ``make test`` (pytest collects ``tests/`` only); bounded in time and in faults.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import signal
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fault_harness import FaultRig, assert_counts_agree, fault_rig
from wsgauge_devcluster.testing import KubeCluster

MINUTES = float(os.environ.get("SOAK_MINUTES", "20"))
SEED = int(os.environ.get("SOAK_SEED", str(int(time.time()))))
RESULT = Path(__file__).resolve().parent / "last-result.json"
PODS = 4
FAULT_EVERY = 15.0
MIN_CLIENTS, MAX_CLIENTS = 60, 140
SIDECAR, APP = "wsgauge-sidecar", "app"


class Soak:
    """The churn, the faults and their tally."""

    def __init__(self, rig: FaultRig, rng: random.Random) -> None:
        self.rig = rig
        self.rng = rng
        self.faults: collections.Counter[str] = collections.Counter()
        self.agree_seconds: dict[str, list[float]] = collections.defaultdict(list)
        self.opened = 0
        self.closed = 0
        self.connect_failures = 0
        self.checks = 0

    async def churn_once(self) -> None:
        """Open and close a few sockets (keeps the count within bounds)."""
        held = sum(self.rig.held().values())
        opens = self.rng.randint(0, 8) if held < MAX_CLIENTS else 0
        closes = self.rng.randint(0, 8) if held > MIN_CLIENTS else 0
        for _ in range(opens):
            try:
                await self.rig.connect(1)
                self.opened += 1
            except AssertionError:
                self.connect_failures += 1
        await self.rig.close_some(closes)
        self.closed += closes

    async def churn_for(self, seconds: float) -> None:
        """Churn once per second for ``seconds``."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await self.churn_once()
            await asyncio.sleep(1.0)

    async def settle(self) -> None:
        """Let server-side closes and 1001 reconnects land; forget dead clients."""
        await asyncio.sleep(1.0)
        self.rig.forget_closed()
        await self.rig.refresh_pool()

    async def check(self, fault: str, started: float, frozen: set[str] | None = None) -> None:
        """The zero-drift check after a fault (bounded)."""
        await assert_counts_agree(self.rig, frozen=frozen or set(), timeout=60, what=fault)
        self.checks += 1
        self.agree_seconds[fault].append(time.monotonic() - started)

    async def pod_pid(self, container: str) -> tuple[str, int]:
        """A random running pod and the pid of its container (waits for a running one)."""
        for _ in range(100):
            live = await self.rig.refresh_pool()
            if live:
                pod = self.rng.choice(sorted(live))
                pid = self.rig.pid(pod, container)
                if pid is not None:
                    return pod, pid
            await asyncio.sleep(0.3)
        raise AssertionError(f"no running {container} process to fault")

    async def inject(self, fault: str) -> None:
        """One fault, churn meanwhile, then the check."""
        started = time.monotonic()
        if fault == "sidecar-sigkill":
            pod, pid = await self.pod_pid(SIDECAR)
            os.kill(pid, signal.SIGKILL)
        elif fault == "app-sigkill":
            pod, pid = await self.pod_pid(APP)
            os.kill(pid, signal.SIGKILL)
        elif fault == "sidecar-sigstop":
            pod, pid = await self.pod_pid(SIDECAR)
            os.kill(pid, signal.SIGSTOP)
            try:
                await self.check(fault + " (frozen)", started, frozen={pod})
            finally:
                os.kill(pid, signal.SIGCONT)
        elif fault == "operator-sigkill":
            assert self.rig.operator.process is not None
            self.rig.operator.process.kill()
            await self.churn_for(self.rng.uniform(1, 4))
            await asyncio.to_thread(self.rig.operator.start)
        elif fault == "pod-delete":
            pod, _ = await self.pod_pid(SIDECAR)
            await self.rig.kubectl("delete", "pod", pod, "--wait=false")
        await self.churn_for(3.0)
        await self.wait_pods()
        await self.settle()
        await self.check(fault, started)
        self.faults[fault] += 1

    async def wait_pods(self) -> None:
        """Until PODS pods run with both processes (replacements included)."""

        async def full() -> bool:
            live = await self.rig.refresh_pool()
            return len(live) == PODS and all(
                self.rig.pid(p, SIDECAR) and self.rig.pid(p, APP) for p in live
            )

        await self.rig.wait_for(f"{PODS} pods running", full, timeout=120)


FAULTS = ("sidecar-sigkill", "sidecar-sigstop", "app-sigkill", "operator-sigkill", "pod-delete")


@pytest.mark.timeout(int(MINUTES * 60) + 900)
async def test_soak(kube: KubeCluster, namespace: str, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    print(f"soak: {MINUTES:g} min, seed {SEED}, namespace {namespace}")
    started_at = datetime.now(UTC)
    started = time.monotonic()
    result: dict[str, Any] = {"passed": False}
    async with fault_rig(kube, namespace, tmp_path, replicas=PODS) as rig:
        soak = Soak(rig, rng)
        try:
            await rig.connect(MIN_CLIENTS + 20)
            soak.opened += MIN_CLIENTS + 20
            await soak.check("start", started)
            deadline = started + MINUTES * 60
            while time.monotonic() + FAULT_EVERY < deadline:
                await soak.churn_for(rng.uniform(FAULT_EVERY / 2, FAULT_EVERY))
                fault = rng.choice(FAULTS)
                print(f"{time.monotonic() - started:7.0f}s  {fault}  held {rig.held()}")
                await soak.inject(fault)
            await soak.settle()
            final = await assert_counts_agree(rig, timeout=60, what="final zero-drift check")
            result = {
                "passed": True,
                "final": {"held": sum(final.held.values()), "status": final.status["connections"]},
            }
        finally:
            result.update(
                startedAt=started_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                minutes=round((time.monotonic() - started) / 60, 1),
                seed=SEED,
                pods=PODS,
                faults=dict(sorted(soak.faults.items())),
                checks=soak.checks,
                socketsOpened=soak.opened,
                socketsClosedByClients=soak.closed,
                connectFailures=soak.connect_failures,
                secondsToAgreeMax={k: round(max(v), 1) for k, v in soak.agree_seconds.items()},
                operatorRestarts=soak.faults["operator-sigkill"],
            )
            RESULT.write_text(json.dumps(result, indent=2) + "\n")
            print("soak result:", json.dumps(result, indent=2))
