"""Unit tests of the PodMonitor/ServiceMonitor -> static Prometheus scrape config translation."""

from __future__ import annotations

import io
from typing import Any

import pytest
import yaml
from wsgauge_devcluster.scrape_config import (
    ScrapeConfigError,
    config_from_stream,
    main,
    matches_selector,
    prometheus_config,
    scrape_configs,
)

POD_MONITOR: dict[str, Any] = {
    "apiVersion": "monitoring.coreos.com/v1",
    "kind": "PodMonitor",
    "metadata": {"name": "wsgauge-sidecars", "namespace": "wsgauge-system"},
    "spec": {
        "selector": {},
        "namespaceSelector": {"any": True},
        "podMetricsEndpoints": [{"port": "wsgauge-admin", "path": "/metrics", "interval": "15s"}],
    },
}
SERVICE_MONITOR: dict[str, Any] = {
    "apiVersion": "monitoring.coreos.com/v1",
    "kind": "ServiceMonitor",
    "metadata": {"name": "wsgauge-operator", "namespace": "wsgauge-system"},
    "spec": {
        "selector": {"matchLabels": {"app.kubernetes.io/component": "operator"}},
        "namespaceSelector": {"matchNames": ["wsgauge-system"]},
        "endpoints": [
            {"port": "http-stats", "path": "/metrics", "interval": "30s", "honorLabels": True}
        ],
    },
}


def _pod(
    name: str,
    namespace: str = "prod",
    ip: str | None = "10.244.0.5",
    phase: str = "Running",
    ports: list[dict[str, Any]] | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    if ports is None:
        ports = [{"name": "wsgauge-admin", "containerPort": 9090}]
    status: dict[str, Any] = {"phase": phase}
    if ip:
        status["podIP"] = ip
    return {
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {"app": "chat"}},
        "spec": {
            "containers": [
                {"name": "app", "ports": [{"name": "http", "containerPort": 8081}]},
                {"name": "wsgauge-sidecar", "ports": ports},
            ]
        },
        "status": status,
    }


def _service(name: str, namespace: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace, "labels": labels}}


def _slice(service: str, namespace: str, port: str, addresses: list[str]) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"{service}-abc",
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service},
        },
        "ports": [{"name": port, "port": 8090, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [ip], "targetRef": {"kind": "Pod", "name": f"op-{i}"}}
            for i, ip in enumerate(addresses)
        ],
    }


def test_pod_monitor_targets_every_pod_with_the_named_port() -> None:
    pods = [
        _pod("chat-a", ip="10.244.0.5"),
        _pod("chat-b", namespace="other", ip="10.244.0.6"),
        _pod("plain", ports=[{"name": "http", "containerPort": 80}]),
        _pod("done", phase="Succeeded", ip="10.244.0.7"),
        _pod("pending", ip=None),
    ]
    (job,) = scrape_configs([POD_MONITOR], pods)
    assert job["job_name"] == "podMonitor/wsgauge-system/wsgauge-sidecars/0"
    assert job["scrape_interval"] == "15s"
    assert job["metrics_path"] == "/metrics"
    assert job["honor_labels"] is False
    assert job["static_configs"] == [
        {
            "targets": ["10.244.0.5:9090"],
            "labels": {
                "job": "wsgauge-system/wsgauge-sidecars",
                "namespace": "prod",
                "pod": "chat-a",
                "container": "wsgauge-sidecar",
                "endpoint": "wsgauge-admin",
            },
        },
        {
            "targets": ["10.244.0.6:9090"],
            "labels": {
                "job": "wsgauge-system/wsgauge-sidecars",
                "namespace": "other",
                "pod": "chat-b",
                "container": "wsgauge-sidecar",
                "endpoint": "wsgauge-admin",
            },
        },
    ]


def test_pod_monitor_selectors_limit_the_pods() -> None:
    monitor = {
        **POD_MONITOR,
        "spec": {
            **POD_MONITOR["spec"],
            "selector": {"matchLabels": {"app": "chat"}},
            "namespaceSelector": {"matchNames": ["prod"]},
        },
    }
    pods = [
        _pod("chat-a"),
        _pod("web", labels={"app": "web"}),
        _pod("chat-elsewhere", namespace="staging"),
    ]
    (job,) = scrape_configs([monitor], pods)
    assert [c["labels"]["pod"] for c in job["static_configs"]] == ["chat-a"]


def test_no_namespace_selector_means_the_monitors_own_namespace() -> None:
    monitor = {**POD_MONITOR, "spec": {**POD_MONITOR["spec"], "namespaceSelector": {}}}
    pods = [_pod("chat-a"), _pod("own", namespace="wsgauge-system")]
    (job,) = scrape_configs([monitor], pods)
    assert [c["labels"]["pod"] for c in job["static_configs"]] == ["own"]


def test_ipv6_pod_addresses_are_bracketed() -> None:
    (job,) = scrape_configs([POD_MONITOR], [_pod("chat-a", ip="fd00::5")])
    assert job["static_configs"][0]["targets"] == ["[fd00::5]:9090"]


def test_service_monitor_targets_the_selected_services_endpoints() -> None:
    services = [
        _service("wsgauge-operator", "wsgauge-system", {"app.kubernetes.io/component": "operator"}),
        _service("wsgauge-injector", "wsgauge-system", {"app.kubernetes.io/component": "injector"}),
        _service("operator-copy", "elsewhere", {"app.kubernetes.io/component": "operator"}),
    ]
    slices = [
        _slice("wsgauge-operator", "wsgauge-system", "http-stats", ["10.244.0.9", "10.244.0.10"]),
        _slice("wsgauge-operator", "wsgauge-system", "https", ["10.244.0.11"]),
        _slice("wsgauge-injector", "wsgauge-system", "http-stats", ["10.244.0.12"]),
        _slice("operator-copy", "elsewhere", "http-stats", ["10.244.0.13"]),
    ]
    (job,) = scrape_configs([SERVICE_MONITOR], [], services, slices)
    assert job["job_name"] == "serviceMonitor/wsgauge-system/wsgauge-operator/0"
    assert job["scrape_interval"] == "30s"
    assert job["honor_labels"] is True
    assert [c["targets"] for c in job["static_configs"]] == [
        ["10.244.0.9:8090"],
        ["10.244.0.10:8090"],
    ]
    assert job["static_configs"][0]["labels"] == {
        "job": "wsgauge-operator",
        "namespace": "wsgauge-system",
        "service": "wsgauge-operator",
        "endpoint": "http-stats",
        "pod": "op-0",
    }


def test_other_kinds_are_ignored_and_no_pods_give_an_empty_job() -> None:
    jobs = scrape_configs([{"kind": "ConfigMap", "metadata": {"name": "x"}}, POD_MONITOR], [])
    assert len(jobs) == 1
    assert jobs[0]["static_configs"] == []


@pytest.mark.parametrize(
    "change",
    [
        {"relabelings": [{"action": "drop"}]},
        {"scheme": "https"},
        {"targetPort": 9090},
    ],
)
def test_untranslated_endpoint_fields_are_refused(change: dict[str, Any]) -> None:
    endpoint = {**POD_MONITOR["spec"]["podMetricsEndpoints"][0], **change}
    monitor = {**POD_MONITOR, "spec": {**POD_MONITOR["spec"], "podMetricsEndpoints": [endpoint]}}
    with pytest.raises(ScrapeConfigError, match="not translated"):
        scrape_configs([monitor], [_pod("chat-a")])


def test_untranslated_spec_fields_are_refused() -> None:
    monitor = {**SERVICE_MONITOR, "spec": {**SERVICE_MONITOR["spec"], "targetLabels": ["app"]}}
    with pytest.raises(ScrapeConfigError, match="targetLabels"):
        scrape_configs([monitor], [])


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        (None, True),
        ({}, True),
        ({"matchLabels": {"app": "chat"}}, True),
        ({"matchLabels": {"app": "web"}}, False),
        ({"matchExpressions": [{"key": "app", "operator": "In", "values": ["chat"]}]}, True),
        ({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["chat"]}]}, False),
        ({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, False),
        ({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}, True),
    ],
)
def test_label_selectors(selector: dict[str, Any] | None, expected: bool) -> None:
    assert matches_selector({"app": "chat"}, selector) is expected


def test_unknown_selector_operator_is_refused() -> None:
    with pytest.raises(ScrapeConfigError, match="Gt"):
        matches_selector({}, {"matchExpressions": [{"key": "a", "operator": "Gt"}]})


def test_prometheus_config_holds_only_the_jobs_and_rules() -> None:
    jobs = scrape_configs([POD_MONITOR], [_pod("chat-a")])
    config = prometheus_config(jobs, rule_files=["rules.yaml"])
    assert set(config) == {"global", "scrape_configs", "rule_files"}
    assert config["scrape_configs"] == jobs
    assert "rule_files" not in prometheus_config(jobs)


def test_the_command_reads_the_chart_and_kubectl_lists() -> None:
    pod = {**_pod("chat-a"), "kind": "Pod"}
    stream = yaml.safe_dump_all(
        [
            POD_MONITOR,
            {"kind": "Deployment", "metadata": {"name": "x"}},
            {"apiVersion": "v1", "kind": "List", "items": [pod]},
        ]
    )
    config = config_from_stream(io.StringIO(stream))
    (job,) = config["scrape_configs"]
    assert job["static_configs"][0]["targets"] == ["10.244.0.5:9090"]


def test_the_command_says_when_the_monitors_are_off(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(yaml.safe_dump({"kind": "Service"})))
    assert main([]) == 2
    assert "monitoring.podMonitor.enabled=true" in capsys.readouterr().err


def test_the_command_prints_prometheus_yml(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(yaml.safe_dump(POD_MONITOR)))
    assert main([]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["scrape_configs"][0]["job_name"].startswith("podMonitor/")
