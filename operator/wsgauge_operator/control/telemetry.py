"""The operator's own Prometheus metrics (served on ``/metrics`` by
:mod:`wsgauge_operator.servers.stats_server`).
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

POD_STATES = ("matched", "reporting", "unreachable", "ready", "terminating")
"""Values of the ``state`` label of ``wsgauge_connectionstats_pods``."""
COST_WRITE_REASONS = ("scale_down_near", "bands")
"""Values of the ``reason`` label of ``wsgauge_operator_deletion_cost_writes_total``:
exact order before a scale-down (``spec.autoscaling``), or the banded schedule (without it)."""
WRITE_RESULTS = ("ok", "error")
"""Values of the ``result`` label of the write counters."""


class Telemetry:
    """Counters and gauges about the operator's work, in a private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.followers = Gauge(
            "wsgauge_operator_followers", "Sidecars being followed", registry=self.registry
        )
        self.followers_over_limit = Gauge(
            "wsgauge_operator_followers_over_limit",
            "Selected sidecars not followed because --max-followed-pods was reached",
            registry=self.registry,
        )
        self.round_seconds = Histogram(
            "wsgauge_operator_round_seconds",
            "Computing time of one ConnectionStats round (aggregation and decisions, no writes)",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        self.follower_connects = Counter(
            "wsgauge_operator_follower_connects_total",
            "Connections opened to sidecars (watch streams and polls)",
            ["mode"],
            registry=self.registry,
        )
        self.follower_failures = Counter(
            "wsgauge_operator_follower_failures_total",
            "Failed or broken connections to sidecars",
            registry=self.registry,
        )
        self.documents = Counter(
            "wsgauge_operator_documents_total",
            "Stats documents received from sidecars",
            registry=self.registry,
        )
        self.sidecar_restarts = Counter(
            "wsgauge_operator_sidecar_restarts_total",
            "Sidecar restarts noticed (seq started over or startedAt changed)",
            registry=self.registry,
        )
        self.status_writes = Counter(
            "wsgauge_operator_status_writes_total",
            "ConnectionStats status writes",
            ["result"],
            registry=self.registry,
        )
        self.condition_writes = Counter(
            "wsgauge_operator_pod_condition_writes_total",
            "Pod readiness-gate condition writes",
            ["status", "result"],
            registry=self.registry,
        )
        self.deletion_cost_writes = Counter(
            "wsgauge_operator_deletion_cost_writes_total",
            "Pod deletion-cost annotation writes",
            ["reason", "result"],
            registry=self.registry,
        )
        for reason in COST_WRITE_REASONS:  # every series exists from the start (at 0)
            for result in WRITE_RESULTS:
                self.deletion_cost_writes.labels(reason, result)
        self.events = Counter(
            "wsgauge_operator_events_total",
            "Kubernetes Events recorded",
            ["reason"],
            registry=self.registry,
        )
        self.connectionstats = Gauge(
            "wsgauge_operator_connectionstats", "ConnectionStats handled", registry=self.registry
        )
        self.connections = Gauge(
            "wsgauge_connectionstats_connections",
            "Open WebSocket connections of a ConnectionStats (sum over its reporting pods)",
            ["namespace", "name"],
            registry=self.registry,
        )
        self.pods = Gauge(
            "wsgauge_connectionstats_pods",
            "Pods of a ConnectionStats by state",
            ["namespace", "name", "state"],
            registry=self.registry,
        )

    def forget(self, namespace: str, name: str) -> None:
        """Drop the series of a deleted ConnectionStats."""
        _remove(self.connections, namespace, name)
        for state in POD_STATES:
            _remove(self.pods, namespace, name, state)


def _remove(gauge: Gauge, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        gauge.remove(*labels)
