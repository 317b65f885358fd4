"""Counts per topic under each request-based topic rule, with real WebSocket clients."""

from __future__ import annotations

import asyncio
import contextlib

import websockets
from sidecar_it_harness import SidecarFactory, SidecarProcess

RELAY_PATHS = True
"""Tests that start sidecars run on both relay paths (``--relay python`` and ``native``)."""


async def _open(url: str, count: int, **kwargs: object) -> list[websockets.ClientConnection]:
    return [await websockets.connect(url, **kwargs) for _ in range(count)]  # type: ignore[arg-type]


async def _close_all(sockets: list[websockets.ClientConnection]) -> None:
    for ws in sockets:
        await ws.close()


async def test_path_rule_counts_each_path_as_a_topic(sidecar: SidecarProcess) -> None:
    streams = await _open(f"{sidecar.ws_base}/ws/stream?x=1", 3)
    stats = await _open(f"{sidecar.ws_base}/ws/stats", 2)
    document = await sidecar.wait_stats(lambda d: d["connections"] == 5)
    assert document["topics"] == {"/ws/stream": 3, "/ws/stats": 2}
    assert document["opened"] == 5
    # messages flow both ways through the proxy
    await streams[0].send("hello")
    assert await asyncio.wait_for(streams[0].recv(), 10) == "hello"
    await _close_all(streams)
    document = await sidecar.wait_stats(lambda d: d["connections"] == 2)
    assert document["topics"] == {"/ws/stats": 2}
    assert document["closed"] == 3
    await _close_all(stats)
    document = await sidecar.wait_stats(lambda d: d["connections"] == 0)
    assert document["topics"] == {}
    assert sidecar.metric("wsgauge_connections_closed_total", 'reason="normal"') == 5


async def test_path_regex_rule_takes_group_one(start_sidecar: SidecarFactory) -> None:
    sidecar = start_sidecar("--topic", "path:^/ws/([^/]+)")
    sockets = await _open(f"{sidecar.ws_base}/ws/stream?x=1", 2)
    sockets += await _open(f"{sidecar.ws_base}/ws/chat/room1", 1)
    sockets += await _open(f"{sidecar.ws_base}/other/x", 1)  # no match: counted, no topic
    document = await sidecar.wait_stats(lambda d: d["connections"] == 4)
    assert document["topics"] == {"stream": 2, "chat": 1}
    await _close_all(sockets)
    await sidecar.wait_stats(lambda d: d["connections"] == 0 and d["topics"] == {})


async def test_query_rule(start_sidecar: SidecarFactory) -> None:
    sidecar = start_sidecar("--topic", "query:room")
    sockets = await _open(f"{sidecar.ws_base}/ws/a?room=blue&room=red", 2)
    sockets += await _open(f"{sidecar.ws_base}/ws/a?room=green%20room", 1)
    sockets += await _open(f"{sidecar.ws_base}/ws/a?other=1", 1)
    document = await sidecar.wait_stats(lambda d: d["connections"] == 4)
    assert document["topics"] == {"blue": 2, "green room": 1}
    await _close_all(sockets)
    await sidecar.wait_stats(lambda d: d["connections"] == 0 and d["topics"] == {})


async def test_header_rule(start_sidecar: SidecarFactory) -> None:
    sidecar = start_sidecar("--topic", "header:X-Topic")
    url = f"{sidecar.ws_base}/ws/a"
    sockets = await _open(url, 2, additional_headers={"x-topic": "alpha"})
    sockets += await _open(url, 1, additional_headers={"X-Topic": "beta"})
    sockets += await _open(url, 1)
    document = await sidecar.wait_stats(lambda d: d["connections"] == 4)
    assert document["topics"] == {"alpha": 2, "beta": 1}
    await _close_all(sockets)
    await sidecar.wait_stats(lambda d: d["connections"] == 0 and d["topics"] == {})


async def test_other_fold_beyond_max_topics(start_sidecar: SidecarFactory) -> None:
    sidecar = start_sidecar("--topic", "path:^/ws/(.+)", "--max-topics", "2")
    sockets = []
    for name in ("a", "b", "c", "d"):
        sockets += await _open(f"{sidecar.ws_base}/ws/{name}", 1)
    document = await sidecar.wait_stats(lambda d: d["connections"] == 4)
    assert document["topics"] == {"a": 1, "b": 1, "_other": 2}
    # a freed slot is reused by the next new topic
    await sockets[0].close()
    await sidecar.wait_stats(lambda d: d["topics"] == {"b": 1, "_other": 2})
    sockets.append(await websockets.connect(f"{sidecar.ws_base}/ws/e"))
    await sidecar.wait_stats(lambda d: d["topics"] == {"b": 1, "e": 1, "_other": 2})
    for ws in sockets:
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.close()
    await sidecar.wait_stats(lambda d: d["connections"] == 0 and d["topics"] == {})


async def test_a_path_topic_named_like_the_fold_is_reported_apart_from_it(
    start_sidecar: SidecarFactory,
) -> None:
    """``/ws/_other`` is reported as ``__other``: ``_other`` in /stats is only the fold."""
    sidecar = start_sidecar("--topic", "path:^/ws/(.+)", "--max-topics", "1")
    sockets = []
    for name in ("_other", "a", "b"):
        sockets += await _open(f"{sidecar.ws_base}/ws/{name}", 1)
    document = await sidecar.wait_stats(lambda d: d["connections"] == 3)
    assert document["topics"] == {"__other": 1, "_other": 2}
    _, metrics = await asyncio.to_thread(sidecar.get, "/metrics")
    assert 'wsgauge_topic_connections{topic="__other"} 1.0' in metrics
    await _close_all(sockets)
    await sidecar.wait_stats(lambda d: d["connections"] == 0 and d["topics"] == {})
