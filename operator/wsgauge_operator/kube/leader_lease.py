"""Leader election over a ``coordination.k8s.io/v1`` Lease: the pure decisions, no I/O.

The rules are client-go's (``k8s.io/client-go/tools/leaderelection``):

- A replica reads the Lease and remembers, on its *own* monotonic clock, when it first saw the
  current version of it (:class:`Observation`). Clocks of different machines are never
  compared: ``renewTime`` in the Lease is informative only.
- A Lease held by someone else is taken over only after this replica has seen it *unchanged*
  for ``leaseDurationSeconds`` (the holder stopped renewing), or at once when its holder
  released it (empty ``holderIdentity``). Every write carries the ``resourceVersion`` that was
  read: when two replicas try at once, the API server lets one win and answers 409 to the other.
- The leader renews every ``retry_period``. It counts as leader only until ``renew_deadline``
  after the moment it *sent* its last successful write (:meth:`Candidacy.is_leader`). Because
  ``renew_deadline < lease_duration`` and a standby starts its wait no earlier than that write,
  the old leader has given up before anyone may take over, even when its renewals time out.

:class:`Candidacy` holds one replica's view; :mod:`.leadership` drives it with real API calls.
"""

from __future__ import annotations

import datetime
import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from wsgauge_operator.model.settings import LeaderElectionSettings

LEASE_API_VERSION = "coordination.k8s.io/v1"
"""apiVersion of the Lease object."""


def format_micro_time(moment: datetime.datetime) -> str:
    """A Kubernetes ``MicroTime`` (RFC 3339, six fractional digits, UTC)."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class LeaseRecord:
    """The parts of a Lease that leader election reads."""

    holder: str = ""
    """``spec.holderIdentity``; empty: nobody holds the lease (released or never taken)."""
    lease_duration: float = 0.0
    """``spec.leaseDurationSeconds`` as written by the holder (0: unset)."""
    acquire_time: str = ""
    """``spec.acquireTime`` (MicroTime text)."""
    renew_time: str = ""
    """``spec.renewTime`` (MicroTime text)."""
    transitions: int = 0
    """``spec.leaseTransitions``: how often the holder changed."""
    resource_version: str = ""
    """``metadata.resourceVersion``: the precondition of the next write."""


def record_from_lease(lease: Mapping[str, Any]) -> LeaseRecord:
    """Read a Lease object (as JSON) into a :class:`LeaseRecord`; wrong types count as unset."""
    spec = lease.get("spec")
    spec = spec if isinstance(spec, Mapping) else {}
    metadata = lease.get("metadata")
    metadata = metadata if isinstance(metadata, Mapping) else {}

    def text(value: Any) -> str:
        return value if isinstance(value, str) else ""

    def number(value: Any) -> int:
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    return LeaseRecord(
        holder=text(spec.get("holderIdentity")),
        lease_duration=float(max(0, number(spec.get("leaseDurationSeconds")))),
        acquire_time=text(spec.get("acquireTime")),
        renew_time=text(spec.get("renewTime")),
        transitions=max(0, number(spec.get("leaseTransitions"))),
        resource_version=text(metadata.get("resourceVersion")),
    )


@dataclass(frozen=True)
class Observation:
    """A version of the Lease and when this replica first saw it (its monotonic clock)."""

    record: LeaseRecord | None
    """The Lease as read; ``None``: there is no Lease object."""
    since: float
    """Local monotonic time at which this exact version was first read."""


def observe(previous: Observation | None, record: LeaseRecord | None, now: float) -> Observation:
    """The new observation after reading ``record`` at ``now``: the clock restarts on change."""
    if previous is not None and previous.record == record:
        return previous
    return Observation(record, now)


class Action(enum.StrEnum):
    """What a replica does after reading the Lease."""

    CREATE = "create"
    """No Lease exists: create it, holding it."""
    ACQUIRE = "acquire"
    """The Lease is free or expired: take it over (a new holder)."""
    RENEW = "renew"
    """This replica holds the Lease: renew it."""
    WAIT = "wait"
    """Someone else holds a live Lease: look again later."""


@dataclass(frozen=True)
class Decision:
    """The outcome of :func:`decide`."""

    action: Action
    """What to do."""
    holder: str
    """The holder as read (empty when none)."""
    retry_in: float
    """Seconds until the next look at the Lease."""


def lease_duration_of(record: LeaseRecord, settings: LeaderElectionSettings) -> float:
    """How long a holder's lease lasts: as the holder wrote it, else our own setting."""
    return record.lease_duration if record.lease_duration > 0 else settings.lease_duration


def decide(
    observation: Observation, identity: str, now: float, settings: LeaderElectionSettings
) -> Decision:
    """What this replica (``identity``) does about the Lease it observed, at ``now``."""
    record = observation.record
    if record is None:
        return Decision(Action.CREATE, "", settings.retry_period)
    if record.holder == identity:
        return Decision(Action.RENEW, record.holder, settings.retry_period)
    if not record.holder:
        return Decision(Action.ACQUIRE, "", settings.retry_period)
    expires = observation.since + lease_duration_of(record, settings)
    if now >= expires:
        return Decision(Action.ACQUIRE, record.holder, settings.retry_period)
    return Decision(Action.WAIT, record.holder, min(settings.retry_period, expires - now))


def whole_seconds(seconds: float) -> int:
    """``leaseDurationSeconds`` is an integer: round up, at least 1."""
    return max(1, math.ceil(seconds))


def lease_spec(
    action: Action,
    record: LeaseRecord | None,
    identity: str,
    wall_now: datetime.datetime,
    settings: LeaderElectionSettings,
) -> dict[str, Any]:
    """The ``spec`` this replica writes for ``action`` (CREATE, ACQUIRE or RENEW)."""
    if action is Action.WAIT:
        raise ValueError("nothing is written while waiting")
    now_text = format_micro_time(wall_now)
    taking_over = record is None or record.holder != identity
    transitions = 0 if record is None else record.transitions
    if record is not None and taking_over:
        transitions += 1
    acquire_time = now_text if taking_over or record is None else record.acquire_time or now_text
    return {
        "holderIdentity": identity,
        "leaseDurationSeconds": whole_seconds(settings.lease_duration),
        "acquireTime": acquire_time,
        "renewTime": now_text,
        "leaseTransitions": transitions,
    }


def release_spec(record: LeaseRecord, wall_now: datetime.datetime) -> dict[str, Any]:
    """The ``spec`` that gives the Lease up: no holder, so a standby takes it at once."""
    return {
        "holderIdentity": "",
        "leaseDurationSeconds": 1,
        "acquireTime": record.acquire_time or format_micro_time(wall_now),
        "renewTime": format_micro_time(wall_now),
        "leaseTransitions": record.transitions,
    }


def lease_object(
    namespace: str, name: str, spec: Mapping[str, Any], resource_version: str = ""
) -> dict[str, Any]:
    """A whole Lease object to create (no resourceVersion) or replace (with the one read)."""
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if resource_version:
        metadata["resourceVersion"] = resource_version
    return {
        "apiVersion": LEASE_API_VERSION,
        "kind": "Lease",
        "metadata": metadata,
        "spec": dict(spec),
    }


class Candidacy:
    """One replica's side of the election: decisions, and whether it may still act as leader.

    Drive it with :meth:`look` after each read of the Lease, :meth:`won` after each successful
    write (with the local time the write was *sent*), and :meth:`released` after giving the
    Lease up. It never does I/O and never reads a clock itself.
    """

    def __init__(self, identity: str, settings: LeaderElectionSettings) -> None:
        if not identity:
            raise ValueError("a leader election identity must not be empty")
        self.identity = identity
        self.settings = settings
        self.observation: Observation | None = None
        self.renewed_at: float | None = None
        """Local time at which the last successful write of ours was sent (None: not leader)."""

    @property
    def record(self) -> LeaseRecord | None:
        """The Lease as last read or written."""
        return None if self.observation is None else self.observation.record

    def look(self, record: LeaseRecord | None, now: float) -> Decision:
        """Take in the Lease as read at ``now``; decide what to do."""
        self.observation = observe(self.observation, record, now)
        decision = decide(self.observation, self.identity, now, self.settings)
        if decision.action is not Action.RENEW and record is not None and record.holder:
            # someone else holds it (or we lost it): we are not the leader, whatever we thought
            self.renewed_at = None
        return decision

    def won(self, record: LeaseRecord, sent_at: float) -> None:
        """Our write (sent at ``sent_at``) succeeded; ``record`` is the Lease it returned."""
        if record.holder != self.identity:
            raise ValueError("a successful write must name us as holder")
        self.observation = Observation(record, sent_at)
        self.renewed_at = sent_at

    def released(self, record: LeaseRecord | None, now: float) -> None:
        """We gave the Lease up (or stopped trying): not leader any more."""
        self.renewed_at = None
        self.observation = observe(self.observation, record, now)

    def is_leader(self, now: float) -> bool:
        """True while the last successful renewal is younger than ``renew_deadline``."""
        return self.renewed_at is not None and now - self.renewed_at < self.settings.renew_deadline

    def leader_until(self) -> float | None:
        """Local time at which leadership lapses without a further renewal (None: not leader)."""
        if self.renewed_at is None:
            return None
        return self.renewed_at + self.settings.renew_deadline


def validate_timing(settings: LeaderElectionSettings) -> str | None:
    """Why the durations cannot work together, or None when they can."""
    if min(settings.lease_duration, settings.renew_deadline, settings.retry_period) <= 0:
        return "leader election durations must be positive"
    if not settings.renew_deadline < settings.lease_duration:
        return "the renew deadline must be shorter than the lease duration"
    if not settings.retry_period * 1.2 <= settings.renew_deadline:
        return "the retry period must be well below the renew deadline (1.2x at most)"
    if not settings.lease_name:
        return "the lease name must not be empty"
    return None
