"""Every container the chart makes runs non-root, read-only, without privileges.

Walks every object with a pod template that the chart renders with the real helm (no cluster),
in several value sets (defaults, monitoring on, cert-manager mode, a restricted install without
injector or metrics API), every container and init container in it, plus the sidecar container
the injector adds to application pods (built from the chart's own injector config). The images'
own user is checked in ``tests/unit/images/test_image_users.py``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from chart_render_harness import Render
from wsgauge_operator.injector.plan import plan_injection, settings_from_mapping

VALUE_SETS = {
    "defaults": [],
    "monitoring": [
        "monitoring.serviceMonitor.enabled=true",
        "monitoring.podMonitor.enabled=true",
        "monitoring.prometheusRule.enabled=true",
        "monitoring.grafanaDashboard.enabled=true",
    ],
    "cert-manager": ["tls.mode=cert-manager"],
    "minimal": ["injector.enabled=false", "metricsApi.enabled=false"],
}


def pod_specs(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``kind/name`` -> pod spec, for every object that makes pods."""
    found: dict[str, dict[str, Any]] = {}
    for item in objects:
        kind, name = item["kind"], item["metadata"]["name"]
        spec = item.get("spec") or {}
        if kind == "Pod":
            found[f"{kind}/{name}"] = spec
        elif kind == "CronJob":
            found[f"{kind}/{name}"] = spec["jobTemplate"]["spec"]["template"]["spec"]
        elif "template" in spec and "spec" in spec["template"]:
            found[f"{kind}/{name}"] = spec["template"]["spec"]
    return found


def locked_down(container: dict[str, Any], pod: dict[str, Any]) -> list[str]:
    """What is missing from a container's lockdown (empty: all there)."""
    context = container.get("securityContext") or {}
    pod_context = pod.get("securityContext") or {}
    problems = []
    if not (context.get("runAsNonRoot") or pod_context.get("runAsNonRoot")):
        problems.append("runAsNonRoot")
    for key in ("runAsUser", "runAsGroup"):
        if context.get(key, pod_context.get(key)) == 0:
            problems.append(f"{key}=0")
    if context.get("readOnlyRootFilesystem") is not True:
        problems.append("readOnlyRootFilesystem")
    if context.get("allowPrivilegeEscalation") is not False:
        problems.append("allowPrivilegeEscalation")
    if context.get("privileged"):
        problems.append("privileged")
    if (context.get("capabilities") or {}).get("drop") != ["ALL"]:
        problems.append("capabilities.drop ALL")
    if (context.get("capabilities") or {}).get("add"):
        problems.append("capabilities.add")
    if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
        problems.append("host namespaces")
    for volume in pod.get("volumes") or []:
        if "hostPath" in volume:
            problems.append(f"hostPath volume {volume['name']}")
    return problems


@pytest.mark.parametrize("values", list(VALUE_SETS), ids=list(VALUE_SETS))
def test_every_rendered_container_is_locked_down(render: Render, values: str) -> None:
    specs = pod_specs(render(*VALUE_SETS[values]))
    assert specs, "no pod templates rendered"
    checked = 0
    for owner, pod in specs.items():
        for container in [*(pod.get("initContainers") or []), *pod["containers"]]:
            problems = locked_down(container, pod)
            assert not problems, f"{owner} container {container['name']}: {problems}"
            checked += 1
    assert checked >= len(specs)


def test_the_injected_sidecar_is_locked_down(render: Render) -> None:
    objects = render()
    config = next(
        item for item in objects
        if item["kind"] == "ConfigMap" and item["metadata"]["name"] == "rel-wsgauge-injector"
    )  # fmt: skip
    settings = settings_from_mapping(json.loads(config["data"]["injector.json"]))
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "app", "namespace": "apps",
                     "annotations": {"wsgauge.dev/inject": "true"}},
        "spec": {"containers": [{"name": "app", "image": "app:1",
                                 "ports": [{"containerPort": 8081}]}]},
    }  # fmt: skip
    plan = plan_injection(pod, settings)
    added = [
        operation["value"]
        for operation in plan.patch
        if operation["op"] == "add" and operation["path"].startswith("/spec/containers")
    ]
    sidecars = [value for value in added if isinstance(value, dict) and "image" in value]
    assert sidecars, plan.patch
    assert sidecars[0]["image"] == settings.image, plan.patch
    assert locked_down(sidecars[0], pod["spec"]) == []
