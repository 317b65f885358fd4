"""Report mode on the real node: only the pod itself can change what its sidecar reports.

A chat pod in report mode (the sidecar with ``--topic report``, the demo app reporting its own
sockets to the sidecar's loopback report listener, found through ``WSGAUGE_REPORT_URL`` as the
injector sets it), followed by the operator (a host subprocess). A second pod of the same
namespace, running the sidecar image, plays the attacker: its ``PUT``/``POST /report`` to the
chat pod's admin port get 403, its connection to the report port is refused, and neither the
sidecar's counts nor the ConnectionStats status move. From the app container of the chat pod the
same requests are accepted.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from typing import Any

from operator_it_cluster_helpers import (
    OperatorProcess,
    chat_deployment,
    condition_of,
    connection_stats,
    gate_of,
    ready_pods,
    status_of,
    wait_status,
)
from operator_it_harness import Clients
from wsgauge_devcluster.testing import KubeCluster, eventually

APP_PORT = 8081
ADMIN_PORT = 9090
REPORT_PORT = 9091

# run inside a pod: one HTTP request, prints "STATUS BODY" (or "error KIND message")
REQUEST_SCRIPT = """
import sys, urllib.error, urllib.request
url, method, body = sys.argv[1:4]
request = urllib.request.Request(url, data=body.encode(), method=method,
                                 headers={"Content-Type": "application/json"})
try:
    with urllib.request.urlopen(request, timeout=5) as reply:
        print(reply.status, reply.read().decode())
except urllib.error.HTTPError as error:
    print(error.code, error.read().decode())
except OSError as error:
    print("error", type(error).__name__, error)
"""


def report_mode_deployment(namespace: str) -> dict[str, Any]:
    """examples/chat-manual in report mode: the app counts its own sockets and reports them."""
    deployment = chat_deployment(namespace, replicas=1)
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        if container["name"] == "app":
            # on the pod IP, so that the test's clients reach the app directly (no data port)
            container["args"] = ["--listen", f"0.0.0.0:{APP_PORT}"]
            container["env"] = [
                {"name": "WSGAUGE_REPORT_URL", "value": f"http://127.0.0.1:{REPORT_PORT}/report"}
            ]
        else:
            container["args"] = [
                f"--admin-listen=0.0.0.0:{ADMIN_PORT}",
                f"--upstream=127.0.0.1:{APP_PORT}",
                "--topic=report",
                "--drain-grace=0",
                "--drain-spread=0",
                "--watch-heartbeat=1",
            ]
            container["ports"] = [{"name": "wsgauge-admin", "containerPort": ADMIN_PORT}]
    return deployment


def other_pod(namespace: str) -> dict[str, Any]:
    """A pod of the same namespace (not selected by the ConnectionStats) with Python in it."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "other", "namespace": namespace, "labels": {"app": "other"}},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 65532,
                "runAsGroup": 65532,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "main",
                    "image": "wsgauge/sidecar:0.1.0",
                    "command": ["python", "-c", "import time; time.sleep(3600)"],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }


def request_from(
    kube: KubeCluster, namespace: str, pod: str, container: str, url: str, method: str, body: object
) -> tuple[str, str]:
    """One HTTP request made inside a pod's container: (status or "error", the rest)."""
    result = kube.kubectl(
        "exec", "-n", namespace, pod, "-c", container, "--",
        "python", "-c", REQUEST_SCRIPT, url, method, json.dumps(body),
    )  # fmt: skip
    status, _, rest = result.stdout.strip().partition(" ")
    return status, rest


def sidecar_stats(ip: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{ip}:{ADMIN_PORT}/stats", timeout=5) as reply:
        document: dict[str, Any] = json.loads(reply.read())
    return document


def running_other(kube: KubeCluster, namespace: str) -> dict[str, Any] | None:
    pod: dict[str, Any] = kube.get_json("pod", "other", "-n", namespace)
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in pod["status"].get("conditions") or []
    )
    return pod if ready and pod["status"].get("podIP") else None


async def test_only_the_pod_itself_changes_what_its_sidecar_reports(
    kube: KubeCluster, namespace: str, operator: OperatorProcess
) -> None:
    kube.apply(report_mode_deployment(namespace))
    kube.apply(other_pod(namespace))
    kube.apply(connection_stats(namespace))
    (chat,) = ready_pods(kube, namespace, 1)  # the gate opened: the operator follows it
    chat_name, chat_ip = chat["metadata"]["name"], chat["status"]["podIP"]
    other = eventually(
        lambda: running_other(kube, namespace), timeout=60, what="the other pod running"
    )
    other_ip = other["status"]["podIP"]
    assert other_ip != chat_ip

    clients = Clients()
    try:
        # the app reports its own sockets through the loopback report listener: the status moves
        await clients.open(chat_ip, APP_PORT, "stream", 3)
        wait_status(
            kube, namespace,
            lambda s: s["connections"] == 3 and s["topics"] == {"stream": 3}
            and s["pods"]["reporting"] == 1,
            "the app's 3 sockets in the status",
        )  # fmt: skip
        before = sidecar_stats(chat_ip)
        assert before["connections"] == 3

        # another pod: refused on the admin port, nothing listens for it on the report port
        attack = {"connections": 5000, "topics": {"stream": 5000}}
        admin = f"http://{chat_ip}:{ADMIN_PORT}/report"
        status, body = request_from(kube, namespace, "other", "main", admin, "PUT", attack)
        assert status == "403", body
        assert "loopback" in json.loads(body)["error"]
        status, body = request_from(kube, namespace, "other", "main", admin, "POST", attack)
        assert status == "403", body
        report = f"http://{chat_ip}:{REPORT_PORT}/report"
        status, body = request_from(kube, namespace, "other", "main", report, "PUT", attack)
        assert status == "error", body
        assert "refused" in body.lower(), body

        # nothing moved: the sidecar's counts and seq, the status, the gate (for several
        # status intervals of 500 ms: an accepted report would show within one)
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            after = sidecar_stats(chat_ip)
            assert (after["connections"], after["topics"], after["seq"]) == (
                before["connections"], before["topics"], before["seq"],
            )  # fmt: skip
            status_now = status_of(kube, namespace)
            assert status_now["connections"] == 3, status_now
            assert status_now["topics"] == {"stream": 3}, status_now
            await asyncio.sleep(0.5)
        assert condition_of(status_of(kube, namespace), "CapacityExceeded") == (
            "False", "WithinCapacity",
        )  # fmt: skip
        assert gate_of(kube.get_json("pod", chat_name, "-n", namespace)) == "True"
        logs = kube.kubectl(
            "logs", "-n", namespace, chat_name, "-c", "wsgauge-sidecar"
        ).stdout  # fmt: skip
        assert f"refused PUT /report from {other_ip}" in logs, logs[-3000:]

        # the app container of the same pod: accepted on the report listener and, from the
        # loopback, on the admin port (the answer is the sidecar's new stats document)
        own = {"connections": 7, "topics": {"stream": 3, "manual": 4}}
        local_report = f"http://127.0.0.1:{REPORT_PORT}/report"
        status, body = request_from(kube, namespace, chat_name, "app", local_report, "PUT", own)
        assert status == "200", body
        assert json.loads(body)["connections"] == 7
        local_admin = f"http://127.0.0.1:{ADMIN_PORT}/report"
        delta = {"connections": 1, "topics": {"manual": 1}}
        status, body = request_from(kube, namespace, chat_name, "app", local_admin, "POST", delta)
        assert status == "200", body
        assert json.loads(body)["connections"] == 8

        # and the demo app's own next report (a new socket) is what the status shows
        await clients.open(chat_ip, APP_PORT, "stream", 1)
        wait_status(
            kube, namespace,
            lambda s: s["connections"] == 4 and s["topics"] == {"stream": 4},
            "the app's 4 sockets in the status",
        )  # fmt: skip
    finally:
        await clients.aclose()
