"""What the controller keeps per ConnectionStats: the record from the watch and the worker's state.

- :class:`ConnectionStatsRecord`: one ConnectionStats as last seen in the watch (its parsed
  spec, or why it is invalid), handed to the record listeners and status contributors;
- :class:`StatusContribution`: extra status fields and conditions from another part of the
  operator (autoscaling), written in the same status patch; :data:`StatusContributor` and
  :data:`RecordListener` are the shapes of the controller's extension points, and
  :class:`KubeWriter` the API calls it makes;
- :class:`ConnectionStatsState`: everything the :class:`~.controller.Controller` keeps for one
  ConnectionStats (the record, the status coalescer, the Event memory, the worker loop and the
  bookkeeping of incremental rounds), so that adding or forgetting one is one dict entry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from wsgauge_operator.control.object_loop import ObjectLoop
from wsgauge_operator.kube.events import EventSink, ObjectRef
from wsgauge_operator.model.aggregation import Aggregate
from wsgauge_operator.model.event_policy import TransitionMemory
from wsgauge_operator.model.observation import ObservedPods
from wsgauge_operator.model.spec import ConnectionStatsSpec
from wsgauge_operator.model.status_writer import StatusCoalescer


@dataclass
class ConnectionStatsRecord:
    """One ConnectionStats as last seen in the watch."""

    namespace: str
    name: str
    uid: str = ""
    generation: int | None = None
    spec: ConnectionStatsSpec | None = None
    spec_error: str = ""
    status: dict[str, Any] = field(default_factory=dict)
    first_seen: float = 0.0
    """Monotonic time this operator first saw the resource (warm-up, see ``reconcile``)."""

    @property
    def ref(self) -> ObjectRef:
        """Reference for Events."""
        return ObjectRef(self.namespace, self.name, self.uid)


@dataclass(frozen=True)
class StatusContribution:
    """Extra status content from another part of the operator."""

    fields: Mapping[str, Any] = field(default_factory=dict)
    """Top-level status fields (e.g. ``desiredReplicas``)."""
    conditions: Sequence[Mapping[str, str]] = ()
    """Conditions without times (type, status, reason, message)."""


class KubeWriter(EventSink, Protocol):
    """The API calls the controller makes (implemented by
    :class:`~wsgauge_operator.kube.kubeapi.KubeApi`).
    """

    async def patch_connectionstats_status(
        self, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None:
        """Merge-patch a ConnectionStats status."""

    async def patch_pod_condition(
        self, namespace: str, name: str, uid: str, condition: Mapping[str, Any]
    ) -> None:
        """Set one pod condition."""


Key = tuple[str, str]
"""A ConnectionStats: (namespace, name)."""
StatusContributor = Callable[[ConnectionStatsRecord, Aggregate], StatusContribution]
"""Called every round with the record and the aggregate; its contribution goes in the status."""
RecordListener = Callable[[Key, "ConnectionStatsRecord | None"], None]
"""Called with (namespace, name) and the record after each ConnectionStats event (None: deleted)."""


@dataclass
class ConnectionStatsState:
    """Everything the controller keeps for one ConnectionStats: adding or forgetting one
    touches only :attr:`Controller._states`."""

    record: ConnectionStatsRecord
    coalescer: StatusCoalescer
    """Decides when the status is written (seeded with the stored status)."""
    memory: TransitionMemory
    """What the Events on transitions compare against."""
    worker: ObjectLoop | None = None
    """The worker loop (None: the controller has not started)."""
    round_due: float = 0.0
    """Earliest (monotonic) start of the worker's next round (see ``ROUND_GAP_FACTOR``)."""
    observed: ObservedPods | None = None
    """The pods as observed by the last round, with running sums."""
    dirty: set[str] = field(default_factory=set)
    """Pods whose record, selection or sidecar changed since the last round: only those are
    observed again (see ``Controller._observe``)."""
    unsettled: set[str] = field(default_factory=set)
    """Pods whose condition differed from the decision at the last check (written or not
    yet): checked again every round."""
    observe_all_next: bool = False
    """The next round observes every pod (the follower limit held pods back in the last
    round: which pods it holds back depends on the whole operator)."""
    check_all_next: bool = False
    """The next round checks every pod's condition (the minReadyPods rule was in play:
    decisions then depend on every pod)."""

    def changed(self, pod: str | None = None) -> None:
        """Something changed (of ``pod``, when given): wake the worker for a round soon."""
        if pod is not None:
            self.dirty.add(pod)
        if self.worker is not None:
            self.worker.wake()

    def adopt(self, record: ConnectionStatsRecord, coalescer: StatusCoalescer) -> None:
        """A new incarnation (uid) of the same name: start over from its stored status."""
        self.record = record
        self.coalescer = coalescer
        self.memory = TransitionMemory.from_status(record.status)
