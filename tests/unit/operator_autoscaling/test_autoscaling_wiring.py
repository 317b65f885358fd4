"""The Autoscaler in memory: owned HPA lifecycle, AutoscalingActive reasons, desiredReplicas,
recommendation Events and deletion-cost writes, against a fake Kubernetes API."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from wsgauge_contract import StatsDocument
from wsgauge_operator.autoscaling.autoscaler import Autoscaler, hpa_condition, merged_hpa
from wsgauge_operator.cli import settings_from
from wsgauge_operator.control.controller import Controller
from wsgauge_operator.kube.kubeapi import ScaleInfo
from wsgauge_operator.model.fleet import EndpointKey
from wsgauge_operator.model.settings import AutoscalingSettings, OperatorSettings

COST = "controller.kubernetes.io/pod-deletion-cost"
OURS = "wsgauge.dev/deletion-cost"
KARPENTER = "karpenter.sh/managed-deletion-cost"
WALL = 1_700_000_000.0
AUTOSCALING = {"minReplicas": 1, "maxReplicas": 10, "targetConnectionsPerPod": 20}


class FakeKube:
    """HPAs, one scale subresource, pod annotation patches and Events, in memory."""

    def __init__(self) -> None:
        self.hpas: dict[tuple[str, str], dict[str, Any]] = {}
        self.scale: ScaleInfo | None = ScaleInfo(replicas=3, status_replicas=3, selector="app=chat")
        self.patches: list[tuple[str, str]] = []
        self.events: list[Mapping[str, Any]] = []
        self.calls: list[str] = []

    async def get_hpa(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.hpas.get((namespace, name))
        return copy.deepcopy(found) if found is not None else None

    async def create_hpa(self, namespace: str, body: Mapping[str, Any]) -> None:
        self.calls.append("create")
        stored = copy.deepcopy(dict(body))
        stored["metadata"]["uid"] = "hpa-uid"
        self.hpas[(namespace, body["metadata"]["name"])] = stored

    async def replace_hpa(self, namespace: str, name: str, body: Mapping[str, Any]) -> None:
        self.calls.append("replace")
        self.hpas[(namespace, name)] = copy.deepcopy(dict(body))

    async def delete_hpa(self, namespace: str, name: str, uid: str) -> None:
        self.calls.append(f"delete {uid}")
        del self.hpas[(namespace, name)]

    async def get_scale(
        self, namespace: str, api_version: str, kind: str, name: str
    ) -> ScaleInfo | None:
        return self.scale if name == "chat" else None

    async def patch_pod_annotations(
        self, namespace: str, name: str, uid: str, annotations: Mapping[str, str]
    ) -> None:
        assert annotations[OURS] == annotations[COST]  # one patch: the cost and its marker
        self.patches.append((name, annotations[COST]))

    async def create_event(self, namespace: str, event: Mapping[str, Any]) -> None:
        self.events.append(event)

    async def patch_connectionstats_status(
        self, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None:
        raise AssertionError("the controller is not started in these tests")

    async def patch_pod_condition(
        self, namespace: str, name: str, uid: str, condition: Mapping[str, Any]
    ) -> None:
        raise AssertionError("the controller is not started in these tests")


def cs_body(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "selector": {"matchLabels": {"app": "chat"}},
        "sidecarPort": 9090,
        "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "chat"},
    }
    body.update(spec)
    return {
        "metadata": {"name": "chat", "namespace": "ns", "uid": "cs-uid", "generation": 1},
        "spec": body,
    }


def pod_body(name: str, cost: int | None = None, **extra: str) -> dict[str, Any]:
    """A Running pod of the target; ``cost``: as wsgauge wrote it (with its marker)."""
    annotations = {COST: str(cost), OURS: str(cost)} if cost is not None else {}
    annotations.update({key.replace("_", "/"): value for key, value in extra.items()})
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": f"u-{name}",
            "labels": {"app": "chat"},
            "annotations": annotations,
        },
        "spec": {"containers": [{"name": "s"}]},
        "status": {"phase": "Running", "podIP": f"127.0.0.{len(name)}"},
    }


def setup(
    settings: AutoscalingSettings | None = None,
) -> tuple[Controller, Autoscaler, FakeKube]:
    kube = FakeKube()
    controller = Controller(OperatorSettings(), kube)
    autoscaler = Autoscaler(
        controller,
        kube,
        settings or AutoscalingSettings(metrics_api=True),
        monotonic=lambda: 100.0,
        clock=lambda: datetime.fromtimestamp(WALL + 1, UTC),
    )
    autoscaler.attach()
    autoscaler.metrics_api_error = None
    return controller, autoscaler, kube


def report(controller: Controller, name: str, connections: int) -> None:
    key = EndpointKey("ns", name, f"u-{name}", f"127.0.0.{len(name)}", 9090)
    controller.fleet.add_endpoint(key)
    document = StatsDocument(pod=name, connections=connections, topics={"t": connections}, seq=1)
    controller.fleet.report(key, document, now=WALL)


async def test_owned_hpa_created_updated_deleted_and_conflict() -> None:
    controller, autoscaler, kube = setup()
    controller.connectionstats_event("ADDED", cs_body(autoscaling=AUTOSCALING))
    await autoscaler.sync_hpa(("ns", "chat"))
    hpa = kube.hpas[("ns", "chat")]
    assert hpa["metadata"]["ownerReferences"][0]["uid"] == "cs-uid"
    assert hpa["spec"]["maxReplicas"] == 10
    state = autoscaler.state("ns", "chat")
    assert state is not None
    assert autoscaler.condition(state)[1] == "WaitingForHPA"

    kube.hpas[("ns", "chat")]["status"] = {
        "conditions": [
            {"type": "AbleToScale", "status": "True", "reason": "ReadyForNewScale"},
            {"type": "ScalingActive", "status": "True", "reason": "ValidMetricFound"},
        ]
    }
    changed = cs_body(autoscaling=dict(AUTOSCALING, maxReplicas=4))
    changed["metadata"]["generation"] = 2
    controller.connectionstats_event("MODIFIED", changed)
    await autoscaler.sync_hpa(("ns", "chat"))
    assert kube.calls == ["create", "replace"]
    assert kube.hpas[("ns", "chat")]["spec"]["maxReplicas"] == 4
    assert "status" not in kube.hpas[("ns", "chat")]  # a replace never sends the status
    await autoscaler.sync_hpa(("ns", "chat"))
    assert kube.calls == ["create", "replace"]  # nothing changed: no write

    removed = cs_body()
    removed["metadata"]["generation"] = 3
    controller.connectionstats_event("MODIFIED", removed)
    await autoscaler.sync_hpa(("ns", "chat"))
    assert kube.calls[-1] == "delete hpa-uid"
    assert not kube.hpas
    assert autoscaler.condition(state)[1] == "NoAutoscaling"
    reasons = [event["reason"] for event in kube.events]
    assert reasons == ["HPACreated", "HPAUpdated", "HPADeleted"]

    foreign = copy.deepcopy(hpa)
    foreign["metadata"]["ownerReferences"] = []
    kube.hpas[("ns", "chat")] = foreign
    again = cs_body(autoscaling=AUTOSCALING)
    again["metadata"]["generation"] = 4
    controller.connectionstats_event("MODIFIED", again)
    await autoscaler.sync_hpa(("ns", "chat"))
    assert autoscaler.condition(state)[1] == "HPAConflict"
    assert kube.hpas[("ns", "chat")] == foreign  # not ours: untouched


async def test_condition_reasons_and_desired_replicas() -> None:
    controller, autoscaler, _kube = setup()
    body = cs_body(autoscaling=AUTOSCALING)
    body["spec"]["targetRef"]["name"] = "absent"
    controller.connectionstats_event("ADDED", body)
    await autoscaler.sync_hpa(("ns", "chat"))
    state = autoscaler.state("ns", "chat")
    assert state is not None
    assert autoscaler.condition(state)[:2] == ("False", "TargetNotFound")
    assert autoscaler.desired_replicas(state) is None

    fixed = cs_body(autoscaling=AUTOSCALING)
    fixed["metadata"]["generation"] = 2
    controller.connectionstats_event("MODIFIED", fixed)
    for name, count in (("pod-a", 50), ("pod-b", 30), ("pod-c", 0)):
        controller.pod_event("ADDED", pod_body(name))
        report(controller, name, count)
    await autoscaler.sync_hpa(("ns", "chat"))
    assert autoscaler.desired_replicas(state) == 4  # ceil(80 / 20)
    record = controller.records()[0]
    contribution = autoscaler.contribute(record, None)
    assert contribution.fields == {"desiredReplicas": 4}
    totals = controller.fleet.connection_stats("ns", "chat")
    assert totals is None or totals.desired_replicas == 4

    autoscaler.metrics_api_error = "this operator runs with --metrics-api=false"
    assert autoscaler.condition(state)[1] == "MetricsApiNotServed"
    no_section = cs_body()
    no_section["metadata"]["generation"] = 3
    controller.connectionstats_event("MODIFIED", no_section)
    assert autoscaler.contribute(controller.records()[0], None).fields == {"desiredReplicas": None}


@pytest.mark.parametrize(
    ("conditions", "expected"),
    [
        ([], ("False", "WaitingForHPA")),
        ([{"type": "AbleToScale", "status": "False", "reason": "FailedGetScale"}],
         ("False", "HPANotAbleToScale")),
        ([{"type": "ScalingActive", "status": "False", "reason": "FailedGetPodsMetric"}],
         ("False", "MetricsUnavailable")),
        ([{"type": "ScalingActive", "status": "False", "reason": "ScalingDisabled"}],
         ("False", "HPAScalingInactive")),
        ([{"type": "ScalingActive", "status": "True", "reason": "ValidMetricFound"}],
         ("True", "HPAActive")),
    ],
)  # fmt: skip
def test_hpa_condition(conditions: list[dict[str, str]], expected: tuple[str, str]) -> None:
    assert hpa_condition({"status": {"conditions": conditions}})[:2] == expected


def test_merged_hpa_keeps_foreign_fields_and_drops_removed_behavior() -> None:
    existing = {
        "metadata": {"name": "chat", "resourceVersion": "7", "labels": {"team": "a"}},
        "spec": {"maxReplicas": 5, "behavior": {"scaleDown": {}}, "minReplicas": 1},
        "status": {"currentReplicas": 2},
    }
    desired = {
        "metadata": {"labels": {"app.kubernetes.io/managed-by": "wsgauge-operator"},
                     "ownerReferences": [{"uid": "cs", "controller": True}]},
        "spec": {"maxReplicas": 8, "minReplicas": 2},
    }  # fmt: skip
    merged = merged_hpa(existing, desired)
    assert merged["metadata"]["resourceVersion"] == "7"
    assert merged["metadata"]["labels"] == {
        "team": "a",
        "app.kubernetes.io/managed-by": "wsgauge-operator",
    }
    assert merged["spec"] == {"maxReplicas": 8, "minReplicas": 2}
    assert "status" not in merged


def writes(controller: Controller, reason: str) -> float:
    value = controller.telemetry.deletion_cost_writes.labels(reason, "ok")._value.get()
    return float(value)


def cost_condition(autoscaler: Autoscaler, controller: Controller) -> tuple[str, str, str]:
    contribution = autoscaler.contribute(controller.records()[0], None)
    (found,) = [c for c in contribution.conditions if c["type"] == "DeletionCostConflict"]
    return found["status"], found["reason"], found["message"]


async def test_deletion_costs_only_when_a_scale_down_is_near() -> None:
    controller, autoscaler, kube = setup()
    controller.connectionstats_event("ADDED", cs_body(autoscaling=AUTOSCALING))
    for name, count, cost in (("pod-a", 30, 30), ("pod-b", 10, 9), ("pod-c", 20, None)):
        controller.pod_event("ADDED", pod_body(name, cost))
        report(controller, name, count)
    await autoscaler.sync_hpa(("ns", "chat"))  # scale: 3 replicas; 60 / 20 -> 3, no scale-down
    await autoscaler.cost_round(("ns", "chat"))
    assert kube.patches == []  # no scale-down near: nothing written, whatever the counts
    assert cost_condition(autoscaler, controller)[:2] == ("False", "NoOtherWriter")

    report(controller, "pod-a", 3)  # 33 sockets: 2 replicas; pod-b (9) must go before pod-a
    await autoscaler.cost_round(("ns", "chat"))
    assert sorted(kube.patches) == [("pod-a", "3"), ("pod-b", "10"), ("pod-c", "20")]
    assert writes(controller, "scale_down_near") == 3
    assert "ReplicasRecommended" in [e["reason"] for e in kube.events]
    note = kube.events[-1]["note"]
    assert "imply 2 replicas (the target has 3)" in note
    kube.patches.clear()
    await autoscaler.cost_round(("ns", "chat"))  # written costs remembered: no rewrite
    assert kube.patches == []


async def test_bands_without_autoscaling() -> None:
    controller, autoscaler, kube = setup()
    controller.connectionstats_event("ADDED", cs_body())
    for name, count, cost in (("pod-a", 30, None), ("pod-b", 10, 9)):
        controller.pod_event("ADDED", pod_body(name, cost))
        report(controller, name, count)
    await autoscaler.sync_hpa(("ns", "chat"))
    await autoscaler.cost_round(("ns", "chat"))
    assert kube.patches == [("pod-a", "30")]  # only pod-a left its band
    assert (writes(controller, "bands"), writes(controller, "scale_down_near")) == (1, 0)


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"karpenter.sh_managed-deletion-cost": "true"}, "KarpenterManaged"),
        ({"wsgauge.dev_deletion-cost": "15"}, "ChangedByOtherWriter"),  # cost 20, we wrote 15
        ({}, "SetByOtherWriter"),  # a cost without our marker
    ],
)
async def test_other_writer_yield_then_overwrite(extra: dict[str, str], reason: str) -> None:
    controller, autoscaler, kube = setup()
    controller.connectionstats_event("ADDED", cs_body(autoscaling=AUTOSCALING))
    controller.pod_event("ADDED", pod_body("pod-a", 30))
    foreign = pod_body("pod-c")
    foreign["metadata"]["annotations"] = {COST: "20"} | {
        key.replace("_", "/"): value for key, value in extra.items()
    }
    controller.pod_event("ADDED", foreign)
    for name, count in (("pod-a", 3), ("pod-c", 20)):  # 23 sockets: 2 -> 2, and 3 is not 2
        report(controller, name, count)
    kube.scale = ScaleInfo(replicas=3, status_replicas=3, selector="app=chat")  # a scale-down
    await autoscaler.sync_hpa(("ns", "chat"))
    await autoscaler.cost_round(("ns", "chat"))
    assert kube.patches == []  # Yield (the default): nothing written on the target
    status, found, message = cost_condition(autoscaler, controller)
    assert (status, found) == ("True", reason)
    assert "yields" in message
    conflicts = [e for e in kube.events if e["reason"] == "DeletionCostConflict"]
    assert len(conflicts) == 1
    assert conflicts[0]["type"] == "Warning"

    overwrite = cs_body(autoscaling=dict(AUTOSCALING, deletionCost={"otherWriters": "Overwrite"}))
    overwrite["metadata"]["generation"] = 2
    controller.connectionstats_event("MODIFIED", overwrite)
    await autoscaler.cost_round(("ns", "chat"))
    assert ("pod-a", "3") in kube.patches
    assert "keeps writing" in cost_condition(autoscaler, controller)[2]
    assert len([e for e in kube.events if e["reason"] == "DeletionCostConflict"]) == 1


def test_cli_flags_and_environment() -> None:
    settings = settings_from(
        ["--metrics-api", "true", "--metrics-api-listen", "127.0.0.1:9443"],
        {
            "WSGAUGE_OPERATOR_METRICS_API_CERT_FILE": "/tls/tls.crt",
            "WSGAUGE_OPERATOR_METRICS_API_KEY_FILE": "/tls/tls.key",
            "WSGAUGE_OPERATOR_KEDA_LISTEN": "0.0.0.0:8091",
        },
    )
    assert settings.autoscaling == AutoscalingSettings(
        metrics_api=True,
        metrics_api_listen="127.0.0.1:9443",
        metrics_api_cert_file="/tls/tls.crt",
        metrics_api_key_file="/tls/tls.key",
        keda_listen="0.0.0.0:8091",
    )
    assert settings_from([], {}).autoscaling.metrics_api is False
