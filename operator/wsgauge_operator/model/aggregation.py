"""Pure aggregation: the observed pods of one ConnectionStats in, its ``status`` out.

No I/O and no clock: the caller passes the time as a string. The status is
bounded whatever the fleet size: at most ``top_topics`` topics (the rest folded
into ``_other``), ``busiest_pods`` pods and ``max_nodes`` nodes, and condition
messages that name at most a few pods.

Pods being deleted (``terminating``) are expected to go away: they are counted
apart (``pods.terminating``), never as matched, unreachable or starting, so a
scale-down neither degrades the resource nor raises unreachable Events. While
such a pod's sidecar still answers, its sockets (draining, but real) are still
counted in the totals; once it stops answering they are dropped.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from wsgauge_contract import OTHER_TOPIC

NAMES_IN_MESSAGES = 5
"""Pods named in a condition message before ``and N more``."""


class PodState(enum.Enum):
    """One matched pod, as far as counting goes."""

    REPORTING = "reporting"
    STARTING = "starting"
    """The sidecar has not answered yet (new pod), within the startup grace."""
    UNREACHABLE = "unreachable"
    PENDING = "pending"
    """No pod IP yet, or the pod is not running."""
    PORT_MISSING = "port-missing"
    """``spec.sidecarPort`` names a port the pod does not have."""
    NOT_FOLLOWED = "not-followed"
    """The operator follows its limit of sidecars (``max_followed_pods``) already."""


@dataclass(frozen=True)
class PodObservation:
    """One matched pod with what its sidecar reported."""

    name: str
    state: PodState
    node: str = ""
    connections: int = 0
    topics: Mapping[str, int] = field(default_factory=dict)
    ready: bool = False
    """The pod's Ready condition."""
    draining: bool = False
    terminating: bool = False
    """The pod has a ``deletionTimestamp``: it is going away."""


@dataclass(frozen=True)
class AggregationLimits:
    """How much of the fleet the status lists, and the capacity limit."""

    top_topics: int = 20
    busiest_pods: int = 10
    max_nodes: int = 50
    max_connections_per_pod: int | None = None


@dataclass(frozen=True)
class Aggregate:
    """The totals of one ConnectionStats."""

    connections: int = 0
    topics: Mapping[str, int] = field(default_factory=dict)
    """Folded: the top topics and ``_other``."""
    all_topics_count: int = 0
    """Distinct topics before folding."""
    totals: Mapping[str, int] = field(default_factory=dict)
    """Every topic, unfolded (kept in memory for the metrics API, never in the status)."""
    matched: int = 0
    """Matched pods that are not terminating."""
    reporting: int = 0
    """Matched (not terminating) pods whose sidecar reports."""
    unreachable: int = 0
    starting: int = 0
    ready: int = 0
    terminating: int = 0
    """Matched pods being deleted (not in ``matched``)."""
    counted: int = 0
    """Pods whose sockets are in ``connections``: reporting ones plus terminating ones
    whose sidecar still answers."""
    average_per_pod: int = 0
    """``connections`` over the ``reporting`` pods: the load the pods that stay will carry
    (a draining pod's sockets are counted, the draining pod is not)."""
    nodes: tuple[Mapping[str, Any], ...] = ()
    busiest_pods: tuple[Mapping[str, Any], ...] = ()
    over_capacity: tuple[str, ...] = ()
    unreachable_pods: tuple[str, ...] = ()
    port_missing_pods: tuple[str, ...] = ()
    not_followed_pods: tuple[str, ...] = ()
    """Matched pods the operator does not follow (its ``max_followed_pods`` limit)."""


def fold_topics(totals: Mapping[str, int], keep: int) -> dict[str, int]:
    """The ``keep`` largest topics (ties by name); the rest summed into ``_other``."""
    other = totals.get(OTHER_TOPIC, 0)
    ranked = sorted(
        ((name, count) for name, count in totals.items() if name != OTHER_TOPIC and count > 0),
        key=lambda item: (-item[1], item[0]),
    )
    folded = dict(ranked[: max(keep, 0)])
    other += sum(count for _, count in ranked[max(keep, 0) :])
    if other > 0:
        folded[OTHER_TOPIC] = other
    return folded


def aggregate(observations: Iterable[PodObservation], limits: AggregationLimits) -> Aggregate:
    """Sum the reporting pods; count pods by state; list the busiest pods and nodes.

    Terminating pods count only in ``terminating`` and, while their sidecar still
    answers, in the socket totals (``connections``, topics, nodes, busiest pods).
    """
    everything = list(observations)
    observed = [o for o in everything if not o.terminating]
    reporting = [o for o in observed if o.state is PodState.REPORTING]
    counted = [o for o in everything if o.state is PodState.REPORTING]
    totals: dict[str, int] = {}
    for pod in counted:
        for topic, count in pod.topics.items():
            totals[topic] = totals.get(topic, 0) + count
    connections = sum(pod.connections for pod in counted)
    per_node: dict[str, list[int]] = {}
    for pod in counted:
        entry = per_node.setdefault(pod.node or "unknown", [0, 0])
        entry[0] += 1
        entry[1] += pod.connections
    nodes = sorted(per_node.items(), key=lambda item: (-item[1][1], item[0]))
    busiest = sorted(counted, key=lambda pod: (-pod.connections, pod.name))
    limit = limits.max_connections_per_pod
    over = sorted(
        (pod for pod in reporting if limit is not None and pod.connections > limit),
        key=lambda pod: (-pod.connections, pod.name),
    )
    return Aggregate(
        connections=connections,
        topics=fold_topics(totals, limits.top_topics),
        all_topics_count=len([t for t in totals if t != OTHER_TOPIC]),
        totals=totals,
        matched=len(observed),
        reporting=len(reporting),
        unreachable=sum(1 for o in observed if o.state is PodState.UNREACHABLE),
        starting=sum(1 for o in observed if o.state in (PodState.STARTING, PodState.PENDING)),
        ready=sum(1 for o in observed if o.ready),
        terminating=len(everything) - len(observed),
        counted=len(counted),
        average_per_pod=round(connections / len(reporting)) if reporting else 0,
        nodes=tuple(
            {"name": name, "pods": pods, "connections": count}
            for name, (pods, count) in nodes[: max(limits.max_nodes, 0)]
        ),
        busiest_pods=tuple(
            {"name": pod.name, "connections": pod.connections}
            for pod in busiest[: max(limits.busiest_pods, 0)]
        ),
        over_capacity=tuple(pod.name for pod in over),
        unreachable_pods=tuple(sorted(o.name for o in observed if o.state is PodState.UNREACHABLE)),
        port_missing_pods=tuple(
            sorted(o.name for o in observed if o.state is PodState.PORT_MISSING)
        ),
        not_followed_pods=tuple(
            sorted(o.name for o in observed if o.state is PodState.NOT_FOLLOWED)
        ),
    )


def name_some(names: Sequence[str], limit: int = NAMES_IN_MESSAGES) -> str:
    """``a, b, c`` or ``a, b, c and 4 more``: bounded lists of names for messages."""
    shown = ", ".join(names[:limit])
    rest = len(names) - limit
    return f"{shown} and {rest} more" if rest > 0 else shown


def condition(type_: str, status: bool, reason: str, message: str) -> dict[str, str]:
    """A condition without times (see :func:`merge_conditions`)."""
    return {
        "type": type_,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message,
    }


def spec_conditions(
    result: Aggregate, *, selector: str, port: int | str, max_per_pod: int | None
) -> list[dict[str, str]]:
    """Ready, Degraded and CapacityExceeded for a valid spec and its aggregate."""
    conditions: list[dict[str, str]] = []
    missing = result.port_missing_pods
    if result.matched == 0:
        ready = condition("Ready", False, "NoPodsMatched", f"no pod matches selector {selector}")
    elif missing and len(missing) == result.matched:
        ready = condition(
            "Ready",
            False,
            "SidecarPortMissing",
            f"no matched pod has a port named {port!r} (pods: {name_some(missing)})",
        )
    elif result.reporting == 0:
        reason = "NoPodsReporting" if result.unreachable else "WaitingForSidecars"
        ready = condition(
            "Ready", False, reason, f"0 of {result.matched} matched pods report connections"
        )
    else:
        ready = condition(
            "Ready",
            True,
            "PodsReporting",
            f"{result.reporting} of {result.matched} matched pods report connections",
        )
    conditions.append(ready)
    if missing:
        conditions.append(
            condition(
                "Degraded",
                True,
                "SidecarPortMissing",
                f"{len(missing)} pods have no port named {port!r}: {name_some(missing)}",
            )
        )
    elif result.not_followed_pods:
        not_followed = result.not_followed_pods
        conditions.append(
            condition(
                "Degraded",
                True,
                "PodLimitReached",
                f"{len(not_followed)} pods are not followed: the operator follows its limit "
                f"of sidecars (--max-followed-pods): {name_some(not_followed)}",
            )
        )
    elif result.unreachable:
        conditions.append(
            condition(
                "Degraded",
                True,
                "PodsUnreachable",
                f"{result.unreachable} pods' sidecars do not answer: "
                f"{name_some(result.unreachable_pods)}",
            )
        )
    else:
        conditions.append(condition("Degraded", False, "AllReachable", "every sidecar answers"))
    if max_per_pod is None:
        conditions.append(
            condition("CapacityExceeded", False, "NoLimit", "capacity.maxConnectionsPerPod unset")
        )
    elif result.over_capacity:
        conditions.append(
            condition(
                "CapacityExceeded",
                True,
                "OverCapacity",
                f"{len(result.over_capacity)} pods above {max_per_pod} connections: "
                f"{name_some(result.over_capacity)}",
            )
        )
    else:
        conditions.append(
            condition(
                "CapacityExceeded",
                False,
                "WithinCapacity",
                f"every pod at or below {max_per_pod} connections",
            )
        )
    return conditions


def invalid_spec_conditions(message: str) -> list[dict[str, str]]:
    """Conditions for a spec the operator cannot use."""
    return [
        condition("Ready", False, "InvalidSpec", message),
        condition("Degraded", True, "InvalidSpec", message),
    ]


def merge_conditions(
    previous: Iterable[Mapping[str, Any]],
    current: Iterable[Mapping[str, str]],
    *,
    now: str,
    generation: int | None,
) -> list[dict[str, Any]]:
    """Stamp conditions with times: ``lastTransitionTime`` kept while the status is the same.

    Conditions of types not in ``current`` (e.g. AutoscalingActive, owned by another
    part of the operator) are kept from ``previous`` as they are.
    """
    by_type = {str(c.get("type")): c for c in previous if isinstance(c, Mapping)}
    merged: list[dict[str, Any]] = []
    seen: set[str] = set()
    for item in current:
        before = by_type.get(item["type"])
        transition = now
        if before is not None and before.get("status") == item["status"]:
            transition = str(before.get("lastTransitionTime") or now)
        stamped: dict[str, Any] = dict(item)
        stamped["lastTransitionTime"] = transition
        if generation is not None:
            stamped["observedGeneration"] = generation
        merged.append(stamped)
        seen.add(item["type"])
    for type_, before in by_type.items():
        if type_ not in seen:
            merged.append(dict(before))
    return merged


def render_status(result: Aggregate) -> dict[str, Any]:
    """The counting part of the status (no conditions, no times)."""
    return {
        "connections": result.connections,
        "topics": dict(result.topics),
        "pods": {
            "matched": result.matched,
            "reporting": result.reporting,
            "unreachable": result.unreachable,
            "ready": result.ready,
            "terminating": result.terminating,
            "summary": f"{result.reporting}/{result.matched}",
        },
        "averagePerPod": result.average_per_pod,
        "nodes": [dict(node) for node in result.nodes],
        "busiestPods": [dict(pod) for pod in result.busiest_pods],
    }
