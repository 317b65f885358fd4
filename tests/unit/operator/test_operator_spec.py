"""Unit tests of ConnectionStats spec parsing, label selectors and durations."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wsgauge_operator.autoscaling.hpa import build_hpa, hpa_manifest
from wsgauge_operator.model.exceptions import SpecError
from wsgauge_operator.model.label_selector import (
    LabelSelector,
    Operator,
    Requirement,
    parse_label_selector,
)
from wsgauge_operator.model.spec import OtherWriters, parse_duration, parse_spec

SCALING = {"maxReplicas": 4, "targetConnectionsPerPod": 10}


def valid_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "selector": {"matchLabels": {"app": "chat"}},
        "sidecarPort": 9090,
        "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "chat"},
        "capacity": {"maxConnectionsPerPod": 5000, "minReadyPods": 2},
        "autoscaling": {"minReplicas": 2, "maxReplicas": 50, "targetConnectionsPerPod": 1000},
        "statusInterval": "1500ms",
    }
    spec.update(overrides)
    return spec


def test_full_spec_is_parsed() -> None:
    spec = parse_spec(valid_spec())
    assert spec.selector == LabelSelector.from_match({"app": "chat"})
    assert spec.sidecar_port == 9090
    assert spec.target_ref is not None
    assert spec.target_ref.name == "chat"
    assert spec.capacity.max_connections_per_pod == 5000
    assert spec.capacity.min_ready_pods == 2
    assert spec.autoscaling is not None
    assert (spec.autoscaling.min_replicas, spec.autoscaling.max_replicas) == (2, 50)
    assert spec.status_interval == pytest.approx(1.5)


def test_minimal_spec_gets_defaults() -> None:
    spec = parse_spec({"selector": {"matchLabels": {"app": "x"}}})
    assert spec.sidecar_port == 9090
    assert spec.capacity.max_connections_per_pod is None
    assert spec.capacity.min_ready_pods == 1
    assert spec.autoscaling is None
    assert spec.status_interval is None


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"selector": {}}, "selector"),
        ({"selector": None}, "selector"),
        (
            {"selector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
            "selector.matchExpressions[0]",
        ),
        (
            {"selector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}},
            "selector.matchExpressions[0]",
        ),
        ({"sidecarPort": 0}, "sidecarPort"),
        ({"sidecarPort": 70000}, "sidecarPort"),
        ({"sidecarPort": "Bad_Name"}, "sidecarPort"),
        ({"sidecarPort": True}, "sidecarPort"),
        ({"capacity": {"maxConnectionsPerPod": 0}}, "capacity.maxConnectionsPerPod"),
        ({"capacity": {"minReadyPods": -1}}, "capacity.minReadyPods"),
        (
            {"autoscaling": {"minReplicas": 5, "maxReplicas": 2, "targetConnectionsPerPod": 1}},
            "autoscaling",
        ),
        ({"autoscaling": {"maxReplicas": 2}}, "autoscaling.targetConnectionsPerPod"),
        ({"targetRef": None}, "targetRef"),
        ({"targetRef": {"kind": "Deployment", "name": "x"}}, "targetRef.apiVersion"),
        ({"statusInterval": "2 seconds"}, "statusInterval"),
        ({"statusInterval": "0s"}, "statusInterval"),
        (
            {"autoscaling": dict(SCALING, behavior={"scaleUp": {"tolerance": "ten"}})},
            "autoscaling.behavior.scaleUp.tolerance",
        ),
        (
            {"autoscaling": dict(SCALING, behavior={"scaleDown": {"tolerance": "-1"}})},
            "autoscaling.behavior.scaleDown.tolerance",
        ),
        (
            {"autoscaling": dict(SCALING, behavior={"scaleDown": {"tolerance": True}})},
            "autoscaling.behavior.scaleDown.tolerance",
        ),
        (
            {"autoscaling": dict(SCALING, behavior={"scaleDown": []})},
            "autoscaling.behavior.scaleDown",
        ),
        (
            {"autoscaling": dict(
                SCALING, behavior={"scaleDown": {"stabilizationWindowSeconds": 3601}}
            )},
            "autoscaling.behavior.scaleDown.stabilizationWindowSeconds",
        ),
        (
            {"autoscaling": dict(SCALING, deletionCost={"otherWriters": "Fight"})},
            "autoscaling.deletionCost.otherWriters",
        ),
        ({"autoscaling": dict(SCALING, deletionCost="Yield")}, "autoscaling.deletionCost"),
    ],
)  # fmt: skip
def test_invalid_specs_name_the_field(override: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(valid_spec(**override))
    assert caught.value.field == field
    assert f"spec.{field}" in str(caught.value)


def test_behavior_tolerances_window_and_deletion_cost_mode() -> None:
    defaults = parse_spec(valid_spec()).autoscaling
    assert defaults is not None
    assert (defaults.scale_up_tolerance, defaults.scale_down_tolerance) == (0.1, 0.1)
    assert defaults.scale_down_window_seconds == 300
    assert defaults.deletion_cost.other_writers is OtherWriters.YIELD
    behavior = {
        "scaleUp": {"tolerance": "500m"},
        "scaleDown": {"tolerance": 0.25, "stabilizationWindowSeconds": 20},
    }
    autoscaling = dict(SCALING, behavior=behavior, deletionCost={"otherWriters": "Overwrite"})
    parsed = parse_spec(valid_spec(autoscaling=autoscaling)).autoscaling
    assert parsed is not None
    assert (parsed.scale_up_tolerance, parsed.scale_down_tolerance) == (0.5, 0.25)
    assert parsed.scale_down_window_seconds == 20
    assert parsed.deletion_cost.other_writers is OtherWriters.OVERWRITE
    assert parsed.behavior == behavior  # the HPA still gets it as written


def test_spec_must_be_an_object() -> None:
    with pytest.raises(SpecError):
        parse_spec(["not", "a", "mapping"])


def test_named_and_numeric_string_ports() -> None:
    assert parse_spec(valid_spec(sidecarPort="wsgauge-admin")).sidecar_port == "wsgauge-admin"
    assert parse_spec(valid_spec(sidecarPort="9191")).sidecar_port == 9191


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("2s", 2.0), ("500ms", 0.5), ("1m30s", 90.0), ("1h", 3600.0), ("0.25s", 0.25)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "2", "s", "2x", "1m 30s", "-1s", "2s!"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_selector_matching() -> None:
    selector = LabelSelector.from_match(
        {"app": "chat"},
        (
            Requirement("tier", Operator.IN, ("web", "edge")),
            Requirement("canary", Operator.DOES_NOT_EXIST),
            Requirement("zone", Operator.NOT_IN, ("b",)),
            Requirement("team", Operator.EXISTS),
        ),
    )
    base = {"app": "chat", "tier": "web", "team": "x"}
    assert selector.matches(base)
    assert selector.matches({**base, "zone": "a"})
    assert not selector.matches({**base, "zone": "b"})
    assert not selector.matches({**base, "canary": "1"})
    assert not selector.matches({**base, "tier": "db"})
    assert not selector.matches({k: v for k, v in base.items() if k != "team"})
    assert not selector.matches({**base, "app": "other"})
    assert selector.to_query() == "app=chat,tier in (web,edge),!canary,zone notin (b),team"


LABEL_KEYS = ("app", "tier", "zone")
LABEL_VALUES = ("a", "b", "c")
structured_selectors = st.fixed_dictionaries(
    {
        "matchLabels": st.dictionaries(
            st.sampled_from(LABEL_KEYS), st.sampled_from(LABEL_VALUES), max_size=2
        ),
        "matchExpressions": st.lists(
            st.one_of(
                st.fixed_dictionaries(
                    {
                        "key": st.sampled_from(LABEL_KEYS),
                        "operator": st.sampled_from(("In", "NotIn")),
                        "values": st.lists(
                            st.sampled_from(LABEL_VALUES), min_size=1, max_size=2, unique=True
                        ),
                    }
                ),
                st.fixed_dictionaries(
                    {
                        "key": st.sampled_from(LABEL_KEYS),
                        "operator": st.sampled_from(("Exists", "DoesNotExist")),
                    }
                ),
            ),
            max_size=3,
        ),
    }
).filter(lambda raw: bool(raw["matchLabels"] or raw["matchExpressions"]))
label_sets = st.dictionaries(st.sampled_from(LABEL_KEYS), st.sampled_from(LABEL_VALUES))


@given(structured_selectors, label_sets)
def test_spec_selector_and_its_string_form_select_alike(
    raw: dict[str, Any], labels: dict[str, str]
) -> None:
    """One selector model: a spec's selector, written as a query and parsed back by the
    string parser, selects the same label sets."""
    selector = parse_spec(valid_spec(selector=raw)).selector
    assert parse_label_selector(selector.to_query()).matches(labels) == selector.matches(labels)


def test_spec_and_manifest_share_one_validation() -> None:
    spec = parse_spec(valid_spec(autoscaling={"maxReplicas": 3, "targetConnectionsPerPod": 7}))
    assert spec.target_ref is not None
    assert spec.autoscaling is not None
    manifest = hpa_manifest("chat", "prod", "uid-1", spec.target_ref, spec.autoscaling)
    body = {
        "metadata": {"name": "chat", "namespace": "prod", "uid": "uid-1"},
        "spec": valid_spec(autoscaling={"maxReplicas": 3, "targetConnectionsPerPod": 7}),
    }
    assert build_hpa(body) == manifest
    assert manifest["spec"]["minReplicas"] == 1
