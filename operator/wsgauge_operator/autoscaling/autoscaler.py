"""The autoscaling part of the operator: the owned HPA, ``desiredReplicas``, the deletion cost.

:class:`Autoscaler` hooks into the :class:`~wsgauge_operator.control.controller.Controller` (record
listener, status contributor, fleet listener, service) and keeps, per ConnectionStats:

- **the owned HPA** (:mod:`.hpa` builds it): created when ``spec.autoscaling`` is set,
  replaced when the fields the operator owns differ, deleted when the section goes (the
  garbage collector deletes it with the ConnectionStats through the owner reference). An HPA
  of the same name that is not ours is left alone and reported. Checked on every spec change
  and every ``hpa_resync`` seconds, together with the target's scale subresource;
- **``status.desiredReplicas``** (what the served metric implies, computed like the HPA
  controller does) and the **``AutoscalingActive``** condition, True, or False with a reason:
  ``NoAutoscaling``, ``NoTarget``, ``TargetNotFound``, ``HPAConflict``,
  ``HPAFailed``, ``MetricsApiNotServed``, ``WaitingForHPA``, ``HPANotAbleToScale``,
  ``MetricsUnavailable`` (the HPA cannot read the metric: the APIService is missing or not
  available), ``HPAScalingInactive``;
- **Events** on the ConnectionStats: ``HPACreated``/``HPAUpdated``/``HPADeleted`` and
  ``ReplicasRecommended`` when the metric implies another replica count than the target has;
- **``controller.kubernetes.io/pod-deletion-cost``** on the target's pods, through one
  :class:`~.deletion_cost.DeletionCostPlanner` (exact order, token bucket), woken by every
  change of the fleet. With ``spec.autoscaling`` it writes only while a scale-down is near
  (:class:`~wsgauge_operator.model.deletion_cost_policy.ScaleDownOutlook`: the metric implies
  fewer replicas than the target has, or the HPA decided so, within the last 30 s), so the
  order is right before the HPA acts and nothing is written in between; without it, within
  bands. Every write also sets ``wsgauge.dev/deletion-cost`` (the value written), which tells
  another writer's changes apart; another writer (that, or Karpenter's marker) is reported in
  the ``DeletionCostConflict`` condition and an Event, and with
  ``deletionCost.otherWriters: Yield`` (the default) nothing is written on that target.

Per ConnectionStats, a :class:`TargetState` holds what is known and the two
:class:`~wsgauge_operator.control.object_loop.ObjectLoop` s: the HPA loop and the deletion-cost
loop.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from wsgauge_operator.autoscaling.deletion_cost import (
    DeletionCostPlanner,
    DeletionCostSettings,
    PodCostInput,
)
from wsgauge_operator.autoscaling.hpa import (
    desired_replicas_from_source,
    hpa_is_owned_by,
    hpa_manifest,
    hpa_needs_update,
)
from wsgauge_operator.control.connectionstats_state import ConnectionStatsRecord, StatusContribution
from wsgauge_operator.control.controller import Controller
from wsgauge_operator.control.object_loop import LoopTiming, ObjectLoop
from wsgauge_operator.kube.kubeapi import ScaleInfo
from wsgauge_operator.metrics_api.core import servable_pods
from wsgauge_operator.model import deletion_cost_policy as cost_policy
from wsgauge_operator.model.deletion_cost_policy import (
    OtherWriterMemory,
    OtherWriterReport,
    ScaleDownOutlook,
    conflict_condition,
    conflict_event,
    hpa_replicas,
    other_writers,
    writes_allowed,
)
from wsgauge_operator.model.event_policy import replica_recommendation
from wsgauge_operator.model.exceptions import KubeApiError
from wsgauge_operator.model.fleet import DELETION_COST_ANNOTATION, WSGAUGE_COST_ANNOTATION
from wsgauge_operator.model.label_selector import LabelSelectorError, parse_label_selector
from wsgauge_operator.model.settings import AutoscalingSettings
from wsgauge_operator.model.spec import OtherWriters

logger = logging.getLogger(__name__)

CONDITION = "AutoscalingActive"
"""Condition type this module writes."""
COST_DEBOUNCE_SECONDS = 0.2
"""A woken deletion-cost round waits this long so that a burst of changes is handled once."""
COST_PERIOD_SECONDS = 5.0
"""A deletion-cost round runs at least this often."""
HPA_PENDING_RESYNC_SECONDS = 2.0
"""Re-read the HPA this soon while it has no status yet (or a write failed)."""
PARALLEL_POD_WRITES = 8
"""Annotation writes in flight at once per ConnectionStats."""
WRITTEN_MEMORY_SECONDS = 10.0
"""How long a cost just written counts as the pod's cost until the pod watch shows it."""
COST_TIMING = LoopTiming(
    debounce=COST_DEBOUNCE_SECONDS,
    period=COST_PERIOD_SECONDS,
    retry_initial=1.0,
    retry_max=COST_PERIOD_SECONDS,
)
"""The deletion-cost loop of a ConnectionStats."""

Key = tuple[str, str]
Clock = Callable[[], datetime]


class AutoscalingKube(Protocol):
    """The API calls this module makes (implemented by
    :class:`~wsgauge_operator.kube.kubeapi.KubeApi`).
    """

    async def get_hpa(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The HPA of that name, or None."""

    async def create_hpa(self, namespace: str, body: Mapping[str, Any]) -> None:
        """Create an HPA."""

    async def replace_hpa(self, namespace: str, name: str, body: Mapping[str, Any]) -> None:
        """Replace an HPA."""

    async def delete_hpa(self, namespace: str, name: str, uid: str) -> None:
        """Delete an HPA with that uid."""

    async def get_scale(
        self, namespace: str, api_version: str, kind: str, name: str
    ) -> ScaleInfo | None:
        """The target's scale subresource, or None when the target does not exist."""

    async def patch_pod_annotations(
        self, namespace: str, name: str, uid: str, annotations: Mapping[str, str]
    ) -> None:
        """Merge-patch pod annotations."""


@dataclass
class TargetState:
    """What the autoscaler knows about one ConnectionStats and its target."""

    record: ConnectionStatsRecord
    scale: ScaleInfo | None = None
    """The target's scale subresource as last read (None: unknown or missing)."""
    target_missing: bool = False
    """The last read found no target."""
    hpa: Mapping[str, Any] | None = None
    """Our HPA as last read or written (None: none)."""
    problem: tuple[str, str] | None = None
    """(reason, message) of the last HPA reconciliation that failed or was refused."""
    desired: int | None = None
    """Replicas the served metric implies (None: no autoscaling or target unknown)."""
    recommended: int | None = None
    """The desired count an Event was last recorded for."""
    written: dict[str, tuple[str, int, float]] = field(default_factory=dict)
    """Costs just written: pod -> (uid, cost, monotonic time)."""
    outlook: ScaleDownOutlook = field(default_factory=ScaleDownOutlook)
    """Whether a scale-down of the target is near."""
    writers: OtherWriterMemory = field(default_factory=OtherWriterMemory)
    """Other writers of the deletion cost seen on the target's pods."""
    conflict: OtherWriterReport = field(default_factory=OtherWriterReport)
    """The finding the last deletion-cost round acted on."""
    conflict_reason: str | None = None
    """The finding's reason an Event was last decided for (None: none yet)."""
    hpa_loop: ObjectLoop | None = field(default=None, repr=False, compare=False)
    """The loop that reconciles the owned HPA (None: the autoscaler has not started)."""
    cost_loop: ObjectLoop | None = field(default=None, repr=False, compare=False)
    """The loop that writes the deletion costs and recommendations."""

    def loops(self) -> list[ObjectLoop]:
        """The loops started for this ConnectionStats."""
        return [loop for loop in (self.hpa_loop, self.cost_loop) if loop is not None]


def merged_hpa(existing: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """``existing`` with the fields the operator owns set from ``desired`` (for a replace)."""
    result = copy.deepcopy(dict(existing))
    result.pop("status", None)
    metadata = result.setdefault("metadata", {})
    labels = dict(metadata.get("labels") or {})
    labels.update(desired["metadata"].get("labels") or {})
    metadata["labels"] = labels
    ours = list(desired["metadata"].get("ownerReferences") or [])
    uids = {owner.get("uid") for owner in ours}
    others = [
        owner
        for owner in metadata.get("ownerReferences") or []
        if owner.get("uid") not in uids and not owner.get("controller")
    ]
    metadata["ownerReferences"] = others + ours
    spec = result.setdefault("spec", {})
    for key, value in desired["spec"].items():
        spec[key] = copy.deepcopy(value)
    if "behavior" not in desired["spec"]:
        spec.pop("behavior", None)  # the section was removed: the server defaults it again
    return result


def hpa_condition(hpa: Mapping[str, Any]) -> tuple[str, str, str]:
    """(status, reason, message) of AutoscalingActive from the HPA's own conditions."""
    status = hpa.get("status") or {}
    conditions = {
        str(item.get("type")): item
        for item in status.get("conditions") or []
        if isinstance(item, Mapping)
    }
    able = conditions.get("AbleToScale")
    if able is not None and able.get("status") == "False":
        return "False", "HPANotAbleToScale", f"HPA: {able.get('reason')}: {able.get('message')}"
    active = conditions.get("ScalingActive")
    if active is not None and active.get("status") == "False":
        reason = str(active.get("reason") or "")
        if "Metric" in reason:
            return (
                "False",
                "MetricsUnavailable",
                f"the HPA cannot read wsgauge_connections (is the custom.metrics.k8s.io "
                f"APIService registered and available?): {reason}: {active.get('message')}",
            )
        return "False", "HPAScalingInactive", f"HPA: {reason}: {active.get('message')}"
    if active is None:
        return "False", "WaitingForHPA", "the HPA has not computed a replica count yet"
    return "True", "HPAActive", f"the HPA scales on wsgauge_connections: {active.get('message')}"


class Autoscaler:
    """The owned HPAs, ``desiredReplicas``/``AutoscalingActive`` and the deletion cost."""

    def __init__(
        self,
        controller: Controller,
        kube: AutoscalingKube | None,
        settings: AutoscalingSettings,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Clock = lambda: datetime.now(UTC),
    ) -> None:
        self._controller = controller
        self._kube = kube
        self._settings = settings
        self._monotonic = monotonic
        self._clock = clock
        self._planner = DeletionCostPlanner(
            DeletionCostSettings(
                writes_per_second=settings.deletion_cost_writes_per_second,
                burst=settings.deletion_cost_burst,
            ),
            clock=monotonic,
        )
        self._states: dict[Key, TargetState] = {}
        """Every ConnectionStats known, with its loops."""
        self._hpa_timing = LoopTiming(
            period=settings.hpa_resync,
            retry_initial=HPA_PENDING_RESYNC_SECONDS,
            retry_max=max(settings.hpa_resync, HPA_PENDING_RESYNC_SECONDS),
        )
        self._started = False
        self.metrics_api_error: str | None = (
            None if settings.metrics_api else "this operator runs with --metrics-api=false"
        )
        """Why the custom metrics API is not served (None: it is)."""

    def attach(self) -> None:
        """Register with the controller (listener, contributor, service, fleet listener)."""
        self._controller.add_record_listener(self._on_record)
        self._controller.add_status_contributor(self.contribute)
        self._controller.add_service(self.start, self.stop)
        self._controller.fleet.add_listener(self._on_fleet_change)

    def state(self, namespace: str, name: str) -> TargetState | None:
        """What is known about one ConnectionStats (for tests and tools)."""
        return self._states.get((namespace, name))

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the per-ConnectionStats tasks."""
        self._started = True
        for key in list(self._states):
            self._ensure_tasks(key)

    async def stop(self) -> None:
        """Cancel every task."""
        self._started = False
        loops: list[ObjectLoop] = []
        for state in self._states.values():
            loops.extend(state.loops())
            state.hpa_loop = state.cost_loop = None
        await asyncio.gather(*(loop.stop() for loop in loops))

    def _on_record(self, key: Key, record: ConnectionStatsRecord | None) -> None:
        if record is None:
            gone = self._states.pop(key, None)
            for loop in gone.loops() if gone is not None else []:
                loop.cancel()
            return
        state = self._states.get(key)
        changed = True
        if state is None:
            self._states[key] = TargetState(record)
        elif state.record.uid != record.uid:
            self._states[key] = TargetState(
                record, hpa_loop=state.hpa_loop, cost_loop=state.cost_loop
            )
        else:
            # Our own status writes come back as MODIFIED events: only a new generation
            # (a spec change) is worth an HPA round.
            changed = state.record.generation != record.generation
            state.record = record
        self._ensure_tasks(key)
        if changed:
            for loop in self._states[key].loops():
                loop.wake()

    def _on_fleet_change(self, namespace: str) -> None:
        for key, state in self._states.items():
            if key[0] == namespace and state.cost_loop is not None:
                state.cost_loop.wake()

    def _ensure_tasks(self, key: Key) -> None:
        state = self._states.get(key)
        if not self._started or state is None or state.hpa_loop is not None:
            return
        where = f"{key[0]}/{key[1]}"
        state.hpa_loop = ObjectLoop(
            f"autoscaling of {where}",
            functools.partial(self.sync_hpa, key),
            self._hpa_timing,
            expected_errors=(KubeApiError,),
            log=logger,
        )
        state.cost_loop = ObjectLoop(
            f"deletion cost of {where}",
            functools.partial(self.cost_round, key),
            COST_TIMING,
            log=logger,
        )
        state.hpa_loop.start()
        state.cost_loop.start()

    # -- the owned HPA ---------------------------------------------------------------------
    async def sync_hpa(self, key: Key) -> float:
        """Read the target's scale, create/replace/delete our HPA; return the next delay."""
        state = self._states.get(key)
        if state is None or self._kube is None or state.record.spec is None:
            return self._settings.hpa_resync
        record, spec, kube = state.record, state.record.spec, self._kube
        namespace, name = key
        if spec.target_ref is not None:
            target = spec.target_ref
            state.scale = await kube.get_scale(
                namespace, target.api_version, target.kind, target.name
            )
            state.target_missing = state.scale is None
        else:
            state.scale, state.target_missing = None, False
        # the spec was parsed (and targetRef required with autoscaling) once, by parse_spec
        desired = (
            hpa_manifest(name, namespace, record.uid, spec.target_ref, spec.autoscaling)
            if spec.autoscaling is not None and spec.target_ref is not None
            else None
        )
        state.problem = None
        existing = await kube.get_hpa(namespace, name)
        owned = existing is not None and hpa_is_owned_by(existing, record.uid)
        if desired is None:
            if existing is not None and owned:
                uid = str((existing.get("metadata") or {}).get("uid") or "")
                await kube.delete_hpa(namespace, name, uid)
                await self._event(record, False, "HPADeleted", f"deleted HPA {name}")
            state.hpa = None
            return self._settings.hpa_resync
        if existing is None:
            try:
                await kube.create_hpa(namespace, desired)
            except KubeApiError as error:
                state.problem = ("HPAFailed", str(error))
                raise
            state.hpa = desired
            await self._event(
                record, False, "HPACreated", f"created HPA {name} for {_target_text(desired)}"
            )
            self._controller_wake(key)
            return HPA_PENDING_RESYNC_SECONDS
        if not owned:
            state.problem = (
                "HPAConflict",
                f"an HPA named {name} exists and is not owned by this ConnectionStats",
            )
            state.hpa = None
            return self._settings.hpa_resync
        if hpa_needs_update(existing, desired):
            try:
                await kube.replace_hpa(namespace, name, merged_hpa(existing, desired))
            except KubeApiError as error:
                state.problem = ("HPAFailed", str(error))
                raise
            await self._event(
                record, False, "HPAUpdated", f"updated HPA {name} for {_target_text(desired)}"
            )
        state.hpa = existing
        self._controller_wake(key)
        has_status = bool((existing.get("status") or {}).get("conditions"))
        return self._settings.hpa_resync if has_status else HPA_PENDING_RESYNC_SECONDS

    def _controller_wake(self, key: Key) -> None:
        """Let the controller and the cost loop look again (scale or condition changed)."""
        self._controller.touch(key)
        state = self._states.get(key)
        if state is not None and state.cost_loop is not None:
            state.cost_loop.wake()

    # -- desiredReplicas and the condition -------------------------------------------------
    def _target_pods(self, state: TargetState) -> list[Any]:
        """Pod records of the target: matching the scale's selector (else the spec's)."""
        record = state.record
        fleet = self._controller.fleet
        if state.scale is not None and state.scale.selector:
            try:
                selector = parse_label_selector(state.scale.selector)
            except LabelSelectorError:
                selector = None
            if selector is not None:
                return [
                    pod
                    for pod in fleet.pod_records(record.namespace)
                    if selector.matches(pod.labels)
                ]
        if record.spec is None:
            return []
        return fleet.pods_matching(record.namespace, record.spec.selector)

    def current_replicas(self, state: TargetState) -> int | None:
        """The target's replicas: its scale (as last read), at least its running pods."""
        if state.scale is None:
            return None
        running = [
            p for p in self._target_pods(state) if p.phase == "Running" and not p.terminating
        ]
        return max(state.scale.replicas, len(running)) if state.scale.replicas else 0

    def desired_replicas(self, state: TargetState) -> int | None:
        """What the served metric implies for the target (None: unknown / no autoscaling)."""
        spec = state.record.spec
        if spec is None or spec.autoscaling is None or state.scale is None:
            return None
        current = self.current_replicas(state)
        if current is None:
            return None
        auto = spec.autoscaling
        running = [
            p.name for p in self._target_pods(state) if p.phase == "Running" and not p.terminating
        ]
        return desired_replicas_from_source(
            self._controller.fleet,
            namespace=state.record.namespace,
            running_pods=running,
            current_replicas=current,
            target_per_pod=auto.target_connections_per_pod,
            min_replicas=auto.min_replicas,
            max_replicas=auto.max_replicas,
            topic=auto.topic,
            now=self._clock(),
            max_age_seconds=self._settings.max_metric_age,
            scale_up_tolerance=auto.scale_up_tolerance,
            scale_down_tolerance=auto.scale_down_tolerance,
        )

    def condition(self, state: TargetState) -> tuple[str, str, str]:
        """(status, reason, message) of AutoscalingActive."""
        spec = state.record.spec
        if spec is None or spec.autoscaling is None:
            return "False", "NoAutoscaling", "spec.autoscaling is not set"
        if spec.target_ref is None:
            return "False", "NoTarget", "spec.targetRef is required for autoscaling"
        if state.problem is not None:
            return "False", state.problem[0], state.problem[1]
        if state.target_missing:
            target = spec.target_ref
            return "False", "TargetNotFound", f"{target.kind} {target.name} does not exist"
        if self.metrics_api_error is not None:
            return (
                "False",
                "MetricsApiNotServed",
                f"the custom metrics API is not served ({self.metrics_api_error}); "
                "the HPA has no metric (see docs/keda.md for the KEDA endpoint)",
            )
        if state.hpa is None:
            return "False", "WaitingForHPA", "the HPA is being created"
        return hpa_condition(state.hpa)

    def contribute(self, record: ConnectionStatsRecord, _aggregate: object) -> StatusContribution:
        """Status contributor: ``desiredReplicas`` and the AutoscalingActive condition."""
        key = (record.namespace, record.name)
        state = self._states.get(key)
        if state is None or record.spec is None:
            return StatusContribution()
        desired = self.desired_replicas(state)
        state.desired = desired
        totals = self._controller.fleet.connection_stats(*key)
        if totals is not None and totals.desired_replicas != desired:
            self._controller.fleet.set_aggregate(replace(totals, desired_replicas=desired))
        status, reason, message = self.condition(state)
        conditions = [{"type": CONDITION, "status": status, "reason": reason, "message": message}]
        if self._settings.deletion_cost and record.spec.target_ref is not None:
            status, reason, message = conflict_condition(state.conflict, self._cost_mode(state))
            conditions.append(
                {"type": cost_policy.CONDITION, "status": status, "reason": reason,
                 "message": message}
            )  # fmt: skip
        return StatusContribution(fields={"desiredReplicas": desired}, conditions=conditions)

    @staticmethod
    def _cost_mode(state: TargetState) -> OtherWriters:
        spec = state.record.spec
        auto = spec.autoscaling if spec is not None else None
        return auto.deletion_cost.other_writers if auto is not None else OtherWriters.YIELD

    # -- deletion cost and recommendations -------------------------------------------------
    async def cost_round(self, key: Key) -> float:
        """Record a recommendation if new; write the deletion costs due; return the next delay."""
        state = self._states.get(key)
        if state is None or state.record.spec is None or state.record.spec.target_ref is None:
            return COST_PERIOD_SECONDS
        desired = self.desired_replicas(state)
        current = self.current_replicas(state)
        await self._recommend(state, desired, current)
        if not self._settings.deletion_cost or self._kube is None:
            return COST_PERIOD_SECONDS
        now = self._monotonic()
        pods = [p for p in self._target_pods(state) if not p.terminating and p.uid]
        mode = self._cost_mode(state)
        await self._other_writers(key, state, pods, now, mode)
        if not writes_allowed(state.conflict, mode):
            return COST_PERIOD_SECONDS
        if state.record.spec.autoscaling is None:
            urgent, reason = False, "bands"
        else:
            hpa_current, hpa_desired = hpa_replicas((state.hpa or {}).get("status"))
            near = state.outlook.observe(
                now,
                current=current,
                desired=desired,
                hpa_current=hpa_current,
                hpa_desired=hpa_desired,
            )
            if not near:
                return COST_PERIOD_SECONDS
            urgent, reason = True, "scale_down_near"
        inputs = self._cost_inputs(state, pods)
        patches = self._planner.plan(inputs, urgent=urgent)
        if not patches:
            return COST_PERIOD_SECONDS
        uids = {pod.name: pod.uid for pod in pods}
        semaphore = asyncio.Semaphore(PARALLEL_POD_WRITES)
        kube = self._kube
        writes = self._controller.telemetry.deletion_cost_writes

        async def write(pod: str, cost: int) -> None:
            async with semaphore:
                try:
                    await kube.patch_pod_annotations(
                        state.record.namespace,
                        pod,
                        uids[pod],
                        {DELETION_COST_ANNOTATION: str(cost), WSGAUGE_COST_ANNOTATION: str(cost)},
                    )
                except KubeApiError as error:
                    writes.labels(reason, "error").inc()
                    if not error.not_found:
                        logger.warning("deletion cost of pod %s: %s", pod, error)
                    return
            writes.labels(reason, "ok").inc()
            state.written[pod] = (uids[pod], cost, self._monotonic())

        await asyncio.gather(*(write(patch.pod, patch.cost) for patch in patches))
        logger.info(
            "%s/%s: deletion cost (%s) %s",
            *key,
            reason.replace("_", " "),
            ", ".join(f"{patch.pod}={patch.cost}" for patch in patches),
        )
        return max(self._planner.retry_after(), COST_DEBOUNCE_SECONDS)

    async def _other_writers(
        self, key: Key, state: TargetState, pods: list[Any], now: float, mode: OtherWriters
    ) -> None:
        """Update the finding about other writers; record its Event; rewrite the status when
        the condition changes."""
        found = state.writers.observe(other_writers(pod.cost_writer for pod in pods), now)
        before = conflict_condition(state.conflict, mode)
        state.conflict = found
        state.conflict_reason, event = conflict_event(state.conflict_reason, found, mode)
        if conflict_condition(found, mode) != before:
            self._controller.touch(key)
        if event is not None:
            await self._event(state.record, event.warning, event.reason, event.note)

    def _cost_inputs(self, state: TargetState, pods: list[Any]) -> list[PodCostInput]:
        namespace = state.record.namespace
        served = {
            pod.name: pod
            for pod in servable_pods(
                self._controller.fleet, namespace, self._clock(), self._settings.max_metric_age
            )
        }
        now = self._monotonic()
        inputs: list[PodCostInput] = []
        for pod in pods:
            cost = pod.deletion_cost
            written = state.written.get(pod.name)
            if written is not None:
                uid, value, when = written
                if uid != pod.uid or cost == value or now - when > WRITTEN_MEMORY_SECONDS:
                    del state.written[pod.name]
                else:
                    cost = value
            metrics = served.get(pod.name)
            inputs.append(
                PodCostInput(
                    name=pod.name,
                    connections=metrics.connections if metrics is not None else None,
                    current_cost=cost,
                )
            )
        live = {pod.name for pod in pods}
        for name in [name for name in state.written if name not in live]:
            del state.written[name]
        return inputs

    async def _recommend(
        self, state: TargetState, desired: int | None, current: int | None
    ) -> None:
        spec = state.record.spec
        totals = self._controller.fleet.connection_stats(state.record.namespace, state.record.name)
        state.recommended, event = replica_recommendation(
            state.recommended,
            desired,
            current,
            connections=totals.connections if totals is not None else 0,
            target_per_pod=(
                spec.autoscaling.target_connections_per_pod if spec and spec.autoscaling else 0
            ),
        )
        if event is not None:
            await self._event(state.record, event.warning, event.reason, event.note)

    async def _event(
        self, record: ConnectionStatsRecord, warning: bool, reason: str, note: str
    ) -> None:
        logger.info("%s/%s: %s: %s", record.namespace, record.name, reason, note)
        await self._controller.record_event(record.ref, warning, reason, note)


def _target_text(hpa: Mapping[str, Any]) -> str:
    spec = hpa["spec"]
    target = spec["scaleTargetRef"]
    bounds = f"{spec['minReplicas']}..{spec['maxReplicas']}"
    return f"{target['kind']} {target['name']} ({bounds} replicas)"
