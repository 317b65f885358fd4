"""Invalid ConnectionStats specs are refused by the real API server (schema and CEL rules).

test_operator_it_cluster.py::test_invalid_specs_rejected_or_reported covers the CEL rules
(minReplicas > maxReplicas, empty selector, port 0, targetRef with autoscaling, target
above capacity, In without values, a bad statusInterval) and the runtime impossibilities
reported as conditions (no pod matched, sidecarPort name not on the pod), and
test_operator_it_autoscaling.py the missing target (TargetNotFound). This adds the rest of
the schema: every bound and type in crds/connectionstats.yaml, checked with a server-side
dry run (nothing is stored, no operator needed). A valid spec passes the same dry run, so
a refusal is about the one field changed.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from operator_it_cluster_helpers import connection_stats
from wsgauge_devcluster.testing import KubeCluster

AUTOSCALING = {"minReplicas": 1, "maxReplicas": 3, "targetConnectionsPerPod": 10}

# (what the error names, spec fields replaced)
INVALID_SPECS: list[tuple[str, dict[str, Any]]] = [
    ("spec.selector: Required value", {"selector": None}),
    ("sidecarPort must be", {"sidecarPort": 70000}),
    ("sidecarPort must be", {"sidecarPort": -1}),
    ("sidecarPort must be", {"sidecarPort": "Admin_Port"}),
    ("sidecarPort must be", {"sidecarPort": "a-very-long-port-name"}),
    ("sidecarPort must be", {"sidecarPort": ""}),
    ("spec.selector.matchExpressions[0].operator", {
        "selector": {"matchExpressions": [{"key": "app", "operator": "Maybe"}]}}),
    ("Exists/DoesNotExist take none", {
        "selector": {"matchExpressions": [{"key": "app", "operator": "Exists",
                                           "values": ["x"]}]}}),
    ("spec.selector.matchExpressions[0].key", {
        "selector": {"matchExpressions": [{"key": "", "operator": "Exists"}]}}),
    ("spec.selector.matchLabels.app", {"selector": {"matchLabels": {"app": "x" * 64}}}),
    ("spec.selector.matchLabels", {"selector": {"matchLabels": {f"k{i}": "v" for i in range(65)}}}),
    ("spec.selector.matchLabels.app", {"selector": {"matchLabels": {"app": 5}}}),
    ("spec.targetRef.name", {"targetRef": {"apiVersion": "apps/v1", "kind": "Deployment"}}),
    ("spec.targetRef.kind", {"targetRef": {"apiVersion": "apps/v1", "kind": "", "name": "c"}}),
    ("spec.capacity.maxConnectionsPerPod", {"capacity": {"maxConnectionsPerPod": 0}}),
    ("spec.capacity.maxConnectionsPerPod", {"capacity": {"maxConnectionsPerPod": "lots"}}),
    ("spec.capacity.minReadyPods", {"capacity": {"maxConnectionsPerPod": 9, "minReadyPods": -1}}),
    ("spec.autoscaling.maxReplicas", {"autoscaling": {**AUTOSCALING, "maxReplicas": 0}}),
    ("spec.autoscaling.minReplicas", {"autoscaling": {**AUTOSCALING, "minReplicas": 0}}),
    ("spec.autoscaling.targetConnectionsPerPod", {
        "autoscaling": {**AUTOSCALING, "targetConnectionsPerPod": -5}}),
    ("spec.autoscaling.maxReplicas: Required value", {
        "autoscaling": {"targetConnectionsPerPod": 10}}),
    ("spec.autoscaling.topic", {"autoscaling": {**AUTOSCALING, "topic": ""}}),
    ("spec.autoscaling.maxReplicas", {"autoscaling": {**AUTOSCALING, "maxReplicas": 2.5}}),
    ("spec.statusInterval", {"statusInterval": "10"}),
    ("spec.statusInterval", {"statusInterval": "1s; rm -rf /"}),
    ("spec.statusInterval", {"statusInterval": "1s" * 20}),
    ('unknown field "spec.replicas"', {"replicas": 3}),
]  # fmt: skip


def _dry_run(kube: KubeCluster, body: dict[str, Any]) -> tuple[int, str]:
    body["spec"] = {key: value for key, value in body["spec"].items() if value is not None}
    result = kube.kubectl(
        "create", "--dry-run=server", "--validate=strict", "-f", "-",
        input_text=json.dumps(body), check=False,
    )  # fmt: skip
    return result.returncode, result.stderr


def test_a_valid_spec_passes_the_same_dry_run(kube: KubeCluster, crd: str, namespace: str) -> None:
    code, error = _dry_run(kube, connection_stats(namespace, "ok", autoscaling=AUTOSCALING))
    assert code == 0, error


@pytest.mark.parametrize(
    ("message", "spec"),
    INVALID_SPECS,
    ids=[f"{i}-{m[:30]}" for i, (m, _) in enumerate(INVALID_SPECS)],
)
def test_invalid_spec_is_refused_by_the_api_server(
    kube: KubeCluster, crd: str, namespace: str, message: str, spec: dict[str, Any]
) -> None:
    code, error = _dry_run(kube, connection_stats(namespace, "bad", **spec))
    assert code != 0, f"accepted: {spec}"
    assert message in error, error
