"""The autoscaling wiring of the operator on the real control plane (operator as a subprocess).

- With ``--metrics-api``: the aggregation layer reaches the operator's metrics API (APIService
  from ``deploy/local/metrics-api.yaml``), the owned HPA follows ``spec.autoscaling`` (created
  with an owner reference, updated, deleted when the section goes), ``status.desiredReplicas``
  and ``AutoscalingActive`` follow. The deletion cost, written only while a scale-down is near,
  is tested in test_operator_it_hpa_behavior.py and test_operator_it_deletion_cost.py.
- Without it: the condition says why autoscaling is not active (missing target, metrics API not
  served), the KEDA endpoint on the stats server answers, and the HPA goes with its owner.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from apiservice_lock import custom_metrics_apiservice_lock
from operator_it_cluster_helpers import (
    APISERVICES,
    OperatorProcess,
    apiservice_documents,
    chat_deployment,
    condition_of,
    connection_stats,
    event_reasons,
    hpa_of,
    ready_pods,
    wait_status,
)
from operator_it_harness import Clients, free_port
from wsgauge_devcluster.testing import KubeCluster, eventually


async def test_owned_hpa_metrics_api_and_status(
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
            autoscaling = {"minReplicas": 2, "maxReplicas": 4, "targetConnectionsPerPod": 20}
            kube.apply(connection_stats(namespace, autoscaling=autoscaling))
            pods = ready_pods(kube, namespace, 2)
            names = [p["metadata"]["name"] for p in pods]
            uid = kube.get_json("connectionstats", "chat", "-n", namespace)["metadata"]["uid"]

            hpa = eventually(lambda: hpa_of(kube, namespace), timeout=30, what="owned HPA")
            owner = hpa["metadata"]["ownerReferences"][0]
            assert (owner["kind"], owner["uid"], owner["controller"]) == (
                "ConnectionStats",
                uid,
                True,
            )
            assert hpa["spec"]["scaleTargetRef"]["name"] == "chat"
            assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 4)
            metric = hpa["spec"]["metrics"][0]["pods"]
            assert metric["metric"]["name"] == "wsgauge_connections"
            assert metric["target"] == {"type": "AverageValue", "averageValue": "20"}

            await clients.open(pods[0]["status"]["podIP"], 8080, "room", 9)
            await clients.open(pods[1]["status"]["podIP"], 8080, "room", 1)

            path = (
                f"/apis/custom.metrics.k8s.io/v1beta2/namespaces/{namespace}/pods/*/"
                "wsgauge_connections?labelSelector=app%3Dchat"
            )

            def served() -> dict[str, str] | None:
                result = kube.kubectl("get", "--raw", path, check=False)
                if result.returncode != 0:
                    return None
                items = json.loads(result.stdout)["items"]
                values = {i["describedObject"]["name"]: i["value"] for i in items}
                return values if values == {names[0]: "9", names[1]: "1"} else None

            await asyncio.to_thread(eventually, served, timeout=60, interval=1.0, what="metric")
            status = await asyncio.to_thread(
                wait_status,
                kube,
                namespace,
                lambda s: (
                    s.get("desiredReplicas") == 2
                    and condition_of(s, "AutoscalingActive") == ("True", "HPAActive")
                ),
                "desiredReplicas 2 and AutoscalingActive True",
                60.0,
            )
            assert status["connections"] == 10

            assert "HPACreated" in event_reasons(kube, namespace)

            kube.kubectl(
                "patch", "connectionstats", "chat", "-n", namespace, "--type=merge",
                "-p", json.dumps({"spec": {"autoscaling": {"maxReplicas": 3}}}),
            )  # fmt: skip
            await asyncio.to_thread(
                eventually,
                lambda: (h := hpa_of(kube, namespace)) and h["spec"]["maxReplicas"] == 3,
                timeout=30,
                what="HPA updated to maxReplicas 3",
            )
            await asyncio.to_thread(
                eventually,
                lambda: "HPAUpdated" in event_reasons(kube, namespace),
                timeout=10,
                what="HPAUpdated event",
            )

            kube.kubectl(
                "patch", "connectionstats", "chat", "-n", namespace, "--type=json",
                "-p", '[{"op": "remove", "path": "/spec/autoscaling"}]',
            )  # fmt: skip
            await asyncio.to_thread(
                eventually,
                lambda: hpa_of(kube, namespace) is None,
                timeout=30,
                what="HPA deleted with the section",
            )
            status = await asyncio.to_thread(
                wait_status,
                kube,
                namespace,
                lambda s: condition_of(s, "AutoscalingActive") == ("False", "NoAutoscaling"),
                "AutoscalingActive False NoAutoscaling",
            )
            assert "desiredReplicas" not in status
        finally:
            await clients.aclose()
            kube.kubectl("delete", "apiservice", *APISERVICES, "--ignore-not-found", check=False)
            operator.stop()
            print(operator.output()[-5000:])


async def test_conditions_without_metrics_api_keda_endpoint_and_gc(
    kube: KubeCluster, crd: str, namespace: str, tmp_path: Path
) -> None:
    operator = OperatorProcess(kube, namespace, tmp_path / "operator.log")
    clients = Clients()
    try:
        kube.apply(chat_deployment(namespace, 1))
        autoscaling = {"minReplicas": 1, "maxReplicas": 3, "targetConnectionsPerPod": 2}
        body = connection_stats(namespace, autoscaling=autoscaling)
        body["spec"]["targetRef"]["name"] = "absent"
        kube.apply(body)
        pods = ready_pods(kube, namespace, 1)
        await asyncio.to_thread(
            wait_status,
            kube,
            namespace,
            lambda s: condition_of(s, "AutoscalingActive") == ("False", "TargetNotFound"),
            "TargetNotFound",
        )
        assert hpa_of(kube, namespace) is not None  # created anyway: it works once it exists
        kube.kubectl(
            "patch", "connectionstats", "chat", "-n", namespace, "--type=merge",
            "-p", json.dumps({"spec": {"targetRef": {"name": "chat"}}}),
        )  # fmt: skip
        await clients.open(pods[0]["status"]["podIP"], 8080, "room", 3)
        status = await asyncio.to_thread(
            wait_status,
            kube,
            namespace,
            lambda s: (
                condition_of(s, "AutoscalingActive") == ("False", "MetricsApiNotServed")
                and s.get("desiredReplicas") == 2
            ),
            "MetricsApiNotServed and desiredReplicas 2",
        )
        assert status["connections"] == 3
        keda = json.loads(operator.get(f"/keda/namespaces/{namespace}/connectionstats/chat"))
        assert (keda["connections"], keda["desiredReplicas"], keda["stale"]) == (3, 2, False)
        await asyncio.to_thread(
            eventually,
            lambda: "ReplicasRecommended" in event_reasons(kube, namespace),
            timeout=30,
            what="ReplicasRecommended event",
        )

        kube.kubectl("delete", "connectionstats", "chat", "-n", namespace)
        await asyncio.to_thread(
            eventually,
            lambda: hpa_of(kube, namespace) is None,
            timeout=60,
            what="HPA garbage-collected with its owner",
        )
    finally:
        await clients.aclose()
        operator.stop()
        print(operator.output()[-5000:])
