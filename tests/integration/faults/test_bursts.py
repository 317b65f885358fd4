"""Bursts: thousands of joins and leaves on one sidecar, and many pods churning at once.

- 3000 sockets opened and closed on one sidecar in waves of 300 concurrent handshakes, while 40
  long-lived sockets stay open: the sidecar's ``opened``/``closed`` totals grow by exactly 3000
  and every source ends equal to the 40 held (the achieved rate is printed, not asserted);
- the Deployment scaled 2 -> 10 -> 2 -> 8 -> 3 without waiting in between: the removed pods
  drain their sockets with 1001 and the clients reconnect to live pods; every source ends
  equal to what the clients hold.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fault_harness import ADMIN_PORT, FaultRig, assert_counts_agree, fault_rig
from wsgauge_devcluster.testing import KubeCluster

BURST_SOCKETS = 3000
WAVE = 300


async def _sidecar_totals(rig: FaultRig, ip: str) -> tuple[int, int]:
    async with rig.session.get(f"http://{ip}:{ADMIN_PORT}/stats") as reply:
        doc: dict[str, Any] = await reply.json()
    return int(doc["opened"]), int(doc["closed"])


async def _join_and_leave(session: aiohttp.ClientSession, ip: str, index: int) -> None:
    ws = await session.ws_connect(f"http://{ip}:8080/ws/burst{index % 7}", heartbeat=None)
    await ws.close()


@pytest.mark.timeout(240)
async def test_thousands_of_joins_and_leaves_on_one_sidecar(
    kube: KubeCluster, namespace: str, tmp_path: Path
) -> None:
    async with fault_rig(kube, namespace, tmp_path, replicas=1) as rig:
        (pod, ip), = rig.pool.live.items()  # fmt: skip
        await rig.connect(40)
        await assert_counts_agree(rig, what="before the burst")
        opened_before, closed_before = await _sidecar_totals(rig, ip)
        started = time.monotonic()
        for wave in range(BURST_SOCKETS // WAVE):
            await asyncio.gather(
                *(_join_and_leave(rig.session, ip, wave * WAVE + i) for i in range(WAVE))
            )
        elapsed = time.monotonic() - started
        print(f"{BURST_SOCKETS} joins + {BURST_SOCKETS} leaves in {elapsed:.1f}s: "
              f"{2 * BURST_SOCKETS / elapsed:.0f} events/s")  # fmt: skip
        agreement = await assert_counts_agree(rig, what="after the burst")
        assert agreement.held == {pod: 40}
        opened, closed = await _sidecar_totals(rig, ip)
        assert (opened - opened_before, closed - closed_before) == (BURST_SOCKETS, BURST_SOCKETS)
        assert set(agreement.status.get("topics") or {}) == {"room"}


async def _pods_up(rig: FaultRig, count: int) -> dict[str, str] | None:
    live = await rig.live_pods(serving=True)  # clients connect to them next
    return live if len(live) == count else None


async def _gone_pods_clear(rig: FaultRig) -> bool:
    live = await rig.refresh_pool()
    return set(rig.held()) <= set(live)


@pytest.mark.timeout(240)
async def test_many_pods_churning_at_once(
    kube: KubeCluster, namespace: str, tmp_path: Path
) -> None:
    async with fault_rig(kube, namespace, tmp_path, replicas=2) as rig:
        await rig.connect(30)
        await assert_counts_agree(rig, what="before the churn")
        for replicas in (10, 2, 8, 3):
            await rig.kubectl("scale", "deployment/chat", f"--replicas={replicas}")
            await asyncio.sleep(2.0)
            await rig.refresh_pool()
        await rig.wait_for("3 pods", lambda: _pods_up(rig, 3), timeout=90)
        await rig.wait_for("no socket left on a removed pod", lambda: _gone_pods_clear(rig))
        rig.forget_closed()
        await rig.refresh_pool()
        await rig.connect(6)
        agreement = await assert_counts_agree(rig, what="after the churn", timeout=60)
        assert len(agreement.held) <= 3
        assert agreement.status["pods"]["matched"] == 3
        print(f"after the churn: clients hold {agreement.held}")
