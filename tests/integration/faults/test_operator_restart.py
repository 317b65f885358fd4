"""The operator SIGKILLed in the middle of a scale-up, and again right after it restarts.

While it is down the Deployment scales 2 -> 5 and clients connect to the new pods. Once it runs
again: exactly one HPA (owned by the ConnectionStats), every pod matched and reporting, and the
counts of every source equal what the clients hold (nothing lost, nothing doubled).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from fault_harness import FaultRig, assert_counts_agree, fault_rig
from wsgauge_devcluster.testing import KubeCluster

AUTOSCALING = {"minReplicas": 1, "maxReplicas": 10, "targetConnectionsPerPod": 20}


async def _hpas(rig: FaultRig) -> list[dict[str, Any]]:
    items = json.loads(await rig.kubectl("get", "hpa", "-o", "json"))["items"]
    return list(items)


async def _one_hpa(rig: FaultRig) -> list[dict[str, Any]] | None:
    items = await _hpas(rig)
    return items if len(items) == 1 else None


async def _pods_up(rig: FaultRig, count: int) -> dict[str, str] | None:
    live = await rig.live_pods(serving=True)  # clients connect to them next
    return live if len(live) == count else None


@pytest.mark.timeout(240)
async def test_operator_sigkill_mid_scale_converges_without_duplicates(
    kube: KubeCluster, namespace: str, tmp_path: Path
) -> None:
    async with fault_rig(kube, namespace, tmp_path, replicas=2, autoscaling=AUTOSCALING) as rig:
        await rig.connect(20)
        await rig.wait_for("the owned HPA", lambda: _one_hpa(rig))
        await assert_counts_agree(rig, what="before the kill")

        await rig.kubectl("scale", "deployment/chat", "--replicas=5")
        assert rig.operator.process is not None
        rig.operator.process.kill()  # SIGKILL, mid-scale
        await rig.wait_for("5 pods running", lambda: _pods_up(rig, 5), timeout=90)
        await rig.refresh_pool()
        await rig.connect(15)  # round robin over all 5, while the operator is down
        assert len(rig.held()) == 5

        rig.operator.start()
        await asyncio.sleep(0.5)
        assert rig.operator.process is not None
        rig.operator.process.kill()  # again, during its start-up
        rig.operator.start()

        agreement = await assert_counts_agree(rig, what="after two SIGKILLs and restarts")
        assert agreement.total == 35
        assert agreement.status["pods"]["matched"] == 5
        hpas = await _hpas(rig)
        assert len(hpas) == 1, f"duplicate HPAs: {[h['metadata'] for h in hpas]}"
        owners = hpas[0]["metadata"]["ownerReferences"]
        assert [o["kind"] for o in owners] == ["ConnectionStats"]
        # The status keeps converging after more changes (watches and followers are live).
        await rig.close_some(5)
        agreement = await assert_counts_agree(rig, what="after closing 5")
        assert agreement.total == 30
