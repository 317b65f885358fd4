"""The controller and stats server in memory: watch events and sidecar reports in, summaries,
MetricsSource answers and the stats documents out (no Kubernetes API: writes are disabled)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from wsgauge_contract import StatsDocument
from wsgauge_operator.control.connectionstats_state import ConnectionStatsRecord, StatusContribution
from wsgauge_operator.control.controller import Controller
from wsgauge_operator.model.aggregation import Aggregate
from wsgauge_operator.model.fleet import EndpointKey
from wsgauge_operator.model.settings import OperatorSettings, StatusSettings
from wsgauge_operator.servers.stats_server import StatsServer, cluster_document

GATE = "wsgauge.dev/connections-ok"


def pod(name: str, ip: str, **labels: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": f"u-{name}", "labels": labels},
        "spec": {
            "nodeName": "node-1",
            "readinessGates": [{"conditionType": GATE}],
            "containers": [{"name": "s", "ports": [{"name": "admin", "containerPort": 9090}]}],
        },
        "status": {"phase": "Running", "podIP": ip, "conditions": []},
    }


def connection_stats(name: str, **spec: Any) -> dict[str, Any]:
    body = {"selector": {"matchLabels": {"app": "chat"}}, "sidecarPort": "admin"}
    body.update(spec)
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": f"u-{name}", "generation": 1},
        "spec": body,
    }


def report(controller: Controller, name: str, ip: str, topics: dict[str, int]) -> None:
    key = EndpointKey("ns", name, f"u-{name}", ip, 9090)
    controller.fleet.add_endpoint(key)
    document = StatsDocument(pod=name, connections=sum(topics.values()), topics=topics, seq=1)
    controller.fleet.report(key, document, now=1_700_000_000.0)


async def test_summaries_metrics_source_and_invalid_spec() -> None:
    settings = OperatorSettings(status=StatusSettings(top_topics=1))
    controller = Controller(settings, None)
    controller.add_status_contributor(
        lambda record, result: StatusContribution(
            fields={"desiredReplicas": max(1, result.connections // 10)},
            conditions=[
                {"type": "AutoscalingActive", "status": "False", "reason": "Test", "message": ""}
            ],
        )
    )
    heard: list[tuple[tuple[str, str], ConnectionStatsRecord | None]] = []
    controller.add_record_listener(lambda key, record: heard.append((key, record)))
    controller.pod_event("ADDED", pod("a", "127.0.50.1", app="chat"))
    controller.pod_event("ADDED", pod("b", "127.0.50.2", app="chat"))
    controller.pod_event("ADDED", pod("other", "127.0.50.3", app="other"))
    controller.connectionstats_event(None, connection_stats("chat"))
    controller.connectionstats_event(None, connection_stats("broken", sidecarPort=0))
    assert [key for key, _ in heard] == [("ns", "chat"), ("ns", "broken")]

    report(controller, "a", "127.0.50.1", {"stream": 5, "stats": 1})
    report(controller, "b", "127.0.50.2", {"stream": 2, "lobby": 3})
    report(controller, "other", "127.0.50.3", {"x": 100})  # not selected by chat
    await controller.reconcile(("ns", "chat"))
    await controller.reconcile(("ns", "broken"))

    status = controller.summaries[("ns", "chat")]
    assert status["connections"] == 11
    assert status["topics"] == {"stream": 7, "_other": 4}  # top 1, rest folded
    assert status["pods"] == {
        "matched": 2,
        "reporting": 2,
        "unreachable": 0,
        "ready": 0,
        "terminating": 0,
        "summary": "2/2",
    }
    assert status["desiredReplicas"] == 1
    types = {c["type"]: c["status"] for c in status["conditions"]}
    assert types == {
        "Ready": "True",
        "Degraded": "False",
        "CapacityExceeded": "False",
        "AutoscalingActive": "False",
    }
    metrics = controller.fleet.connection_stats("ns", "chat")
    assert metrics is not None
    assert metrics.connections == 11
    assert dict(metrics.topics) == {"stream": 7, "stats": 1, "lobby": 3}  # unfolded in memory
    assert metrics.pods_reporting == 2
    assert {p.name for p in controller.fleet.pods("ns")} == {"a", "b", "other"}

    broken = controller.summaries[("ns", "broken")]
    ready = next(c for c in broken["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert "sidecarPort" in ready["message"]

    document = cluster_document(controller)
    assert document["connections"] == 111  # fleet-wide: every followed pod
    assert document["pods"] == {"followed": 3, "reporting": 3, "unreachable": 0}
    assert [s["name"] for s in document["connectionStats"]] == ["broken", "chat"]

    controller.connectionstats_event("DELETED", connection_stats("broken"))
    assert ("ns", "broken") not in controller.summaries
    assert heard[-1] == (("ns", "broken"), None)
    _ = Aggregate  # the contributor's second argument type


async def test_stats_server_serves_documents_and_a_live_stream() -> None:
    controller = Controller(OperatorSettings(), None)
    controller.pod_event("ADDED", pod("a", "127.0.51.1", app="chat"))
    controller.connectionstats_event(None, connection_stats("chat"))
    report(controller, "a", "127.0.51.1", {"t": 2})
    await controller.reconcile(("ns", "chat"))
    server = StatsServer(controller, OperatorSettings().server)
    async with TestClient(TestServer(server.app, host="127.0.0.1")) as client:
        stats = await (await client.get("/stats")).json()
        assert stats["connections"] == 2
        one = await client.get("/stats/ns/chat")
        assert (await one.json())["status"]["connections"] == 2
        assert (await client.get("/stats/ns/nope")).status == 404
        metrics = await (await client.get("/metrics")).text()
        assert 'wsgauge_connectionstats_connections{name="chat",namespace="ns"} 2.0' in metrics
        stream = await client.get("/stats/watch")
        first = json.loads(await asyncio.wait_for(stream.content.readline(), 5))
        assert first["connections"] == 2
        report(controller, "a", "127.0.51.1", {"t": 5})
        await controller.reconcile(("ns", "chat"))
        line = await asyncio.wait_for(stream.content.readline(), 5)
        assert json.loads(line)["connections"] == 5
        stream.close()


class RecordingKube:
    """Status patches, pod conditions and Events, kept in memory."""

    def __init__(self) -> None:
        self.statuses: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []

    async def patch_connectionstats_status(
        self, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None:
        self.statuses.append(dict(status))

    async def patch_pod_condition(
        self, namespace: str, name: str, uid: str, condition: Mapping[str, Any]
    ) -> None:
        return None

    async def create_event(self, namespace: str, event: Mapping[str, Any]) -> None:
        self.events.append(dict(event))


async def test_scale_down_terminating_pods_are_not_unreachable() -> None:
    kube = RecordingKube()
    controller = Controller(OperatorSettings(), kube)
    for name, ip in (("a", "127.0.50.1"), ("b", "127.0.50.2"), ("c", "127.0.50.3")):
        controller.pod_event("ADDED", pod(name, ip, app="chat"))
        report(controller, name, ip, {"stream": 2})
    controller.connectionstats_event(None, connection_stats("chat"))
    await controller.reconcile(("ns", "chat"))
    assert controller.summaries[("ns", "chat")]["pods"]["summary"] == "3/3"

    # b is deleted and its sidecar has exited; c's sidecar (not deleted) stops answering
    leaving = pod("b", "127.0.50.2", app="chat")
    leaving["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    controller.pod_event("MODIFIED", leaving)
    controller.fleet.mark_unreachable(EndpointKey("ns", "b", "u-b", "127.0.50.2", 9090), "gone")
    controller.fleet.mark_unreachable(EndpointKey("ns", "c", "u-c", "127.0.50.3", 9090), "down")
    await controller.reconcile(("ns", "chat"))
    status = controller.summaries[("ns", "chat")]
    assert status["connections"] == 2
    assert {k: status["pods"][k] for k in ("matched", "unreachable", "terminating")} == {
        "matched": 2,
        "unreachable": 1,
        "terminating": 1,
    }
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["message"] == "1 pods' sidecars do not answer: c"
    notes = [e["note"] for e in kube.events if e["reason"] == "PodUnreachable"]
    assert notes == ["the sidecar of pod c stopped answering"]

    # c is deleted too: it goes away, it does not "answer again"
    leaving = pod("c", "127.0.50.3", app="chat")
    leaving["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    controller.pod_event("MODIFIED", leaving)
    await controller.reconcile(("ns", "chat"))
    status = controller.summaries[("ns", "chat")]
    assert (status["pods"]["summary"], status["pods"]["terminating"]) == ("1/1", 2)
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "False"
    assert not [e for e in kube.events if e["reason"] == "PodReachable"]
