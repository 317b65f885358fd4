"""The chart's optional NetworkPolicy for the sidecar admin port, and the report port it hands
to the injector, rendered by the real helm (no cluster)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from chart_render_harness import CHART, Render, find, one, run_helm
from wsgauge_operator.injector.plan import settings_from_mapping

OPERATOR_LABELS = {
    "app.kubernetes.io/name": "wsgauge",
    "app.kubernetes.io/instance": "rel",
    "app.kubernetes.io/component": "operator",
}


def _operator_pod_labels(objects: list[dict[str, Any]]) -> dict[str, str]:
    deployment = one(objects, "Deployment", "rel-wsgauge-operator")
    return dict(deployment["spec"]["template"]["metadata"]["labels"])


def test_no_network_policy_by_default(render: Render) -> None:
    assert find(render(), "NetworkPolicy") == []


def test_network_policy_admits_the_admin_port_only_from_the_operator(render: Render) -> None:
    objects = render(
        "networkPolicy.enabled=true",
        "networkPolicy.namespaces={chat,feeds}",
        "networkPolicy.podSelector.matchLabels.app=chat",
    )
    policies = find(objects, "NetworkPolicy")
    assert sorted(p["metadata"]["namespace"] for p in policies) == ["chat", "feeds"]
    for policy in policies:
        spec = policy["spec"]
        assert spec["podSelector"] == {"matchLabels": {"app": "chat"}}
        assert spec["policyTypes"] == ["Ingress"]
        admin_rule, other_rule = spec["ingress"]
        assert admin_rule["ports"] == [{"protocol": "TCP", "port": 9090}]
        (peer,) = admin_rule["from"]
        # namespaceSelector AND podSelector in one peer: the operator's pods in the release
        # namespace, not every pod of that namespace nor pods with those labels elsewhere
        assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "wsg"}}
        assert peer["podSelector"] == {"matchLabels": OPERATOR_LABELS}
        labels = _operator_pod_labels(objects)
        assert all(labels[key] == value for key, value in OPERATOR_LABELS.items())
        # every other port stays open to anyone (no "from": all sources); 9090 is not in them
        assert "from" not in other_rule
        assert other_rule["ports"] == [
            {"protocol": "TCP", "port": 1, "endPort": 9089},
            {"protocol": "TCP", "port": 9091, "endPort": 65535},
            {"protocol": "UDP", "port": 1, "endPort": 65535},
        ]


def test_network_policy_follows_the_admin_port_and_extra_peers(render: Render) -> None:
    objects = render(
        "networkPolicy.enabled=true",
        "operator.watchNamespaces={chat}",
        "injector.sidecar.adminPort=65535",
        "networkPolicy.extraAdminFrom[0].namespaceSelector.matchLabels.name=monitoring",
    )
    policy = one(objects, "NetworkPolicy")
    assert policy["metadata"]["namespace"] == "chat"  # operator.watchNamespaces by default
    assert policy["spec"]["podSelector"] == {}
    admin_rule, other_rule = policy["spec"]["ingress"]
    assert admin_rule["ports"] == [{"protocol": "TCP", "port": 65535}]
    assert admin_rule["from"][1] == {"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}
    assert other_rule["ports"] == [
        {"protocol": "TCP", "port": 1, "endPort": 65534},
        {"protocol": "UDP", "port": 1, "endPort": 65535},
    ]
    first = one(render("networkPolicy.enabled=true", "networkPolicy.namespaces={a}",
                       "injector.sidecar.adminPort=1"), "NetworkPolicy")  # fmt: skip
    assert first["spec"]["ingress"][1]["ports"][0] == {
        "protocol": "TCP", "port": 2, "endPort": 65535,
    }  # fmt: skip


def test_network_policy_needs_namespaces(helm_binary: Path) -> None:
    result = run_helm(
        helm_binary, "template", "rel", str(CHART), "--set", "networkPolicy.enabled=true"
    )
    assert result.returncode != 0
    assert "networkPolicy.namespaces" in result.stderr


@pytest.mark.parametrize(
    "bad",
    [
        "networkPolicy.bogus=1",
        "networkPolicy.enabled=maybe",
        "networkPolicy.namespaces={Not_A_Name}",
        "networkPolicy.podSelector.bogus=1",
        "injector.sidecar.reportPort=0",
        "injector.sidecar.reportPort=70000",
    ],
)
def test_schema_rejects_bad_network_policy_and_report_port_values(
    helm_binary: Path, bad: str
) -> None:
    result = run_helm(helm_binary, "template", "rel", str(CHART), "--set", bad)
    assert result.returncode != 0
    assert "schema" in result.stderr


def test_report_port_reaches_the_injector(render: Render) -> None:
    objects = render("injector.sidecar.topic=report", "injector.sidecar.reportPort=7777")
    data = one(objects, "ConfigMap", "rel-wsgauge-injector")["data"]["injector.json"]
    settings = settings_from_mapping(json.loads(data))
    assert (settings.topic, settings.report_port) == ("report", 7777)
    default = one(render(), "ConfigMap", "rel-wsgauge-injector")["data"]["injector.json"]
    assert settings_from_mapping(json.loads(default)).report_port == 9091


def test_helm_lint_passes_with_the_network_policy(helm_binary: Path) -> None:
    result = run_helm(
        helm_binary, "lint", "--strict", str(CHART),
        "--set", "networkPolicy.enabled=true,networkPolicy.namespaces={chat}",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
