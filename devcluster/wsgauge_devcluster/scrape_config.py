"""A plain Prometheus configuration from the chart's PodMonitor and ServiceMonitor.

Clusters with the prometheus-operator turn a PodMonitor/ServiceMonitor into a scrape job with
Kubernetes service discovery. Where no prometheus-operator runs (the project's tests, a
Prometheus started by hand), :func:`scrape_configs` makes the same jobs with static targets:
the chart's rendered monitors plus the pods, Services and EndpointSlices they would select give
``scrape_configs`` whose targets and target labels are the ones the prometheus-operator's jobs
would discover (``job``, ``namespace``, ``pod``, ``container``, ``endpoint``, ``service``;
``honor_labels`` as the endpoint says). Pure: the caller reads the cluster.

As a command it reads one YAML stream (the rendered chart, then
``kubectl get pods,services,endpointslices -A -o yaml``) and prints a whole ``prometheus.yml``::

    { helm template wsgauge charts/wsgauge -n wsgauge-system \
        --set monitoring.podMonitor.enabled=true --set monitoring.serviceMonitor.enabled=true
      echo ---
      kubectl get pods,services,endpointslices -A -o yaml; } \
      | python -m wsgauge_devcluster.scrape_config > prometheus.yml

Only the monitor fields the chart uses are translated; any other field (relabelings, TLS,
``targetPort``...) raises :class:`ScrapeConfigError` rather than being silently dropped.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

import yaml

from wsgauge_devcluster.exceptions import DevClusterError

Object = Mapping[str, Any]

POD_MONITOR_ENDPOINT_FIELDS = frozenset({"port", "path", "interval", "honorLabels"})
"""PodMonitor ``podMetricsEndpoints`` fields that are translated."""
SERVICE_MONITOR_ENDPOINT_FIELDS = frozenset({"port", "path", "interval", "honorLabels"})
"""ServiceMonitor ``endpoints`` fields that are translated."""
MONITOR_SPEC_FIELDS = frozenset(
    {"selector", "namespaceSelector", "podMetricsEndpoints", "endpoints"}
)
"""Monitor ``spec`` fields that are translated."""


class ScrapeConfigError(DevClusterError):
    """A monitor uses something the translation does not know."""


def scrape_configs(
    monitors: Iterable[Object],
    pods: Sequence[Object],
    services: Sequence[Object] = (),
    endpoint_slices: Sequence[Object] = (),
) -> list[dict[str, Any]]:
    """One scrape job per monitor endpoint (named as the prometheus-operator names them),
    with static targets: the selected pods' IPs (PodMonitor) or the selected Services'
    EndpointSlice addresses (ServiceMonitor). Objects of other kinds are ignored."""
    jobs: list[dict[str, Any]] = []
    for monitor in monitors:
        kind = monitor.get("kind")
        if kind == "PodMonitor":
            jobs += _pod_monitor_jobs(monitor, pods)
        elif kind == "ServiceMonitor":
            jobs += _service_monitor_jobs(monitor, services, endpoint_slices)
    return jobs


def prometheus_config(
    jobs: Sequence[Mapping[str, Any]], rule_files: Sequence[str] = ()
) -> dict[str, Any]:
    """A whole Prometheus configuration: these jobs only (no Alertmanager, no remote write)."""
    config: dict[str, Any] = {
        "global": {"scrape_interval": "15s", "evaluation_interval": "15s"},
        "scrape_configs": [dict(job) for job in jobs],
    }
    if rule_files:
        config["rule_files"] = list(rule_files)
    return config


def matches_selector(labels: Mapping[str, str], selector: Mapping[str, Any] | None) -> bool:
    """A Kubernetes label selector (``matchLabels``, ``matchExpressions``); empty: everything."""
    if not selector:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
        if operator not in ("In", "NotIn", "Exists", "DoesNotExist"):
            raise ScrapeConfigError(f"unknown label selector operator {operator!r}")
    return True


def _namespaces_match(monitor: Object, namespace: str) -> bool:
    """``namespaceSelector``: ``any: true``, ``matchNames``, or (absent) the monitor's own."""
    selector = monitor["spec"].get("namespaceSelector") or {}
    if selector.get("any"):
        return True
    names = selector.get("matchNames")
    if names:
        return bool(namespace in names)
    return bool(namespace == monitor["metadata"]["namespace"])


def _check_fields(monitor: Object, endpoint: Mapping[str, Any], allowed: frozenset[str]) -> None:
    name = f"{monitor['kind']} {monitor['metadata']['name']}"
    unknown = set(monitor["spec"]) - MONITOR_SPEC_FIELDS
    if unknown:
        raise ScrapeConfigError(f"{name}: spec fields not translated: {sorted(unknown)}")
    unknown = set(endpoint) - allowed
    if unknown:
        raise ScrapeConfigError(f"{name}: endpoint fields not translated: {sorted(unknown)}")
    if "port" not in endpoint:
        raise ScrapeConfigError(f"{name}: an endpoint without a named port")


def _job(
    name: str, endpoint: Mapping[str, Any], targets: list[tuple[str, dict[str, str]]]
) -> dict[str, Any]:
    job: dict[str, Any] = {
        "job_name": name,
        "metrics_path": endpoint.get("path", "/metrics"),
        "honor_labels": bool(endpoint.get("honorLabels", False)),
        "static_configs": [{"targets": [address], "labels": labels} for address, labels in targets],
    }
    if "interval" in endpoint:
        job["scrape_interval"] = endpoint["interval"]
    return job


def _address(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _pod_monitor_jobs(monitor: Object, pods: Sequence[Object]) -> list[dict[str, Any]]:
    meta = monitor["metadata"]
    spec = monitor["spec"]
    jobs = []
    for index, endpoint in enumerate(spec.get("podMetricsEndpoints") or []):
        _check_fields(monitor, endpoint, POD_MONITOR_ENDPOINT_FIELDS)
        targets: list[tuple[str, dict[str, str]]] = []
        for pod in pods:
            pod_meta, status = pod["metadata"], pod.get("status") or {}
            if not _namespaces_match(monitor, pod_meta["namespace"]):
                continue
            if not matches_selector(pod_meta.get("labels") or {}, spec.get("selector")):
                continue
            # the prometheus-operator drops finished pods; a pod without an IP has no target
            if status.get("phase") in ("Succeeded", "Failed") or not status.get("podIP"):
                continue
            for container in pod["spec"]["containers"]:
                for port in container.get("ports") or []:
                    if port.get("name") != endpoint["port"]:
                        continue
                    labels = {
                        "job": f"{meta['namespace']}/{meta['name']}",
                        "namespace": pod_meta["namespace"],
                        "pod": pod_meta["name"],
                        "container": container["name"],
                        "endpoint": endpoint["port"],
                    }
                    targets.append((_address(status["podIP"], port["containerPort"]), labels))
        jobs.append(
            _job(f"podMonitor/{meta['namespace']}/{meta['name']}/{index}", endpoint, targets)
        )
    return jobs


def _service_monitor_jobs(
    monitor: Object, services: Sequence[Object], endpoint_slices: Sequence[Object]
) -> list[dict[str, Any]]:
    meta = monitor["metadata"]
    spec = monitor["spec"]
    selected = [
        service
        for service in services
        if _namespaces_match(monitor, service["metadata"]["namespace"])
        and matches_selector(service["metadata"].get("labels") or {}, spec.get("selector"))
    ]
    jobs = []
    for index, endpoint in enumerate(spec.get("endpoints") or []):
        _check_fields(monitor, endpoint, SERVICE_MONITOR_ENDPOINT_FIELDS)
        targets: list[tuple[str, dict[str, str]]] = []
        for service in selected:
            namespace, name = service["metadata"]["namespace"], service["metadata"]["name"]
            for item in endpoint_slices:
                item_meta = item["metadata"]
                if item_meta["namespace"] != namespace:
                    continue
                if (item_meta.get("labels") or {}).get("kubernetes.io/service-name") != name:
                    continue
                ports = [p for p in item.get("ports") or [] if p.get("name") == endpoint["port"]]
                for port in ports:
                    for address_entry in item.get("endpoints") or []:
                        labels = {
                            "job": name,
                            "namespace": namespace,
                            "service": name,
                            "endpoint": endpoint["port"],
                        }
                        target_ref = address_entry.get("targetRef") or {}
                        if target_ref.get("kind") == "Pod":
                            labels["pod"] = target_ref["name"]
                        for ip in address_entry.get("addresses") or []:
                            targets.append((_address(ip, port["port"]), dict(labels)))
        jobs.append(
            _job(f"serviceMonitor/{meta['namespace']}/{meta['name']}/{index}", endpoint, targets)
        )
    return jobs


def config_from_stream(stream: TextIO) -> dict[str, Any]:
    """The ``prometheus.yml`` for a YAML stream of rendered chart objects and cluster objects
    (``kind: List`` documents, as ``kubectl get -o yaml`` prints them, are unpacked)."""
    objects: list[Object] = []
    for document in yaml.safe_load_all(stream):
        if not document:
            continue
        if str(document.get("kind", "")).endswith("List"):
            objects += document.get("items") or []
        else:
            objects.append(document)
    pods = [o for o in objects if o.get("kind") == "Pod"]
    services = [o for o in objects if o.get("kind") == "Service"]
    slices = [o for o in objects if o.get("kind") == "EndpointSlice"]
    monitors = [o for o in objects if o.get("kind") in ("PodMonitor", "ServiceMonitor")]
    if not monitors:
        raise ScrapeConfigError(
            "no PodMonitor or ServiceMonitor in the input: render the chart with "
            "--set monitoring.podMonitor.enabled=true --set monitoring.serviceMonitor.enabled=true"
        )
    return prometheus_config(scrape_configs(monitors, pods, services, slices))


def main(argv: Sequence[str] | None = None) -> int:
    """Read the stream from stdin, print ``prometheus.yml``; 2 on unusable input."""
    parser = argparse.ArgumentParser(
        prog="python -m wsgauge_devcluster.scrape_config",
        description="prometheus.yml with static targets from the chart's PodMonitor/ServiceMonitor",
    )
    parser.parse_args(argv)
    try:
        config = config_from_stream(sys.stdin)
    except (ScrapeConfigError, yaml.YAMLError, KeyError, TypeError, AttributeError) as error:
        print(f"scrape_config: {error}", file=sys.stderr)
        return 2
    sys.stdout.write(yaml.safe_dump(config, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
