"""``spec.autoscaling.behavior`` on Kubernetes 1.37, acted on by the real HPA controller, and the
deletion cost written only while a scale-down is near (operator as a subprocess, real pods).

The ConnectionStats asks for per-direction tolerances (``scaleUp.tolerance`` and
``scaleDown.tolerance`` 50 %, GA in 1.37, no feature gate) and a 30 s scale-down stabilization
window, at 10 connections per pod, 2..3 replicas:

1. The owned HPA carries them (as the API server stores them).
2. 14 per pod (ratio 1.4, within the scale-up tolerance): the HPA reads 14 and keeps 2, and so
   does the operator's ``desiredReplicas`` (the default 10 % would give 3).
3. 18 per pod (1.8): the HPA scales to 3.
4. 6 per pod over 3 (0.6, within the scale-down tolerance): the HPA reads 6 and keeps 3; no
   scale-down is near, so the operator has written no deletion cost at all.
5. 10, 0 and 3 (0.43): a scale-down is near: the operator writes the costs at once (counted on
   its /metrics); the HPA holds the scale-down for the stabilization window
   (``ScaleDownStabilized``), then removes the emptiest pod, an old one (by age alone the
   ReplicaSet would remove the newest).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from apiservice_lock import custom_metrics_apiservice_lock
from operator_it_cluster_helpers import (
    APISERVICES,
    OperatorProcess,
    apiservice_documents,
    chat_deployment,
    connection_stats,
    costs,
    hpa_of,
    ready_pods,
    running_pods,
    wait_status,
)
from operator_it_harness import Clients, free_port
from wsgauge_devcluster.testing import KubeCluster, eventually

WRITES = "wsgauge_operator_deletion_cost_writes_total"
BEHAVIOR = {
    "scaleUp": {"tolerance": "0.5", "stabilizationWindowSeconds": 0},
    "scaleDown": {
        "tolerance": "0.5",
        "stabilizationWindowSeconds": 30,
        "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}],
    },
}


def hpa_reading(hpa: dict[str, Any] | None) -> tuple[str, int] | None:
    """(average value the HPA last read, its desiredReplicas), None before its first reading."""
    status = (hpa or {}).get("status") or {}
    metrics = status.get("currentMetrics") or []
    if not metrics or "desiredReplicas" not in status:
        return None
    value = ((metrics[0].get("pods") or {}).get("current") or {}).get("averageValue")
    return (str(value), int(status["desiredReplicas"])) if value is not None else None


def able_to_scale_reason(hpa: dict[str, Any] | None) -> str | None:
    for condition in ((hpa or {}).get("status") or {}).get("conditions") or []:
        if condition.get("type") == "AbleToScale":
            return str(condition.get("reason"))
    return None


async def test_hpa_tolerances_stabilization_and_deletion_cost_when_near(
    kube: KubeCluster, crd: str, namespace: str, tmp_path: Path
) -> None:
    port = free_port()
    with custom_metrics_apiservice_lock():
        operator = OperatorProcess(
            kube,
            namespace,
            tmp_path / "operator.log",
            "--metrics-api", "true",
            "--metrics-api-listen", f"127.0.0.1:{port}",
        )  # fmt: skip
        clients = Clients()
        try:
            kube.apply(apiservice_documents(namespace, port))
            kube.apply(chat_deployment(namespace, 2))
            autoscaling = {
                "minReplicas": 2,
                "maxReplicas": 3,
                "targetConnectionsPerPod": 10,
                "behavior": BEHAVIOR,
            }
            kube.apply(connection_stats(namespace, autoscaling=autoscaling))
            first = ready_pods(kube, namespace, 2)
            ip = {p["metadata"]["name"]: p["status"]["podIP"] for p in first}
            old0, old1 = sorted(ip)

            # 1. the HPA carries the behaviour (quantities in the server's canonical form)
            hpa = eventually(lambda: hpa_of(kube, namespace), timeout=30, what="owned HPA")
            behavior = hpa["spec"]["behavior"]
            assert behavior["scaleUp"]["tolerance"] == "500m"
            assert behavior["scaleDown"]["tolerance"] == "500m"
            assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 30

            async def hpa_reads(value: str) -> tuple[str, int]:
                def check() -> tuple[str, int] | None:
                    reading = hpa_reading(hpa_of(kube, namespace))
                    return reading if reading is not None and reading[0] == value else None

                return await asyncio.to_thread(
                    eventually, check, timeout=120, interval=0.5, what=f"the HPA reads {value}"
                )

            # 2. within the scale-up tolerance: no scale-up
            await clients.open(ip[old0], 8080, "room", 14)
            await clients.open(ip[old1], 8080, "room", 14)
            assert await hpa_reads("14") == ("14", 2)
            status = await asyncio.to_thread(
                wait_status, kube, namespace,
                lambda s: s.get("connections") == 28, "28 connections",
            )  # fmt: skip
            assert status["desiredReplicas"] == 2

            # 3. beyond it: scale-up to 3
            await clients.open(ip[old0], 8080, "room", 4)
            await clients.open(ip[old1], 8080, "room", 4)
            pods = await asyncio.to_thread(ready_pods, kube, namespace, 3, 120.0)
            (new,) = [p["metadata"]["name"] for p in pods if p["metadata"]["name"] not in ip]
            ip[new] = next(p["status"]["podIP"] for p in pods if p["metadata"]["name"] == new)

            # 4. within the scale-down tolerance: no scale-down, and no cost written
            await clients.open(ip[new], 8080, "room", 3)
            await clients.close(ip[old0], 8080, "room", 8)
            await clients.close(ip[old1], 8080, "room", 13)
            assert await hpa_reads("6") == ("6", 3)
            status = await asyncio.to_thread(
                wait_status, kube, namespace,
                lambda s: s.get("connections") == 18, "18 connections",
            )  # fmt: skip
            assert status["desiredReplicas"] == 3
            assert operator.metric(WRITES, reason="scale_down_near", result="ok") == 0
            assert set(costs(kube, namespace).values()) == {None}

            # 5. beyond it: the costs at once, the HPA waits out its window, the emptiest goes
            await clients.close(ip[old1], 8080, "room", 5)  # 10, 0, 3: ratio 0.43

            def near_costs() -> dict[str, str | None] | None:
                found = costs(kube, namespace)
                return found if (found.get(old0), found.get(new)) == ("10", "3") else None

            written = await asyncio.to_thread(
                eventually, near_costs, timeout=30, what="deletion costs before the scale-down"
            )
            assert written.get(old1) in (None, "0")
            assert operator.metric(WRITES, reason="scale_down_near", result="ok") >= 2
            seen: set[str] = set()

            def scaled_down() -> list[str] | None:
                hpa = hpa_of(kube, namespace)
                seen.add(str(able_to_scale_reason(hpa)))
                names = [p["metadata"]["name"] for p in running_pods(kube, namespace)]
                return names if len(names) == 2 else None

            kept = await asyncio.to_thread(
                eventually, scaled_down, timeout=120, interval=0.5, what="the scale-down to 2"
            )
            assert "ScaleDownStabilized" in seen, seen
            assert sorted(kept) == sorted([old0, new])  # the emptiest pod went, not the newest
            print(f"AbleToScale reasons seen: {sorted(seen)}; costs: {json.dumps(written)}")
        finally:
            await clients.aclose()
            kube.kubectl("delete", "apiservice", *APISERVICES, "--ignore-not-found", check=False)
            operator.stop()
            print(operator.output()[-5000:])
