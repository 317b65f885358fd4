"""The owned HPA manifest, its update decision, and the HPA replica arithmetic."""

from __future__ import annotations

import copy
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wsgauge_operator.autoscaling.hpa import (
    build_hpa,
    desired_replicas,
    desired_replicas_from_source,
    hpa_is_owned_by,
    hpa_needs_update,
)
from wsgauge_operator.model.exceptions import SpecError
from wsgauge_operator.model.metrics_source import PodMetrics, StaticMetricsSource
from wsgauge_operator.model.spec import parse_quantity


def connection_stats(**autoscaling: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "selector": {"matchLabels": {"app": "chat"}},
        "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "chat"},
    }
    if autoscaling:
        spec["autoscaling"] = autoscaling
    return {
        "apiVersion": "wsgauge.dev/v1alpha1",
        "kind": "ConnectionStats",
        "metadata": {"name": "chat", "namespace": "prod", "uid": "uid-1"},
        "spec": spec,
    }


def test_no_autoscaling_section_means_no_hpa() -> None:
    assert build_hpa(connection_stats()) is None


def test_full_manifest() -> None:
    hpa = build_hpa(connection_stats(minReplicas=2, maxReplicas=50, targetConnectionsPerPod=1000))
    assert hpa == {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {
            "name": "chat",
            "namespace": "prod",
            "labels": {
                "app.kubernetes.io/managed-by": "wsgauge-operator",
                "wsgauge.dev/connectionstats": "chat",
            },
            "ownerReferences": [
                {
                    "apiVersion": "wsgauge.dev/v1alpha1",
                    "kind": "ConnectionStats",
                    "name": "chat",
                    "uid": "uid-1",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "chat"},
            "minReplicas": 2,
            "maxReplicas": 50,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": "wsgauge_connections"},
                        "target": {"type": "AverageValue", "averageValue": "1000"},
                    },
                }
            ],
        },
    }
    assert hpa_is_owned_by(hpa, "uid-1")
    assert not hpa_is_owned_by(hpa, "uid-2")


def test_topic_and_behavior() -> None:
    behavior = {"scaleDown": {"stabilizationWindowSeconds": 30}}
    hpa = build_hpa(
        connection_stats(
            maxReplicas=10, targetConnectionsPerPod=20, topic="stream", behavior=behavior
        )
    )
    assert hpa is not None
    assert hpa["spec"]["minReplicas"] == 1
    assert hpa["spec"]["metrics"][0]["pods"]["metric"] == {
        "name": "wsgauge_connections",
        "selector": {"matchLabels": {"topic": "stream"}},
    }
    assert hpa["spec"]["behavior"] == behavior
    assert hpa["spec"]["behavior"] is not behavior


@pytest.mark.parametrize(
    ("autoscaling", "field"),
    [
        ({"targetConnectionsPerPod": 5}, "autoscaling.maxReplicas"),
        ({"maxReplicas": 5}, "autoscaling.targetConnectionsPerPod"),
        ({"maxReplicas": 2, "minReplicas": 3, "targetConnectionsPerPod": 5}, "autoscaling"),
        ({"maxReplicas": 0, "targetConnectionsPerPod": 5}, "autoscaling.maxReplicas"),
        ({"maxReplicas": 2, "targetConnectionsPerPod": 0}, "autoscaling.targetConnectionsPerPod"),
        ({"maxReplicas": "2", "targetConnectionsPerPod": 1}, "autoscaling.maxReplicas"),
        (
            {"maxReplicas": 2, "targetConnectionsPerPod": True},
            "autoscaling.targetConnectionsPerPod",
        ),
        ({"maxReplicas": 2, "targetConnectionsPerPod": 1, "topic": 3}, "autoscaling.topic"),
    ],
)
def test_invalid_autoscaling(autoscaling: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as caught:
        build_hpa(connection_stats(**autoscaling))
    assert caught.value.field == field


def test_missing_target_ref() -> None:
    body = connection_stats(maxReplicas=2, targetConnectionsPerPod=1)
    del body["spec"]["targetRef"]["kind"]
    with pytest.raises(SpecError) as caught:
        build_hpa(body)
    assert caught.value.field == "targetRef.kind"


@pytest.mark.parametrize(
    ("text", "value"),
    [("1000", 1000), ("1k", 1000), ("1500m", 1.5), ("1Ki", 1024), ("1e3", 1000), ("2M", 2e6)],
)
def test_parse_quantity(text: str, value: float) -> None:
    assert parse_quantity(text) == pytest.approx(value)


def test_parse_quantity_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="not a quantity"):
        parse_quantity("ten")


def server_view(hpa: dict[str, Any]) -> dict[str, Any]:
    """What the API server gives back: defaults filled in, quantities canonical, extras."""
    existing = copy.deepcopy(hpa)
    existing["metadata"]["resourceVersion"] = "17"
    existing["metadata"]["labels"]["extra"] = "x"
    existing["spec"]["metrics"][0]["pods"]["target"]["averageValue"] = "1k"
    behavior = existing["spec"].setdefault("behavior", {})
    behavior.setdefault("scaleUp", {"stabilizationWindowSeconds": 0, "selectPolicy": "Max"})
    behavior.setdefault("scaleDown", {})
    behavior["scaleDown"].setdefault("selectPolicy", "Max")
    behavior["scaleDown"].setdefault(
        "policies", [{"type": "Percent", "value": 100, "periodSeconds": 15}]
    )
    existing["status"] = {"currentReplicas": 3}
    return existing


def test_needs_update_ignores_server_defaults() -> None:
    plain = build_hpa(connection_stats(maxReplicas=5, targetConnectionsPerPod=1000))
    with_behavior = build_hpa(
        connection_stats(
            maxReplicas=5,
            targetConnectionsPerPod=1000,
            behavior={"scaleDown": {"stabilizationWindowSeconds": 30}},
        )
    )
    assert plain is not None
    assert with_behavior is not None
    assert not hpa_needs_update(server_view(plain), plain)
    assert not hpa_needs_update(server_view(with_behavior), with_behavior)


@pytest.mark.parametrize(
    "change",
    [
        {"maxReplicas": 6},
        {"minReplicas": 2},
        {"targetConnectionsPerPod": 999},
        {"topic": "stream"},
        {"behavior": {"scaleDown": {"stabilizationWindowSeconds": 31}}},
    ],
)
def test_needs_update_on_owned_changes(change: dict[str, Any]) -> None:
    base = {
        "maxReplicas": 5,
        "targetConnectionsPerPod": 1000,
        "behavior": {"scaleDown": {"stabilizationWindowSeconds": 30}},
    }
    old = build_hpa(connection_stats(**base))
    new = build_hpa(connection_stats(**{**base, **change}))
    assert old is not None
    assert new is not None
    assert hpa_needs_update(server_view(old), new)


def test_needs_update_when_target_or_owner_changes() -> None:
    desired = build_hpa(connection_stats(maxReplicas=5, targetConnectionsPerPod=10))
    assert desired is not None
    moved = server_view(desired)
    moved["spec"]["scaleTargetRef"]["name"] = "other"
    assert hpa_needs_update(moved, desired)
    orphan = server_view(desired)
    orphan["metadata"]["ownerReferences"] = []
    assert hpa_needs_update(orphan, desired)
    unlabeled = server_view(desired)
    del unlabeled["metadata"]["labels"]["wsgauge.dev/connectionstats"]
    assert hpa_needs_update(unlabeled, desired)


def calc(
    current: int, values: list[int], target: int, lo: int = 1, hi: int = 100, **kw: Any
) -> int:
    return desired_replicas(
        current_replicas=current,
        pod_connections=values,
        target_per_pod=target,
        min_replicas=lo,
        max_replicas=hi,
        **kw,
    )


def test_examples_from_the_issue() -> None:
    # 120 sockets over 2 pods at 20 per pod: scale to 6.
    assert calc(2, [60, 60], 20, 1, 10) == 6
    # most sockets closed: 6 pods with 13 in total -> ceil(13/20) = 1.
    assert calc(6, [5, 3, 2, 1, 1, 1], 20, 1, 10) == 1
    # clamped to max
    assert calc(2, [500, 500], 20, 1, 10) == 10


def test_tolerance_keeps_current() -> None:
    # mean 21 vs target 20: ratio 1.05 within 10%: no change.
    assert calc(4, [21, 21, 21, 21], 20) == 4
    # mean 23: ratio 1.15: ceil(1.15 * 4) = 5.
    assert calc(4, [23, 23, 23, 23], 20) == 5
    # asymmetric tolerance
    assert calc(4, [21] * 4, 20, scale_up_tolerance=0.0) == 5


def test_disabled_and_out_of_range_current() -> None:
    assert calc(0, [100], 10, 1, 5) == 0
    assert calc(9, [100], 10, 1, 5) == 5
    assert calc(1, [0], 10, 3, 5) == 3
    assert calc(3, [], 10, 1, 5) == 3


def test_missing_pods_dampen_scale_down_and_scale_up() -> None:
    # scale-down: missing pods count as the target: [0, 0, 20, 20] mean 10 -> ceil(0.5*4)=2
    assert calc(4, [0, 0], 20, missing_pods=2) == 2
    # without the missing pods, it would go to 1
    assert calc(4, [0, 0], 20) == 1
    # scale-up: missing pods count as zero: [40, 0] -> mean 20 -> within tolerance: keep
    assert calc(2, [40], 20, missing_pods=1) == 2


@given(
    values=st.lists(st.integers(0, 5000), min_size=1, max_size=30),
    target=st.integers(1, 2000),
    current=st.integers(1, 60),
    lo=st.integers(1, 10),
    span=st.integers(0, 50),
)
def test_matches_ceil_of_sum_over_target_outside_tolerance(
    values: list[int], target: int, current: int, lo: int, span: int
) -> None:
    hi = lo + span
    result = calc(current, values, target, lo, hi)
    assert lo <= result <= hi
    if not lo <= current <= hi:
        return
    mean_milli = (sum(values) * 1000) // len(values)
    ratio = mean_milli / (target * 1000)
    if abs(1.0 - ratio) <= 0.1:
        assert result == current
    else:
        assert result == max(lo, min(hi, math.ceil(ratio * len(values))))


def test_desired_replicas_from_source_sees_what_the_hpa_sees() -> None:
    now = datetime(2026, 11, 26, 10, 0, 0, tzinfo=UTC)
    fresh = now - timedelta(seconds=2)
    source = StaticMetricsSource(
        pods=[
            PodMetrics("prod", "a", {"app": "chat"}, 60, {"stream": 50}, fresh, True),
            PodMetrics("prod", "b", {"app": "chat"}, 60, {"stream": 10}, fresh, True),
            PodMetrics("prod", "down", {"app": "chat"}, 500, {}, fresh, False),
            PodMetrics("prod", "old", {"app": "chat"}, 500, {}, now - timedelta(hours=1), True),
        ]
    )

    def run(running: list[str], topic: str | None = None) -> int:
        return desired_replicas_from_source(
            source,
            namespace="prod",
            running_pods=running,
            current_replicas=len(running),
            target_per_pod=20,
            min_replicas=1,
            max_replicas=10,
            topic=topic,
            now=now,
            max_age_seconds=30,
        )

    assert run(["a", "b"]) == 6
    assert run(["a", "b"], topic="stream") == 3
    # unreachable and stale pods are "missing": on a scale-up they count as 0
    assert run(["a", "b", "down", "old"]) == calc(4, [60, 60], 20, 1, 10, missing_pods=2)
    assert run(["a", "b", "down", "old"]) == 6
    assert run([]) == 0  # replicas 0: the HPA treats autoscaling as disabled


def test_per_direction_tolerances_pass_through_and_compare_by_value() -> None:
    behavior = {
        "scaleUp": {"tolerance": "0.5"},
        "scaleDown": {"tolerance": "0.25", "stabilizationWindowSeconds": 20},
    }
    hpa = build_hpa(connection_stats(maxReplicas=3, targetConnectionsPerPod=10, behavior=behavior))
    assert hpa is not None
    assert hpa["spec"]["behavior"] == behavior  # as written
    existing = server_view(hpa)
    existing["spec"]["metrics"][0]["pods"]["target"]["averageValue"] = "10"
    existing["spec"]["behavior"]["scaleUp"]["tolerance"] = "500m"  # the server's canonical form
    existing["spec"]["behavior"]["scaleDown"]["tolerance"] = "250m"
    assert not hpa_needs_update(existing, hpa)
    existing["spec"]["behavior"]["scaleUp"]["tolerance"] = "400m"
    assert hpa_needs_update(existing, hpa)


def test_desired_replicas_from_source_uses_the_spec_tolerances() -> None:
    now = datetime(2026, 11, 26, 10, 0, 0, tzinfo=UTC)
    pods = [PodMetrics("prod", n, {}, 14, {}, now, True) for n in ("a", "b")]

    def run(up: float, down: float, value: int) -> int:
        source = StaticMetricsSource(
            pods=[PodMetrics("prod", p.name, {}, value, {}, now, True) for p in pods]
        )
        return desired_replicas_from_source(
            source,
            namespace="prod",
            running_pods=["a", "b"],
            current_replicas=2,
            target_per_pod=10,
            min_replicas=1,
            max_replicas=10,
            now=now,
            max_age_seconds=30,
            scale_up_tolerance=up,
            scale_down_tolerance=down,
        )

    assert run(0.1, 0.1, 14) == 3  # ratio 1.4: beyond the default 10 %
    assert run(0.5, 0.1, 14) == 2  # within a 50 % scale-up tolerance
    assert run(0.5, 0.1, 16) == 4  # 1.6: beyond it
    assert run(0.1, 0.1, 7) == 2  # 0.7 -> ceil(1.4) = 2 either way
    assert run(0.1, 0.1, 4) == 1  # 0.4
    assert run(0.1, 0.7, 4) == 2  # within a 70 % scale-down tolerance
