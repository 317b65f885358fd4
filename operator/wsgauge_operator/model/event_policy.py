"""Which Events a change calls for (pure): the event-on-transition policy.

A worker round of the controller, and a deletion-cost round of the autoscaler, end with a view of
one ConnectionStats; this module compares it with what the last round saw and says which Events
to record. It does no I/O and reads no clock: the caller records what it returns (through
:class:`~wsgauge_operator.kube.events.EventRecorder`, which also keeps the same Event from repeating
too often).

:class:`TransitionMemory` is what is remembered between rounds; :meth:`TransitionMemory.round`
returns the Events of one round and remembers the new view:

- ``PodUnreachable`` (Warning) for a pod whose sidecar stopped answering, ``PodReachable`` when it
  answers again (not for a pod that is gone or terminating meanwhile); at most 5 pods each;
- ``SidecarRestarted`` when a pod's sidecar restart count grew;
- a transition of the conditions ``Ready``, ``Degraded`` and ``CapacityExceeded``: an Event named
  by the new reason, Warning when the condition now shows a problem (``Ready`` False, the others
  True); none for ``WaitingForSidecars`` and none for a first value that shows no problem.
  The memory starts from the conditions stored on the object, so an operator restart records
  nothing for conditions that did not change;
- ``ScaleRecommended`` while the connections exceed ``maxConnectionsPerPod`` times the pods
  counted (every round: the recorder lets it through once per ``--event-repeat``).

:func:`replica_recommendation` is the autoscaler's ``ReplicasRecommended``: once per new desired
replica count that differs from the target's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

OWN_CONDITIONS = ("Ready", "Degraded", "CapacityExceeded")
"""Condition types whose transitions are Events (those the controller computes)."""
MAX_PODS_NAMED = 5
"""Pods that become unreachable (or reachable) in one round with an Event each, at most."""
RECOMMENDATION_REASON = "ReplicasRecommended"
"""Event reason of the autoscaler's scale recommendation."""


@dataclass(frozen=True)
class PlannedEvent:
    """An Event to record on the ConnectionStats."""

    warning: bool
    reason: str
    note: str


@dataclass(frozen=True)
class RoundView:
    """What one round saw of a ConnectionStats, as far as Events are concerned."""

    unreachable: frozenset[str] = frozenset()
    """Pods whose sidecar does not answer."""
    restart_counts: Mapping[str, int | None] = field(default_factory=dict)
    """Sidecar restarts of the pods observed again this round (``None``: no longer observed);
    pods not in it keep their count."""
    conditions: Iterable[Mapping[str, Any]] = ()
    """The conditions as written (type, status, reason, message)."""
    connections: int = 0
    counted: int = 0
    """Pods whose connections are counted."""
    max_per_pod: int | None = None
    """``capacity.maxConnectionsPerPod`` (``None``: no limit, or no valid spec)."""


def condition_state(conditions: Iterable[Any]) -> dict[str, tuple[str, str]]:
    """(status, reason) per condition type, from a stored ``status.conditions``."""
    return {
        str(item.get("type")): (str(item.get("status")), str(item.get("reason")))
        for item in conditions
        if isinstance(item, Mapping)
    }


@dataclass
class TransitionMemory:
    """What the Events of one ConnectionStats compare against: the view of the last round."""

    unreachable: frozenset[str] = frozenset()
    restarts: dict[str, int] = field(default_factory=dict)
    """Sidecar restart count per pod observed."""
    condition_reasons: dict[str, tuple[str, str]] = field(default_factory=dict)
    """(status, reason) per condition type."""

    @classmethod
    def from_status(cls, status: Mapping[str, Any]) -> TransitionMemory:
        """A memory that starts from a stored status (its conditions)."""
        return cls(condition_reasons=condition_state(status.get("conditions") or []))

    def round(self, view: RoundView, is_live: Callable[[str], bool]) -> list[PlannedEvent]:
        """The Events of one round (in order), and remember ``view``.

        ``is_live(pod)`` says whether a pod still exists and is not terminating (a pod that
        answers again is only reported while it is).
        """
        events: list[PlannedEvent] = []
        for pod in sorted(view.unreachable - self.unreachable)[:MAX_PODS_NAMED]:
            events.append(
                PlannedEvent(True, "PodUnreachable", f"the sidecar of pod {pod} stopped answering")
            )
        for pod in sorted(self.unreachable - view.unreachable)[:MAX_PODS_NAMED]:
            if is_live(pod):
                events.append(
                    PlannedEvent(False, "PodReachable", f"the sidecar of pod {pod} answers again")
                )
        self.unreachable = view.unreachable
        for name, restarts in sorted(view.restart_counts.items()):
            if restarts is None:
                self.restarts.pop(name, None)
                continue
            if restarts > self.restarts.get(name, restarts):
                events.append(
                    PlannedEvent(False, "SidecarRestarted", f"the sidecar of pod {name} restarted")
                )
            self.restarts[name] = restarts
        events.extend(self._condition_events(view.conditions))
        limit = view.max_per_pod
        if limit and view.counted and view.connections > limit * view.counted:
            needed = math.ceil(view.connections / limit)
            events.append(
                PlannedEvent(
                    False,
                    "ScaleRecommended",
                    f"{view.connections} connections on {view.counted} pods exceed "
                    f"maxConnectionsPerPod {limit}: at least {needed} pods are needed",
                )
            )
        return events

    def _condition_events(self, conditions: Iterable[Mapping[str, Any]]) -> list[PlannedEvent]:
        events: list[PlannedEvent] = []
        for item in conditions:
            type_ = str(item.get("type"))
            if type_ not in OWN_CONDITIONS:
                continue
            now = (str(item.get("status")), str(item.get("reason")))
            before = self.condition_reasons.get(type_)
            self.condition_reasons[type_] = now
            problem = (now[0] == "False") if type_ == "Ready" else (now[0] == "True")
            if before == now or now[1] == "WaitingForSidecars" or (before is None and not problem):
                continue
            events.append(
                PlannedEvent(problem, now[1], f"{type_} is {now[0]}: {item.get('message')}")
            )
        return events


def replica_recommendation(
    recommended: int | None,
    desired: int | None,
    current: int | None,
    *,
    connections: int,
    target_per_pod: int,
) -> tuple[int | None, PlannedEvent | None]:
    """The desired count to remember as recommended, and the Event to record (if any).

    ``recommended`` is the count the last recommendation was for; a new one is made when the
    served metric implies another count than the target has and than last recommended.
    """
    if desired is None or current is None or desired == current:
        return None, None
    if desired == recommended:
        return recommended, None
    direction = "up" if desired > current else "down"
    return desired, PlannedEvent(
        False,
        RECOMMENDATION_REASON,
        f"scale {direction}: {connections} connections at {target_per_pod} per pod imply "
        f"{desired} replicas (the target has {current})",
    )
