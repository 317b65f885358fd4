"""The operator's rebalance against a real sidecar: the controller's part
(``wsgauge_operator.control.rebalancer``) signs and sends a shed order, the sidecar closes that
many sockets with 1012; the ledger keeps the pod from being asked again while its batch is in
flight; a foreign certificate, or none, is reported (``RebalanceRefused``) and closes nothing."""

from __future__ import annotations

import asyncio

import aiohttp
import websockets
from sidecar_it_harness import LOOPBACK, SidecarFactory
from wsgauge_contract import StatsDocument
from wsgauge_operator.control.rebalancer import HOLD_REASON, Rebalancer
from wsgauge_operator.model.fleet import EndpointKey, FleetState, PodRecord
from wsgauge_operator.model.observation import ObservedPods
from wsgauge_operator.model.spec import parse_spec
from wsgauge_operator.tls.certificates import issue, make_ca
from wsgauge_operator.tls.signing import OrderSigner

RELAY_PATHS = False
"""The relay paths are covered by test_sidecar_it_shed.py."""

KEY = ("prod", "chat")


def _fleet(admin_port: int, busy: int) -> tuple[FleetState, ObservedPods]:
    """Pod ``busy`` (the real sidecar, held already) with ``busy`` sockets, pod ``empty`` with 0."""
    spec = parse_spec(
        {
            "selector": {"matchLabels": {"app": "chat"}},
            "sidecarPort": admin_port,
            "rebalance": {"tolerance": 0.2, "maxShedPerMinute": 0.5, "spread": "1s"},
        }
    )
    fleet = FleetState()
    observed = ObservedPods(spec)
    for name, count, gate_reason in (("chat-1", busy, HOLD_REASON), ("chat-2", 0, "")):
        pod = PodRecord(
            namespace="prod", name=name, uid=f"u-{name}", labels={"app": "chat"},
            ip=LOOPBACK if name == "chat-1" else "127.0.0.2", phase="Running", has_gate=True,
            gate_status=not gate_reason, gate_reason=gate_reason or "ConnectionsOk",
            ready=not gate_reason, containers_ready=True,
        )  # fmt: skip
        fleet.upsert_pod(pod)
        endpoint = EndpointKey("prod", name, pod.uid, pod.ip, admin_port)
        fleet.add_endpoint(endpoint)
        document = StatsDocument(pod=name, connections=count, topics={"room": count}, seq=1)
        fleet.report(endpoint, document, now=1.0)
        observed.refresh(name, pod, fleet, {})
    return fleet, observed


async def test_the_operator_signs_and_the_sidecar_sheds(start_sidecar: SidecarFactory) -> None:
    ca = make_ca("wsgauge-ca")
    identity = {"POD_NAME": "chat-1", "POD_NAMESPACE": "prod"}
    sidecar = start_sidecar("--control-ca", ca.cert_pem.decode(), env=identity)
    sockets = [await websockets.connect(f"{sidecar.ws_base}/ws/room") for _ in range(10)]
    await sidecar.wait_stats(lambda d: d["connections"] == 10)
    fleet, observed = _fleet(sidecar.admin_port, 10)
    spec = observed.spec
    async with aiohttp.ClientSession() as session:
        # nobody else's certificate, and no certificate at all: refused, nothing closed
        for signer in (OrderSigner(issue(make_ca("other"), "x", dns_names=["x"])), None):
            rebalancer = Rebalancer(signer, fleet)
            plan, _ = rebalancer.plan(KEY, spec, observed, observed.readiness.decisions())
            notes = await rebalancer.shed(KEY, spec, plan, observed, session)
            assert [reason for _, reason, _ in notes] == ["RebalanceRefused"], notes
        await asyncio.sleep(0.3)
        assert sidecar.stats()["connections"] == 10

        operator = OrderSigner(issue(ca, "wsgauge-metrics-api", dns_names=["wsgauge.svc"]))
        rebalancer = Rebalancer(operator, fleet)
        plan, notes = rebalancer.plan(KEY, spec, observed, observed.readiness.decisions())
        assert [reason for _, reason, _ in notes] == ["RebalanceStarted"]
        assert plan.hold == {"chat-1"}
        assert plan.shed == {"chat-1": 5}  # the excess over the average, within 50 % a minute
        notes = await rebalancer.shed(KEY, spec, plan, observed, session)
        assert [reason for _, reason, _ in notes] == ["RebalanceShed"], notes
        assert "chat-1 5 socket(s) with 1012" in notes[0][2]
        # in flight: not asked again
        plan, _ = rebalancer.plan(KEY, spec, observed, observed.readiness.decisions())
        assert plan.shed == {}
        status = rebalancer.status(KEY)
        assert status is not None
        assert (status["active"], status["holding"], status["shedTotal"]) == (True, 1, 5)
    await sidecar.wait_stats(lambda d: d["connections"] == 5)
    codes = []
    for ws in sockets[:5]:
        await asyncio.wait_for(ws.wait_closed(), 10)
        codes.append(ws.close_code)
    assert codes == [1012] * 5
    assert all(ws.close_code is None for ws in sockets[5:])
    for ws in sockets[5:]:
        await ws.close()
