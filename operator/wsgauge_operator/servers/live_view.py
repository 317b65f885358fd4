"""The operator's live view: the cluster document of ``/stats/ws`` and what it pushes.

:func:`live_cluster_document` builds, from the controller's memory alone (no API call), the
document the live page and ``kubectl wsgauge`` read: per ConnectionStats its totals per topic,
its pods (sockets, topics, node, ready, draining, over capacity, reporting), its nodes,
desired and current replicas, conditions and recent Events; and the fleet-wide totals per
topic and per node. It is bounded like a status: at most :data:`MAX_PODS_PER_ENTRY` pods (the
busiest; ``podsOmitted`` counts the rest) and ``--top-topics`` topics per entry and per pod (the
rest folded into ``_other``), the last 10 Events (:class:`~.recent_events.RecentEvents`).

*Current replicas* are the selected pods that exist and are not terminating (what runs now);
*desired replicas* are the status' ``desiredReplicas`` (from the owned HPA's rule, or the
connections against ``targetConnectionsPerPod``), ``null`` without autoscaling.

:class:`LiveDocuments` builds it once per change for all clients (a change of
:attr:`Controller.version` or of the fleet: a sidecar report, a pod's readiness);
:class:`ClusterLiveSource` is the :class:`~wsgauge_contract.live_session.LiveSource` of one
``/stats/ws`` client on the operator: it pushes ``{"type": "cluster", ...}`` after every such
change and answers ``{"get": "cluster"}`` and
``{"get": "connectionstats", "namespace": N, "name": M}``.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Mapping
from typing import Any

from wsgauge_contract import OTHER_TOPIC
from wsgauge_contract.live import (
    GET_CLUSTER,
    OPERATOR_GETS,
    LiveRequest,
    LiveRequestError,
    cluster_message,
    connectionstats_message,
)

from wsgauge_operator.control.connectionstats_state import ConnectionStatsRecord
from wsgauge_operator.control.controller import Controller
from wsgauge_operator.model.aggregation import fold_topics
from wsgauge_operator.model.fleet import EndpointStats, SidecarState

MAX_PODS_PER_ENTRY = 200
"""Pods listed per ConnectionStats in the live document (the busiest first)."""


def _documents(controller: Controller) -> dict[tuple[str, str, str], EndpointStats]:
    """The freshest sidecar report per pod incarnation (namespace, pod, uid)."""
    best: dict[tuple[str, str, str], EndpointStats] = {}
    fleet = controller.fleet
    for key in fleet.endpoint_keys():
        stats = fleet.endpoint(key)
        if stats is None:
            continue
        ident = (key.namespace, key.pod, key.uid)
        current = best.get(ident)
        rank = (stats.state is SidecarState.REPORTING, stats.observed_at)
        if current is None or rank > (current.state is SidecarState.REPORTING, current.observed_at):
            best[ident] = stats
    return best


def _pod_row(
    controller: Controller,
    pod: tuple[str, str],
    reports: Mapping[tuple[str, str, str], EndpointStats],
    max_per_pod: int | None,
) -> dict[str, Any] | None:
    namespace, name = pod
    top_topics = controller.settings.status.top_topics
    record = controller.fleet.pod(namespace, name)
    if record is None:
        return None
    stats = reports.get((namespace, name, record.uid))
    document = stats.document if stats is not None else None
    reporting = stats is not None and stats.state is SidecarState.REPORTING and document is not None
    connections = document.connections if reporting and document is not None else 0
    topics = dict(document.topics) if reporting and document is not None else {}
    return {
        "name": name,
        "node": record.node,
        "connections": connections,
        "topics": fold_topics(topics, top_topics),
        "ready": record.ready,
        "draining": bool(document.draining) if reporting and document is not None else False,
        "overCapacity": max_per_pod is not None and connections > max_per_pod,
        "terminating": record.terminating,
        "sidecar": stats.state.value if stats is not None else "unfollowed",
    }


def _entry(
    controller: Controller,
    record: ConnectionStatsRecord | None,
    key: tuple[str, str],
    reports: Mapping[tuple[str, str, str], EndpointStats],
) -> dict[str, Any]:
    namespace, name = key
    status = controller.summaries.get(key) or {}
    spec = record.spec if record is not None else None
    max_per_pod = spec.capacity.max_connections_per_pod if spec is not None else None
    rows = []
    for pod in sorted(controller.selection.members(key)):
        row = _pod_row(controller, (namespace, pod), reports, max_per_pod)
        if row is not None:
            rows.append(row)
    rows.sort(key=lambda row: (-row["connections"], row["name"]))
    nodes: dict[str, dict[str, Any]] = {}
    for row in rows:
        node = nodes.setdefault(row["node"], {"name": row["node"], "pods": 0, "connections": 0})
        node["pods"] += 1
        node["connections"] += row["connections"]
    target = None
    if spec is not None and spec.target_ref is not None:
        target = {"kind": spec.target_ref.kind, "name": spec.target_ref.name}
    return {
        "namespace": namespace,
        "name": name,
        "target": target,
        "connections": status.get("connections", 0),
        "topics": dict(status.get("topics") or {}),
        "pods": dict(status.get("pods") or {}),
        "averagePerPod": status.get("averagePerPod", 0),
        "desiredReplicas": status.get("desiredReplicas"),
        "currentReplicas": sum(1 for row in rows if not row["terminating"]),
        "maxConnectionsPerPod": max_per_pod,
        "conditions": [
            {
                "type": str(c.get("type")),
                "status": str(c.get("status")),
                "reason": str(c.get("reason") or ""),
                "message": str(c.get("message") or ""),
            }
            for c in status.get("conditions") or []
        ],
        "podList": rows[:MAX_PODS_PER_ENTRY],
        "podsOmitted": max(0, len(rows) - MAX_PODS_PER_ENTRY),
        "nodes": sorted(nodes.values(), key=lambda node: str(node["name"])),
        "events": controller.recent_events.of(namespace, name),
        "specError": record.spec_error if record is not None else "",
    }


def live_cluster_document(controller: Controller) -> dict[str, Any]:
    """The live view's cluster document (see the module's docstring)."""
    reports = _documents(controller)
    records = {(r.namespace, r.name): r for r in controller.records()}
    keys = sorted(set(records) | set(controller.summaries))
    entries = [_entry(controller, records.get(key), key, reports) for key in keys]
    totals: dict[str, int] = {}
    nodes: dict[str, dict[str, Any]] = {}
    connections = 0
    for entry in entries:
        connections += int(entry["connections"] or 0)
        for topic, count in entry["topics"].items():
            totals[topic] = totals.get(topic, 0) + int(count)
        for node in entry["nodes"]:
            empty = {"name": node["name"], "pods": 0, "connections": 0}
            total = nodes.setdefault(node["name"], empty)
            total["pods"] += node["pods"]
            total["connections"] += node["connections"]
    return {
        "connections": connections,
        "topics": fold_topics(totals, controller.settings.status.top_topics),
        "nodes": sorted(nodes.values(), key=lambda node: str(node["name"])),
        "connectionStats": entries,
        "otherTopic": OTHER_TOPIC,
        "generatedAt": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "seq": controller.version,
    }


class LiveDocuments:
    """The live document of one operator, shared by its live clients.

    Built at most once per change (a change: :attr:`Controller.version` moved, or the fleet
    changed: a sidecar report, a pod's readiness, a pod gone), however many clients ask. The
    fleet's changes also wake the clients, so a pod that starts draining is pushed even when
    no status changes.
    """

    def __init__(self, controller: Controller) -> None:
        self._controller = controller
        self.fleet_changes = 0
        self._fleet_changed = asyncio.Event()
        self._cached: tuple[tuple[int, int], dict[str, Any]] | None = None
        controller.fleet.add_listener(self._on_fleet_change)

    def _on_fleet_change(self, namespace: str) -> None:
        self.fleet_changes += 1
        event, self._fleet_changed = self._fleet_changed, asyncio.Event()
        event.set()

    @property
    def mark(self) -> tuple[int, int]:
        """What the document is built from, as two counters."""
        return (self._controller.version, self.fleet_changes)

    def current(self) -> dict[str, Any]:
        """The document as of now (cached until the next change)."""
        mark = self.mark
        if self._cached is None or self._cached[0] != mark:
            self._cached = (mark, live_cluster_document(self._controller))
        return self._cached[1]

    async def wait_change(self, seen: tuple[int, int], timeout: float) -> tuple[int, int]:
        """Wait until :attr:`mark` differs from ``seen`` (or the timeout); return it."""
        if self.mark != seen:
            return self.mark
        fleet = asyncio.ensure_future(self._fleet_changed.wait())
        version = asyncio.ensure_future(self._controller.wait_for_change(seen[0], timeout))
        try:
            await asyncio.wait(
                {fleet, version}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            fleet.cancel()
            version.cancel()
        return self.mark


class ClusterLiveSource:
    """The live source of one ``/stats/ws`` client on the operator."""

    allowed = OPERATOR_GETS

    def __init__(self, documents: LiveDocuments, heartbeat: float) -> None:
        self._documents = documents
        self._heartbeat = heartbeat
        self._seen = documents.mark

    def push(self) -> dict[str, Any]:
        """The latest cluster document."""
        return cluster_message(self._documents.current())

    def answer(self, request: LiveRequest) -> dict[str, Any]:
        """``cluster`` or one ``connectionstats``; :class:`LiveRequestError` for an unknown one."""
        document = self._documents.current()
        if request.get == GET_CLUSTER:
            return cluster_message(document, request.request_id)
        for entry in document["connectionStats"]:
            if (entry["namespace"], entry["name"]) == (request.namespace, request.name):
                return connectionstats_message(
                    request.namespace, request.name, entry, request.request_id
                )
        raise LiveRequestError(
            f"no ConnectionStats {request.namespace}/{request.name}", request.request_id
        )

    async def wait_change(self) -> None:
        """Return once the document's sources changed since the last return."""
        while True:
            mark = await self._documents.wait_change(self._seen, self._heartbeat)
            if mark != self._seen:
                self._seen = mark
                return
