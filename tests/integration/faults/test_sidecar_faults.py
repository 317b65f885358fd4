"""Sidecar and app faults on the real control plane, with the pod runner's real processes.

- sidecar SIGKILL: its sockets close, the pod runner restarts it, the operator notices the
  restart, counts it unreachable meanwhile, and counts it again afterwards;
- sidecar SIGSTOP: the operator times out (``--read-timeout 3``), marks it unreachable, the
  metrics API leaves it out and keeps serving the others; SIGCONT brings it back;
- the app crashing under load: the sockets relayed to it close, the sidecar survives (same pid)
  and its count goes down to what the clients hold.
After each fault :func:`assert_counts_agree` compares every source with the clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import pytest
from fault_harness import FaultRig, assert_counts_agree, fault_rig
from wsgauge_devcluster.testing import KubeCluster

SIDECAR = "wsgauge-sidecar"
APP = "app"


async def _unreachable_seen(rig: FaultRig, stop: asyncio.Event) -> int:
    """Highest ``pods.unreachable`` in the operator's memory while ``stop`` is not set."""
    highest = 0
    while not stop.is_set():
        summary = await rig.operator_summary()
        highest = max(highest, int((summary.get("pods") or {}).get("unreachable", 0)))
        await asyncio.sleep(0.1)
    return highest


@pytest.mark.timeout(180)
async def test_sidecar_sigkill_is_restarted_and_counted_again(
    kube: KubeCluster, namespace: str, tmp_path: Path
) -> None:
    async with fault_rig(kube, namespace, tmp_path, replicas=2) as rig:
        await rig.connect(20)
        before = await assert_counts_agree(rig, what="before the kill")
        assert before.total == 20
        assert sorted(before.held.values()) == [10, 10]
        victim = sorted(rig.pool.live)[0]
        old_pid = rig.pid(victim, SIDECAR)
        assert old_pid is not None
        restarts_before = rig.operator.metric("wsgauge_operator_sidecar_restarts_total")

        stop = asyncio.Event()
        watcher = asyncio.create_task(_unreachable_seen(rig, stop))
        os.kill(old_pid, signal.SIGKILL)
        # The victim's clients lose their sockets (no 1001: they do not reconnect).
        await rig.wait_for("the victim's sockets closed", lambda: _none_on(rig, victim))
        new_pid = await rig.wait_for(
            "the pod runner restarts the sidecar", lambda: _new_pid(rig, victim, SIDECAR, old_pid)
        )
        await rig.wait_for(
            "the operator notices the restart",
            lambda: _metric_above(rig, "wsgauge_operator_sidecar_restarts_total", restarts_before),
        )
        stop.set()
        assert await watcher >= 1, "the operator never counted the killed sidecar unreachable"
        rig.forget_closed()
        after = await assert_counts_agree(rig, what="after the restart")
        assert after.total == 10
        assert victim not in after.held
        # The restarted sidecar takes new sockets and counts them.
        await rig.connect(5, pod=victim)
        final = await assert_counts_agree(rig, what="new sockets on the restarted sidecar")
        assert final.held[victim] == 5
        assert final.total == 15
        assert rig.pid(victim, SIDECAR) == new_pid


@pytest.mark.timeout(180)
async def test_sidecar_sigstop_is_unreachable_then_recovers(
    kube: KubeCluster, namespace: str, tmp_path: Path
) -> None:
    # On the real node the kubelet's liveness probe (every 10 s) restarts a sidecar hung for
    # period x failureThreshold; this test is about a freeze shorter than that: 300 s here.
    async with fault_rig(kube, namespace, tmp_path, replicas=3, liveness_failures=30) as rig:
        await rig.connect(30)
        await assert_counts_agree(rig, what="before the freeze")
        frozen = sorted(rig.pool.live)[1]
        pid = rig.pid(frozen, SIDECAR)
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            # Unreachable after the read timeout; the others still served and counted.
            during = await assert_counts_agree(rig, frozen={frozen}, what="while frozen")
            assert during.total == 20
            assert frozen not in (await rig.metrics_api_pods() or {})
            # The others keep working: sockets come and go on them meanwhile.
            others = [p for p in sorted(rig.pool.live) if p != frozen]
            await rig.connect(6, pod=others[0])
            await rig.close_some(2, pod=others[0])
            during = await assert_counts_agree(rig, frozen={frozen}, what="others change")
            assert during.total == 24
        finally:
            with contextlib.suppress(ProcessLookupError):  # gone: the assertions below say so
                os.kill(pid, signal.SIGCONT)
        after = await assert_counts_agree(rig, what="after SIGCONT")
        assert after.total == 34
        assert after.held[frozen] == 10
        assert rig.pid(frozen, SIDECAR) == pid, "the frozen sidecar was restarted, not resumed"


async def _churn(rig: FaultRig, pod: str, stop: asyncio.Event) -> int:
    """Open and close sockets on ``pod`` until ``stop`` (bounded by the caller); returns how many
    connects were attempted."""
    attempts = 0
    while not stop.is_set() and attempts < 2000:
        attempts += 1
        try:
            await rig.connect(1, pod=pod)
        except AssertionError:
            await asyncio.sleep(0.05)  # the app is down: refused, as it should be
            continue
        if len(rig.clients) % 3 == 0:
            await rig.close_some(1, pod=pod)
    return attempts


@pytest.mark.timeout(180)
async def test_app_crash_under_load_closes_its_sockets_and_sidecar_survives(
    kube: KubeCluster, namespace: str, tmp_path: Path
) -> None:
    async with fault_rig(kube, namespace, tmp_path, replicas=2) as rig:
        victim, other = sorted(rig.pool.live)
        await rig.connect(10, pod=victim)
        await rig.connect(10, pod=other)
        through_app, elsewhere = rig.clients[:10], rig.clients[10:]
        await assert_counts_agree(rig, what="before the crash")
        sidecar_pid = rig.pid(victim, SIDECAR)
        app_pid = rig.pid(victim, APP)
        assert sidecar_pid is not None
        assert app_pid is not None

        stop = asyncio.Event()
        load = asyncio.create_task(_churn(rig, victim, stop))
        await asyncio.sleep(1.0)  # load running
        os.kill(app_pid, signal.SIGKILL)
        await rig.wait_for("the app restarted", lambda: _new_pid(rig, victim, APP, app_pid))
        await asyncio.sleep(1.0)  # load continues against the restarted app
        stop.set()
        attempts = await load
        assert attempts > 10
        # Every socket that went through the crashed app was closed; the others live on.
        await rig.wait_for("sockets of the crashed app closed", lambda: _settled(rig))
        assert all(c.pod is None for c in through_app), "a socket to the crashed app stayed open"
        assert all(c.pod == other for c in elsewhere), "the other pod lost sockets"
        rig.forget_closed()
        await assert_counts_agree(rig, what="after the app crash")
        assert rig.pid(victim, SIDECAR) == sidecar_pid, "the sidecar did not survive the app"


async def _none_on(rig: FaultRig, pod: str) -> bool:
    return pod not in rig.held()


async def _new_pid(rig: FaultRig, pod: str, container: str, old: int) -> int | None:
    pid = rig.pid(pod, container)
    return pid if pid is not None and pid != old else None


async def _metric_above(rig: FaultRig, name: str, floor: float) -> bool:
    return await asyncio.to_thread(rig.operator.metric, name) > floor


async def _settled(rig: FaultRig) -> bool:
    """Every sidecar agrees with the clients right now (no socket in flight)."""
    live = await rig.live_pods()
    held = rig.held()
    for name, ip in live.items():
        if await rig.sidecar_connections(ip) != held.get(name, 0):
            return False
    return True


async def _keda_stale(rig: FaultRig) -> dict[str, object] | None:
    code, body = await rig.keda()
    return body if code == 503 and isinstance(body, dict) and body.get("stale") else None


@pytest.mark.timeout(120)
async def test_every_sidecar_frozen_metrics_api_serves_nothing_stale(
    kube: KubeCluster, namespace: str, tmp_path: Path
) -> None:
    """With no sidecar confirming its count, nothing old is served as current: the Pods metric
    is empty, the Object metric is refused, KEDA answers 503 ``stale: true``; all back after
    SIGCONT."""
    async with fault_rig(kube, namespace, tmp_path, replicas=1, liveness_failures=30) as rig:
        (pod,) = rig.pool.live
        await rig.connect(7)
        await assert_counts_agree(rig, what="before the freeze")
        pid = rig.pid(pod, SIDECAR)
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            stale = await rig.wait_for("KEDA marks the value stale", lambda: _keda_stale(rig))
            assert stale["podsReporting"] == 0
            assert await rig.metrics_api_pods() == {}
            assert await rig.metrics_api_total() is None
        finally:
            with contextlib.suppress(ProcessLookupError):  # gone: the assertions below say so
                os.kill(pid, signal.SIGCONT)
        after = await assert_counts_agree(rig, what="after SIGCONT")
        assert after.total == 7
