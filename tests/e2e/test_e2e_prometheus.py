"""A real Prometheus (Debian's package, a host process on 127.0.0.1) scraping wsgauge on the real
node the way the chart's PodMonitor and ServiceMonitor describe.

1. The chart is installed (``release``) and ``examples/chat`` injected; clients connect through
   the chat Service on two topics, one closes, one upgrade is refused, autoscaling is turned on
   (the operator creates its HPA: an Event).
2. The scrape config is generated from the chart rendered with the release's values and the
   monitors on (``wsgauge_devcluster.scrape_config``): static targets = the pods and the operator
   Service's endpoints the monitors select; only pod IPs and loopback. The chart's
   PrometheusRule is loaded too. Prometheus is stopped at the end.
3. Every metric docs/sidecar.md and docs/operator.md list is scraped with the documented labels;
   ``wsgauge_topic_connections`` per pod and topic equals what the clients hold.
4. Every Grafana dashboard query (namespace variable = the test's namespace) returns series; the
   totals per topic, per pod, per ConnectionStats and the pod states are right. The HPA panel
   reads kube-state-metrics' series, served here by a stand-in from the real HPA.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from e2e_harness import DATA_PORT, client_session, eventually, get_json, kubectl
from prometheus_harness import (
    TARGET_LABELS,
    DocumentedMetric,
    HpaSeries,
    dashboard_queries,
    dashboard_variable_query,
    generate_prometheus_yml,
    operator_metrics,
    render_chart,
    sidecar_metrics,
)
from real_node_harness import (
    Pending,
    ServiceClient,
    apply_chat,
    apply_connection_stats,
    assert_counts_agree,
    ready_pods,
    service_reaches,
    service_url,
)
from wsgauge_devcluster.deploy import ChartInstall
from wsgauge_devcluster.prometheus import (
    PrometheusError,
    PrometheusServer,
    ensure_installed,
    rules_of,
)
from wsgauge_devcluster.testing import KubeCluster

MONITORING = (
    "monitoring.podMonitor.enabled=true",
    "monitoring.serviceMonitor.enabled=true",
    "monitoring.prometheusRule.enabled=true",
    "monitoring.grafanaDashboard.enabled=true",
    # chart values a user would set for a quick scrape; the intervals go into the scrape config
    "monitoring.podMonitor.interval=2s",
    "monitoring.serviceMonitor.interval=2s",
)
POD_STATES = ("matched", "reporting", "unreachable", "ready")
"""The ``state`` values the test checks (the operator may export more)."""
TOPICS = {"room": 14, "lobby": 8}
"""Sockets opened per topic (one room socket is closed again): 21 held, the HPA (20 per pod)
keeps the two replicas."""


@pytest.fixture(scope="module")
def prometheus_tools() -> tuple[Path, Path]:
    """(prometheus, promtool), from Debian's package (hack/install-prometheus.sh)."""
    try:
        return ensure_installed()
    except PrometheusError as error:
        pytest.fail(f"Prometheus cannot be installed: {error}", pytrace=False)


@pytest.fixture
def stop_later() -> Iterator[list[PrometheusServer]]:
    servers: list[PrometheusServer] = []
    yield servers
    for server in servers:
        server.stop()


async def _query(server: PrometheusServer, expr: str) -> list[dict[str, Any]]:
    return await asyncio.to_thread(server.query, expr)


def _by(result: list[dict[str, Any]], *labels: str) -> dict[tuple[str, ...], float]:
    return {tuple(r["metric"].get(x, "") for x in labels): float(r["value"][1]) for r in result}


async def _bad_upgrade(session: aiohttp.ClientSession, pod_ip: str) -> int:
    """An upgrade with POST straight to a sidecar's data port (handshake failure bad_request)."""
    headers = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    url = f"http://{pod_ip}:{DATA_PORT}/ws/room"
    async with session.post(url, headers=headers, timeout=aiohttp.ClientTimeout(total=10)) as reply:
        return reply.status


def _assert_only_pods_and_loopback(config: dict[str, Any], objects: list[dict[str, Any]]) -> None:
    """Every target is a pod IP of the cluster or a loopback address."""
    pod_ips = {o["status"].get("podIP") for o in objects if o["kind"] == "Pod"} - {None}
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            for target in static["targets"]:
                host = target.rsplit(":", 1)[0].strip("[]")
                assert host in pod_ips or ipaddress.ip_address(host).is_loopback, target


def _panel_key(title: str, expr: str) -> str:
    """``title | first metric of the expression`` (one panel may have several queries)."""
    match = re.search(r"\b(?:wsgauge|kube)_\w+", expr)
    return f"{title} | {match.group(0) if match else expr}"


def _dashboard_expected(pods: set[str], held: dict[str, int]) -> dict[str, Any]:
    """What the dashboard's panels must show (keyed by :func:`_panel_key`)."""
    hpa = "Desired vs current replicas (HPA) | kube_horizontalpodautoscaler"
    return {
        "Connections per topic | wsgauge_topic_connections": {
            "room": float(TOPICS["room"] - 1),
            "lobby": float(TOPICS["lobby"]),
        },
        "Connections per pod | wsgauge_connections": {p: float(held.get(p, 0)) for p in pods},
        "Connections per ConnectionStats (operator) | wsgauge_connectionstats_connections": {
            "chat": float(sum(held.values()))
        },
        "Pods by state (operator) | wsgauge_connectionstats_pods": {
            "matched": 2.0,
            "reporting": 2.0,
            "ready": 2.0,
            "unreachable": 0.0,
        },
        f"{hpa}_status_desired_replicas": {"chat": 2.0},
        f"{hpa}_status_current_replicas": {"chat": 2.0},
        f"{hpa}_spec_max_replicas": {"chat": 10.0},
    }


def _dashboard_answer(title: str, expr: str, result: list[dict[str, Any]]) -> Any:
    """A panel's answer in the test's terms (empty when the query returned no series)."""
    if not result:
        return {}
    if title == "Connections per topic":
        return {k[0]: v for k, v in _by(result, "topic").items()}
    if title == "Connections per pod":
        return {k[0]: v for k, v in _by(result, "pod").items()}
    if title == "Connections per ConnectionStats (operator)":
        return {k[0]: v for k, v in _by(result, "name").items()}
    if title == "Pods by state (operator)":
        return {k[0]: v for k, v in _by(result, "state").items() if k[0] in POD_STATES}
    if title.startswith("Desired vs current"):
        return {k[0]: v for k, v in _by(result, "horizontalpodautoscaler").items()}
    return {tuple(sorted(r["metric"].items())): float(r["value"][1]) for r in result}


async def _documented_present(
    server: PrometheusServer, metric: DocumentedMetric, selector: str
) -> str | None:
    """None when the metric is scraped with exactly its documented labels, else why not."""
    names = "|".join(f"{metric.name}{suffix}" for suffix in ("", "_bucket", "_count", "_sum"))
    result = await _query(server, f'{{__name__=~"{names}",{selector}}}')
    if not result:
        return f"{metric.name}: no series"
    documented = metric.labels - TARGET_LABELS
    for series in result:
        own = set(series["metric"]) - TARGET_LABELS - {"__name__", "le"}
        if own != documented:
            return f"{metric.name}: labels {sorted(own)}, documented {sorted(documented)}"
    return None


@pytest.mark.timeout(600, func_only=True)  # the node wait, cluster start and install come before
async def test_prometheus_scrapes_what_the_monitors_describe(
    kube: KubeCluster,
    release: ChartInstall,
    namespace: str,
    prometheus_tools: tuple[Path, Path],
    stop_later: list[PrometheusServer],
    tmp_path: Path,
) -> None:
    await apply_chat(kube, namespace)
    pods = await eventually(lambda: ready_pods(kube, namespace, 2), 120, "2 chat pods Ready")
    url = await service_url(kube, namespace)
    session = client_session()
    hpa_series = HpaSeries(kube, namespace)
    clients: dict[str, list[ServiceClient]] = {topic: [] for topic in TOPICS}
    try:
        # 1. Sockets on two topics through the Service; one closes; one upgrade is refused.
        await service_reaches(session, url, set(pods))
        for topic, count in TOPICS.items():
            for _ in range(count):
                client = ServiceClient(session, url.replace("/ws/room", f"/ws/{topic}"))
                await client.connect()
                clients[topic].append(client)
        await clients["room"].pop().close()
        first_ip = next(iter(pods.values()))["status"]["podIP"]
        refused = await _bad_upgrade(session, first_ip)
        assert refused >= 400, refused
        everyone = [c for group in clients.values() for c in group]
        held = await assert_counts_agree(kube, namespace, session, everyone)
        await apply_connection_stats(kube, namespace, autoscaling=True)

        async def hpa_created() -> bool:
            hpas = await get_json(kube, "hpa", "-n", namespace)
            return any(h["metadata"]["name"] == "chat" for h in hpas["items"])

        await eventually(hpa_created, 60, "the operator's HPA for chat")

        # 2. The scrape config from the chart's monitors, rendered with the release's values
        #    (the command of docs/prometheus.md).
        rendered = await asyncio.to_thread(render_chart, release, *MONITORING)
        objects = [doc for doc in yaml.safe_load_all(rendered) if doc]
        await hpa_series.start()
        stand_in = {
            "job_name": "kube-state-metrics-stand-in",
            "honor_labels": True,
            "scrape_interval": "2s",
            "static_configs": [
                {"targets": [hpa_series.address], "labels": {"job": "kube-state-metrics"}}
            ],
        }
        rules_file = tmp_path / "wsgauge-rules.yaml"
        rules_file.write_text(yaml.safe_dump(rules_of(objects), sort_keys=False))

        async def generate() -> dict[str, Any]:
            cluster_objects = await kubectl(
                kube, "get", "pods,services,endpointslices", "-A", "-o", "yaml"
            )
            config = await asyncio.to_thread(generate_prometheus_yml, rendered, cluster_objects)
            _assert_only_pods_and_loopback(config, yaml.safe_load(cluster_objects)["items"])
            config["scrape_configs"].append(stand_in)
            config["rule_files"] = [str(rules_file)]
            config["global"]["evaluation_interval"] = "2s"
            return config

        config = await generate()
        jobs = config["scrape_configs"]
        by_name = {job["job_name"]: job for job in jobs}
        sidecar_job = by_name[f"podMonitor/{release.namespace}/wsgauge-sidecars/0"]
        operator_job = by_name[f"serviceMonitor/{release.namespace}/wsgauge-operator/0"]
        mine = {s["labels"]["pod"] for s in sidecar_job["static_configs"]} & set(pods)
        assert mine == set(pods), sidecar_job
        assert operator_job["static_configs"], f"no operator endpoint: {operator_job}"
        assert operator_job["honor_labels"] is True
        server = PrometheusServer(prometheus_tools[0], tmp_path, config)
        stop_later.append(server)
        checked = await asyncio.to_thread(
            subprocess.run,
            [str(prometheus_tools[1]), "check", "config", str(server.config_file)],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        started = time.monotonic()
        await asyncio.to_thread(server.start)
        print(
            f"Prometheus {server.url}: {len(jobs)} jobs, ready in {time.monotonic() - started:.1f}s"
        )

        async def refresh() -> None:
            """Targets as the monitors would select them now (another run's `helm upgrade` of
            the release can replace the operator pod: service discovery would follow it)."""
            nonlocal config
            latest = await generate()
            if latest["scrape_configs"] != config["scrape_configs"]:
                print("targets changed: Prometheus reloads its configuration")
                config = latest
                server.reload(config)

        async def healthy() -> list[dict[str, Any]] | None:
            targets = await asyncio.to_thread(server.targets)
            ours = [
                t for t in targets
                if t["labels"].get("namespace") in (namespace, release.namespace)
                or t["labels"]["job"] == "kube-state-metrics"
            ]  # fmt: skip
            if ours and all(t["health"] == "up" for t in ours):
                return ours
            await refresh()
            return None

        up = await eventually(healthy, 60, "every target of ours up")
        print(f"targets up: {sorted(t['scrapeUrl'] for t in up)}")
        # churn while Prometheus watches: the opened/closed rates of the dashboard move
        for _ in range(3):
            churn = ServiceClient(session, url.replace("/ws/room", "/ws/lobby"))
            await churn.connect()
            await asyncio.sleep(2.5)
            await churn.close()

        # 3. Every documented metric with its documented labels.
        async def documented() -> list[str] | Pending:
            problems = []
            for metric in sidecar_metrics():
                problem = await _documented_present(server, metric, f'namespace="{namespace}"')
                problems += [problem] if problem else []
            for metric in operator_metrics():
                problem = await _documented_present(server, metric, 'job="wsgauge-operator"')
                problems += [problem] if problem else []
            if problems:
                await refresh()
                return Pending({"problems": problems})
            return ["all documented"]

        await eventually(documented, 60, "every documented metric scraped")
        closed = _by(
            await _query(server, f'wsgauge_connections_closed_total{{namespace="{namespace}"}}'),
            "reason",
        )
        assert closed.get(("normal",), 0) >= 1, closed  # ours and service_reaches' probes
        opened = _by(
            await _query(server, f'wsgauge_connections_opened_total{{namespace="{namespace}"}}'),
            "pod",
        )
        ended = _by(
            await _query(
                server,
                f'sum by (pod) (wsgauge_connections_closed_total{{namespace="{namespace}"}})',
            ),
            "pod",
        )
        now = _by(await _query(server, f'wsgauge_connections{{namespace="{namespace}"}}'), "pod")
        assert {p: opened[p] - ended.get(p, 0) for p in opened} == now, (opened, ended, now)
        failures = _by(
            await _query(server, f'wsgauge_handshake_failures_total{{namespace="{namespace}"}}'),
            "pod",
            "reason",
        )
        first = next(iter(pods))
        assert failures.get((first, "bad_request")) == 1.0, failures
        caps = _by(
            await _query(server, f'wsgauge_topic_max_connections{{namespace="{namespace}"}}'),
            "pod",
            "topic",
        )
        # the chat example's annotation wsgauge.dev/max-topic-connections: "lobby=500"
        assert caps == {(pod, "lobby"): 500.0 for pod in pods}, caps
        events = _by(await _query(server, "wsgauge_operator_events_total"), "reason")
        assert events.get(("HPACreated",), 0) >= 1, events

        # wsgauge_topic_connections per pod and topic = what the clients hold.
        wanted: dict[tuple[str, ...], float] = {}
        for topic, group in clients.items():
            for client in group:
                key = (client.pod or "", topic)
                wanted[key] = wanted.get(key, 0) + 1

        async def topics_agree() -> dict[tuple[str, ...], float] | None:
            result = await _query(
                server, f'wsgauge_topic_connections{{namespace="{namespace}"}} > 0'
            )
            got = _by(result, "pod", "topic")
            if got == wanted:
                return got
            await refresh()
            return None

        await eventually(topics_agree, 30, f"wsgauge_topic_connections = clients' {wanted}")

        # 4. The dashboard: every query returns series; the totals are right.
        variable = dashboard_variable_query(objects)
        metric, label = variable.removeprefix("label_values(").removesuffix(")").split(", ")
        values = await asyncio.to_thread(server.api, f"label/{label}/values", **{"match[]": metric})
        assert namespace in values, values
        expected = _dashboard_expected(set(pods), held)

        async def dashboard_right() -> dict[str, Any]:
            got: dict[str, Any] = {}
            for title, expr in dashboard_queries(objects):
                result = await _query(server, expr.replace("$namespace", namespace))
                got[_panel_key(title, expr)] = _dashboard_answer(title, expr, result)
            rates = [
                value
                for key, answer in got.items()
                if key.startswith("Connections opened / closed")
                for value in answer.values()
            ]
            ok = (
                all(got.get(key) == value for key, value in expected.items())
                and all(got.values())
                and all(rate > 0 for rate in rates)
            )
            if ok:
                return got
            await refresh()
            return Pending({"got": got, "expected": expected})

        answers = await eventually(dashboard_right, 60, "every dashboard query right")
        print(f"dashboard answers: {answers}")
        rules = await asyncio.to_thread(server.api, "rules")
        health = {r["name"]: r["health"] for g in rules["groups"] for r in g["rules"]}
        assert set(health.values()) == {"ok"}, health
    finally:
        await hpa_series.stop()
        for group in clients.values():
            for client in group:
                await client.close()
        await session.close()
