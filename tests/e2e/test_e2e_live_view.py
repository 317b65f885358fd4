"""The live view end to end on the real node (or any cluster ``KUBECONFIG`` names, e.g. kind's):
the operator installed by its chart, its page
opened in headless Chromium through ``kubectl port-forward`` (the documented way in), real
clients connecting to and leaving the injected chat example through its Service; after each
step the page shows the right totals per topic and per pod. ``kubectl wsgauge`` (the installed
console script) reads the same through the API server's service proxy. On the devcluster, the
page's screenshot with sockets open goes to docs/img/live-page.png."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from e2e_harness import client_session, eventually
from live_page_harness import SCREENSHOT, browser, open_page, page_state
from playwright.async_api import Page
from real_node_harness import (
    ServiceClient,
    apply_chat,
    cluster_nodes,
    held,
    ready_pods,
    service_url,
)
from wsgauge_devcluster.deploy import ChartInstall
from wsgauge_devcluster.testing import KubeCluster

PLUGIN = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "kubectl-wsgauge"


@asynccontextmanager
async def port_forward(kube: KubeCluster, release: ChartInstall) -> AsyncIterator[int]:
    """``kubectl port-forward svc/<release>-operator :8090``: the local port it picked."""
    process = await asyncio.create_subprocess_exec(
        str(kube.kubectl_path),
        "port-forward",
        "-n",
        release.namespace,
        f"svc/{release.release}-operator",
        ":8090",
        env=kube.env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        found = re.search(r"127\.0\.0\.1:(\d+) ->", line)
        assert found, f"kubectl port-forward said: {line!r}"
        yield int(found.group(1))
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 10)


async def shows(
    page: Page, check: Callable[[dict[str, Any]], bool], what: str, timeout: float = 60
) -> dict[str, Any]:
    """Wait until the page shows what ``check`` wants (bounded); the state it showed."""
    state: dict[str, Any] = {}
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        state = await page_state(page)
        if check(state):
            return state
        await page.wait_for_timeout(200)
    raise AssertionError(f"the page never showed {what}; it showed {state}")


def topic_totals(clients: dict[str, list[ServiceClient]]) -> dict[str, int]:
    return {topic: len(held) for topic, held in clients.items() if held}


def per_pod(clients: dict[str, list[ServiceClient]]) -> dict[str, int]:
    return held([client for group in clients.values() for client in group])


def plugin(kube: KubeCluster, *args: str) -> str:
    result = subprocess.run(
        [str(PLUGIN), *args], env=kube.env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"kubectl wsgauge {' '.join(args)}: {result.stderr}"
    return result.stdout


async def expect(
    page: Page, key: str, clients: dict[str, list[ServiceClient]], pods: set[str], what: str
) -> dict[str, Any]:
    """The page shows the clients' totals per topic and per pod (pods without sockets at 0)."""
    topics, sockets = topic_totals(clients), per_pod(clients)
    wanted_pods = {name: sockets.get(name, 0) for name in pods}

    def right(state: dict[str, Any]) -> bool:
        entry = state["entries"].get(key)
        return (
            entry is not None
            and entry["topics"] == topics
            and {name: pod["sockets"] for name, pod in entry["pods"].items()} == wanted_pods
            and entry["connections"] == sum(topics.values())
        )

    state = await shows(page, right, f"{what}: topics {topics}, pods {wanted_pods}")
    print(f"{what}: the page shows topics {topics}, pods {wanted_pods}")
    return state


@pytest.mark.timeout(600, func_only=True)  # the node wait, cluster start and install come before
async def test_the_live_page_and_kubectl_wsgauge_follow_real_clients(
    kube: KubeCluster, release: ChartInstall, namespace: str
) -> None:
    await apply_chat(kube, namespace)
    first = await eventually(lambda: ready_pods(kube, namespace, 2), 120, "2 chat pods Ready")
    pods = set(first)
    room = await service_url(kube, namespace)
    lobby = room.replace("/ws/room", "/ws/lobby")
    key = f"{namespace}/chat"
    session = client_session()
    clients: dict[str, list[ServiceClient]] = {"room": [], "lobby": []}
    try:
        async with (
            port_forward(kube, release) as port,
            browser() as instance,
            open_page(instance, f"http://127.0.0.1:{port}/ui/") as page,
        ):
            state = await shows(page, lambda s: key in s["entries"], "the chat entry")
            assert state["link"].startswith("Live")
            await expect(page, key, clients, pods, "no clients")

            # 1. clients connect to two topics through the Service
            for topic, url, count in (("room", room, 8), ("lobby", lobby, 4)):
                for _ in range(count):
                    client = ServiceClient(session, url)
                    await client.connect()
                    clients[topic].append(client)
            state = await expect(page, key, clients, pods, "12 clients")
            entry = state["entries"][key]
            placed = {pod["spec"]["nodeName"] for pod in first.values()}
            assert {pod["node"] for pod in entry["pods"].values()} == placed
            assert placed <= await cluster_nodes(kube)
            assert all(pod["ready"] == "yes" for pod in entry["pods"].values())
            assert entry["replicas"].startswith("2 / ")
            if kube.state_dir is not None:  # the documented screenshot is the devcluster's
                await page.wait_for_timeout(1500)  # a few points on the chart
                SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
                await page.screenshot(path=str(SCREENSHOT), full_page=True)

            top = json.loads(plugin(kube, "top", "-n", namespace, "-o", "json"))
            assert {row["pod"]: row["sockets"] for row in top["pods"] if row["sockets"]} == per_pod(
                clients
            )
            table = plugin(kube, "top", "-n", namespace)
            assert table.splitlines()[0].split()[:4] == [
                "NAME",
                "CONNECTIONSTATS",
                "NODE",
                "SOCKETS",
            ]
            print(table)
            watch = json.loads(plugin(kube, "watch", "-n", namespace, "--count", "1", "-o", "json"))
            assert watch["connectionStats"][0]["topics"] == {"room": 8, "lobby": 4}
            described = plugin(kube, "describe", "chat", "-n", namespace)
            assert "Conditions:" in described
            for name in pods:
                assert name in described
            print(described)

            # 2. some leave
            for topic, leaving in (("room", 5), ("lobby", 1)):
                for client in clients[topic][:leaving]:
                    await client.close()
                clients[topic] = clients[topic][leaving:]
            await expect(page, key, clients, pods, "6 clients")

            # 3. all leave
            for group in clients.values():
                for client in group:
                    await client.close()
                group.clear()
            await expect(page, key, clients, pods, "no clients again")
    finally:
        for group in clients.values():
            for client in group:
                await client.close()
        await session.close()
