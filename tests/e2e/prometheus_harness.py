"""Helpers of the Prometheus end-to-end test: the chart's monitors rendered with the release's
values, the metric lists of docs/sidecar.md and docs/operator.md, the Grafana dashboard's
queries, and a stand-in for kube-state-metrics' three HPA series (the dashboard's HPA panel and
the WsgaugeScalingAtMax alert read them; kube-state-metrics itself is not on the machine).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from e2e_harness import get_json
from wsgauge_devcluster.deploy import CHART, ChartInstall
from wsgauge_devcluster.testing import KubeCluster

REPO = Path(__file__).resolve().parents[2]
TARGET_LABELS = frozenset(
    {"job", "instance", "namespace", "pod", "container", "endpoint", "service"}
)
"""Labels the scrape adds (as the prometheus-operator's jobs do), not the exporters'."""


def render_chart(release: ChartInstall, *extra: str) -> str:
    """``helm template`` with the release's name, namespace and values plus ``extra`` sets."""
    argv = [str(release.bin_dir / "helm"), "template", release.release, str(CHART)]
    argv += ["--namespace", release.namespace]
    argv += ["--set", f"image.registry={release.image_registry}"]
    if release.image_tag:
        argv += ["--set", f"image.tag={release.image_tag}"]
    for item in (*release.values, *extra):
        argv += ["--set", item]
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def generate_prometheus_yml(rendered: str, cluster_objects: str) -> dict[str, Any]:
    """docs/prometheus.md's command: the rendered chart, ``---``, then
    ``kubectl get pods,services,endpointslices -A -o yaml``, piped into
    ``python -m wsgauge_devcluster.scrape_config``."""
    result = subprocess.run(
        [sys.executable, "-m", "wsgauge_devcluster.scrape_config"],
        input=f"{rendered}\n---\n{cluster_objects}",
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


@dataclass(frozen=True)
class DocumentedMetric:
    """One metric a doc lists, with the labels it documents."""

    name: str
    labels: frozenset[str]


def _metrics_in(text: str, prefix_for_dots: str) -> list[DocumentedMetric]:
    found = []
    for match in re.finditer(r"`((?:wsgauge_|\.\.\._)\w+)(?:\{([\w,]*)\})?`", text):
        name = match.group(1).replace("..._", prefix_for_dots)
        labels = frozenset(filter(None, (match.group(2) or "").split(",")))
        found.append(DocumentedMetric(name, labels))
    return found


def sidecar_metrics() -> list[DocumentedMetric]:
    """The table under "### Metrics" in docs/sidecar.md."""
    text = (REPO / "docs" / "sidecar.md").read_text()
    section = text.split("### Metrics", 1)[1].split("\n#", 1)[0]
    rows = "\n".join(line.split("|")[1] for line in section.splitlines() if line.startswith("| `"))
    return _metrics_in(rows, "wsgauge_")


def operator_metrics() -> list[DocumentedMetric]:
    """The ``GET /metrics`` item of "The stats server" in docs/operator.md."""
    text = (REPO / "docs" / "operator.md").read_text()
    item = text.split("- `GET /metrics`:", 1)[1].split("\n- ", 1)[0]
    return _metrics_in(item, "wsgauge_operator_")


def dashboard_queries(objects: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """``(panel title, expr)`` of every panel target of the rendered dashboard ConfigMap."""
    (config_map,) = [
        o
        for o in objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboard")
    ]
    dashboard = json.loads(config_map["data"]["wsgauge.json"])
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets") or []
    ]


def dashboard_variable_query(objects: list[dict[str, Any]]) -> str:
    """The ``namespace`` variable's query (``label_values(METRIC, LABEL)``)."""
    (config_map,) = [
        o
        for o in objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboard")
    ]
    dashboard = json.loads(config_map["data"]["wsgauge.json"])
    for variable in dashboard["templating"]["list"]:
        if variable["name"] == "namespace":
            return str(variable["query"]["query"])
    raise AssertionError("the dashboard has no namespace variable")


class HpaSeries:
    """Serves ``kube_horizontalpodautoscaler_{status_desired,status_current,spec_max}_replicas``
    as kube-state-metrics names them, read from the HPAs of one namespace at every scrape.
    Bound to 127.0.0.1 on a free port."""

    def __init__(self, kube: KubeCluster, namespace: str) -> None:
        self._kube = kube
        self._namespace = namespace
        self._runner: web.AppRunner | None = None
        self.address = ""

    async def _metrics(self, request: web.Request) -> web.Response:
        hpas = (await get_json(self._kube, "hpa", "-n", self._namespace))["items"]
        lines = []
        for hpa in hpas:
            labels = (
                f'namespace="{self._namespace}",horizontalpodautoscaler="{hpa["metadata"]["name"]}"'
            )
            status = hpa.get("status") or {}
            values = {
                "status_desired_replicas": status.get("desiredReplicas", 0),
                "status_current_replicas": status.get("currentReplicas", 0),
                "spec_max_replicas": hpa["spec"]["maxReplicas"],
            }
            for name, value in values.items():
                lines.append(f"kube_horizontalpodautoscaler_{name}{{{labels}}} {value}")
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.address = f"{host}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
