"""Sans-I/O core of the custom metrics API: a request path in, a status and JSON body out.

Everything the HTTPS server answers is computed here from a
:class:`~wsgauge_operator.model.metrics_source.MetricsSource` and the current time,
so the shapes can be tested without sockets. The shapes follow
``k8s.io/metrics/pkg/apis/custom_metrics/{v1beta1,v1beta2}/types.go`` and what
the HPA controller's client (``k8s.io/metrics/pkg/client/custom_metrics``)
decodes:

- ``MetricValueList`` with ``kind``/``apiVersion`` set (the client decodes by
  them), ``metadata: {}`` and ``items``; even a single object is answered as a
  list of exactly one item.
- v1beta1 item: ``describedObject``, ``metricName``, ``timestamp``, ``window``
  (seconds; 0 = instantaneous), ``value`` (quantity string), ``selector``
  (``null`` unless a metric selector was given).
- v1beta2 item: ``describedObject``, ``metric: {name, selector?}``,
  ``timestamp``, ``windowSeconds``, ``value``.
- errors: a ``Status`` object (``kind: Status, apiVersion: v1``).

Paths (below ``/apis/custom.metrics.k8s.io/{version}``):
``/namespaces/{ns}/pods/*/wsgauge_connections?labelSelector=&metricLabelSelector=``,
``/namespaces/{ns}/pods/{pod}/wsgauge_connections`` and
``/namespaces/{ns}/connectionstats.wsgauge.dev/{name}/wsgauge_connections``.
The metric selector understood is ``topic=T`` (also ``topic==T``, ``topic in (T)``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from wsgauge_operator.model.label_selector import (
    LabelSelector,
    LabelSelectorError,
    parse_label_selector,
)
from wsgauge_operator.model.metrics_source import MetricsSource, PodMetrics, PodMetricsLookup

GROUP = "custom.metrics.k8s.io"
"""API group served."""

VERSIONS = ("v1beta2", "v1beta1")
"""Served versions, preferred first."""

METRIC_NAME = "wsgauge_connections"
"""The one metric served."""

POD_RESOURCE = "pods"
"""Resource name of pods in metric paths."""

CONNECTION_STATS_RESOURCE = "connectionstats.wsgauge.dev"
"""Qualified resource name of ConnectionStats in metric paths."""

CONNECTION_STATS_API_VERSION = "wsgauge.dev/v1alpha1"
"""apiVersion in ``describedObject`` of the Object metric."""

TOPIC_LABEL = "topic"
"""The metric label that selects one topic."""


@dataclass(frozen=True)
class ApiResponse:
    """What to send back: an HTTP status and a JSON document."""

    status: int = 200
    """HTTP status code."""
    body: Mapping[str, Any] | None = None
    """The JSON document."""


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with second precision, as ``metav1.Time`` marshals."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_quantity(value: int) -> str:
    """A count as a quantity string (plain integer form, which every parser accepts)."""
    return str(int(value))


def status_document(code: int, reason: str, message: str) -> dict[str, Any]:
    """A Kubernetes ``Status`` failure object."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def error_response(code: int, message: str) -> ApiResponse:
    """An error as a Status response with the reason Kubernetes uses for that code."""
    reasons = {
        400: "BadRequest",
        401: "Unauthorized",
        403: "Forbidden",
        404: "NotFound",
        405: "MethodNotAllowed",
        503: "ServiceUnavailable",
    }
    return ApiResponse(code, status_document(code, reasons.get(code, "InternalError"), message))


def _group_version_entry(version: str) -> dict[str, str]:
    return {"groupVersion": f"{GROUP}/{version}", "version": version}


def api_group_document() -> dict[str, Any]:
    """``APIGroup`` for ``/apis/custom.metrics.k8s.io``."""
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": GROUP,
        "versions": [_group_version_entry(version) for version in VERSIONS],
        "preferredVersion": _group_version_entry(VERSIONS[0]),
    }


def api_group_list_document() -> dict[str, Any]:
    """``APIGroupList`` for ``/apis``."""
    group = api_group_document()
    del group["kind"], group["apiVersion"]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [group]}


def api_resource_list_document(version: str) -> dict[str, Any]:
    """``APIResourceList`` for ``/apis/custom.metrics.k8s.io/{version}``."""
    resources = [
        {
            "name": f"{resource}/{METRIC_NAME}",
            "singularName": "",
            "namespaced": True,
            "kind": "MetricValueList",
            "verbs": ["get"],
        }
        for resource in (POD_RESOURCE, CONNECTION_STATS_RESOURCE)
    ]
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{GROUP}/{version}",
        "resources": resources,
    }


def _metric_value(
    version: str,
    described: Mapping[str, str],
    value: int,
    observed_at: datetime,
    metric_selector: LabelSelector,
) -> dict[str, Any]:
    item: dict[str, Any] = {"describedObject": dict(described)}
    if version == "v1beta1":
        item["metricName"] = METRIC_NAME
        item["timestamp"] = format_time(observed_at)
        item["window"] = 0
        item["value"] = format_quantity(value)
        item["selector"] = (
            None if metric_selector.empty else (metric_selector.to_label_selector_dict())
        )
        return item
    metric: dict[str, Any] = {"name": METRIC_NAME}
    if not metric_selector.empty:
        metric["selector"] = metric_selector.to_label_selector_dict()
    item["metric"] = metric
    item["timestamp"] = format_time(observed_at)
    item["windowSeconds"] = 0
    item["value"] = format_quantity(value)
    return item


def metric_value_list(version: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    """``MetricValueList`` of the given version."""
    return {
        "kind": "MetricValueList",
        "apiVersion": f"{GROUP}/{version}",
        "metadata": {},
        "items": items,
    }


def _topic_of(metric_selector: LabelSelector) -> str | None:
    """The topic a metric selector asks for, None for the total; LabelSelectorError otherwise."""
    if metric_selector.empty:
        return None
    topic = metric_selector.equality_value(TOPIC_LABEL)
    if topic is None or len(metric_selector.requirements) != 1:
        raise LabelSelectorError(
            f"metricLabelSelector supports only {TOPIC_LABEL}=<topic>, "
            f"got {len(metric_selector.requirements)} other requirement(s)"
        )
    return topic


def _fresh(observed_at: datetime | None, now: datetime, max_age_seconds: float) -> bool:
    if observed_at is None:
        return False
    return (now - observed_at).total_seconds() <= max_age_seconds


def servable_pods(
    source: MetricsSource, namespace: str, now: datetime, max_age_seconds: float
) -> list[PodMetrics]:
    """The pods of a namespace whose value may be served: reachable and not stale, by name."""
    pods = [
        pod
        for pod in source.pods(namespace)
        if pod.reachable and _fresh(pod.observed_at, now, max_age_seconds)
    ]
    pods.sort(key=lambda pod: pod.name)
    return pods


def _pod_described(pod: PodMetrics) -> dict[str, str]:
    return {"kind": "Pod", "namespace": pod.namespace, "name": pod.name, "apiVersion": "v1"}


@dataclass(frozen=True)
class _MetricRequest:
    """One metric request, parsed from its path."""

    version: str
    source: MetricsSource
    namespace: str
    name: str
    query: Mapping[str, str]
    now: datetime
    max_age_seconds: float


def _pods_metric(request: _MetricRequest) -> ApiResponse:
    version, source, namespace, pod_name = (
        request.version,
        request.source,
        request.namespace,
        request.name,
    )
    query, now, max_age_seconds = request.query, request.now, request.max_age_seconds
    metric_selector = parse_label_selector(query.get("metricLabelSelector"))
    topic = _topic_of(metric_selector)
    if pod_name != "*" and isinstance(source, PodMetricsLookup):
        one = source.pod_metrics(namespace, pod_name)
        servable = (
            one is not None and one.reachable and _fresh(one.observed_at, now, max_age_seconds)
        )
        pods = [one] if one is not None and servable else []
    else:
        pods = servable_pods(source, namespace, now, max_age_seconds)
    if pod_name == "*":
        selector = parse_label_selector(query.get("labelSelector"))
        pods = [pod for pod in pods if selector.matches(pod.labels)]
    else:
        pods = [pod for pod in pods if pod.name == pod_name]
        if not pods:
            return error_response(
                404,
                f'the server could not find the metric {METRIC_NAME} for pods "{pod_name}" '
                f"in namespace {namespace} (unknown, unreachable or stale)",
            )
    items = []
    for pod in pods:
        value = pod.connections if topic is None else pod.topics.get(topic, 0)
        observed_at = pod.observed_at or now  # servable_pods keeps observed pods only
        items.append(
            _metric_value(version, _pod_described(pod), value, observed_at, metric_selector)
        )
    return ApiResponse(200, metric_value_list(version, items))


def _object_metric(request: _MetricRequest) -> ApiResponse:
    version, source, namespace, name = (
        request.version,
        request.source,
        request.namespace,
        request.name,
    )
    query, now, max_age_seconds = request.query, request.now, request.max_age_seconds
    metric_selector = parse_label_selector(query.get("metricLabelSelector"))
    topic = _topic_of(metric_selector)
    stats = source.connection_stats(namespace, name)
    if stats is None:
        return error_response(
            404,
            f"the server could not find the metric {METRIC_NAME} for "
            f'{CONNECTION_STATS_RESOURCE} "{name}" in namespace {namespace}',
        )
    if stats.observed_at is None or not _fresh(stats.observed_at, now, max_age_seconds):
        return error_response(
            404,
            f'the metric {METRIC_NAME} of {CONNECTION_STATS_RESOURCE} "{name}" in namespace '
            f"{namespace} is stale (older than {max_age_seconds:g}s) or not observed yet",
        )
    described = {
        "kind": "ConnectionStats",
        "namespace": namespace,
        "name": name,
        "apiVersion": CONNECTION_STATS_API_VERSION,
    }
    value = stats.connections if topic is None else stats.topics.get(topic, 0)
    item = _metric_value(version, described, value, stats.observed_at, metric_selector)
    return ApiResponse(200, metric_value_list(version, [item]))


def handle_metrics_request(
    method: str,
    path: str,
    query: Mapping[str, str],
    source: MetricsSource,
    *,
    now: datetime,
    max_age_seconds: float,
) -> ApiResponse:
    """Answer one (already authenticated) request to the custom metrics API."""
    if method not in ("GET", "HEAD"):
        return error_response(405, f"method {method} is not allowed; this API is read-only")
    parts = [part for part in path.split("/") if part]
    if parts == ["apis"]:
        return ApiResponse(200, api_group_list_document())
    if len(parts) < 2 or parts[0] != "apis" or parts[1] != GROUP:
        return error_response(404, f"the server could not find the requested resource {path}")
    if len(parts) == 2:
        return ApiResponse(200, api_group_document())
    version = parts[2]
    if version not in VERSIONS:
        return error_response(404, f"{GROUP} has no version {version}")
    rest = parts[3:]
    if not rest:
        return ApiResponse(200, api_resource_list_document(version))
    if len(rest) != 5 or rest[0] != "namespaces":
        return error_response(404, f"the server could not find the requested resource {path}")
    namespace, resource, name, metric = rest[1], rest[2], rest[3], rest[4]
    if metric != METRIC_NAME:
        return error_response(404, f"the server could not find the metric {metric}")
    request = _MetricRequest(version, source, namespace, name, query, now, max_age_seconds)
    try:
        if resource == POD_RESOURCE:
            return _pods_metric(request)
        if resource == CONNECTION_STATS_RESOURCE and name != "*":
            return _object_metric(request)
    except LabelSelectorError as error:
        return error_response(400, str(error))
    return error_response(
        404, f"the server could not find the metric {metric} for resource {resource}"
    )


def keda_document(
    source: MetricsSource, namespace: str, name: str, *, now: datetime, max_age_seconds: float
) -> ApiResponse:
    """The KEDA ``metrics-api`` answer for one ConnectionStats.

    ``{"connections": N, "averagePerPod": x, "topics": {...}, "podsReporting": n,
    "desiredReplicas": d|null, "observedAt": "...", "stale": false}``; 404 when
    unknown, 503 (same body, ``stale: true``) when older than the bound so that
    KEDA reports an error (and applies its ``fallback``) instead of scaling on it.
    """
    stats = source.connection_stats(namespace, name)
    if stats is None:
        return error_response(404, f'connectionstats "{name}" in namespace {namespace} unknown')
    stale = not _fresh(stats.observed_at, now, max_age_seconds)
    average = stats.connections / stats.pods_reporting if stats.pods_reporting else 0.0
    body: dict[str, Any] = {
        "namespace": namespace,
        "name": name,
        "connections": stats.connections,
        "averagePerPod": round(average, 3),
        "topics": dict(sorted(stats.topics.items())),
        "podsReporting": stats.pods_reporting,
        "desiredReplicas": stats.desired_replicas,
        "observedAt": None if stats.observed_at is None else format_time(stats.observed_at),
        "stale": stale,
    }
    return ApiResponse(503 if stale else 200, body)
