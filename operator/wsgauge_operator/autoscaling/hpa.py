"""The HorizontalPodAutoscaler a ConnectionStats owns, and the HPA's arithmetic.

Pure functions, no I/O:

- :func:`hpa_manifest` turns a parsed spec (:mod:`wsgauge_operator.model.spec`) into the
  ``autoscaling/v2`` HPA manifest the operator creates (:func:`build_hpa` does the same
  for a ConnectionStats object as kopf hands it over): same name and namespace, owned by the
  ConnectionStats (``controller: true``), scaling ``spec.targetRef`` on the Pods
  metric ``wsgauge_connections`` with ``targetConnectionsPerPod`` as average
  value, restricted to one topic with ``topic``, ``behavior`` passed through.
- :func:`hpa_needs_update` compares an existing HPA with the desired one on
  the fields the operator owns only, tolerating what the API server adds
  (defaulted ``behavior`` fields, canonical quantities such as ``1k``).
- :func:`desired_replicas` mirrors the HPA controller's replica calculation
  for an ``AverageValue`` Pods metric (``pkg/controller/podautoscaler``:
  ``calcPlainMetricReplicas`` and the min/max clamp in ``reconcileAutoscaler``),
  for ``status.desiredReplicas`` and for "scale-down imminent" decisions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from wsgauge_operator.metrics_api.core import servable_pods
from wsgauge_operator.model.exceptions import SpecError
from wsgauge_operator.model.metrics_source import MetricsSource
from wsgauge_operator.model.spec import (
    DEFAULT_TOLERANCE,
    AutoscalingSpec,
    TargetRef,
    parse_quantity,
    parse_scaling,
)

METRIC_NAME = "wsgauge_connections"
"""Name of the metric served by the custom metrics API."""

TOPIC_LABEL = "topic"
"""Metric label that selects one topic's count."""

CONNECTION_STATS_API_VERSION = "wsgauge.dev/v1alpha1"
"""apiVersion of the owner reference."""

CONNECTION_STATS_KIND = "ConnectionStats"
"""Kind of the owner reference."""

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
"""Label set on the owned HPA."""

MANAGED_BY_VALUE = "wsgauge-operator"
"""Value of :data:`MANAGED_BY_LABEL`."""

OWNER_LABEL = "wsgauge.dev/connectionstats"
"""Label naming the owning ConnectionStats on the HPA."""

_OWNED_SPEC_FIELDS = ("scaleTargetRef", "minReplicas", "maxReplicas", "metrics", "behavior")


def _mapping(value: object, field: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(field, "must be an object")
    return value


def build_hpa(connection_stats: Mapping[str, Any]) -> dict[str, Any] | None:
    """The HPA manifest for a ConnectionStats object, or None when ``spec.autoscaling`` is absent.

    ``spec.targetRef`` and ``spec.autoscaling`` are read by
    :func:`~wsgauge_operator.model.spec.parse_scaling`, the validation of
    :func:`~wsgauge_operator.model.spec.parse_spec`; it raises
    :class:`~wsgauge_operator.model.exceptions.SpecError` for an unusable section (report it as a
    condition). With an already parsed spec, call :func:`hpa_manifest`.
    """
    metadata = _mapping(connection_stats.get("metadata"), "metadata")
    spec = _mapping(connection_stats.get("spec"), "spec")
    if spec.get("autoscaling") is None:
        return None
    target_ref, autoscaling = parse_scaling(spec)
    if target_ref is None or autoscaling is None:  # parse_scaling raised for these already
        return None
    name = metadata.get("name")
    namespace = metadata.get("namespace")
    uid = metadata.get("uid")
    if not isinstance(name, str) or not isinstance(namespace, str) or not isinstance(uid, str):
        raise SpecError("", "metadata.name, metadata.namespace and metadata.uid are required")
    return hpa_manifest(name, namespace, uid, target_ref, autoscaling)


def hpa_manifest(
    name: str, namespace: str, uid: str, target_ref: TargetRef, autoscaling: AutoscalingSpec
) -> dict[str, Any]:
    """The HPA manifest for the ConnectionStats ``namespace/name`` (``uid``) of a parsed spec."""
    metric: dict[str, Any] = {"name": METRIC_NAME}
    if autoscaling.topic:
        metric["selector"] = {"matchLabels": {TOPIC_LABEL: autoscaling.topic}}
    hpa_spec: dict[str, Any] = {
        "scaleTargetRef": {
            "apiVersion": target_ref.api_version,
            "kind": target_ref.kind,
            "name": target_ref.name,
        },
        "minReplicas": autoscaling.min_replicas,
        "maxReplicas": autoscaling.max_replicas,
        "metrics": [
            {
                "type": "Pods",
                "pods": {
                    "metric": metric,
                    "target": {
                        "type": "AverageValue",
                        "averageValue": str(autoscaling.target_connections_per_pod),
                    },
                },
            }
        ],
    }
    if autoscaling.behavior:
        hpa_spec["behavior"] = _plain(autoscaling.behavior)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE, OWNER_LABEL: name},
            "ownerReferences": [
                {
                    "apiVersion": CONNECTION_STATS_API_VERSION,
                    "kind": CONNECTION_STATS_KIND,
                    "name": name,
                    "uid": uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": hpa_spec,
    }


def _plain(value: Any) -> Any:
    """A deep copy made of plain dicts and lists (kopf hands over read-only views)."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _same_quantity(desired: object, existing: object) -> bool:
    if isinstance(desired, str | int) and isinstance(existing, str | int):
        try:
            return parse_quantity(str(desired)) == parse_quantity(str(existing))
        except ValueError:
            return desired == existing
    return desired == existing


def _covers(existing: object, desired: object, path: str) -> bool:
    """Whether ``existing`` agrees with ``desired`` on every field ``desired`` sets."""
    if isinstance(desired, Mapping):
        if not isinstance(existing, Mapping):
            return False
        return all(
            _covers(existing.get(key), value, f"{path}.{key}") for key, value in desired.items()
        )
    if isinstance(desired, list):
        if not isinstance(existing, list) or len(existing) != len(desired):
            return False
        return all(
            _covers(old, new, f"{path}[]") for old, new in zip(existing, desired, strict=True)
        )
    if path.endswith((".averageValue", ".value", ".tolerance")):
        return _same_quantity(desired, existing)
    return bool(existing == desired)


def hpa_needs_update(existing: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """Whether the existing HPA differs from the desired one on the fields we own.

    Owned: the spec fields ``scaleTargetRef``, ``minReplicas``, ``maxReplicas``,
    ``metrics``, ``behavior`` (only the parts the ConnectionStats sets; the API
    server's defaults are not a difference), our labels and our owner reference.
    Quantities compare by value. A desired HPA without ``behavior`` never asks
    to update an existing one only because it has one (the server defaults it).
    """
    existing_spec = _mapping(existing.get("spec"), "spec")
    desired_spec = _mapping(desired.get("spec"), "spec")
    for key in _OWNED_SPEC_FIELDS:
        if key not in desired_spec:
            continue
        if not _covers(existing_spec.get(key), desired_spec[key], f"spec.{key}"):
            return True
    existing_meta = _mapping(existing.get("metadata"), "metadata")
    desired_meta = _mapping(desired.get("metadata"), "metadata")
    if not _covers(existing_meta.get("labels"), desired_meta.get("labels", {}), "labels"):
        return True
    existing_owners = existing_meta.get("ownerReferences") or []
    for owner in desired_meta.get("ownerReferences", []):
        if not any(_covers(candidate, owner, "owner") for candidate in existing_owners):
            return True
    return False


def hpa_is_owned_by(hpa: Mapping[str, Any], connection_stats_uid: str) -> bool:
    """Whether the HPA's controller owner reference points at this ConnectionStats."""
    metadata = _mapping(hpa.get("metadata"), "metadata")
    for owner in metadata.get("ownerReferences") or []:
        if (
            isinstance(owner, Mapping)
            and owner.get("kind") == CONNECTION_STATS_KIND
            and owner.get("uid") == connection_stats_uid
            and owner.get("controller") is True
        ):
            return True
    return False


def _usage_ratio(values_milli: Sequence[int], target_milli: int) -> float:
    """``GetMetricUtilizationRatio``: integer mean (milli units) over the target."""
    mean = sum(values_milli) // len(values_milli)
    return mean / target_milli


def desired_replicas(
    *,
    current_replicas: int,
    pod_connections: Sequence[int],
    target_per_pod: int,
    min_replicas: int,
    max_replicas: int,
    missing_pods: int = 0,
    scale_up_tolerance: float = DEFAULT_TOLERANCE,
    scale_down_tolerance: float = DEFAULT_TOLERANCE,
) -> int:
    """The replica count the HPA derives from an ``AverageValue`` Pods metric.

    ``pod_connections``: the served value of each running pod that has one;
    ``missing_pods``: running pods of the target without a value (unreachable
    or stale sidecars: the HPA assumes the target for them on a scale-down and
    zero on a scale-up, and keeps the current count when that flips the
    direction). ``current_replicas`` is the scale subresource's replica count;
    0 means autoscaling is disabled and 0 is returned. Without any value the HPA
    cannot compute and keeps the current count (clamped to min/max, as it does).

    ``scale_up_tolerance`` / ``scale_down_tolerance``: the per-direction tolerances
    (``behavior.scaleUp.tolerance`` / ``scaleDown.tolerance``, GA in Kubernetes 1.37): the count
    stays while ``1 - scale_down_tolerance <= ratio <= 1 + scale_up_tolerance``.

    Not modelled: ``behavior`` policies, the stabilization window and the
    default scale-up limit; this is what the metric *implies*, before them.
    """
    if target_per_pod <= 0:
        raise ValueError("target_per_pod must be positive")
    if min_replicas > max_replicas:
        raise ValueError("min_replicas must not exceed max_replicas")
    if current_replicas == 0 and min_replicas != 0:
        return 0
    if current_replicas > max_replicas:
        return max_replicas
    if current_replicas < min_replicas:
        return min_replicas
    if not pod_connections:
        return current_replicas
    target_milli = target_per_pod * 1000
    metrics = [count * 1000 for count in pod_connections]
    ratio = _usage_ratio(metrics, target_milli)

    def within(value: float) -> bool:
        return 1.0 - scale_down_tolerance <= value <= 1.0 + scale_up_tolerance

    if missing_pods == 0:
        wanted = current_replicas if within(ratio) else math.ceil(ratio * len(metrics))
    else:
        fill = target_milli if ratio < 1.0 else 0
        metrics.extend([fill] * missing_pods)
        new_ratio = _usage_ratio(metrics, target_milli)
        if within(new_ratio) or (ratio < 1.0 < new_ratio) or (new_ratio < 1.0 < ratio):
            wanted = current_replicas
        else:
            wanted = math.ceil(new_ratio * len(metrics))
            if (new_ratio < 1.0 and wanted > current_replicas) or (
                new_ratio > 1.0 and wanted < current_replicas
            ):
                wanted = current_replicas
    return max(min_replicas, min(max_replicas, wanted))


def desired_replicas_from_source(
    source: MetricsSource,
    *,
    namespace: str,
    running_pods: Iterable[str],
    current_replicas: int,
    target_per_pod: int,
    min_replicas: int,
    max_replicas: int,
    topic: str | None = None,
    now: datetime,
    max_age_seconds: float,
    scale_up_tolerance: float = DEFAULT_TOLERANCE,
    scale_down_tolerance: float = DEFAULT_TOLERANCE,
) -> int:
    """:func:`desired_replicas` fed exactly what the HPA gets from our metrics API.

    ``running_pods``: names of the target's pods in phase Running and not being
    deleted (what the HPA lists with the target's selector). Their served values
    (reachable, fresh; one topic's count when ``topic`` is set) are the metrics;
    running pods without a served value are the HPA's "missing" pods. The tolerances are the
    spec's per-direction ``behavior.scaleUp.tolerance`` / ``scaleDown.tolerance``.
    """
    served = {pod.name: pod for pod in servable_pods(source, namespace, now, max_age_seconds)}
    values: list[int] = []
    missing = 0
    for name in running_pods:
        pod = served.get(name)
        if pod is None:
            missing += 1
        else:
            values.append(pod.connections if topic is None else pod.topics.get(topic, 0))
    return desired_replicas(
        current_replicas=current_replicas,
        pod_connections=values,
        target_per_pod=target_per_pod,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        missing_pods=missing,
        scale_up_tolerance=scale_up_tolerance,
        scale_down_tolerance=scale_down_tolerance,
    )
