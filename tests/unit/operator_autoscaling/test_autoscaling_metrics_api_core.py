"""Custom metrics API answers (sans-I/O): discovery, Pods and Object metrics, errors, KEDA."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from wsgauge_operator.metrics_api.core import ApiResponse, handle_metrics_request, keda_document
from wsgauge_operator.model.metrics_source import (
    ConnectionStatsMetrics,
    MetricsSource,
    PodMetrics,
    StaticMetricsSource,
)

NOW = datetime(2026, 11, 26, 10, 0, 30, tzinfo=UTC)
FRESH = NOW - timedelta(seconds=5)
BASE = "/apis/custom.metrics.k8s.io"


def make_source() -> StaticMetricsSource:
    chat = {"app": "chat"}
    return StaticMetricsSource(
        pods=[
            PodMetrics("prod", "chat-b", chat, 30, {"stream": 20, "stats": 10}, FRESH, True),
            PodMetrics("prod", "chat-a", chat, 12, {"stream": 12}, FRESH, True),
            PodMetrics("prod", "chat-down", chat, 99, {"stream": 99}, FRESH, False),
            PodMetrics("prod", "chat-old", chat, 7, {}, NOW - timedelta(seconds=60), True),
            PodMetrics("prod", "chat-new", chat, 0, {}, None, True),
            PodMetrics("prod", "feed-a", {"app": "feed"}, 5, {}, FRESH, True),
            PodMetrics("dev", "chat-x", chat, 1, {}, FRESH, True),
        ],
        connection_stats=[
            ConnectionStatsMetrics("prod", "chat", 42, {"stream": 32, "stats": 10}, FRESH, 2, 3),
            ConnectionStatsMetrics("prod", "stale", 1, {}, NOW - timedelta(minutes=5), 1),
        ],
    )


def get(path: str, source: MetricsSource | None = None, /, **query: str) -> ApiResponse:
    return handle_metrics_request(
        "GET", path, query, source or make_source(), now=NOW, max_age_seconds=30.0
    )


def body(response: ApiResponse) -> dict[str, Any]:
    assert response.body is not None
    return dict(response.body)


def test_discovery_documents() -> None:
    group = {
        "name": "custom.metrics.k8s.io",
        "versions": [
            {"groupVersion": "custom.metrics.k8s.io/v1beta2", "version": "v1beta2"},
            {"groupVersion": "custom.metrics.k8s.io/v1beta1", "version": "v1beta1"},
        ],
        "preferredVersion": {"groupVersion": "custom.metrics.k8s.io/v1beta2", "version": "v1beta2"},
    }
    assert body(get("/apis")) == {"kind": "APIGroupList", "apiVersion": "v1", "groups": [group]}
    assert body(get(BASE)) == {"kind": "APIGroup", "apiVersion": "v1", **group}
    for version in ("v1beta1", "v1beta2"):
        assert body(get(f"{BASE}/{version}")) == {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"custom.metrics.k8s.io/{version}",
            "resources": [
                {
                    "name": "pods/wsgauge_connections",
                    "singularName": "",
                    "namespaced": True,
                    "kind": "MetricValueList",
                    "verbs": ["get"],
                },
                {
                    "name": "connectionstats.wsgauge.dev/wsgauge_connections",
                    "singularName": "",
                    "namespaced": True,
                    "kind": "MetricValueList",
                    "verbs": ["get"],
                },
            ],
        }


def pod_ref(name: str, namespace: str = "prod") -> dict[str, str]:
    return {"kind": "Pod", "namespace": namespace, "name": name, "apiVersion": "v1"}


def test_pods_metric_v1beta2_leaves_out_unreachable_stale_and_unselected() -> None:
    response = get(
        f"{BASE}/v1beta2/namespaces/prod/pods/*/wsgauge_connections", labelSelector="app=chat"
    )
    assert response.status == 200
    assert body(response) == {
        "kind": "MetricValueList",
        "apiVersion": "custom.metrics.k8s.io/v1beta2",
        "metadata": {},
        "items": [
            {
                "describedObject": pod_ref("chat-a"),
                "metric": {"name": "wsgauge_connections"},
                "timestamp": "2026-11-26T10:00:25Z",
                "windowSeconds": 0,
                "value": "12",
            },
            {
                "describedObject": pod_ref("chat-b"),
                "metric": {"name": "wsgauge_connections"},
                "timestamp": "2026-11-26T10:00:25Z",
                "windowSeconds": 0,
                "value": "30",
            },
        ],
    }


def test_pods_metric_v1beta1_shape_with_topic() -> None:
    response = get(
        f"{BASE}/v1beta1/namespaces/prod/pods/*/wsgauge_connections",
        labelSelector="app=chat",
        metricLabelSelector="topic=stats",
    )
    assert body(response)["apiVersion"] == "custom.metrics.k8s.io/v1beta1"
    assert body(response)["items"] == [
        {
            "describedObject": pod_ref("chat-a"),
            "metricName": "wsgauge_connections",
            "timestamp": "2026-11-26T10:00:25Z",
            "window": 0,
            "value": "0",
            "selector": {"matchLabels": {"topic": "stats"}},
        },
        {
            "describedObject": pod_ref("chat-b"),
            "metricName": "wsgauge_connections",
            "timestamp": "2026-11-26T10:00:25Z",
            "window": 0,
            "value": "10",
            "selector": {"matchLabels": {"topic": "stats"}},
        },
    ]


def test_v1beta1_selector_is_null_without_metric_selector() -> None:
    items = body(get(f"{BASE}/v1beta1/namespaces/dev/pods/*/wsgauge_connections"))["items"]
    assert items == [
        {
            "describedObject": pod_ref("chat-x", "dev"),
            "metricName": "wsgauge_connections",
            "timestamp": "2026-11-26T10:00:25Z",
            "window": 0,
            "value": "1",
            "selector": None,
        }
    ]


def test_v1beta2_topic_selector_in_metric() -> None:
    items = body(
        get(
            f"{BASE}/v1beta2/namespaces/prod/pods/*/wsgauge_connections",
            labelSelector="app in (chat)",
            metricLabelSelector="topic==stream",
        )
    )["items"]
    assert [(i["describedObject"]["name"], i["value"]) for i in items] == [
        ("chat-a", "12"),
        ("chat-b", "20"),
    ]
    assert items[0]["metric"] == {
        "name": "wsgauge_connections",
        "selector": {"matchLabels": {"topic": "stream"}},
    }


def test_no_label_selector_means_every_servable_pod() -> None:
    items = body(get(f"{BASE}/v1beta2/namespaces/prod/pods/*/wsgauge_connections"))["items"]
    assert [i["describedObject"]["name"] for i in items] == ["chat-a", "chat-b", "feed-a"]


def test_single_pod() -> None:
    response = get(f"{BASE}/v1beta2/namespaces/prod/pods/chat-b/wsgauge_connections")
    assert response.status == 200
    assert [i["value"] for i in body(response)["items"]] == ["30"]
    for hidden in ("chat-down", "chat-old", "chat-new", "nope"):
        missing = get(f"{BASE}/v1beta2/namespaces/prod/pods/{hidden}/wsgauge_connections")
        assert missing.status == 404
        assert body(missing)["kind"] == "Status"
        assert body(missing)["reason"] == "NotFound"


@pytest.mark.parametrize("version", ["v1beta1", "v1beta2"])
def test_object_metric(version: str) -> None:
    path = f"{BASE}/{version}/namespaces/prod/connectionstats.wsgauge.dev/chat/wsgauge_connections"
    items = body(get(path))["items"]
    assert len(items) == 1
    assert items[0]["describedObject"] == {
        "kind": "ConnectionStats",
        "namespace": "prod",
        "name": "chat",
        "apiVersion": "wsgauge.dev/v1alpha1",
    }
    assert items[0]["value"] == "42"
    topic_items = body(get(path, metricLabelSelector="topic=stream"))["items"]
    assert topic_items[0]["value"] == "32"
    assert body(get(path, metricLabelSelector="topic=none"))["items"][0]["value"] == "0"


@pytest.mark.parametrize(
    "path",
    [
        "/apis/metrics.k8s.io",
        f"{BASE}/v1",
        f"{BASE}/v1beta2/namespaces/prod/pods/*/other_metric",
        f"{BASE}/v1beta2/namespaces/prod/deployments.apps/chat/wsgauge_connections",
        f"{BASE}/v1beta2/namespaces/prod/connectionstats.wsgauge.dev/nope/wsgauge_connections",
        f"{BASE}/v1beta2/namespaces/prod/connectionstats.wsgauge.dev/stale/wsgauge_connections",
        f"{BASE}/v1beta2/namespaces/prod/connectionstats.wsgauge.dev/*/wsgauge_connections",
        f"{BASE}/v1beta2/namespaces/prod/metrics/wsgauge_connections",
    ],
)
def test_not_found_is_a_status(path: str) -> None:
    response = get(path)
    assert response.status == 404
    document = body(response)
    assert {k: document[k] for k in ("kind", "apiVersion", "status", "reason", "code")} == {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "reason": "NotFound",
        "code": 404,
    }
    assert document["message"]


@pytest.mark.parametrize(
    "query",
    [
        {"labelSelector": "app in (chat"},
        {"metricLabelSelector": "topic!=stream"},
        {"metricLabelSelector": "topic in (a,b)"},
        {"metricLabelSelector": "topic=a,x=b"},
        {"metricLabelSelector": "color=blue"},
    ],
)
def test_bad_selectors_are_400(query: dict[str, str]) -> None:
    response = get(f"{BASE}/v1beta2/namespaces/prod/pods/*/wsgauge_connections", **query)
    assert response.status == 400
    assert body(response)["reason"] == "BadRequest"


def test_write_methods_are_refused() -> None:
    response = handle_metrics_request(
        "POST", f"{BASE}/v1beta2", {}, make_source(), now=NOW, max_age_seconds=30
    )
    assert response.status == 405
    assert body(response)["reason"] == "MethodNotAllowed"


def test_keda_document() -> None:
    response = keda_document(make_source(), "prod", "chat", now=NOW, max_age_seconds=30)
    assert response.status == 200
    assert body(response) == {
        "namespace": "prod",
        "name": "chat",
        "connections": 42,
        "averagePerPod": 21.0,
        "topics": {"stats": 10, "stream": 32},
        "podsReporting": 2,
        "desiredReplicas": 3,
        "observedAt": "2026-11-26T10:00:25Z",
        "stale": False,
    }
    stale = keda_document(make_source(), "prod", "stale", now=NOW, max_age_seconds=30)
    assert stale.status == 503
    assert body(stale)["stale"] is True
    assert body(stale)["desiredReplicas"] is None
    assert keda_document(make_source(), "prod", "nope", now=NOW, max_age_seconds=30).status == 404


def test_static_source_updates() -> None:
    source = make_source()
    source.remove_pod("prod", "chat-a")
    source.remove_pod("prod", "never-there")
    source.set_pod(PodMetrics("prod", "chat-b", {"app": "chat"}, 31, {}, FRESH, True))
    source.remove_connection_stats("prod", "chat")
    assert isinstance(source, MetricsSource)
    items = body(
        get(
            f"{BASE}/v1beta2/namespaces/prod/pods/*/wsgauge_connections",
            source,
            labelSelector="app=chat",
        )
    )["items"]
    assert [(i["describedObject"]["name"], i["value"]) for i in items] == [("chat-b", "31")]
    assert source.connection_stats("prod", "chat") is None
    source.remove_pod("dev", "chat-x")
    assert source.pods("dev") == ()
