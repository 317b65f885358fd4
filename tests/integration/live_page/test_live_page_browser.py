"""The live page in headless Chromium against the operator's stats server (an in-memory
controller fed sidecar documents, as the pods' sidecars would): the tables show the right
totals per topic and per pod after each change, the page works by keyboard and on a narrow
screen, and a foreign page cannot open its WebSocket."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from live_page_harness import browser, open_page, page_state
from playwright.async_api import Page
from wsgauge_contract import StatsDocument
from wsgauge_operator.control.controller import Controller
from wsgauge_operator.model.fleet import EndpointKey
from wsgauge_operator.model.settings import OperatorSettings
from wsgauge_operator.servers.stats_server import StatsServer


def pod(name: str, ip: str, node: str, app: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": f"u-{name}", "labels": {"app": app}},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "s", "ports": [{"name": "admin", "containerPort": 9090}]}],
        },
        "status": {
            "phase": "Running",
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def connection_stats(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": f"u-{name}", "generation": 1},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "sidecarPort": "admin",
            "capacity": {"maxConnectionsPerPod": 3},
        },
    }


class Fleet:
    """The controller, with sidecar documents set per pod."""

    def __init__(self) -> None:
        self.controller = Controller(OperatorSettings(), None)
        self.seq = 0
        self.ips: dict[str, str] = {}

    def add_pod(self, name: str, node: str, app: str) -> None:
        ip = f"127.0.53.{len(self.ips) + 1}"
        self.ips[name] = ip
        self.controller.pod_event("ADDED", pod(name, ip, node, app))

    async def report(self, name: str, topics: dict[str, int], draining: bool = False) -> None:
        self.seq += 1
        key = EndpointKey("ns", name, f"u-{name}", self.ips[name], 9090)
        self.controller.fleet.add_endpoint(key)
        document = StatsDocument(
            pod=name,
            connections=sum(topics.values()),
            topics=topics,
            seq=self.seq,
            draining=draining,
        )
        self.controller.fleet.report(key, document, now=1_700_000_000.0 + self.seq)
        for key_ in list(self.controller.summaries) or [("ns", "chat"), ("ns", "feed")]:
            await self.controller.reconcile(key_)


@pytest.fixture
async def served() -> AsyncIterator[tuple[Fleet, str]]:
    fleet = Fleet()
    fleet.add_pod("chat-a", "node-1", "chat")
    fleet.add_pod("chat-b", "node-2", "chat")
    fleet.add_pod("feed-a", "node-1", "feed")
    fleet.controller.connectionstats_event(None, connection_stats("chat"))
    fleet.controller.connectionstats_event(None, connection_stats("feed"))
    await fleet.report("chat-a", {})
    await fleet.report("chat-b", {})
    await fleet.report("feed-a", {})
    server = StatsServer(fleet.controller, OperatorSettings().server)
    runner = web.AppRunner(server.app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield fleet, f"http://127.0.0.1:{port}/ui/"
    finally:
        await runner.cleanup()


async def shows(page: Page, check: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    """Wait until the page shows what ``check`` wants (bounded); the state it showed."""
    state: dict[str, Any] = {}
    for _ in range(300):
        state = await page_state(page)
        if check(state):
            return state
        await page.wait_for_timeout(50)
    raise AssertionError(f"the page never showed {what}; it showed {state}")


async def test_the_page_follows_every_change(served: tuple[Fleet, str]) -> None:
    fleet, url = served
    async with browser() as instance, open_page(instance, url) as page:
        await shows(page, lambda s: set(s["entries"]) == {"ns/chat", "ns/feed"}, "both entries")
        await shows(page, lambda s: s["link"].startswith("Live"), "the live link")
        # step 1: sockets arrive
        await fleet.report("chat-a", {"room": 2, "lobby": 1})
        await fleet.report("chat-b", {"room": 1})
        await fleet.report("feed-a", {"news": 4})
        state = await shows(
            page,
            lambda s: (
                s["entries"]["ns/chat"]["topics"] == {"room": 3, "lobby": 1}
                and s["entries"]["ns/feed"]["topics"] == {"news": 4}
            ),
            "the first totals",
        )
        chat = state["entries"]["ns/chat"]
        assert chat["connections"] == 4
        assert {name: p["sockets"] for name, p in chat["pods"].items()} == {
            "chat-a": 3,
            "chat-b": 1,
        }
        assert chat["pods"]["chat-a"]["node"] == "node-1"
        assert chat["pods"]["chat-b"]["node"] == "node-2"
        assert chat["pods"]["chat-a"]["overCapacity"] == "no"
        assert chat["replicas"] == "2 / no autoscaling"
        assert state["topics"] == {"news": 4, "room": 3, "lobby": 1}
        assert state["connections"] == "8"
        # step 2: one pod goes over capacity, the other drains
        await fleet.report("chat-a", {"room": 3, "lobby": 1})
        await fleet.report("chat-b", {"room": 1}, draining=True)
        state = await shows(
            page,
            lambda s: (
                s["entries"]["ns/chat"]["pods"]["chat-a"]["overCapacity"] == "yes"
                and s["entries"]["ns/chat"]["pods"]["chat-b"]["draining"] == "yes"
            ),
            "over capacity and draining",
        )
        assert state["entries"]["ns/chat"]["topics"] == {"room": 4, "lobby": 1}
        # step 3: sockets leave
        await fleet.report("chat-a", {"room": 1})
        await fleet.report("chat-b", {})
        await fleet.report("feed-a", {})
        state = await shows(
            page,
            lambda s: (
                s["entries"]["ns/chat"]["topics"] == {"room": 1}
                and s["entries"]["ns/feed"]["topics"] == {}
            ),
            "the sockets gone",
        )
        assert {n: p["sockets"] for n, p in state["entries"]["ns/chat"]["pods"].items()} == {
            "chat-a": 1,
            "chat-b": 0,
        }
        # the chart has one line per topic seen
        lines = await page.locator('[data-key="ns/chat"] .chart-svg polyline').count()
        assert lines == 2


async def test_keyboard_labels_and_a_narrow_screen(served: tuple[Fleet, str]) -> None:
    fleet, url = served
    await fleet.report("chat-a", {"a-rather-long-topic-name-for-a-narrow-phone-screen": 2})
    async with browser() as instance, open_page(instance, url, width=360, height=740) as page:
        await shows(page, lambda s: "ns/chat" in s["entries"], "the entry")
        state = await page_state(page)
        assert state["scrollWidth"] <= 360, "the page scrolls sideways on a narrow screen"
        # keyboard: the skip link first, then the pause button; Space toggles it
        await page.keyboard.press("Tab")
        assert await page.evaluate("document.activeElement.className") == "skip"
        await page.keyboard.press("Enter")
        assert await page.evaluate("document.activeElement.id") == "main"
        await page.focus("#pause")
        await page.keyboard.press("Space")
        assert await page.get_attribute("#pause", "aria-pressed") == "true"
        await page.keyboard.press("Space")
        assert await page.get_attribute("#pause", "aria-pressed") == "false"
        # every form control has a label, every scrolling region a name, every table a caption
        unlabeled = await page.evaluate(
            """() => Array.from(document.querySelectorAll('input, button')).filter(
                 (e) => !(e.labels && e.labels.length) && !e.textContent.trim()).length"""
        )
        assert unlabeled == 0
        unnamed = await page.evaluate(
            """() => Array.from(document.querySelectorAll('[role=region]')).filter(
                 (e) => !e.getAttribute('aria-label')).length"""
        )
        assert unnamed == 0
        captions = await page.evaluate(
            "() => Array.from(document.querySelectorAll('table')).every((t) => t.caption)"
        )
        assert captions
        # the filter narrows the list by keyboard
        await page.focus("#filter")
        await page.keyboard.type("feed")
        await shows(page, lambda s: set(s["entries"]) == {"ns/feed"}, "the filtered list")


async def test_a_foreign_page_cannot_open_the_live_socket(served: tuple[Fleet, str]) -> None:
    _, url = served
    live = url.replace("http://", "ws://").replace("/ui/", "/stats/ws")
    async with browser() as instance:
        context = await instance.new_context()
        page = await context.new_page()
        await page.set_content("<p>another origin</p>")  # about:blank: Origin is not the server's
        opened = await page.evaluate(
            """(url) => new Promise((resolve) => {
                 const socket = new WebSocket(url);
                 socket.onopen = () => resolve(true);
                 socket.onerror = () => resolve(false);
               })""",
            live,
        )
        assert opened is False
        await context.close()
