"""Pure running totals of one ConnectionStats: :func:`~.aggregation.aggregate`, kept incrementally.

A round used to sum every selected pod (O(pods): about half a second at 10,000 pods in one
ConnectionStats). :class:`RunningAggregate` keeps each pod's last
:class:`~.aggregation.PodObservation` and the sums over them; replacing or removing one
pod's observation changes only that pod's share (O(its topics)). :meth:`RunningAggregate.result`
then builds the same :class:`~.aggregation.Aggregate` as ``aggregate()`` over the same
observations: topics folded and nodes sorted from the maintained sums (O(topics + nodes)),
the busiest pods from a kept list that is recomputed (a bounded ``heapq.nsmallest``) only
when a pod that changed could enter or leave it, and the name lists sorted from maintained
sets (bounded by the pods in that state).

No I/O and no clock.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import Any

from wsgauge_contract import OTHER_TOPIC

from wsgauge_operator.model.aggregation import (
    Aggregate,
    AggregationLimits,
    PodObservation,
    PodState,
    fold_topics,
)

BusyKey = tuple[int, str]
"""How the busiest pods are ranked: fewer is busier (``-connections``, then the name)."""


def _busy_key(observation: PodObservation) -> BusyKey:
    return (-observation.connections, observation.name)


class RunningAggregate:
    """Sums over the observed pods of one ConnectionStats, updated one pod at a time.

    ``max_connections_per_pod`` is fixed per instance (it comes from the spec; a new spec
    builds a new instance).
    """

    def __init__(self, max_connections_per_pod: int | None = None) -> None:
        self.max_connections_per_pod = max_connections_per_pod
        self._pods: dict[str, PodObservation] = {}
        self._connections = 0
        self._totals: dict[str, int] = {}
        self._topic_pods: dict[str, int] = {}
        """Counted pods reporting each topic (a topic with zero sockets stays listed while
        some pod reports it, as in ``aggregate()``)."""
        self._per_node: dict[str, list[int]] = {}
        """Per node: [counted pods, connections]."""
        self._matched = 0
        self._reporting = 0
        self._counted = 0
        self._ready = 0
        self._starting = 0
        self._warming = 0
        self._unreachable: set[str] = set()
        self._port_missing: set[str] = set()
        self._not_followed: set[str] = set()
        self._over_capacity: set[str] = set()
        self._busiest: list[PodObservation] | None = None
        """The busiest counted pods as last ranked (``None``: rank again); at most
        ``_busiest_size`` long."""
        self._busiest_size = 0

    def __len__(self) -> int:
        return len(self._pods)

    def __contains__(self, name: object) -> bool:
        return name in self._pods

    def names(self) -> list[str]:
        """The pods included."""
        return list(self._pods)

    @property
    def warming(self) -> bool:
        """Whether some pod (not terminating) waits for its sidecar's first answer."""
        return self._warming > 0

    def set(self, observation: PodObservation) -> None:
        """Include a pod's observation (replacing its previous one)."""
        previous = self._pods.get(observation.name)
        if previous is observation:
            return
        if previous is not None:
            self._apply(previous, -1)
        self._pods[observation.name] = observation
        self._apply(observation, 1)

    def remove(self, name: str) -> None:
        """Leave a pod out (no longer selected, or gone)."""
        previous = self._pods.pop(name, None)
        if previous is not None:
            self._apply(previous, -1)

    def _apply(self, pod: PodObservation, sign: int) -> None:
        state = pod.state
        if not pod.terminating:
            self._matched += sign
            if pod.ready:
                self._ready += sign
            if state is PodState.REPORTING:
                self._reporting += sign
                limit = self.max_connections_per_pod
                if limit is not None and pod.connections > limit:
                    _toggle(self._over_capacity, pod.name, sign)
            elif state is PodState.STARTING:
                self._starting += sign
                self._warming += sign
            elif state is PodState.PENDING:
                self._starting += sign
            elif state is PodState.UNREACHABLE:
                _toggle(self._unreachable, pod.name, sign)
            elif state is PodState.PORT_MISSING:
                _toggle(self._port_missing, pod.name, sign)
            elif state is PodState.NOT_FOLLOWED:
                _toggle(self._not_followed, pod.name, sign)
        if state is not PodState.REPORTING:
            return
        self._counted += sign
        self._connections += sign * pod.connections
        for topic, count in pod.topics.items():
            remaining = self._topic_pods.get(topic, 0) + sign
            if remaining <= 0:
                self._topic_pods.pop(topic, None)
                self._totals.pop(topic, None)
            else:
                self._topic_pods[topic] = remaining
                self._totals[topic] = self._totals.get(topic, 0) + sign * count
        node = pod.node or "unknown"
        entry = self._per_node.setdefault(node, [0, 0])
        entry[0] += sign
        entry[1] += sign * pod.connections
        if entry[0] <= 0:
            del self._per_node[node]
        self._note_busy(pod)

    def _note_busy(self, pod: PodObservation) -> None:
        """Drop the ranked busiest pods if ``pod`` (counted, added or removed) can change them."""
        ranked = self._busiest
        if ranked is None or self._busiest_size == 0:
            return
        if len(ranked) < self._busiest_size or _busy_key(pod) <= _busy_key(ranked[-1]):
            self._busiest = None

    def _ranked(self, size: int) -> list[PodObservation]:
        if self._busiest is None or self._busiest_size != size:
            counted = (o for o in self._pods.values() if o.state is PodState.REPORTING)
            self._busiest = heapq.nsmallest(size, counted, key=_busy_key)
            self._busiest_size = size
        return self._busiest

    def result(self, limits: AggregationLimits) -> Aggregate:
        """The same :class:`~.aggregation.Aggregate` as ``aggregate()`` over the pods included.

        ``limits.max_connections_per_pod`` is ignored: the instance's own limit applies.
        """
        totals = dict(self._totals)
        nodes = sorted(self._per_node.items(), key=lambda item: (-item[1][1], item[0]))
        busiest = self._ranked(max(limits.busiest_pods, 0))
        over = sorted(self._over_capacity, key=lambda name: (-self._pods[name].connections, name))
        node_entries: Iterable[dict[str, Any]] = (
            {"name": name, "pods": pods, "connections": count}
            for name, (pods, count) in nodes[: max(limits.max_nodes, 0)]
        )
        return Aggregate(
            connections=self._connections,
            topics=fold_topics(totals, limits.top_topics),
            all_topics_count=len([t for t in totals if t != OTHER_TOPIC]),
            totals=totals,
            matched=self._matched,
            reporting=self._reporting,
            unreachable=len(self._unreachable),
            starting=self._starting,
            ready=self._ready,
            terminating=len(self._pods) - self._matched,
            counted=self._counted,
            average_per_pod=round(self._connections / self._reporting) if self._reporting else 0,
            nodes=tuple(node_entries),
            busiest_pods=tuple(
                {"name": pod.name, "connections": pod.connections} for pod in busiest
            ),
            over_capacity=tuple(over),
            unreachable_pods=tuple(sorted(self._unreachable)),
            port_missing_pods=tuple(sorted(self._port_missing)),
            not_followed_pods=tuple(sorted(self._not_followed)),
        )


def _toggle(names: set[str], name: str, sign: int) -> None:
    if sign > 0:
        names.add(name)
    else:
        names.discard(name)
