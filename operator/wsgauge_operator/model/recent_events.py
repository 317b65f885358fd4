"""The Events the operator recorded lately, per ConnectionStats, for the live view.

The live page and ``kubectl wsgauge describe`` show the recent Events of a ConnectionStats;
the operator keeps the last :attr:`RecentEvents.per_object` it recorded itself (after the
de-duplication of :mod:`.events`) so the live document needs no API call. Bounded: at most
``per_object`` per ConnectionStats and ``max_objects`` ConnectionStats (the least recently
touched forgotten first); :meth:`RecentEvents.forget` drops a deleted one.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any


class RecentEvents:
    """A ring of recent Events per ConnectionStats (plain data, no I/O)."""

    def __init__(
        self,
        per_object: int = 10,
        max_objects: int = 1000,
    ) -> None:
        self.per_object = per_object
        self.max_objects = max_objects
        self._events: OrderedDict[tuple[str, str], deque[dict[str, Any]]] = OrderedDict()

    def add(
        self, namespace: str, name: str, *, time: str, warning: bool, reason: str, note: str
    ) -> None:
        """Remember an Event recorded on ``namespace/name`` at ``time`` (RFC 3339, UTC)."""
        key = (namespace, name)
        ring = self._events.get(key)
        if ring is None:
            ring = self._events[key] = deque(maxlen=self.per_object)
            while len(self._events) > self.max_objects:
                self._events.popitem(last=False)
        self._events.move_to_end(key)
        ring.append(
            {
                "time": time,
                "type": "Warning" if warning else "Normal",
                "reason": reason,
                "note": note,
            }
        )

    def of(self, namespace: str, name: str) -> list[dict[str, Any]]:
        """The recent Events of one ConnectionStats, the newest first."""
        ring = self._events.get((namespace, name))
        return [dict(event) for event in reversed(ring)] if ring else []

    def forget(self, namespace: str, name: str) -> None:
        """Drop a deleted ConnectionStats' Events."""
        self._events.pop((namespace, name), None)
