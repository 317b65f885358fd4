"""Rebalance after scale-out (``spec.rebalance``): the controller's part, around the pure policy.

Each round of a ConnectionStats with ``spec.rebalance`` (see
:mod:`wsgauge_operator.control.controller`), :class:`Rebalancer`

1. turns the observed pods and their readiness decisions into
   :class:`~wsgauge_operator.model.rebalance.RebalancePod` inputs and asks
   :func:`~wsgauge_operator.model.rebalance.decide_rebalance` for a plan;
2. overlays the plan's holds on the readiness decisions (condition False, reason
   ``Rebalancing``; the plan never holds so many that fewer than ``minReadyPods`` stay ready);
3. sends each pod that sheds a signed order (``POST /control/shed``,
   :mod:`wsgauge_contract.control`, signed by :mod:`wsgauge_operator.tls.signing` with the
   operator's certificate) and records it in the pod's ledger, so the per-minute bound holds;
4. says what it did: the ``rebalance`` status field, and Events (``RebalanceStarted``,
   ``RebalanceShed``, ``Rebalanced``; ``RebalanceRefused`` as a warning when a sidecar or the
   missing certificate refuses an order).

It runs inside the controller, which runs only while this replica holds the leader Lease
(a replica that loses it exits): a rebalance never acts without the lease.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from wsgauge_contract.control import SHED_PATH

from wsgauge_operator.model.aggregation import PodState
from wsgauge_operator.model.fleet import FleetState
from wsgauge_operator.model.observation import ObservedPods
from wsgauge_operator.model.readiness import ReadinessDecision
from wsgauge_operator.model.rebalance import (
    RebalancePlan,
    RebalancePod,
    ShedLedger,
    decide_rebalance,
)
from wsgauge_operator.model.settings import OperatorSettings
from wsgauge_operator.model.spec import ConnectionStatsSpec
from wsgauge_operator.tls.signing import OrderSigner, signer_from_files

logger = logging.getLogger(__name__)

HOLD_REASON = "Rebalancing"
"""Reason of the readiness condition of a pod held out of service by the rebalance."""
ORDER_TIMEOUT = 5.0
"""Seconds a sidecar has to answer a shed order."""

Note = tuple[bool, str, str]
"""An Event to record: (warning, reason, note)."""


@dataclass
class RebalanceMemory:
    """What the rebalance of one ConnectionStats keeps between rounds."""

    ledger: ShedLedger = field(default_factory=ShedLedger)
    plan: RebalancePlan = field(default_factory=RebalancePlan)
    shed_total: int = 0
    """Sockets asked to close since this operator started."""


def order_signer(settings: OperatorSettings) -> OrderSigner | None:
    """The signer of shed orders: the metrics API's certificate pair (issued by wsgauge's CA),
    ``None`` when there is none (a self-signed certificate made at start signs nothing a
    sidecar would accept) or it cannot be read (logged)."""
    cert, key = (
        settings.autoscaling.metrics_api_cert_file,
        settings.autoscaling.metrics_api_key_file,
    )
    if not cert or not key:
        return None
    try:
        return signer_from_files(Path(cert), Path(key))
    except (OSError, ValueError) as error:
        logger.warning("rebalance: cannot sign shed orders with %s: %s", cert, error)
        return None


class Rebalancer:
    """The rebalance of every ConnectionStats of one controller."""

    def __init__(
        self,
        signer: OrderSigner | None,
        fleet: FleetState,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._signer = signer
        self._fleet = fleet
        self._monotonic = monotonic
        self._wall = wall
        self._memory: dict[tuple[str, str], RebalanceMemory] = {}

    def active(self, key: tuple[str, str]) -> bool:
        """Whether a plan of ``key`` is active (its holds need every pod checked)."""
        memory = self._memory.get(key)
        return memory is not None and memory.plan.active

    def forget(self, key: tuple[str, str]) -> None:
        """The ConnectionStats is gone (or its rebalance section)."""
        self._memory.pop(key, None)

    def plan(
        self,
        key: tuple[str, str],
        spec: ConnectionStatsSpec,
        observed: ObservedPods,
        decisions: Mapping[str, ReadinessDecision],
        *,
        warming: bool = False,
    ) -> tuple[RebalancePlan, list[Note]]:
        """This round's plan, and the Events a change of it calls for. While ``warming`` (some
        sidecars have not answered since the operator started) nothing is done: the average of
        the pods heard so far would be wrong."""
        if spec.rebalance is None:
            self.forget(key)
            return RebalancePlan(), []
        if warming:
            return RebalancePlan(), []
        memory = self._memory.setdefault(key, RebalanceMemory())
        pods: list[RebalancePod] = []
        for name, entry in observed.entries.items():
            readiness = entry.readiness
            decision = decisions.get(name)
            gate_ok = decision.ok if decision is not None else readiness.gate_status is True
            ready = (
                readiness.containers_ready
                and not readiness.terminating
                and (gate_ok if readiness.has_gate else readiness.ready)
            )
            pods.append(
                RebalancePod(
                    name=name,
                    connections=readiness.connections,
                    eligible=readiness.state is PodState.REPORTING
                    and not readiness.draining
                    and not readiness.terminating,
                    ready=ready,
                    has_gate=readiness.has_gate,
                )
            )
        for name in list(memory.ledger.pods()):
            if name not in observed.entries:
                memory.ledger.forget(name)
        plan = decide_rebalance(
            pods,
            spec.rebalance,
            min_ready_pods=spec.capacity.min_ready_pods,
            ledger=memory.ledger,
            now=self._monotonic(),
        )
        notes: list[Note] = []
        if plan.active and not memory.plan.active:
            notes.append((False, "RebalanceStarted", plan.message))
        elif memory.plan.active and not plan.active:
            notes.append((False, "Rebalanced", plan.message))
        memory.plan = plan
        return plan, notes

    @staticmethod
    def overlay(
        plan: RebalancePlan, decisions: Mapping[str, ReadinessDecision]
    ) -> Mapping[str, ReadinessDecision]:
        """The readiness decisions with the plan's holds (only pods that would be ready)."""
        if not plan.hold:
            return decisions
        result = dict(decisions)
        for name in plan.hold:
            decision = result.get(name)
            if decision is not None and decision.ok:
                result[name] = ReadinessDecision(
                    name,
                    False,
                    HOLD_REASON,
                    f"{decision.message}; out of service while the pods rebalance "
                    f"(average {plan.average:.0f})",
                )
        return result

    async def shed(
        self,
        key: tuple[str, str],
        spec: ConnectionStatsSpec,
        plan: RebalancePlan,
        observed: ObservedPods,
        session: aiohttp.ClientSession | None,
    ) -> list[Note]:
        """Send the plan's shed orders; the Events to record. A pod the plan holds sheds only
        once the pod watch shows it held (condition False, reason ``Rebalancing``), so that
        its clients reconnect elsewhere."""
        rebalance = spec.rebalance
        memory = self._memory.get(key)
        if not plan.shed or rebalance is None or memory is None or session is None:
            return []
        if self._signer is None:
            logger.warning("rebalance of %s/%s: no certificate to sign shed orders with", *key)
            return [
                (
                    True,
                    "RebalanceRefused",
                    "cannot ask sidecars to close sockets: the operator has no certificate of "
                    "wsgauge's CA to sign with (--metrics-api-cert-file/--metrics-api-key-file); "
                    "only holding busy pods out of service",
                )
            ]
        orders: list[tuple[str, int, str, int]] = []
        for name, count in sorted(plan.shed.items()):
            endpoint = observed.entries[name].endpoint
            if endpoint is not None and (name not in plan.hold or self._held(key[0], name)):
                orders.append((name, count, endpoint.ip, endpoint.port))
        results = await asyncio.gather(
            *(
                self._send(
                    session, namespace=key[0], pod=name, count=count, ip=ip, port=port, spec=spec
                )
                for name, count, ip, port in orders
            )
        )
        now = self._monotonic()
        done: list[str] = []
        notes: list[Note] = []
        for (name, count, _, _), (closing, error) in zip(orders, results, strict=True):
            if error:
                notes.append((True, "RebalanceRefused", f"sidecar of {name}: {error}"))
                continue
            # the bound counts what was asked (the sidecar closes at most that many)
            memory.ledger.record(name, count, now, rebalance.spread, plan.references.get(name))
            memory.shed_total += closing
            done.append(f"{name} {closing}")
        if done:
            notes.append(
                (
                    False,
                    "RebalanceShed",
                    f"asked to close {', '.join(done)} socket(s) with {rebalance.close_code} over "
                    f"{rebalance.spread:g}s (average {plan.average:.0f}, tolerance "
                    f"{plan.band:.0f})",
                )
            )
        return notes

    def _held(self, namespace: str, pod: str) -> bool:
        record = self._fleet.pod(namespace, pod)
        return record is not None and not record.gate_status and record.gate_reason == HOLD_REASON

    async def _send(
        self,
        session: aiohttp.ClientSession,
        *,
        namespace: str,
        pod: str,
        count: int,
        ip: str,
        port: int,
        spec: ConnectionStatsSpec,
    ) -> tuple[int, str]:
        """(sockets the sidecar is closing, error text or "")."""
        assert self._signer is not None
        assert spec.rebalance is not None
        body, headers = self._signer.shed_request(
            namespace=namespace,
            pod=pod,
            count=count,
            close_code=spec.rebalance.close_code,
            spread_seconds=spec.rebalance.spread,
            issued_at=self._wall(),
        )
        headers["Content-Type"] = "application/json"
        host = f"[{ip}]" if ":" in ip else ip
        url = f"http://{host}:{port}{SHED_PATH}"
        try:
            async with session.post(
                url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=ORDER_TIMEOUT)
            ) as reply:
                text = await reply.text()
                if reply.status != 202:
                    return 0, f"HTTP {reply.status} {text.strip()[:200]}"
                answer: Any = json.loads(text)
                closing = int(answer.get("closing", 0)) if isinstance(answer, dict) else 0
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as error:
            return 0, f"{type(error).__name__}: {error}"
        logger.info("rebalance: %s/%s closes %d socket(s)", namespace, pod, closing)
        return closing, ""

    def status(self, key: tuple[str, str]) -> dict[str, Any] | None:
        """The ``rebalance`` status field (``None``: no rebalance section)."""
        memory = self._memory.get(key)
        if memory is None:
            return None
        plan = memory.plan
        return {
            "active": plan.active,
            "average": round(plan.average),
            "tolerance": round(plan.band),
            "holding": len(plan.hold),
            "shedLastMinute": memory.ledger.total_in_window(self._monotonic()),
            "shedTotal": memory.shed_total,
            "message": plan.message,
        }
