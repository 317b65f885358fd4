"""Another writer of ``controller.kubernetes.io/pod-deletion-cost`` on the target's pods, on the
real API server (operator as a subprocess, real pods, no metrics API: the HPA cannot scale, so
the Deployment stays at 2 while the metric implies 1: a scale-down is near all along).

1. One pod carries Karpenter's ``karpenter.sh/managed-deletion-cost`` marker (and its cost):
   ``DeletionCostConflict`` True ``KarpenterManaged``, a Warning Event, and with the default
   ``otherWriters: Yield`` no cost is written on the target.
2. ``otherWriters: Overwrite``: the costs follow the counts; Karpenter's marker is left alone.
3. Karpenter's marker goes, and someone changes a cost wsgauge wrote: ``ChangedByOtherWriter``
   (also after wsgauge wrote its value back), a second Event; the cost is the count again.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from operator_it_cluster_helpers import (
    COST,
    OperatorProcess,
    chat_deployment,
    condition_of,
    connection_stats,
    costs,
    ready_pods,
    wait_status,
)
from operator_it_harness import Clients
from wsgauge_devcluster.testing import KubeCluster, eventually

KARPENTER = "karpenter.sh/managed-deletion-cost"
OURS = "wsgauge.dev/deletion-cost"
WRITES = "wsgauge_operator_deletion_cost_writes_total"


def conflict_events(kube: KubeCluster, namespace: str) -> list[dict[str, Any]]:
    events = kube.get_json("events.v1.events.k8s.io", "-n", namespace)["items"]
    return [e for e in events if e.get("reason") == "DeletionCostConflict"]


def pod_annotations(kube: KubeCluster, namespace: str, pod: str) -> dict[str, str]:
    body = kube.get_json("pod", pod, "-n", namespace)
    return dict(body["metadata"].get("annotations") or {})


async def test_other_writers_yield_overwrite_and_changes_under_us(
    kube: KubeCluster, crd: str, namespace: str, tmp_path: Path
) -> None:
    operator = OperatorProcess(kube, namespace, tmp_path / "operator.log")
    clients = Clients()
    try:
        kube.apply(chat_deployment(namespace, 2))
        autoscaling = {"minReplicas": 1, "maxReplicas": 4, "targetConnectionsPerPod": 20}
        kube.apply(connection_stats(namespace, autoscaling=autoscaling))
        pods = ready_pods(kube, namespace, 2)  # the gates open once the operator sees them
        a, b = (p["metadata"]["name"] for p in pods)
        ip = {p["metadata"]["name"]: p["status"]["podIP"] for p in pods}
        kube.kubectl("annotate", "pod", a, "-n", namespace, f"{KARPENTER}=true", f"{COST}=-1000")

        # 1. Karpenter's marker: reported, and wsgauge yields
        await asyncio.to_thread(
            wait_status, kube, namespace,
            lambda s: condition_of(s, "DeletionCostConflict") == ("True", "KarpenterManaged"),
            "DeletionCostConflict True KarpenterManaged", 60.0,
        )  # fmt: skip
        await clients.open(ip[a], 8080, "room", 3)  # the order of the costs is now wrong
        await clients.open(ip[b], 8080, "room", 1)
        status = await asyncio.to_thread(
            wait_status, kube, namespace,
            lambda s: (
                s.get("connections") == 4 and s.get("desiredReplicas") == 1
                and condition_of(s, "DeletionCostConflict") == ("True", "KarpenterManaged")
            ),
            "4 connections, desiredReplicas 1, still KarpenterManaged", 60.0,
        )  # fmt: skip
        (message,) = [
            c["message"] for c in status["conditions"] if c["type"] == "DeletionCostConflict"
        ]
        assert "1 of 2 pods carry karpenter.sh/managed-deletion-cost" in message
        assert "yields" in message
        events = await asyncio.to_thread(
            eventually, lambda: conflict_events(kube, namespace), timeout=30, what="the Event"
        )
        assert events[0]["type"] == "Warning"
        assert costs(kube, namespace) == {a: "-1000", b: None}  # nothing written
        assert operator.metric(WRITES, reason="scale_down_near", result="ok") == 0

        # 2. Overwrite: the costs follow the counts (the order was wrong: a has more sockets)
        kube.kubectl(
            "patch", "connectionstats", "chat", "-n", namespace, "--type=merge",
            "-p", json.dumps({"spec": {"autoscaling": {"deletionCost": {
                "otherWriters": "Overwrite"}}}}),
        )  # fmt: skip
        await asyncio.to_thread(
            eventually,
            lambda: costs(kube, namespace) == {a: "3", b: "1"},
            timeout=30,
            what="costs 3 and 1",
        )
        found = pod_annotations(kube, namespace, a)
        assert (found[OURS], found[KARPENTER]) == ("3", "true")  # Karpenter's marker untouched
        assert operator.metric(WRITES, reason="scale_down_near", result="ok") == 2
        await asyncio.to_thread(
            wait_status, kube, namespace,
            lambda s: any(
                c["type"] == "DeletionCostConflict" and "keeps writing" in c["message"]
                for c in s.get("conditions") or []
            ),
            "the condition says wsgauge keeps writing",
        )  # fmt: skip

        # 3. a value changed under us (Karpenter gone): reported, and written back
        kube.kubectl("annotate", "pod", a, "-n", namespace, f"{KARPENTER}-")
        kube.kubectl("annotate", "pod", b, "-n", namespace, "--overwrite", f"{COST}=999")
        await asyncio.to_thread(
            wait_status, kube, namespace,
            lambda s: condition_of(s, "DeletionCostConflict") == ("True", "ChangedByOtherWriter"),
            "DeletionCostConflict ChangedByOtherWriter",
        )  # fmt: skip
        await asyncio.to_thread(
            eventually,
            lambda: costs(kube, namespace) == {a: "3", b: "1"},
            timeout=30,
            what="the changed cost written back",
        )

        def two_events() -> list[dict[str, Any]] | None:
            found = conflict_events(kube, namespace)
            return found if len(found) >= 2 else None

        reasons = await asyncio.to_thread(
            eventually, two_events, timeout=30, what="a second DeletionCostConflict Event"
        )
        assert any("changed after wsgauge wrote it" in str(e.get("note")) for e in reasons)
        status = await asyncio.to_thread(
            wait_status, kube, namespace,
            lambda s: condition_of(s, "DeletionCostConflict") == ("True", "ChangedByOtherWriter"),
            "the finding kept after the value was written back",
        )  # fmt: skip
        assert operator.metric(WRITES, reason="scale_down_near", result="ok") == 3
    finally:
        await clients.aclose()
        operator.stop()
        print(operator.output()[-5000:])
