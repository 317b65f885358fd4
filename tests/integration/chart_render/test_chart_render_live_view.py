"""The chart's live view values: the page on by default (the operator told by environment), an
optional Ingress to the stats Service, and a strict schema for them."""

from __future__ import annotations

from pathlib import Path

import pytest
from chart_render_harness import CHART, Render, find, one, run_helm


def _operator_env(objects: list[dict[str, object]]) -> dict[str, str]:
    deployment = one(objects, "Deployment", "rel-wsgauge-operator")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container["env"]}


def test_live_page_on_by_default_and_no_ingress(render: Render) -> None:
    objects = render()
    assert _operator_env(objects)["WSGAUGE_OPERATOR_LIVE_PAGE"] == "true"
    assert find(objects, "Ingress") == []
    off = render("liveView.enabled=false")
    assert _operator_env(off)["WSGAUGE_OPERATOR_LIVE_PAGE"] == "false"


def test_ingress_routes_the_host_to_the_stats_service(render: Render) -> None:
    objects = render(
        "liveView.ingress.enabled=true",
        "liveView.ingress.host=wsgauge.example.org",
        "liveView.ingress.className=nginx",
        "liveView.ingress.annotations.nginx\\.ingress\\.kubernetes\\.io/auth-url=https://auth",
        "liveView.ingress.tls[0].secretName=wsgauge-tls",
        "liveView.ingress.tls[0].hosts[0]=wsgauge.example.org",
    )
    ingress = one(objects, "Ingress", "rel-wsgauge-live-view")
    assert ingress["metadata"]["namespace"] == "wsg"
    assert ingress["metadata"]["annotations"] == {
        "nginx.ingress.kubernetes.io/auth-url": "https://auth"
    }
    spec = ingress["spec"]
    assert spec["ingressClassName"] == "nginx"
    assert spec["tls"] == [{"secretName": "wsgauge-tls", "hosts": ["wsgauge.example.org"]}]
    (rule,) = spec["rules"]
    assert rule["host"] == "wsgauge.example.org"
    (path,) = rule["http"]["paths"]
    assert (path["path"], path["pathType"]) == ("/", "Prefix")
    service = one(objects, "Service", "rel-wsgauge-operator")
    backend = path["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"]["name"] in {port["name"] for port in service["spec"]["ports"]}


@pytest.mark.parametrize(
    "bad",
    [
        "liveView.bogus=1",
        "liveView.ingress.bogus=1",
        "liveView.ingress.enabled=true",  # no host
        "liveView.ingress.enabled=true,liveView.ingress.host=Not A Host",
        "liveView.ingress.enabled=true,liveView.ingress.host=a.b,liveView.ingress.path=ui",
        "liveView.enabled=maybe",
    ],
)
def test_schema_rejects_bad_live_view_values(helm_binary: Path, bad: str) -> None:
    result = run_helm(helm_binary, "template", "rel", str(CHART), "--set", bad)
    assert result.returncode != 0
    assert "schema" in result.stderr


def test_ingress_needs_the_page(helm_binary: Path) -> None:
    result = run_helm(
        helm_binary,
        "template",
        "rel",
        str(CHART),
        "--set",
        "liveView.enabled=false,liveView.ingress.enabled=true,liveView.ingress.host=a.b",
    )
    assert result.returncode != 0
    assert "needs liveView.enabled" in result.stderr
