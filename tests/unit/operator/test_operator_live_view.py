"""The operator's live view in memory: the cluster document per ConnectionStats, pod, node and
topic (with draining, over capacity, desired and current replicas, recent Events), ``/stats/ws``
with a real WebSocket client, and the live page's files (no Kubernetes API: Events go to an
in-memory sink)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from wsgauge_contract import StatsDocument
from wsgauge_operator.control.connectionstats_state import StatusContribution
from wsgauge_operator.control.controller import Controller
from wsgauge_operator.model.fleet import EndpointKey
from wsgauge_operator.model.recent_events import RecentEvents
from wsgauge_operator.model.settings import OperatorSettings, ServerSettings
from wsgauge_operator.servers.live_page import ASSETS, SECURITY_HEADERS, asset
from wsgauge_operator.servers.live_view import live_cluster_document
from wsgauge_operator.servers.stats_server import StatsServer

GATE = "wsgauge.dev/connections-ok"


def pod(name: str, ip: str, node: str, ready: bool = True, **labels: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": f"u-{name}", "labels": labels},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "s", "ports": [{"name": "admin", "containerPort": 9090}]}],
        },
        "status": {
            "phase": "Running",
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def connection_stats(name: str, **spec: Any) -> dict[str, Any]:
    body = {
        "selector": {"matchLabels": {"app": name}},
        "sidecarPort": "admin",
        "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
        "capacity": {"maxConnectionsPerPod": 4},
    }
    body.update(spec)
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": f"u-{name}", "generation": 1},
        "spec": body,
    }


def report(
    controller: Controller, name: str, ip: str, topics: dict[str, int], draining: bool = False
) -> None:
    key = EndpointKey("ns", name, f"u-{name}", ip, 9090)
    controller.fleet.add_endpoint(key)
    document = StatsDocument(
        pod=name, connections=sum(topics.values()), topics=topics, seq=1, draining=draining
    )
    controller.fleet.report(key, document, now=1_700_000_000.0)


class EventSink:
    """Status patches dropped, Events kept."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    async def patch_connectionstats_status(
        self, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None:
        return None

    async def patch_pod_condition(
        self, namespace: str, name: str, uid: str, condition: Mapping[str, Any]
    ) -> None:
        return None

    async def create_event(self, namespace: str, event: Mapping[str, Any]) -> None:
        self.events.append(dict(event))


async def fleet() -> Controller:
    controller = Controller(OperatorSettings(), EventSink())
    controller.add_status_contributor(
        lambda record, result: (
            StatusContribution(fields={"desiredReplicas": 3})
            if record.name == "chat"
            else StatusContribution()
        )
    )
    controller.pod_event("ADDED", pod("chat-a", "127.0.52.1", "node-1", app="chat"))
    controller.pod_event("ADDED", pod("chat-b", "127.0.52.2", "node-2", app="chat"))
    controller.pod_event("ADDED", pod("chat-c", "127.0.52.3", "node-2", ready=False, app="chat"))
    controller.pod_event("ADDED", pod("feed-a", "127.0.52.4", "node-1", app="feed"))
    controller.connectionstats_event(None, connection_stats("chat"))
    controller.connectionstats_event(None, connection_stats("feed"))
    report(controller, "chat-a", "127.0.52.1", {"stream": 4, "stats": 1})  # over 4
    report(controller, "chat-b", "127.0.52.2", {"stream": 2})
    report(controller, "chat-c", "127.0.52.3", {"stats": 1}, draining=True)
    report(controller, "feed-a", "127.0.52.4", {"news": 7})
    await controller.reconcile(("ns", "chat"))
    await controller.reconcile(("ns", "feed"))
    return controller


async def test_cluster_document_per_connectionstats_pod_node_and_topic() -> None:
    controller = await fleet()
    document = live_cluster_document(controller)
    assert document["connections"] == 15
    assert document["topics"] == {"news": 7, "stream": 6, "stats": 2}
    assert document["nodes"] == [
        {"name": "node-1", "pods": 2, "connections": 12},
        {"name": "node-2", "pods": 2, "connections": 3},
    ]
    chat, feed = document["connectionStats"]
    assert (chat["name"], feed["name"]) == ("chat", "feed")
    assert chat["target"] == {"kind": "Deployment", "name": "chat"}
    assert chat["connections"] == 8
    assert chat["topics"] == {"stream": 6, "stats": 2}
    assert (chat["desiredReplicas"], chat["currentReplicas"]) == (3, 3)
    assert (feed["desiredReplicas"], feed["currentReplicas"]) == (None, 1)
    rows = {row["name"]: row for row in chat["podList"]}
    assert [row["name"] for row in chat["podList"]] == ["chat-a", "chat-b", "chat-c"]  # busiest
    assert rows["chat-a"] == {
        "name": "chat-a",
        "node": "node-1",
        "connections": 5,
        "topics": {"stream": 4, "stats": 1},
        "ready": True,
        "draining": False,
        "overCapacity": True,
        "terminating": False,
        "sidecar": "reporting",
    }
    assert (rows["chat-c"]["ready"], rows["chat-c"]["draining"]) == (False, True)
    assert not rows["chat-b"]["overCapacity"]
    assert chat["nodes"] == [
        {"name": "node-1", "pods": 1, "connections": 5},
        {"name": "node-2", "pods": 2, "connections": 3},
    ]
    capacity = next(c for c in chat["conditions"] if c["type"] == "CapacityExceeded")
    assert capacity["status"] == "True"
    reasons = [event["reason"] for event in chat["events"]]
    assert reasons, "the over-capacity transition is recorded as an Event"
    assert all(event["type"] in ("Normal", "Warning") for event in chat["events"])
    assert not any("feed" in event["note"] for event in chat["events"])  # each its own
    assert any("feed-a" in event["note"] for event in feed["events"])
    assert json.dumps(document)  # plain JSON


def test_recent_events_are_bounded_newest_first() -> None:
    events = RecentEvents(per_object=3, max_objects=2)
    for index in range(5):
        events.add(
            "ns", "a", time=f"T{index}", warning=index % 2 == 0, reason=f"R{index}", note="n"
        )
    assert [e["reason"] for e in events.of("ns", "a")] == ["R4", "R3", "R2"]
    assert events.of("ns", "a")[0]["type"] == "Warning"
    events.add("ns", "b", time="T", warning=False, reason="B", note="n")
    events.add("ns", "c", time="T", warning=False, reason="C", note="n")  # a, the oldest, goes
    assert events.of("ns", "a") == []
    events.forget("ns", "b")
    assert events.of("ns", "b") == []
    assert [e["reason"] for e in events.of("ns", "c")] == ["C"]


async def test_live_websocket_pushes_answers_and_refuses_foreign_origins() -> None:
    controller = await fleet()
    server = StatsServer(controller, ServerSettings())
    async with TestClient(TestServer(server.app, host="127.0.0.1")) as client:
        async with client.ws_connect("/stats/ws") as live:
            first = await live.receive_json(timeout=5)
            assert first["type"] == "cluster"
            assert first["cluster"]["connections"] == 15
            report(controller, "chat-b", "127.0.52.2", {"stream": 3})
            await controller.reconcile(("ns", "chat"))
            while (message := await live.receive_json(timeout=5))["cluster"]["connections"] != 16:
                assert message["type"] == "cluster"
            # a pod starts draining, no status changes: pushed all the same (a fleet change)
            report(controller, "chat-b", "127.0.52.2", {"stream": 3}, draining=True)
            while True:
                message = await live.receive_json(timeout=5)
                rows = {
                    row["name"]: row for row in message["cluster"]["connectionStats"][0]["podList"]
                }
                if rows["chat-b"]["draining"]:
                    break
            await live.send_json({"get": "connectionstats", "namespace": "ns", "name": "feed"})
            answer = await live.receive_json(timeout=5)
            while answer["type"] == "cluster":
                answer = await live.receive_json(timeout=5)
            assert answer["type"] == "connectionstats"
            assert answer["connectionStats"]["connections"] == 7
            await live.send_json({"get": "connectionstats", "namespace": "ns", "name": "no"})
            while (answer := await live.receive_json(timeout=5))["type"] == "cluster":
                pass
            assert answer == {"type": "error", "error": "no ConnectionStats ns/no"}
            await live.send_json({"get": "cluster", "id": 9})
            while (answer := await live.receive_json(timeout=5)).get("id") != 9:
                pass
            assert answer["cluster"]["connections"] == 16
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect("/stats/ws", headers={"Origin": "http://evil.example"})
        assert refused.value.status == 403


async def test_live_page_and_its_assets() -> None:
    controller = await fleet()
    server = StatsServer(controller, ServerSettings())
    async with TestClient(TestServer(server.app, host="127.0.0.1")) as client:
        root = await client.get("/", allow_redirects=False)
        assert (root.status, root.headers["Location"]) == (302, "ui/")
        page = await client.get("/ui/")
        assert page.status == 200
        assert page.content_type == "text/html"
        assert (
            page.headers["Content-Security-Policy"] == SECURITY_HEADERS["Content-Security-Policy"]
        )
        html = await page.text()
        assert 'src="live.js"' in html
        assert 'href="live.css"' in html
        assert "http://" not in html
        assert "https://" not in html
        for name, content_type in ASSETS.items():
            response = await client.get(f"/ui/{name}")
            assert (response.status, response.content_type) == (200, content_type)
            assert await response.read() == asset(name)
        assert (await client.get("/ui/secret.py")).status == 404
    off = StatsServer(controller, ServerSettings(live_page=False))
    async with TestClient(TestServer(off.app, host="127.0.0.1")) as client:
        assert (await client.get("/ui/")).status == 404


def test_assets_load_nothing_from_elsewhere() -> None:
    script = asset("live.js").decode()
    assert "innerHTML" not in script  # cluster text is set with textContent only
    for name in ASSETS:
        text = asset(name).decode()
        assert "//cdn" not in text
        assert "@import" not in text
