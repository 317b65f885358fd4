"""Kubernetes Events on a ConnectionStats: what a person should know, said once.

:class:`EventDeduper` (pure, injected clock) lets the same reason and message
through at most once per ``repeat_after`` seconds; :func:`build_event` makes the
``events.k8s.io/v1`` object; :class:`EventRecorder` posts it through
:class:`~.kubeapi.KubeApi`, logging (never raising) on failure.
"""

from __future__ import annotations

import datetime
import logging
import socket
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from wsgauge_operator.model.exceptions import KubeApiError
from wsgauge_operator.model.settings import API_GROUP, API_VERSION, KIND, EventSettings

logger = logging.getLogger(__name__)

REPORTING_CONTROLLER = "wsgauge.dev/operator"
MAX_NOTE_LENGTH = 1000


@dataclass(frozen=True)
class ObjectRef:
    """The ConnectionStats an Event is about."""

    namespace: str
    name: str
    uid: str


class EventSink(Protocol):
    """Something that can create an Event (``KubeApi``)."""

    async def create_event(self, namespace: str, event: Mapping[str, Any]) -> None:
        """Create the Event."""


class EventDeduper:
    """Lets an (object, reason, message) through once per ``repeat_after`` seconds."""

    def __init__(self, repeat_after: float, clock: Callable[[], float], limit: int = 4096) -> None:
        self._repeat_after = repeat_after
        self._clock = clock
        self._limit = limit
        self._last: dict[tuple[str, str, str, str], float] = {}

    def allow(self, ref: ObjectRef, reason: str, message: str) -> bool:
        """Whether to record this Event now (and remember that it was)."""
        now = self._clock()
        key = (ref.namespace, ref.name, reason, message)
        last = self._last.get(key)
        if last is not None and now - last < self._repeat_after:
            return False
        if len(self._last) >= self._limit:
            cutoff = now - self._repeat_after
            self._last = {k: t for k, t in self._last.items() if t >= cutoff}
        self._last[key] = now
        return True


def build_event(
    ref: ObjectRef, *, type_: str, reason: str, action: str, note: str, instance: str
) -> dict[str, Any]:
    """An ``events.k8s.io/v1`` Event regarding a ConnectionStats."""
    now = datetime.datetime.now(datetime.UTC)
    return {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": f"{ref.name}.{uuid.uuid4().hex[:16]}", "namespace": ref.namespace},
        "eventTime": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "type": type_,
        "reason": reason,
        "action": action,
        "note": note[:MAX_NOTE_LENGTH],
        "reportingController": REPORTING_CONTROLLER,
        "reportingInstance": instance[:128],
        "regarding": {
            "apiVersion": f"{API_GROUP}/{API_VERSION}",
            "kind": KIND,
            "name": ref.name,
            "namespace": ref.namespace,
            "uid": ref.uid,
        },
    }


class EventRecorder:
    """Records de-duplicated Events; failures are logged, never raised."""

    def __init__(
        self,
        sink: EventSink | None,
        settings: EventSettings,
        clock: Callable[[], float],
        instance: str = "",
    ) -> None:
        self._sink = sink
        self._settings = settings
        self._deduper = EventDeduper(settings.repeat_after, clock)
        self._instance = instance or socket.gethostname()
        self.recorded = 0
        """Events created so far."""

    async def record(
        self, ref: ObjectRef, *, warning: bool, reason: str, note: str, action: str = "Observe"
    ) -> None:
        """Record an Event (``Warning`` or ``Normal``) unless it was recorded recently."""
        if not self._settings.enabled or self._sink is None:
            return
        if not self._deduper.allow(ref, reason, note):
            return
        event = build_event(
            ref,
            type_="Warning" if warning else "Normal",
            reason=reason,
            action=action,
            note=note,
            instance=self._instance,
        )
        try:
            await self._sink.create_event(ref.namespace, event)
        except KubeApiError as error:
            logger.warning(
                "could not record event %s on %s/%s: %s", reason, ref.namespace, ref.name, error
            )
            return
        self.recorded += 1
