"""The controller: ties fleet state, followers, aggregation, readiness, status and events.

The operator's pod watch (:mod:`wsgauge_operator.kube.pod_watch`) hands every pod event to
:meth:`Controller.pod_event`, kopf every ConnectionStats event to
:meth:`Controller.connectionstats_event` (see :mod:`wsgauge_operator.handlers`). From there:

- the :class:`~wsgauge_operator.model.selection.SelectionIndex` and that pod's followers are updated
  (one :class:`~.follower.SidecarFollower` task per selected pod, keyed by pod uid, IP and
  port, kept by a :class:`~.follower_set.FollowerSet`): O(ConnectionStats) per event;
- the workers of the ConnectionStats selecting the pod are woken: a worker (an
  :class:`~.object_loop.ObjectLoop`: debounced, paced, periodic, surviving errors) aggregates,
  decides the readiness-gate conditions (written at once), records the Events that
  :mod:`wsgauge_operator.model.event_policy` calls for and writes the status through a
  :class:`~wsgauge_operator.model.status_writer.StatusCoalescer` (at most once per
  ``statusInterval``, only on change).

Everything kept per ConnectionStats is one :class:`~.connectionstats_state.ConnectionStatsState`.

Other parts of the operator (autoscaling) hook in with
:meth:`Controller.add_status_contributor` (extra status fields and conditions,
written in the same status patch) and read :attr:`Controller.fleet`, which
implements :class:`~wsgauge_operator.model.metrics_source.MetricsSource`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import aiohttp

from wsgauge_operator.control.connectionstats_state import (
    ConnectionStatsRecord,
    ConnectionStatsState,
    Key,
    KubeWriter,
    RecordListener,
    StatusContributor,
)
from wsgauge_operator.control.follower import SidecarFollower
from wsgauge_operator.control.follower_set import FollowerFactory, FollowerSet
from wsgauge_operator.control.object_loop import LoopTiming, ObjectLoop
from wsgauge_operator.control.rebalancer import Note, Rebalancer, order_signer
from wsgauge_operator.control.telemetry import POD_STATES, Telemetry
from wsgauge_operator.kube.events import EventRecorder, ObjectRef
from wsgauge_operator.model.aggregation import (
    Aggregate,
    AggregationLimits,
    invalid_spec_conditions,
    merge_conditions,
    render_status,
    spec_conditions,
)
from wsgauge_operator.model.event_policy import RoundView, TransitionMemory
from wsgauge_operator.model.exceptions import KubeApiError, SpecError
from wsgauge_operator.model.fleet import EndpointKey, FleetState, PodRecord
from wsgauge_operator.model.metrics_source import ConnectionStatsMetrics
from wsgauge_operator.model.observation import ObservedPods
from wsgauge_operator.model.readiness import ConditionWrites, ReadinessDecision
from wsgauge_operator.model.rebalance import RebalancePlan as Plan
from wsgauge_operator.model.recent_events import RecentEvents
from wsgauge_operator.model.selection import SelectionIndex
from wsgauge_operator.model.settings import OperatorSettings
from wsgauge_operator.model.spec import ConnectionStatsSpec, parse_spec
from wsgauge_operator.model.status_writer import StatusCoalescer

logger = logging.getLogger(__name__)

DEBOUNCE_SECONDS = 0.05
"""A woken worker waits this long so that a burst of changes is handled once."""
PERIODIC_SECONDS = 10.0
"""A worker re-checks at least this often even without a change."""
PARALLEL_CONDITION_WRITES = 8
"""Pod condition writes in flight at once per ConnectionStats."""
ROUND_GAP_FACTOR = 3.0
"""A round that computed t seconds delays the next by this times t: at most a quarter core per
ConnectionStats (rounds are O(pods): milliseconds at 1,000 pods, where the debounce dominates)."""
WARM_UP_RETRY_SECONDS = 0.2
"""How soon a status held back during warm-up is reconsidered."""
WORKER_TIMING = LoopTiming(
    debounce=DEBOUNCE_SECONDS,
    period=PERIODIC_SECONDS,
    retry_initial=2.0,
    retry_max=PERIODIC_SECONDS,
)
"""The worker loop of a ConnectionStats; a failed round (e.g. a status write the API server
refused) is retried after 1-2 s, then up to 10 s, sooner when a change wakes the worker."""


Service = tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]


def utc_now_iso() -> str:
    """Current time as RFC 3339 UTC, seconds precision."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Controller:
    """All ConnectionStats of one operator process."""

    def __init__(
        self,
        settings: OperatorSettings,
        kube: KubeWriter | None,
        *,
        telemetry: Telemetry | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        follower_factory: FollowerFactory | None = None,
    ) -> None:
        self.settings = settings
        self.fleet = FleetState()
        self.selection = SelectionIndex()
        """Which pods each ConnectionStats selects (kept per pod event)."""
        self.telemetry = telemetry or Telemetry()
        self._kube = kube
        self._monotonic = monotonic
        self._states: dict[Key, ConnectionStatsState] = {}
        """Every ConnectionStats known, with all that is kept for it."""
        self._followers = FollowerSet(
            self.fleet,
            follower_factory
            or functools.partial(
                SidecarFollower,
                settings=settings.follower,
                telemetry=self.telemetry,
                monotonic=monotonic,
            ),
            self.telemetry,
            settings.follower.max_followed_pods,
        )
        self._condition_writes = ConditionWrites(settings.readiness.repatch_after, monotonic)
        self.rebalancer = Rebalancer(order_signer(settings), self.fleet, monotonic)
        """``spec.rebalance``: holds and shed orders (see :mod:`.rebalancer`)."""
        self._events = EventRecorder(kube, settings.events, monotonic, settings.kube.instance)
        self._contributors: list[StatusContributor] = []
        self._record_listeners: list[RecordListener] = []
        self._services: list[Service] = []
        self._session: aiohttp.ClientSession | None = None
        self._started = False
        self.recent_events = RecentEvents()
        """The Events recorded lately, per ConnectionStats (for the live view)."""
        self.summaries: dict[Key, dict[str, Any]] = {}
        """Latest computed status per ConnectionStats (for the stats server)."""
        self.version = 0
        """Grows whenever a summary changes."""
        self._changed = asyncio.Event()
        self._pod_events = 0
        """Pod events handled so far (a clock for :meth:`forget_vanished_pods`)."""
        self._pod_first_seen: dict[tuple[str, str], int] = {}
        """Per known pod, the value of ``_pod_events`` when its current uid was first seen."""
        self.fleet.add_pod_listener(self._on_pod_change)

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the HTTP client used by the followers; start pending work."""
        if self._started:
            return
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=True),
            auto_decompress=False,
        )
        self._started = True
        self._reconcile_followers()
        for key in list(self._states):
            self._ensure_worker(key)
        for start, _ in self._services:
            await start()

    async def stop(self) -> None:
        """Stop the added services, cancel every task and close the HTTP client."""
        if self._started:
            for _, stop in reversed(self._services):
                await stop()
        tasks = self._followers.take_tasks()
        for task in tasks:
            task.cancel()
        for state in list(self._states.values()):
            worker, state.worker = state.worker, None
            if worker is not None:
                await worker.stop()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._started = False

    def add_status_contributor(self, contributor: StatusContributor) -> None:
        """Add fields and conditions to every status written (called each round)."""
        self._contributors.append(contributor)

    def add_record_listener(self, listener: RecordListener) -> None:
        """Hear about every ConnectionStats change (e.g. to reconcile an owned HPA)."""
        self._record_listeners.append(listener)

    def add_service(
        self, start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]]
    ) -> None:
        """Start and stop something (e.g. the metrics API server) with the controller."""
        self._services.append((start, stop))

    def touch(self, key: Key) -> None:
        """Run a round for one ConnectionStats soon (e.g. a contributor's input changed)."""
        self._wake(key)

    def busy(self) -> bool:
        """Whether some worker has been woken and has not run its round yet."""
        return any(
            state.worker is not None and state.worker.woken for state in self._states.values()
        )

    def records(self) -> list[ConnectionStatsRecord]:
        """Every ConnectionStats known."""
        return [state.record for state in self._states.values()]

    async def wait_for_change(self, version: int, timeout: float) -> int:
        """Wait until :attr:`version` differs from ``version`` (or the timeout); return it."""
        if self.version == version:
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)
        return self.version

    # -- watch events ----------------------------------------------------------------------
    def pod_event(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A pod was listed, added, modified or deleted."""
        record = PodRecord.from_body(body, self.settings.readiness.condition_type)
        if not record.name:
            return
        namespace, name = record.namespace, record.name
        self._pod_events += 1
        if event_type == "DELETED":
            self._pod_first_seen.pop((namespace, name), None)
            self.fleet.remove_pod(namespace, name)
            self._condition_writes.forget(namespace, name)
            affected = self.selection.update_pod(namespace, name, None)
        else:
            previous = self.fleet.pod(namespace, name)
            if previous is None or previous.uid != record.uid:
                self._pod_first_seen[(namespace, name)] = self._pod_events
            if not self.fleet.upsert_pod(record):
                return  # nothing the operator uses changed (e.g. only resourceVersion)
            if previous is None or previous.labels != record.labels:
                affected = self.selection.update_pod(namespace, name, record.labels)
            else:
                affected = self.selection.selecting(namespace, name)
            if previous is not None and not previous.containers_ready and record.containers_ready:
                self._followers.poke(namespace, name)
        self._reconcile_pod_followers(namespace, name)
        for key in affected:
            self._wake(key, name)

    def pod_listing_mark(self) -> int:
        """A mark to take just before listing pods (see :mod:`.pod_resync`)."""
        return self._pod_events

    def pods_seen_before(self, namespaces: Sequence[str], mark: int) -> set[tuple[str, str, str]]:
        """(namespace, name, uid) of the known pods (of ``namespaces``; empty: all) first seen
        no later than ``mark``: those a listing taken after the mark must contain."""
        wanted = set(namespaces) or set(self.fleet.namespaces())
        return {
            (namespace, pod.name, pod.uid)
            for namespace in wanted
            for pod in self.fleet.pod_records(namespace)
            if self._pod_first_seen.get((namespace, pod.name), 0) <= mark
        }

    def connectionstats_event(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A ConnectionStats was listed, added, modified or deleted."""
        metadata = body.get("metadata") or {}
        key = (str(metadata.get("namespace") or ""), str(metadata.get("name") or ""))
        if event_type == "DELETED":
            self._forget(key)
            for listener in list(self._record_listeners):
                listener(key, None)
            return
        uid = str(metadata.get("uid") or "")
        generation = metadata.get("generation")
        status = dict(body.get("status") or {})
        state = self._states.get(key)
        if state is None or state.record.uid != uid:
            record = ConnectionStatsRecord(
                namespace=key[0], name=key[1], uid=uid, status=status, first_seen=self._monotonic()
            )
            coalescer = StatusCoalescer(self._monotonic)
            coalescer.seed(status)
            if state is None:
                memory = TransitionMemory.from_status(status)
                state = self._states[key] = ConnectionStatsState(record, coalescer, memory)
            else:
                state.adopt(record, coalescer)
        record = state.record
        spec_changed = False
        if record.generation != generation or (record.spec is None and not record.spec_error):
            spec_changed = True
            record.generation = generation if isinstance(generation, int) else None
            try:
                record.spec = parse_spec(body.get("spec"))
                record.spec_error = ""
            except SpecError as error:
                record.spec = None
                record.spec_error = str(error)
                logger.warning("ConnectionStats %s/%s: invalid spec: %s", *key, error)
        record.status = status
        self.telemetry.connectionstats.set(len(self._states))
        if spec_changed:  # our own status writes come back as events: those change no pods
            self.selection.set_selector(
                key,
                record.spec.selector if record.spec is not None else None,
                ((pod.name, pod.labels) for pod in self.fleet.pod_records(key[0])),
            )
            self._reconcile_followers(key[0])
        self._ensure_worker(key)
        self._wake(key)
        for listener in list(self._record_listeners):
            listener(key, record)

    def _forget(self, key: Key) -> None:
        self.rebalancer.forget(key)
        state = self._states.pop(key, None)
        if state is not None and state.worker is not None:
            state.worker.cancel()
        self.fleet.drop_aggregate(*key)
        self.selection.remove(key)
        self.telemetry.forget(*key)
        self.recent_events.forget(*key)
        self.telemetry.connectionstats.set(len(self._states))
        if self.summaries.pop(key, None) is not None:
            self._bump()
        self._reconcile_followers(key[0])

    # -- followers -------------------------------------------------------------------------
    def _endpoints_of(self, namespace: str, name: str) -> set[EndpointKey]:
        """The sidecar endpoints one pod should be followed at (one per selecting spec port)."""
        pod = self.fleet.pod(namespace, name)
        wanted: set[EndpointKey] = set()
        if pod is None or not pod.followable:
            return wanted
        for key in self.selection.selecting(namespace, name):
            state = self._states.get(key)
            record = state.record if state is not None else None
            if record is None or record.spec is None:
                continue
            port = pod.resolve_port(record.spec.sidecar_port)
            if port is not None:
                wanted.add(EndpointKey(namespace, name, pod.uid, pod.ip, port))
        return wanted

    def _desired_endpoints(self, namespace: str | None) -> set[EndpointKey]:
        desired: set[EndpointKey] = set()
        for key in self.selection.keys(namespace):
            for name in self.selection.members(key):
                desired |= self._endpoints_of(key[0], name)
        return desired

    def _reconcile_followers(self, namespace: str | None = None) -> None:
        """Start and stop followers to match the selected pods (of one namespace, or all).

        O(pods of the namespace): only for ConnectionStats changes and start-up; a pod
        event goes through :meth:`_reconcile_pod_followers`.
        """
        if not self._started or self._session is None:
            return
        desired = self._desired_endpoints(namespace)
        for key in self._followers.match_namespace(namespace, desired, self._session):
            self._wake_selecting(key.namespace, key.pod)

    def _reconcile_pod_followers(self, namespace: str, name: str) -> None:
        """Start and stop the followers of one pod (O(ConnectionStats selecting it))."""
        if not self._started or self._session is None:
            return
        desired = self._endpoints_of(namespace, name)
        for key in self._followers.match_pod(namespace, name, desired, self._session):
            self._wake_selecting(key.namespace, key.pod)

    # -- workers ---------------------------------------------------------------------------
    def _on_pod_change(self, namespace: str, pod: str) -> None:
        self._wake_selecting(namespace, pod)

    def _wake_selecting(self, namespace: str, pod: str) -> None:
        for key in self.selection.selecting(namespace, pod):
            self._wake(key, pod)

    def _wake(self, key: Key, pod: str | None = None) -> None:
        """Wake the worker of a ConnectionStats (and mark ``pod`` as changed)."""
        state = self._states.get(key)
        if state is not None:
            state.changed(pod)

    def _ensure_worker(self, key: Key) -> None:
        state = self._states.get(key)
        if not self._started or state is None or state.worker is not None:
            return
        state.worker = ObjectLoop(
            f"ConnectionStats {key[0]}/{key[1]}",
            functools.partial(self.reconcile, key),
            WORKER_TIMING,
            expected_errors=(KubeApiError,),
            pace=functools.partial(self._pause_before_round, state),
            log=logger,
        )
        state.worker.start()

    def _pause_before_round(self, state: ConnectionStatsState) -> float:
        """Seconds until the worker's next round may start (see ``ROUND_GAP_FACTOR``)."""
        return state.round_due - self._monotonic()

    def _interval(self, record: ConnectionStatsRecord | None) -> float:
        status = self.settings.status
        wanted = status.default_interval
        if record is not None and record.spec is not None and record.spec.status_interval:
            wanted = record.spec.status_interval
        return max(wanted, status.min_interval)

    async def reconcile(self, key: Key) -> float | None:
        """One round for a ConnectionStats; returns seconds until a held-back write is due."""
        state = self._states.get(key)
        if state is None:
            return None
        record = state.record
        computing_since = time.perf_counter()
        now = utc_now_iso()
        if record.spec is None:
            result = Aggregate()
            conditions: list[Mapping[str, str]] = list(
                invalid_spec_conditions(record.spec_error or "invalid spec")
            )
            restarts: dict[str, int | None] = dict.fromkeys(state.memory.restarts)
            checks: tuple[ObservedPods, set[str] | None] | None = None
            warming = False
            self.rebalancer.forget(key)
            plan, notes = Plan(), list[Note]()
        else:
            spec = record.spec
            observed, restarts, checks = self._observe(state, spec)
            warming = observed.totals.warming
            decisions = observed.readiness.decisions()
            plan, notes = self.rebalancer.plan(key, spec, observed, decisions, warming=warming)
            limits = AggregationLimits(
                top_topics=self.settings.status.top_topics,
                busiest_pods=self.settings.status.busiest_pods,
                max_nodes=self.settings.status.max_nodes,
                max_connections_per_pod=spec.capacity.max_connections_per_pod,
            )
            result = observed.totals.result(limits)
            conditions = list(
                spec_conditions(
                    result,
                    selector=spec.selector.to_query(),
                    port=spec.sidecar_port,
                    max_per_pod=spec.capacity.max_connections_per_pod,
                )
            )
            self.fleet.set_aggregate(
                ConnectionStatsMetrics(
                    namespace=record.namespace,
                    name=record.name,
                    connections=result.connections,
                    topics=dict(result.totals),
                    observed_at=_oldest([observed.oldest_report()]),
                    pods_reporting=result.counted,
                )
            )
        status = render_status(result)
        for contributor in self._contributors:
            contribution = contributor(record, result)
            status.update(contribution.fields)
            conditions.extend(contribution.conditions)
        if (rebalance_status := self.rebalancer.status(key)) is not None:
            status["rebalance"] = rebalance_status
        status["observedGeneration"] = record.generation
        status["conditions"] = merge_conditions(
            record.status.get("conditions") or [],
            conditions,
            now=now,
            generation=record.generation,
        )
        self._publish(key, status, result)
        computed = time.perf_counter() - computing_since
        self.telemetry.round_seconds.observe(computed)
        state.round_due = self._monotonic() + ROUND_GAP_FACTOR * computed
        if checks is not None and record.spec is not None:
            observed, candidates = checks
            if plan.active or self.rebalancer.active(key) or notes:  # holds change: check all
                candidates = None
            await self._apply_readiness(state, observed, candidates, plan)
            notes += await self.rebalancer.shed(key, record.spec, plan, observed, self._session)
            for warning, reason, note in notes:
                await self._event(record.ref, warning, reason, note)
        await self._record_events(state, result, status["conditions"], restarts)
        if warming and self._monotonic() - record.first_seen < self.settings.follower.startup_grace:
            # Just started (or just created): some sidecars have not answered yet. Writing now
            # would publish a transient undercount (and, after an operator restart, rewrite an
            # unchanged status); wait for them, at most for the startup grace.
            return WARM_UP_RETRY_SECONDS
        return await self._write_status(state, status, now)

    def _observe(
        self, state: ConnectionStatsState, spec: ConnectionStatsSpec
    ) -> tuple[ObservedPods, dict[str, int | None], tuple[ObservedPods, set[str] | None]]:
        """Observe the pods that changed since the last round (all of them after a spec
        change, or while the follower limit holds pods back).

        Returns the observed pods, the sidecar restarts of the pods observed again
        (``None``: left out) and what the readiness check needs: the pods to check
        (``None``: every pod).
        """
        key = (state.record.namespace, state.record.name)
        observed = state.observed
        held_back = self._followers.held_back
        dirty, state.dirty = state.dirty, set()
        members = self.selection.members(key)
        full = observed is None or observed.spec is not spec or bool(held_back)
        full = full or state.observe_all_next
        if observed is None or observed.spec is not spec:
            observed = state.observed = ObservedPods(spec)
        names = set(members) | set(observed.names()) if full else dirty
        restarts: dict[str, int | None] = {}
        for name in sorted(names):
            pod = self.fleet.pod(key[0], name) if name in members else None
            restarts[name] = observed.refresh(name, pod, self.fleet, held_back)
        if full:  # forget the restarts of pods no longer observed (e.g. after a spec change)
            for name in state.memory.restarts:
                restarts.setdefault(name, None)
        rule = observed.readiness.global_rule_applies
        candidates: set[str] | None = None
        if not (full or rule or state.check_all_next):
            candidates = dirty | state.unsettled
        state.observe_all_next = bool(held_back)
        state.check_all_next = rule
        return observed, restarts, (observed, candidates)

    def _publish(self, key: Key, status: dict[str, Any], result: Aggregate) -> None:
        namespace, name = key
        self.telemetry.connections.labels(namespace, name).set(result.connections)
        for state in POD_STATES:
            self.telemetry.pods.labels(namespace, name, state).set(getattr(result, state))
        if self.summaries.get(key) != status:
            self.summaries[key] = status
            self._bump()

    def _bump(self) -> None:
        self.version += 1
        self._changed.set()

    async def _write_status(
        self, state: ConnectionStatsState, status: dict[str, Any], now: str
    ) -> float | None:
        record, coalescer = state.record, state.coalescer
        delay = coalescer.delay(status, self._interval(record))
        if delay is None or delay > 0 or self._kube is None:
            return delay
        patch = dict(status)
        patch["lastUpdated"] = now
        removed = set(record.status.get("topics") or {}) | set(
            coalescer.last_status.get("topics") or {}
        )
        topics: dict[str, Any] = {topic: None for topic in removed - set(status["topics"])}
        topics.update(status["topics"])
        patch["topics"] = topics
        try:
            await self._kube.patch_connectionstats_status(record.namespace, record.name, patch)
        except KubeApiError as error:
            self.telemetry.status_writes.labels("error").inc()
            if error.not_found:
                return None
            raise
        self.telemetry.status_writes.labels("ok").inc()
        coalescer.written(status)
        return None

    async def _apply_readiness(
        self,
        state: ConnectionStatsState,
        observed: ObservedPods,
        cands: set[str] | None,
        plan: Plan,
    ) -> None:
        """Write the pod conditions that differ from the decisions (with the rebalance's
        holds), among ``candidates`` (``None``: every pod): the pods that changed and those
        unsettled at the last check."""
        if not self.settings.readiness.enabled or self._kube is None:
            return
        record = state.record
        all_decisions = Rebalancer.overlay(plan, observed.readiness.decisions())
        names = observed.entries.keys() if cands is None else cands
        decisions: dict[str, ReadinessDecision] = {}
        current: dict[str, tuple[str, bool | None, str]] = {}
        unsettled: set[str] = set()
        for name in names:
            decision = all_decisions.get(name)
            pod = self.fleet.pod(record.namespace, name)
            if decision is None or pod is None or name not in observed.entries:
                continue
            decisions[name] = decision
            current[name] = (pod.uid, pod.gate_status, pod.gate_reason)
            if pod.gate_status is not decision.ok or pod.gate_reason != decision.reason:
                unsettled.add(name)
        state.unsettled = unsettled
        needed = self._condition_writes.needed(record.namespace, decisions, current)
        if not needed:
            return
        semaphore = asyncio.Semaphore(PARALLEL_CONDITION_WRITES)
        kube = self._kube
        now = utc_now_iso()

        async def write(decision: ReadinessDecision) -> None:
            name, ok = decision.name, decision.ok
            uid, status, _ = current[name]
            condition: dict[str, Any] = {
                "type": self.settings.readiness.condition_type,
                "status": "True" if ok else "False",
                "reason": decision.reason,
                "message": decision.message,
            }
            if status is not ok:  # a new reason alone keeps the transition time
                condition["lastTransitionTime"] = now
            async with semaphore:
                try:
                    await kube.patch_pod_condition(record.namespace, name, uid, condition)
                except KubeApiError as error:
                    self.telemetry.condition_writes.labels(str(ok), "error").inc()
                    if not error.not_found:
                        logger.warning("condition of pod %s/%s: %s", record.namespace, name, error)
                    return
            self.telemetry.condition_writes.labels(str(ok), "ok").inc()
            self._condition_writes.written(record.namespace, name, uid, decision)
            logger.info(
                "pod %s/%s: %s=%s (%s)",
                record.namespace,
                name,
                self.settings.readiness.condition_type,
                ok,
                decision.reason,
            )

        await asyncio.gather(*(write(decision) for decision in needed))

    async def _record_events(
        self,
        state: ConnectionStatsState,
        result: Aggregate,
        conditions: Sequence[Mapping[str, Any]],
        restart_counts: Mapping[str, int | None],
    ) -> None:
        """Events on transitions (:mod:`wsgauge_operator.model.event_policy`); ``restart_counts``
        holds the pods observed again this round (``None``: left out)."""
        record = state.record
        spec = record.spec
        view = RoundView(
            unreachable=frozenset(result.unreachable_pods),
            restart_counts=restart_counts,
            conditions=conditions,
            connections=result.connections,
            counted=result.counted,
            max_per_pod=spec.capacity.max_connections_per_pod if spec is not None else None,
        )
        for event in state.memory.round(view, functools.partial(self._is_live, record.namespace)):
            await self._event(record.ref, event.warning, event.reason, event.note)

    def _is_live(self, namespace: str, pod: str) -> bool:
        """Whether a pod exists and is not terminating."""
        record = self.fleet.pod(namespace, pod)
        return record is not None and not record.terminating

    async def record_event(self, ref: ObjectRef, warning: bool, reason: str, note: str) -> None:
        """Record an Event on a ConnectionStats (de-duplicated; failures are logged)."""
        await self._event(ref, warning, reason, note)

    async def _event(self, ref: ObjectRef, warning: bool, reason: str, note: str) -> None:
        before = self._events.recorded
        await self._events.record(ref, warning=warning, reason=reason, note=note)
        if self._events.recorded > before:
            self.telemetry.events.labels(reason).inc()
            self.recent_events.add(
                ref.namespace,
                ref.name,
                time=utc_now_iso(),
                warning=warning,
                reason=reason,
                note=note,
            )
            self._bump()


def _oldest(times: Sequence[float]) -> datetime.datetime | None:
    valid = [t for t in times if t > 0]
    if not valid:
        return None
    return datetime.datetime.fromtimestamp(min(valid), datetime.UTC)
