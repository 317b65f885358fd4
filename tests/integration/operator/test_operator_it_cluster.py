"""The operator on the real control plane, with real sidecar processes and real WebSocket clients.

Every test runs ``wsgauge-operator`` as a subprocess watching the test's namespace; the pod runner
of the local cluster starts the demo app and the sidecar of each chat pod on its own loopback IP.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from typing import Any

from operator_it_cluster_helpers import (
    OperatorProcess,
    chat_deployment,
    condition_of,
    connection_stats,
    gate_of,
    ready_pods,
    running_pods,
    settle,
    status_of,
    wait_status,
    wait_status_settled,
)
from operator_it_harness import Clients
from wsgauge_devcluster.testing import KubeCluster, eventually

DATA_PORT = 8080


def ip_of(pod: dict[str, Any]) -> str:
    return str(pod["status"]["podIP"])


def name_of(pod: dict[str, Any]) -> str:
    return str(pod["metadata"]["name"])


def sidecar_pid(kube: KubeCluster, namespace: str, pod: dict[str, Any]) -> int | None:
    return kube.container_pid(namespace, name_of(pod), "wsgauge-sidecar")


def events(kube: KubeCluster, namespace: str, reason: str) -> list[dict[str, Any]]:
    items = kube.get_json("events.events.k8s.io", "-n", namespace)["items"]
    return [e for e in items if e.get("reason") == reason]


async def test_status_counts_follow_real_sockets_and_pods(
    kube: KubeCluster, namespace: str, operator: OperatorProcess
) -> None:
    kube.apply(chat_deployment(namespace, replicas=2))
    kube.apply(connection_stats(namespace))
    pods = ready_pods(kube, namespace, 2)  # the readiness gate was opened by the operator
    first, second = pods
    wait_status(kube, namespace, lambda s: s["pods"]["reporting"] == 2, "2 pods reporting")

    clients = Clients()
    try:
        await clients.open(ip_of(first), DATA_PORT, "stream", 3)
        await clients.open(ip_of(second), DATA_PORT, "stream", 2)
        await clients.open(ip_of(second), DATA_PORT, "stats", 4)
        status = wait_status(
            kube, namespace,
            lambda s: s["connections"] == 9 and s["topics"] == {"stream": 5, "stats": 4}
            and s["pods"]["ready"] == 2,
            "9 sockets on 2 topics, 2 pods ready",
        )  # fmt: skip
        assert status["busiestPods"][0] == {"name": name_of(second), "connections": 6}
        assert status["pods"]["matched"] == 2
        assert condition_of(status, "Ready") == ("True", "PodsReporting")
        assert condition_of(status, "Degraded") == ("False", "AllReachable")
        assert condition_of(status, "CapacityExceeded") == ("False", "WithinCapacity")
        assert status["nodes"]
        assert sum(n["connections"] for n in status["nodes"]) == 9

        await clients.close(ip_of(second), DATA_PORT, "stats", 2)
        wait_status(
            kube, namespace,
            lambda s: s["connections"] == 7 and s["topics"] == {"stream": 5, "stats": 2},
            "7 sockets after closing 2",
        )  # fmt: skip

        # the cluster-wide stats server agrees, and its live stream follows the next change
        document = json.loads(operator.get("/stats"))
        assert document["connections"] == 7
        assert document["topics"] == {"stream": 5, "stats": 2}
        assert document["connectionStats"][0]["name"] == "chat"
        one = json.loads(operator.get(f"/stats/{namespace}/chat"))
        assert one["status"]["connections"] == 7
        assert b"wsgauge_connectionstats_connections" in operator.get("/metrics")
        url = f"http://127.0.0.1:{operator.port}/stats/watch"
        async with clients.session.get(url) as stream:
            first_line = json.loads(await asyncio.wait_for(stream.content.readline(), 10))
            assert first_line["connections"] == 7
            await clients.open(ip_of(first), DATA_PORT, "stream", 1)
            seen = []
            for _ in range(50):
                line = await asyncio.wait_for(stream.content.readline(), 10)
                if line.strip():
                    seen.append(json.loads(line)["connections"])
                    if seen[-1] == 8:
                        break
            assert seen[-1] == 8, seen
        await clients.close(ip_of(first), DATA_PORT, "stream", 1)

        kube.kubectl("scale", "deployment/chat", "-n", namespace, "--replicas=3")
        third = next(
            p
            for p in ready_pods(kube, namespace, 3)
            if name_of(p) not in {name_of(first), name_of(second)}
        )
        await clients.open(ip_of(third), DATA_PORT, "lobby", 1)
        wait_status(
            kube, namespace,
            lambda s: s["pods"]["reporting"] == 3 and s["connections"] == 8
            and s["topics"] == {"stream": 5, "stats": 2, "lobby": 1},
            "3 pods, 8 sockets",
        )  # fmt: skip

        kube.kubectl("scale", "deployment/chat", "-n", namespace, "--replicas=1")

        def one_pod_left() -> dict[str, Any] | None:
            pods = running_pods(kube, namespace)
            return pods[0] if len(pods) == 1 else None

        remaining = eventually(one_pod_left, timeout=60, what="one pod left")
        left_ip = ip_of(remaining)
        left = [target for target, _ in clients.sockets if target.startswith(f"{left_ip}:")]
        expected = len(left)
        topics: dict[str, int] = {}
        for target in left:
            topic = target.rsplit("/", 1)[1]
            topics[topic] = topics.get(topic, 0) + 1
        status = wait_status(
            kube, namespace,
            lambda s: s["pods"]["matched"] == 1 and s["pods"]["reporting"] == 1
            and s["connections"] == expected and s["topics"] == topics,
            f"1 pod with {expected} sockets on {topics}",
        )  # fmt: skip

        table = kube.kubectl("get", "connectionstats", "-n", namespace).stdout.splitlines()
        assert table[0].split() == [
            "NAME", "TARGET", "PODS", "CONNECTIONS", "AVG/POD", "DESIRED", "AGE",
        ]  # fmt: skip
        row = table[1].split()
        assert row[:5] == ["chat", "chat", "1/1", str(expected), str(expected)]
        wide = kube.kubectl("get", "wss", "-n", namespace, "-o", "wide").stdout.splitlines()
        assert wide[0].split()[-3:] == ["READY", "DEGRADED", "OVER-CAPACITY"]
    finally:
        await clients.aclose()


async def test_killed_and_frozen_sidecars(
    kube: KubeCluster, namespace: str, operator: OperatorProcess
) -> None:
    kube.apply(chat_deployment(namespace, replicas=2))
    kube.apply(connection_stats(namespace))
    victim, other = ready_pods(kube, namespace, 2)
    clients = Clients()
    try:
        await clients.open(ip_of(victim), DATA_PORT, "stream", 2)
        await clients.open(ip_of(other), DATA_PORT, "stream", 2)
        wait_status(kube, namespace, lambda s: s["connections"] == 4, "4 sockets")

        # SIGKILL (the kubelet restarts the container)
        pid = kube.container_pid(namespace, name_of(victim), "wsgauge-sidecar")
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        eventually(
            lambda: any(
                name_of(victim) in e.get("note", "")
                for e in events(kube, namespace, "PodUnreachable")
            ),
            timeout=30, what="PodUnreachable event",
        )  # fmt: skip
        assert (
            operator.metric(
                "wsgauge_operator_pod_condition_writes_total", status="False", result="ok"
            )
            >= 1
        )
        # restarted: counted again, the killed sockets are gone, no double count
        restarted = eventually(
            lambda: (p := sidecar_pid(kube, namespace, victim)) != pid and p,
            timeout=30, what="sidecar restarted",
        )  # fmt: skip
        assert restarted
        await clients.close(ip_of(victim), DATA_PORT, "stream", 2)  # already closed by the kill
        wait_status(
            kube, namespace,
            lambda s: s["pods"]["reporting"] == 2 and s["connections"] == 2,
            "victim reporting again with 0 sockets",
        )  # fmt: skip
        await clients.open(ip_of(victim), DATA_PORT, "stream", 3)
        status = wait_status(
            kube, namespace,
            lambda s: s["connections"] == 5
            and condition_of(s, "Degraded") == ("False", "AllReachable"),
            "5 sockets after the restart",
        )  # fmt: skip
        assert status["topics"] == {"stream": 5}
        eventually(
            lambda: events(kube, namespace, "SidecarRestarted"), timeout=20, what="restart event"
        )
        eventually(
            lambda: gate_of(kube.get_json("pod", name_of(victim), "-n", namespace)) == "True",
            timeout=30, what="victim's condition True again",
        )  # fmt: skip

        # SIGSTOP: the sidecar stops answering (frozen) -> unreachable after the read timeout
        frozen = kube.container_pid(namespace, name_of(victim), "wsgauge-sidecar")
        assert frozen is not None
        os.kill(frozen, signal.SIGSTOP)
        try:
            status = wait_status(
                kube, namespace,
                lambda s: s["pods"]["unreachable"] == 1
                and condition_of(s, "Degraded") == ("True", "PodsUnreachable"),
                "frozen sidecar unreachable", timeout=40,
            )  # fmt: skip
            assert status["connections"] == 2  # only the other pod's sockets count
            pod = eventually(
                lambda: (p := kube.get_json("pod", name_of(victim), "-n", namespace))
                and gate_of(p) == "False" and p,
                timeout=30, what="frozen pod's condition False",
            )  # fmt: skip
            reason = next(
                c["reason"] for c in pod["status"]["conditions"]
                if c["type"] == "wsgauge.dev/connections-ok"
            )  # fmt: skip
            assert reason == "SidecarUnreachable"
            assert gate_of(kube.get_json("pod", name_of(other), "-n", namespace)) == "True"
        finally:
            os.kill(frozen, signal.SIGCONT)
        wait_status(
            kube, namespace,
            lambda s: s["pods"]["unreachable"] == 0 and s["pods"]["reporting"] == 2,
            "thawed sidecar reporting", timeout=40,
        )  # fmt: skip
    finally:
        await clients.aclose()


async def test_over_capacity_never_below_min_ready_pods(
    kube: KubeCluster, namespace: str, operator: OperatorProcess
) -> None:
    kube.apply(chat_deployment(namespace, replicas=2))
    kube.apply(connection_stats(namespace, capacity={"maxConnectionsPerPod": 3, "minReadyPods": 1}))
    hot, cool = ready_pods(kube, namespace, 2)
    gated_true: list[int] = []

    def gates() -> dict[str, str | None]:
        pods = running_pods(kube, namespace)
        values = {name_of(p): gate_of(p) for p in pods}
        gated_true.append(sum(1 for v in values.values() if v == "True"))
        return values

    clients = Clients()
    try:
        await clients.open(ip_of(hot), DATA_PORT, "stream", 5)
        status = wait_status(
            kube, namespace,
            lambda s: condition_of(s, "CapacityExceeded") == ("True", "OverCapacity"),
            "CapacityExceeded",
        )  # fmt: skip
        assert name_of(hot) in next(
            c["message"] for c in status["conditions"] if c["type"] == "CapacityExceeded"
        )
        eventually(
            lambda: gates() == {name_of(hot): "False", name_of(cool): "True"},
            timeout=20, what="hot pod unready, cool pod ready",
        )  # fmt: skip

        await clients.open(ip_of(cool), DATA_PORT, "stream", 4)  # both over: one must stay ready
        eventually(
            lambda: gates() == {name_of(hot): "False", name_of(cool): "True"}
            and (s := status_of(kube, namespace))["connections"] == 9
            and condition_of(s, "CapacityExceeded") == ("True", "OverCapacity"),
            timeout=20, what="least loaded over-capacity pod kept ready",
        )  # fmt: skip
        cool_pod = kube.get_json("pod", name_of(cool), "-n", namespace)
        reason = next(
            c["reason"] for c in cool_pod["status"]["conditions"]
            if c["type"] == "wsgauge.dev/connections-ok"
        )  # fmt: skip
        assert reason == "MinReadyPods", cool_pod["status"]["conditions"]
        scale = eventually(
            lambda: events(kube, namespace, "ScaleRecommended"), timeout=20, what="recommendation"
        )
        assert "at least 3 pods" in scale[0]["note"]
        for _ in range(5):  # it stays that way
            settle(0.5)
            assert gates() == {name_of(hot): "False", name_of(cool): "True"}

        await clients.close(ip_of(hot), DATA_PORT, "stream", 5)
        await clients.close(ip_of(cool), DATA_PORT, "stream", 2)
        wait_status(
            kube, namespace,
            lambda s: condition_of(s, "CapacityExceeded") == ("False", "WithinCapacity"),
            "capacity back to normal",
        )  # fmt: skip
        eventually(
            lambda: gates() == {name_of(hot): "True", name_of(cool): "True"},
            timeout=20, what="both ready again",
        )  # fmt: skip
        assert min(gated_true) >= 1, gated_true
        assert events(kube, namespace, "OverCapacity")
    finally:
        await clients.aclose()


def test_invalid_specs_rejected_or_reported(
    kube: KubeCluster, namespace: str, operator: OperatorProcess
) -> None:
    rejected: dict[str, dict[str, Any]] = {
        "minReplicas must not exceed maxReplicas": {
            "autoscaling": {"minReplicas": 5, "maxReplicas": 2, "targetConnectionsPerPod": 10}
        },
        "selector must not be empty": {"selector": {}},
        "sidecarPort must be": {"sidecarPort": 0},
        "targetRef is required when autoscaling is set": {
            "targetRef": None,
            "autoscaling": {"maxReplicas": 2, "targetConnectionsPerPod": 10},
        },
        "must not exceed capacity.maxConnectionsPerPod": {
            "capacity": {"maxConnectionsPerPod": 5},
            "autoscaling": {"maxReplicas": 2, "targetConnectionsPerPod": 10},
        },
        "spec.statusInterval": {"statusInterval": "fast"},
        "In/NotIn need values": {
            "selector": {"matchExpressions": [{"key": "app", "operator": "In"}]}
        },
    }
    for message, spec in rejected.items():
        body = connection_stats(namespace, "bad", **spec)
        body["spec"] = {k: v for k, v in body["spec"].items() if v is not None}
        result = kube.kubectl("create", "-f", "-", input_text=json.dumps(body), check=False)
        assert result.returncode != 0, f"accepted: {spec}"
        assert message in result.stderr, result.stderr

    kube.apply(chat_deployment(namespace, replicas=1))
    kube.apply(connection_stats(namespace, "nothing", selector={"matchLabels": {"app": "nothing"}}))
    kube.apply(connection_stats(namespace, "noport", sidecarPort="no-such-port"))
    kube.apply(connection_stats(namespace))
    ready_pods(kube, namespace, 1)
    nothing = wait_status(
        kube,
        namespace,
        lambda s: condition_of(s, "Ready") is not None,
        "nothing's status",
        name="nothing",
    )
    assert condition_of(nothing, "Ready") == ("False", "NoPodsMatched")
    assert nothing["pods"]["matched"] == 0
    noport = wait_status(
        kube,
        namespace,
        lambda s: condition_of(s, "Ready") is not None,
        "noport's status",
        name="noport",
    )
    assert condition_of(noport, "Ready") == ("False", "SidecarPortMissing")
    assert condition_of(noport, "Degraded") == ("True", "SidecarPortMissing")
    wait_status(kube, namespace, lambda s: s["pods"]["reporting"] == 1, "the valid one works")
    eventually(
        lambda: events(kube, namespace, "NoPodsMatched"), timeout=20, what="NoPodsMatched event"
    )
    assert operator.process is not None
    assert operator.process.popen.poll() is None


async def test_operator_restart_recovers_without_duplicate_work(
    kube: KubeCluster, namespace: str, operator: OperatorProcess
) -> None:
    kube.apply(chat_deployment(namespace, replicas=2))
    kube.apply(connection_stats(namespace))
    first, second = ready_pods(kube, namespace, 2)
    clients = Clients()
    try:
        await clients.open(ip_of(first), DATA_PORT, "stream", 3)
        wait_status(kube, namespace, lambda s: s["connections"] == 3, "3 sockets")

        operator.stop()
        await clients.open(ip_of(second), DATA_PORT, "stats", 2)
        kube.kubectl("scale", "deployment/chat", "-n", namespace, "--replicas=3")

        def third_pod() -> dict[str, Any] | None:
            pods = running_pods(kube, namespace)
            if len(pods) != 3:
                return None
            return next(p for p in pods if name_of(p) not in {name_of(first), name_of(second)})

        newcomer = eventually(third_pod, timeout=60, what="third pod running")
        settle(3)
        newcomer = kube.get_json("pod", name_of(newcomer), "-n", namespace)
        assert gate_of(newcomer) is None  # new pods wait for the operator
        ready = next(c for c in newcomer["status"]["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "False"
        assert all(
            gate_of(p) == "True"
            for p in running_pods(kube, namespace)
            if name_of(p) != name_of(newcomer)
        )
        assert status_of(kube, namespace)["connections"] == 3  # stale while down

        operator.start()
        wait_status(
            kube, namespace,
            lambda s: s["connections"] == 5 and s["pods"]["reporting"] == 3,
            "status recovered after restart",
        )  # fmt: skip
        ready_pods(kube, namespace, 3)
        settle(2)
        # only the newcomer's condition was written; the ready pods kept theirs untouched
        assert (
            operator.metric(
                "wsgauge_operator_pod_condition_writes_total", status="True", result="ok"
            )
            == 1
        )
        assert (
            operator.metric(
                "wsgauge_operator_pod_condition_writes_total", status="False", result="ok"
            )
            == 0
        )

        # a second restart with nothing changed writes nothing at all: first let the status
        # catch up with the fleet (the newcomer's kubelet Ready, a held-back write) and go quiet
        wait_status_settled(
            kube, namespace,
            lambda s: s["connections"] == 5 and s["pods"]["reporting"] == 3
            and s["pods"]["ready"] == 3,
            "status settled before the second restart",
        )  # fmt: skip
        operator.stop()
        operator.start()
        settle(4)
        assert (
            operator.metric("wsgauge_operator_documents_total") >= 3
        )  # it did follow the sidecars
        assert operator.metric("wsgauge_operator_status_writes_total", result="ok") == 0
        assert (
            operator.metric(
                "wsgauge_operator_pod_condition_writes_total", status="True", result="ok"
            )
            == 0
        )
        assert status_of(kube, namespace)["connections"] == 5
        await clients.open(ip_of(first), DATA_PORT, "stream", 1)
        wait_status(kube, namespace, lambda s: s["connections"] == 6, "still live after restarts")
    finally:
        await clients.aclose()
        await asyncio.sleep(0)
