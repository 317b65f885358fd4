"""Shed orders on a real sidecar: a signed order closes N sockets with its close code, spread out,
and leaves the rest; unsigned, foreign, replayed or misaddressed orders change nothing."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import websockets
from sidecar_it_harness import SidecarFactory
from wsgauge_contract.control import SHED_PATH
from wsgauge_operator.tls.certificates import issue, make_ca
from wsgauge_operator.tls.signing import OrderSigner

RELAY_PATHS = True
"""Tests that start sidecars run on both relay paths (``--relay python`` and ``native``)."""

IDENTITY = {"POD_NAME": "chat-1", "POD_NAMESPACE": "prod"}


async def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers=headers) as reply,
    ):
        return reply.status, await reply.text()


async def test_a_signed_order_closes_that_many_sockets_gently(
    start_sidecar: SidecarFactory,
) -> None:
    ca = make_ca("wsgauge-ca")
    operator = OrderSigner(issue(ca, "wsgauge-metrics-api", dns_names=["wsgauge.svc"]))
    intruder = OrderSigner(issue(make_ca("other"), "x", dns_names=["x"]))
    sidecar = start_sidecar("--control-ca", ca.cert_pem.decode(), env=IDENTITY)
    count = 10
    sockets = [await websockets.connect(f"{sidecar.ws_base}/ws/room") for _ in range(count)]
    await sidecar.wait_stats(lambda d: d["connections"] == count)
    url = sidecar.admin + SHED_PATH

    def order(
        signer: OrderSigner, pod: str = "chat-1", shed: int = 4
    ) -> tuple[bytes, dict[str, str]]:
        return signer.shed_request(
            namespace="prod", pod=pod, count=shed, close_code=1012, spread_seconds=2.0,
            issued_at=time.time(),
        )  # fmt: skip

    # refused: no signature, a foreign CA's signature, another pod's order, a tampered body
    body, headers = order(operator)
    assert (await _post(url, body, {}))[0] == 403
    assert (await _post(url, *order(intruder)))[0] == 403
    assert (await _post(url, *order(operator, pod="chat-2")))[0] == 403
    assert (await _post(url, body.replace(b'"count":4', b'"count":9'), headers))[0] == 403
    await asyncio.sleep(0.5)
    assert sidecar.stats()["connections"] == count

    status, text = await _post(url, body, headers)
    assert status == 202, text
    assert json.loads(text)["closing"] == 4
    assert (await _post(url, body, headers))[0] in (403, 409)  # a replay (or still busy)
    closed: list[tuple[int, float]] = []
    started = time.monotonic()

    async def closes(ws: websockets.ClientConnection) -> None:
        try:
            await asyncio.wait_for(ws.wait_closed(), 10)
        except TimeoutError:
            return
        closed.append((ws.close_code or 0, time.monotonic() - started))

    await asyncio.gather(*(closes(ws) for ws in sockets[:6]))
    # the oldest four got 1012, spread over the window; the others stay open
    assert sorted(code for code, _ in closed) == [1012] * 4
    assert all(ws.close_code is None for ws in sockets[4:])
    times = sorted(at for _, at in closed)
    assert times[-1] - times[0] > 0.5, times
    document = await sidecar.wait_stats(lambda d: d["connections"] == count - 4)
    assert document["closed"] == 4
    assert sidecar.metric("wsgauge_connections_closed_total", 'reason="rebalance"') == 4
    assert "shed order from wsgauge-metrics-api" in sidecar.output()
    for ws in sockets[4:]:
        await ws.close()


async def test_without_a_control_ca_every_order_is_refused(start_sidecar: SidecarFactory) -> None:
    ca = make_ca("wsgauge-ca")
    operator = OrderSigner(issue(ca, "op", dns_names=["op"]))
    sidecar = start_sidecar(env=IDENTITY)
    ws = await websockets.connect(f"{sidecar.ws_base}/ws/room")
    await sidecar.wait_stats(lambda d: d["connections"] == 1)
    body, headers = operator.shed_request(
        namespace="prod", pod="chat-1", count=1, close_code=1001, spread_seconds=0,
        issued_at=time.time(),
    )  # fmt: skip
    status, text = await _post(sidecar.admin + SHED_PATH, body, headers)
    assert status == 403
    assert "no --control-ca" in text
    await asyncio.sleep(0.3)
    assert sidecar.stats()["connections"] == 1
    await ws.close()
