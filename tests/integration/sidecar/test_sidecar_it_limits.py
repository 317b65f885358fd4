"""Storm-proof limits with real WebSocket clients: a cap per topic and an upgrade rate.

``--max-topic-connections TOPIC=N`` answers upgrades of a full topic with 503 while other
topics go on; ``--max-upgrades-per-second`` answers a reconnect storm beyond the rate with
503 and a jittered ``Retry-After``. Clients that honour it all get in, and the counts stay
exact: no socket lost, none counted twice; /stats and /metrics show the limits and every
refusal the clients saw.
"""

from __future__ import annotations

import asyncio
import contextlib

import websockets
from sidecar_it_harness import SidecarFactory
from websockets.exceptions import InvalidStatus

RELAY_PATHS = True
"""Tests that start sidecars run on both relay paths (``--relay python`` and ``native``)."""

TOPIC_RULE = ("--topic", "path:^/ws/([^/]+)")


async def _refused_status(url: str) -> tuple[int, str | None]:
    """Try one upgrade that must be refused: (HTTP status, Retry-After)."""
    try:
        ws = await websockets.connect(url)
    except InvalidStatus as error:
        return error.response.status_code, error.response.headers.get("Retry-After")
    await ws.close()
    raise AssertionError(f"{url}: the upgrade was accepted")


async def test_a_full_topic_refuses_new_sockets_while_others_go_on(
    start_sidecar: SidecarFactory,
) -> None:
    sidecar = start_sidecar(*TOPIC_RULE, "--max-topic-connections", "hot=3")
    hot = [await websockets.connect(f"{sidecar.ws_base}/ws/hot") for _ in range(3)]
    try:
        status, retry_after = await _refused_status(f"{sidecar.ws_base}/ws/hot")
        assert (status, retry_after) == (503, None)
        cold = [await websockets.connect(f"{sidecar.ws_base}/ws/cold") for _ in range(5)]
        document = await sidecar.wait_stats(lambda d: d["connections"] == 8)
        assert document["topics"] == {"hot": 3, "cold": 5}
        assert document["capacity"]["topics"] == {"hot": 3}
        assert document["refused"] == {"topic_capacity": 1}
        await hot.pop().close()
        await sidecar.wait_stats(lambda d: d["topics"].get("hot") == 2)
        hot.append(await websockets.connect(f"{sidecar.ws_base}/ws/hot"))  # room again
        document = await sidecar.wait_stats(lambda d: d["connections"] == 8)
        assert document["topics"] == {"hot": 3, "cold": 5}
        assert sidecar.metric("wsgauge_topic_max_connections", 'topic="hot"') == 3
        assert sidecar.metric("wsgauge_handshake_failures_total", 'reason="topic_capacity"') == 1
        for ws in cold:
            await ws.close()
    finally:
        for ws in hot:
            await ws.close()


async def _storm_client(url: str, retry_afters: list[int]) -> websockets.ClientConnection:
    """Connect, honouring 503 + Retry-After (at most 40 tries); the open socket."""
    for _ in range(40):  # bounded: Retry-After is at most about clients / rate seconds
        try:
            return await websockets.connect(url, open_timeout=30)
        except InvalidStatus as error:
            status, header = error.response.status_code, error.response.headers.get("Retry-After")
        if status != 503 or header is None or int(header) < 1:
            raise AssertionError(f"refused with {status}, Retry-After {header!r}")
        retry_afters.append(int(header))
        await asyncio.sleep(int(header))
    raise AssertionError(f"{url}: still refused after 40 tries")


async def test_a_reconnect_storm_is_flattened_and_counted_exactly(
    start_sidecar: SidecarFactory,
) -> None:
    clients, rate = 150, 10  # arrivals within a second or so: far above the rate
    sidecar = start_sidecar(*TOPIC_RULE, "--max-upgrades-per-second", str(rate))
    retry_afters: list[int] = []
    sockets = await asyncio.gather(
        *(
            _storm_client(f"{sidecar.ws_base}/ws/room{index % 3}", retry_afters)
            for index in range(clients)
        )
    )
    try:
        document = await sidecar.wait_stats(lambda d: d["connections"] == clients, timeout=60)
        assert document["topics"] == {"room0": 50, "room1": 50, "room2": 50}
        assert document["opened"] == clients  # each socket counted once
        assert document["capacity"]["upgradesPerSecond"] == rate
        # the storm was bigger than a second's worth: some were told to come back
        assert retry_afters
        assert document["refused"] == {"rate_limited": len(retry_afters)}
        assert sidecar.metric("wsgauge_handshake_failures_total", 'reason="rate_limited"') == len(
            retry_afters
        )
        # the answers spread the retries over more than one second
        assert len(set(retry_afters)) > 1
        for ws in sockets[:10]:
            await ws.send("ping")
            assert await asyncio.wait_for(ws.recv(), 10) == "ping"
    finally:
        for ws in sockets:
            with contextlib.suppress(websockets.ConnectionClosed):
                await ws.close()
    document = await sidecar.wait_stats(lambda d: d["connections"] == 0, timeout=60)
    assert document["closed"] == clients
