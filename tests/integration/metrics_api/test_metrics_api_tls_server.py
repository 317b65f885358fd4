"""The metrics API over real TLS on loopback: client-cert auth and every endpoint's JSON."""

from __future__ import annotations

import json
import ssl
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from metrics_api_harness import MetricsApiHarness
from wsgauge_operator.metrics_api.core import format_time
from wsgauge_operator.metrics_api.server import MetricsApiSettings, start_metrics_api
from wsgauge_operator.model.exceptions import ConfigError
from wsgauge_operator.model.metrics_source import StaticMetricsSource

BASE = "/apis/custom.metrics.k8s.io"
TIMEOUT = aiohttp.ClientTimeout(total=10)


async def fetch(url: str, context: ssl.SSLContext | None) -> tuple[int, str, Any]:
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.get(url, ssl=context if context is not None else False) as response,
    ):
        text = await response.text()
        return response.status, response.content_type, json.loads(text) if text else None


async def test_aggregator_certificate_is_accepted(harness: MetricsApiHarness) -> None:
    status, content_type, body = await fetch(harness.url("/apis"), harness.allowed)
    assert status == 200
    assert content_type == "application/json"
    assert body["kind"] == "APIGroupList"
    assert body["groups"][0]["preferredVersion"]["version"] == "v1beta2"


async def test_request_without_client_certificate_is_401(harness: MetricsApiHarness) -> None:
    status, _, body = await fetch(harness.url(f"{BASE}/v1beta2"), harness.anonymous)
    assert status == 401
    assert body["kind"] == "Status"
    assert body["reason"] == "Unauthorized"


async def test_disallowed_name_is_403(harness: MetricsApiHarness) -> None:
    status, _, body = await fetch(harness.url(f"{BASE}/v1beta2"), harness.wrong_name)
    assert status == 403
    assert body["reason"] == "Forbidden"
    assert "mallory" in body["message"]


async def test_certificate_of_another_ca_fails_the_handshake(harness: MetricsApiHarness) -> None:
    with pytest.raises(aiohttp.ClientError):
        await fetch(harness.url(f"{BASE}/v1beta2"), harness.wrong_ca)


async def test_healthz_needs_no_certificate(harness: MetricsApiHarness) -> None:
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.get(harness.url("/healthz"), ssl=harness.anonymous) as response,
    ):
        assert response.status == 200


@pytest.mark.parametrize("version", ["v1beta1", "v1beta2"])
async def test_discovery_over_tls(harness: MetricsApiHarness, version: str) -> None:
    status, _, body = await fetch(harness.url(f"{BASE}/{version}"), harness.allowed)
    assert status == 200
    assert body["groupVersion"] == f"custom.metrics.k8s.io/{version}"
    assert [r["name"] for r in body["resources"]] == [
        "pods/wsgauge_connections",
        "connectionstats.wsgauge.dev/wsgauge_connections",
    ]
    status, _, group = await fetch(harness.url(BASE), harness.allowed)
    assert status == 200
    assert group["kind"] == "APIGroup"


async def test_pods_metric_v1beta2_exact_json(harness: MetricsApiHarness) -> None:
    url = harness.url(
        f"{BASE}/v1beta2/namespaces/prod/pods/*/wsgauge_connections?labelSelector=app%3Dchat"
    )
    status, _, body = await fetch(url, harness.allowed)
    stamp = format_time(harness.now - timedelta(seconds=1))
    assert status == 200
    assert body == {
        "kind": "MetricValueList",
        "apiVersion": "custom.metrics.k8s.io/v1beta2",
        "metadata": {},
        "items": [
            {
                "describedObject": {
                    "kind": "Pod",
                    "namespace": "prod",
                    "name": name,
                    "apiVersion": "v1",
                },
                "metric": {"name": "wsgauge_connections"},
                "timestamp": stamp,
                "windowSeconds": 0,
                "value": value,
            }
            for name, value in (("chat-a", "12"), ("chat-b", "30"))
        ],
    }


async def test_pods_metric_v1beta1_topic_exact_json(harness: MetricsApiHarness) -> None:
    url = harness.url(
        f"{BASE}/v1beta1/namespaces/prod/pods/*/wsgauge_connections"
        "?labelSelector=app%3Dchat&metricLabelSelector=topic%3Dstream"
    )
    status, _, body = await fetch(url, harness.allowed)
    assert status == 200
    assert body["kind"] == "MetricValueList"
    assert body["apiVersion"] == "custom.metrics.k8s.io/v1beta1"
    assert [
        (
            item["describedObject"]["name"],
            item["metricName"],
            item["window"],
            item["value"],
            item["selector"],
        )
        for item in body["items"]
    ] == [
        ("chat-a", "wsgauge_connections", 0, "12", {"matchLabels": {"topic": "stream"}}),
        ("chat-b", "wsgauge_connections", 0, "20", {"matchLabels": {"topic": "stream"}}),
    ]


@pytest.mark.parametrize("version", ["v1beta1", "v1beta2"])
async def test_object_metric_over_tls(harness: MetricsApiHarness, version: str) -> None:
    url = harness.url(
        f"{BASE}/{version}/namespaces/prod/connectionstats.wsgauge.dev/chat/wsgauge_connections"
    )
    status, _, body = await fetch(url, harness.allowed)
    assert status == 200
    assert len(body["items"]) == 1
    assert body["items"][0]["value"] == "42"
    assert body["items"][0]["describedObject"]["kind"] == "ConnectionStats"


async def test_errors_are_status_objects(harness: MetricsApiHarness) -> None:
    status, _, body = await fetch(
        harness.url(f"{BASE}/v1beta2/namespaces/prod/pods/chat-down/wsgauge_connections"),
        harness.allowed,
    )
    assert (status, body["kind"], body["code"]) == (404, "Status", 404)
    status, _, body = await fetch(
        harness.url(
            f"{BASE}/v1beta2/namespaces/prod/pods/*/wsgauge_connections?labelSelector=app+in+(x"
        ),
        harness.allowed,
    )
    assert (status, body["reason"]) == (400, "BadRequest")


async def test_answers_follow_the_source(harness: MetricsApiHarness) -> None:
    harness.source.remove_pod("prod", "chat-a")
    status, _, body = await fetch(
        harness.url(f"{BASE}/v1beta2/namespaces/prod/pods/*/wsgauge_connections"),
        harness.allowed,
    )
    assert status == 200
    assert [item["describedObject"]["name"] for item in body["items"]] == ["chat-b"]


async def test_keda_endpoint_plain_http(harness: MetricsApiHarness) -> None:
    assert harness.server.keda_port is not None
    base = f"http://127.0.0.1:{harness.server.keda_port}/keda/namespaces/prod/connectionstats"
    status, content_type, body = await fetch(f"{base}/chat", None)
    assert (status, content_type) == (200, "application/json")
    assert body["connections"] == 42
    assert body["averagePerPod"] == 21.0
    assert body["topics"] == {"stats": 10, "stream": 32}
    assert body["desiredReplicas"] == 3
    status, _, body = await fetch(f"{base}/missing", None)
    assert status == 404


async def test_missing_client_ca_refuses_to_start() -> None:
    with pytest.raises(ConfigError):
        await start_metrics_api(MetricsApiSettings(host="127.0.0.1", port=0), StaticMetricsSource())
