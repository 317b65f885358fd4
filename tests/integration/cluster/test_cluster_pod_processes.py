"""The pod runner really runs the wsgauge sidecar and the demo app as processes bound to the pod
IP: WebSocket traffic to <podIP>:8080 reaches the app and is counted on <podIP>:9090/stats; a
killed container is restarted; deletion honours preStop and stops the processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import urllib.request
from typing import Any

import pytest
import websockets
from wsgauge_devcluster.processes import pid_alive
from wsgauge_devcluster.testing import KubeCluster, eventually, on_simulated_node

pytestmark = pytest.mark.cluster


@pytest.fixture(autouse=True)
def _local_devcluster_only(kube: KubeCluster) -> None:
    if kube.state_dir is None:
        pytest.skip("pod processes exist only on the local devcluster")


def sidecar_pod(name: str, namespace: str) -> dict[str, Any]:
    downward = [
        {"name": env, "valueFrom": {"fieldRef": {"fieldPath": path}}}
        for env, path in (
            ("POD_NAME", "metadata.name"),
            ("POD_NAMESPACE", "metadata.namespace"),
            ("NODE_NAME", "spec.nodeName"),
        )
    ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": "chat"}},
        "spec": on_simulated_node(
            {
                "terminationGracePeriodSeconds": 10,
                "containers": [
                    {
                        "name": "app",
                        "image": "wsgauge/demo-app:dev",
                        "ports": [{"name": "http", "containerPort": 8081}],
                    },
                    {
                        "name": "wsgauge",
                        "image": "wsgauge/sidecar:dev",
                        "args": ["--listen=0.0.0.0:8080", "--admin-listen", "0.0.0.0:9090"],
                        "env": downward,
                        "ports": [
                            {"name": "data", "containerPort": 8080},
                            {"name": "admin", "containerPort": 9090},
                        ],
                        "readinessProbe": {
                            "httpGet": {"path": "/healthz", "port": "admin"},
                            "periodSeconds": 1,
                        },
                        "lifecycle": {"preStop": {"exec": {"command": ["sleep", "1"]}}},
                    },
                ],
            }
        ),
    }


def ready_pod(kube: KubeCluster, namespace: str, name: str) -> dict[str, Any] | None:
    pod: dict[str, Any] = kube.get_json("pod", name, "-n", namespace)
    conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
    return pod if conditions.get("Ready") == "True" else None


def http_get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read()


def stats(ip: str) -> dict[str, Any]:
    status, body = http_get(f"http://{ip}:9090/stats")
    assert status == 200
    decoded: dict[str, Any] = json.loads(body)
    return decoded


async def test_sidecar_and_demo_app_answer_websocket_traffic_at_the_pod_ip(
    kube: KubeCluster, namespace: str
) -> None:
    kube.apply(sidecar_pod("chat-0", namespace))
    pod = await asyncio.to_thread(
        eventually, lambda: ready_pod(kube, namespace, "chat-0"), 60, 0.5, "pod Ready"
    )
    ip = pod["status"]["podIP"]
    assert ip.startswith("127.")
    assert ip != "127.0.0.1"

    status, body = await asyncio.to_thread(http_get, f"http://{ip}:8080/")
    assert status == 200
    assert body

    async with websockets.connect(f"ws://{ip}:8080/ws/room1", open_timeout=10) as socket:
        await socket.send("hello")
        assert await asyncio.wait_for(socket.recv(), 10) == "hello"
        document = await asyncio.to_thread(stats, ip)
        assert document["connections"] == 1
        assert document["pod"] == "chat-0"
        assert document["namespace"] == namespace
        assert document["node"] == pod["spec"]["nodeName"]
        assert sum(document["topics"].values()) == 1

    await asyncio.to_thread(
        eventually, lambda: stats(ip)["connections"] == 0, 20, 0.2, "connection uncounted"
    )


def test_killed_sidecar_is_restarted_and_deletion_stops_processes(
    kube: KubeCluster, namespace: str
) -> None:
    kube.apply(sidecar_pod("chat-1", namespace))
    eventually(lambda: ready_pod(kube, namespace, "chat-1"), 60, 0.5, "pod Ready")
    pid = kube.container_pid(namespace, "chat-1", "wsgauge")
    assert pid is not None
    assert pid_alive(pid)
    assert (kube.pod_dir(namespace, "chat-1") / "wsgauge.log").exists()

    os.kill(pid, signal.SIGKILL)

    def restarted() -> dict[str, Any] | None:
        pod = ready_pod(kube, namespace, "chat-1")
        if pod is None:
            return None
        by_name = {c["name"]: c for c in pod["status"]["containerStatuses"]}
        sidecar: dict[str, Any] = by_name["wsgauge"]
        if sidecar["restartCount"] >= 1 and sidecar["ready"]:
            return sidecar
        return None

    sidecar = eventually(restarted, 60, 0.5, "sidecar restarted and ready again")
    assert sidecar["lastState"]["terminated"]["exitCode"] == 137
    new_pid = kube.container_pid(namespace, "chat-1", "wsgauge")
    app_pid = kube.container_pid(namespace, "chat-1", "app")
    assert new_pid is not None
    assert new_pid != pid
    assert app_pid is not None

    kube.kubectl("delete", "pod", "chat-1", "-n", namespace, "--wait=true", timeout=60)
    assert not pid_alive(new_pid)
    assert not pid_alive(app_pid)


def _conditions(kube: KubeCluster, namespace: str, name: str) -> dict[str, str]:
    pod = kube.get_json("pod", name, "-n", namespace)
    return {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}


def test_readiness_gate_and_probe_failure_drive_pod_ready(
    kube: KubeCluster, namespace: str
) -> None:
    """Ready needs every readiness gate True (set by someone else, kept by the runner) and
    passing probes: a SIGSTOPped sidecar fails its probe and makes the pod unready."""
    manifest = sidecar_pod("chat-2", namespace)
    manifest["spec"]["readinessGates"] = [{"conditionType": "wsgauge.dev/steer"}]
    kube.apply(manifest)
    eventually(
        lambda: _conditions(kube, namespace, "chat-2").get("ContainersReady") == "True",
        60,
        0.5,
        "containers ready",
    )
    assert _conditions(kube, namespace, "chat-2")["Ready"] == "False"

    gate = {"status": {"conditions": [{"type": "wsgauge.dev/steer", "status": "True"}]}}
    kube.kubectl(
        "patch", "pod", "chat-2", "-n", namespace, "--subresource=status",
        "--type=strategic", "-p", json.dumps(gate),
    )  # fmt: skip
    eventually(
        lambda: _conditions(kube, namespace, "chat-2").get("Ready") == "True", 30, 0.5, "Ready"
    )

    pid = kube.container_pid(namespace, "chat-2", "wsgauge")
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:

        def unready() -> dict[str, str] | None:
            conditions = _conditions(kube, namespace, "chat-2")
            return conditions if conditions.get("Ready") == "False" else None

        conditions = eventually(unready, 60, 0.5, "unready after the probe fails")
        assert conditions["ContainersReady"] == "False"
        assert conditions["wsgauge.dev/steer"] == "True"  # the gate is left alone
    finally:
        os.kill(pid, signal.SIGCONT)
    eventually(
        lambda: _conditions(kube, namespace, "chat-2").get("Ready") == "True",
        60,
        0.5,
        "Ready again after SIGCONT",
    )
