"""Unit tests of the operator's own metrics: the per-ConnectionStats pod series."""

from __future__ import annotations

from wsgauge_operator.control.telemetry import POD_STATES, Telemetry


def _pod_series(telemetry: Telemetry) -> set[tuple[str, str, str]]:
    found = set()
    for metric in telemetry.registry.collect():
        for sample in metric.samples:
            if sample.name == "wsgauge_connectionstats_pods":
                labels = sample.labels
                found.add((labels["namespace"], labels["name"], labels["state"]))
    return found


def test_forgetting_a_connectionstats_drops_every_pod_state_series() -> None:
    """Every state the controller publishes (terminating too) goes with the ConnectionStats."""
    telemetry = Telemetry()
    for state in POD_STATES:
        telemetry.pods.labels("prod", "chat", state).set(1)
        telemetry.pods.labels("prod", "other", state).set(1)
    assert "terminating" in POD_STATES
    telemetry.forget("prod", "chat")
    assert _pod_series(telemetry) == {("prod", "other", state) for state in POD_STATES}


def test_deletion_cost_write_series_exist_from_the_start() -> None:
    """Prometheus (and the e2e test of every documented metric) sees them before any write."""
    samples = {
        (sample.labels["reason"], sample.labels["result"]): sample.value
        for metric in Telemetry().registry.collect()
        for sample in metric.samples
        if sample.name == "wsgauge_operator_deletion_cost_writes_total"
    }
    assert samples == {
        (reason, result): 0.0
        for reason in ("scale_down_near", "bands")
        for result in ("ok", "error")
    }
