"""End to end on the real node: ``examples/socketio`` (a Socket.IO app counted per namespace by
the injected sidecar's ``--topic auto``).

The chart's webhook injects the sidecar with ``--topic auto``; python-socketio clients connect
through the Service (kube-proxy picks the pod) with the WebSocket transport to namespaces
``/chat`` and ``/news``; one is refused (``/deny``). The ConnectionStats status and every
sidecar's ``/stats`` equal what the clients hold, per namespace, before and after some
disconnect; each topic shows the protocol that counted it (``topicProtocols``).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio
from e2e_harness import client_session, eventually, get_json, kubectl
from real_node_harness import ADMIN_PORT
from wsgauge_devcluster.deploy import ChartInstall
from wsgauge_devcluster.testing import KubeCluster

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "socketio"


async def sidecar_documents(
    kube: KubeCluster, namespace: str, session: aiohttp.ClientSession
) -> list[dict[str, Any]]:
    pods = (await get_json(kube, "pods", "-n", namespace, "-l", "app=socketio-chat"))["items"]
    documents = []
    for pod in pods:
        if pod["metadata"].get("deletionTimestamp") or not pod["status"].get("podIP"):
            continue
        url = f"http://{pod['status']['podIP']}:{ADMIN_PORT}/stats"
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as reply:
            documents.append(json.loads(await reply.text()))
    return documents


@pytest.mark.timeout(600, func_only=True)  # the node wait, cluster start and install come before
async def test_socketio_example_counts_namespaces_on_the_real_node(
    kube: KubeCluster, release: ChartInstall, namespace: str
) -> None:
    await kubectl(kube, "label", "namespace", namespace, "wsgauge.dev/injection=enabled")
    for name in ("deployment.yaml", "service.yaml", "connectionstats.yaml"):
        await kubectl(kube, "apply", "-n", namespace, "-f", str(EXAMPLE / name))

    async def ready() -> bool:
        pods = (await get_json(kube, "pods", "-n", namespace, "-l", "app=socketio-chat"))["items"]
        return len(pods) == 2 and all(
            any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in p["status"].get("conditions") or []
            )
            for p in pods
        )

    await eventually(ready, 180, "2 socketio-chat pods Ready")
    service = await get_json(kube, "service", "socketio-chat", "-n", namespace)
    url = f"http://{service['spec']['clusterIP']}:80"
    session = client_session()
    clients: list[tuple[socketio.AsyncClient, list[str]]] = []
    try:
        for number in range(12):
            client = socketio.AsyncClient(reconnection=False)
            namespaces = ["/chat"] if number % 3 else ["/chat", "/news"]
            await client.connect(url, namespaces=namespaces, transports=["websocket"])
            clients.append((client, namespaces))
        refused = socketio.AsyncClient(reconnection=False)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await refused.connect(url, namespaces=["/deny"], transports=["websocket"],
                                  wait_timeout=10)  # fmt: skip

        async def agree() -> bool:
            wanted = Counter(ns for client, held in clients if client.connected for ns in held)
            documents = await sidecar_documents(kube, namespace, session)
            per_sidecar: Counter[str] = Counter()
            for document in documents:
                per_sidecar.update(document["topics"])
                assert set(document.get("topicProtocols", {}).values()) <= {"socketio"}
            status = (await get_json(kube, "connectionstats", "socketio-chat", "-n", namespace))[
                "status"
            ]
            return per_sidecar == wanted and status.get("topics") == dict(wanted)

        await eventually(agree, 60, "sidecars and ConnectionStats equal the clients' namespaces")
        for client, _ in clients[:5]:
            await client.disconnect()
        await eventually(agree, 60, "the counts follow the disconnects")
    finally:
        for client, _ in clients:
            await client.disconnect()
        await session.close()
