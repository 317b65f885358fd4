"""Readiness-gate policy (pure) and the bookkeeping of its pod condition writes.

Pods opt in with ``readinessGates: [{conditionType: wsgauge.dev/connections-ok}]``.
:func:`decide_readiness` says which of them get the condition True or False:

- False while the pod is over ``maxConnectionsPerPod``, draining, or its sidecar
  is unreachable; True once its sidecar reports and none of that holds;
- no decision (the condition is left as it is) while the sidecar has not
  answered yet: a new pod stays not-Ready until the operator has seen it, and a
  pod already Ready keeps its condition across an operator restart; nor for an
  over-capacity pod whose containers are not ready anyway (no flip-flop with a
  failing probe);
- never so many False that fewer than ``minReadyPods`` pods stay ready: then the
  least overloaded pods (then the unreachable ones) are kept True.

:class:`ConditionWrites` decides, with an injected clock, which decisions need a
write (the pod watch shows the current value; a write not yet seen there is not
repeated before ``repatch_after`` seconds).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from wsgauge_operator.model.aggregation import PodState


@dataclass(frozen=True)
class ReadinessInput:
    """One matched pod, as the readiness policy sees it."""

    name: str
    has_gate: bool
    state: PodState
    connections: int = 0
    draining: bool = False
    terminating: bool = False
    containers_ready: bool = True
    """Ready apart from the gates (ContainersReady)."""
    ready: bool = False
    """The pod's Ready condition (used for pods without the gate)."""
    gate_status: bool | None = None
    """Current value of the condition on the pod."""


@dataclass(frozen=True)
class ReadinessDecision:
    """The condition value one pod should have."""

    name: str
    ok: bool
    reason: str
    message: str


def _own_decision(pod: ReadinessInput, max_per_pod: int | None) -> ReadinessDecision | None:
    if pod.state is PodState.UNREACHABLE:
        return ReadinessDecision(
            pod.name, False, "SidecarUnreachable", "the sidecar does not answer"
        )
    if pod.state is not PodState.REPORTING:
        return None
    if pod.draining or pod.terminating:
        return ReadinessDecision(pod.name, False, "Draining", "the pod is draining its sockets")
    if max_per_pod is not None and pod.connections > max_per_pod:
        if not pod.containers_ready:
            # Not ready anyway (e.g. a failing probe): writing now would only make the gate
            # flip-flop with the probe; decide again once the containers are ready.
            return None
        return ReadinessDecision(
            pod.name,
            False,
            "OverCapacity",
            f"{pod.connections} connections, above maxConnectionsPerPod {max_per_pod}",
        )
    return ReadinessDecision(
        pod.name, True, "ConnectionsOk", f"{pod.connections} connections, within capacity"
    )


def decide_readiness(
    pods: Iterable[ReadinessInput], *, max_per_pod: int | None, min_ready_pods: int
) -> dict[str, ReadinessDecision]:
    """The condition each gated pod should have; pods without a decision are left alone."""
    all_pods = list(pods)
    decisions: dict[str, ReadinessDecision] = {}
    for pod in all_pods:
        if not pod.has_gate:
            continue
        decision = _own_decision(pod, max_per_pod)
        if decision is not None:
            decisions[pod.name] = decision

    def would_be_ready(pod: ReadinessInput) -> bool:
        if pod.terminating or not pod.containers_ready:
            return False
        if not pod.has_gate:
            return pod.ready
        decision = decisions.get(pod.name)
        return decision.ok if decision is not None else pod.gate_status is True

    ready_count = sum(1 for pod in all_pods if would_be_ready(pod))
    if ready_count >= min_ready_pods:
        return decisions
    by_name = {pod.name: pod for pod in all_pods}
    keepable = [
        decision
        for decision in decisions.values()
        if not decision.ok
        and decision.reason in ("OverCapacity", "SidecarUnreachable")
        and by_name[decision.name].containers_ready
        and not by_name[decision.name].terminating
    ]
    # Prefer keeping the least loaded over-capacity pods, then unreachable ones.
    keepable.sort(key=lambda d: (d.reason != "OverCapacity", by_name[d.name].connections, d.name))
    for decision in keepable[: max(min_ready_pods - ready_count, 0)]:
        decisions[decision.name] = ReadinessDecision(
            decision.name,
            True,
            "MinReadyPods",
            f"{decision.message}; kept ready so that {min_ready_pods} pods stay ready",
        )
    return decisions


class RunningReadiness:
    """:func:`decide_readiness` for one ConnectionStats, kept one pod at a time.

    Each pod's own decision (and whether it would be ready) is recomputed only when its
    input changes; :meth:`decisions` returns them as they are while at least
    ``min_ready_pods`` pods would be ready, and falls back to the whole
    :func:`decide_readiness` when the minReadyPods rule has to keep some pods ready.
    """

    def __init__(self, max_per_pod: int | None, min_ready_pods: int) -> None:
        self.max_per_pod = max_per_pod
        self.min_ready_pods = min_ready_pods
        self._inputs: dict[str, ReadinessInput] = {}
        self._own: dict[str, ReadinessDecision] = {}
        self._ready: set[str] = set()

    def set(self, pod: ReadinessInput) -> None:
        """A pod's input (new or changed)."""
        if self._inputs.get(pod.name) is pod:
            return
        self._inputs[pod.name] = pod
        decision = _own_decision(pod, self.max_per_pod) if pod.has_gate else None
        if decision is None:
            self._own.pop(pod.name, None)
        else:
            self._own[pod.name] = decision
        if _would_be_ready(pod, decision):
            self._ready.add(pod.name)
        else:
            self._ready.discard(pod.name)

    def remove(self, name: str) -> None:
        """A pod left the ConnectionStats."""
        self._inputs.pop(name, None)
        self._own.pop(name, None)
        self._ready.discard(name)

    @property
    def global_rule_applies(self) -> bool:
        """Whether fewer than ``min_ready_pods`` would be ready (decisions depend on all pods)."""
        return len(self._ready) < self.min_ready_pods

    def decisions(self) -> Mapping[str, ReadinessDecision]:
        """What :func:`decide_readiness` returns for the pods set (do not mutate)."""
        if not self.global_rule_applies:
            return self._own
        return decide_readiness(
            self._inputs.values(), max_per_pod=self.max_per_pod, min_ready_pods=self.min_ready_pods
        )


def _would_be_ready(pod: ReadinessInput, decision: ReadinessDecision | None) -> bool:
    if pod.terminating or not pod.containers_ready:
        return False
    if not pod.has_gate:
        return pod.ready
    return decision.ok if decision is not None else pod.gate_status is True


@dataclass(frozen=True)
class PendingWrite:
    """A condition write made and not yet seen in the pod watch."""

    uid: str
    ok: bool
    reason: str
    at: float


class ConditionWrites:
    """Which readiness decisions need a pod status write now."""

    def __init__(self, repatch_after: float, clock: Callable[[], float]) -> None:
        self._repatch_after = repatch_after
        self._clock = clock
        self._pending: dict[tuple[str, str], PendingWrite] = {}

    def needed(
        self,
        namespace: str,
        decisions: Mapping[str, ReadinessDecision],
        current: Mapping[str, tuple[str, bool | None, str]],
    ) -> list[ReadinessDecision]:
        """Decisions that differ from the pod's condition.

        ``current`` maps pod names to (uid, status, reason); a different reason alone
        (e.g. kept ready for minReadyPods rather than within capacity) is written too.
        """
        now = self._clock()
        result: list[ReadinessDecision] = []
        for name, decision in sorted(decisions.items()):
            uid, status, reason = current.get(name, ("", None, ""))
            key = (namespace, name)
            pending = self._pending.get(key)
            if status is decision.ok and reason == decision.reason:
                self._pending.pop(key, None)
                continue
            if (
                pending is not None
                and pending.uid == uid
                and pending.ok == decision.ok
                and pending.reason == decision.reason
                and now - pending.at < self._repatch_after
            ):
                continue
            result.append(decision)
        return result

    def written(self, namespace: str, name: str, uid: str, decision: ReadinessDecision) -> None:
        """Record a successful write."""
        self._pending[(namespace, name)] = PendingWrite(
            uid, decision.ok, decision.reason, self._clock()
        )

    def forget(self, namespace: str, name: str) -> None:
        """The pod is gone."""
        self._pending.pop((namespace, name), None)
