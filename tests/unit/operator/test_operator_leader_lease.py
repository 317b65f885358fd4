"""Unit and property tests of the pure leader-election logic (wsgauge_operator.kube.leader_lease).

The property tests run several :class:`Candidacy` objects against a simulated Lease store with
the API server's optimistic concurrency (resourceVersion; a stale write is refused like a 409),
on a simulated clock, with paused replicas, lost responses and crashes, and check that at no
instant two replicas consider themselves leader, and that a leader exists again once the
replicas run freely.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsgauge_operator.kube.leader_lease import (
    Action,
    Candidacy,
    LeaseRecord,
    Observation,
    decide,
    format_micro_time,
    lease_object,
    lease_spec,
    observe,
    record_from_lease,
    release_spec,
    validate_timing,
)
from wsgauge_operator.model.settings import LeaderElectionSettings

TIMING = LeaderElectionSettings(
    enabled=True, lease_duration=15.0, renew_deadline=10.0, retry_period=2.0
)
WALL = datetime.datetime(2026, 11, 27, 3, 0, 0, tzinfo=datetime.UTC)


def held_by(holder: str, version: str = "1", duration: float = 15.0) -> LeaseRecord:
    return LeaseRecord(holder=holder, lease_duration=duration, resource_version=version)


# --- decisions ---------------------------------------------------------------------------


def test_no_lease_means_create() -> None:
    decision = decide(Observation(None, 0.0), "me", 0.0, TIMING)
    assert decision.action is Action.CREATE


def test_own_lease_is_renewed() -> None:
    decision = decide(Observation(held_by("me"), 0.0), "me", 100.0, TIMING)
    assert decision.action is Action.RENEW


def test_released_lease_is_taken_at_once() -> None:
    decision = decide(Observation(held_by(""), 50.0), "me", 50.0, TIMING)
    assert decision.action is Action.ACQUIRE


def test_someone_elses_lease_is_waited_for_until_seen_unchanged_for_its_duration() -> None:
    observation = Observation(held_by("other", duration=15), 100.0)
    early = decide(observation, "me", 110.0, TIMING)
    assert early.action is Action.WAIT
    assert early.holder == "other"
    assert early.retry_in == pytest.approx(2.0)
    almost = decide(observation, "me", 114.5, TIMING)
    assert almost.action is Action.WAIT
    assert almost.retry_in == pytest.approx(0.5)
    assert decide(observation, "me", 115.0, TIMING).action is Action.ACQUIRE


def test_the_holders_lease_duration_wins_over_ours() -> None:
    observation = Observation(held_by("other", duration=30), 0.0)
    assert decide(observation, "me", 20.0, TIMING).action is Action.WAIT
    assert decide(observation, "me", 30.0, TIMING).action is Action.ACQUIRE


def test_observation_clock_restarts_only_when_the_lease_changes() -> None:
    first = observe(None, held_by("other", "1"), 10.0)
    same = observe(first, held_by("other", "1"), 12.0)
    assert same.since == 10.0
    renewed = observe(same, held_by("other", "2"), 14.0)
    assert renewed.since == 14.0
    gone = observe(renewed, None, 16.0)
    assert gone.since == 16.0
    assert gone.record is None


# --- lease documents -----------------------------------------------------------------------


def test_record_from_lease_reads_the_fields_and_ignores_wrong_types() -> None:
    lease = {
        "metadata": {"resourceVersion": "42"},
        "spec": {
            "holderIdentity": "pod-a_1234",
            "leaseDurationSeconds": 15,
            "acquireTime": "2026-11-27T03:00:00.000000Z",
            "renewTime": "2026-11-27T03:00:02.000000Z",
            "leaseTransitions": 3,
        },
    }
    record = record_from_lease(lease)
    assert record == LeaseRecord(
        holder="pod-a_1234",
        lease_duration=15.0,
        acquire_time="2026-11-27T03:00:00.000000Z",
        renew_time="2026-11-27T03:00:02.000000Z",
        transitions=3,
        resource_version="42",
    )
    hostile = {"metadata": [], "spec": {"holderIdentity": 7, "leaseDurationSeconds": True}}
    assert record_from_lease(hostile) == LeaseRecord()


def test_micro_time_has_six_digits_and_utc() -> None:
    assert format_micro_time(WALL) == "2026-11-27T03:00:00.000000Z"
    other_zone = WALL.astimezone(datetime.timezone(datetime.timedelta(hours=2)))
    assert format_micro_time(other_zone) == "2026-11-27T03:00:00.000000Z"


def test_specs_for_create_takeover_renew_and_release() -> None:
    created = lease_spec(Action.CREATE, None, "me", WALL, TIMING)
    assert created == {
        "holderIdentity": "me",
        "leaseDurationSeconds": 15,
        "acquireTime": "2026-11-27T03:00:00.000000Z",
        "renewTime": "2026-11-27T03:00:00.000000Z",
        "leaseTransitions": 0,
    }
    theirs = replace(held_by("other"), acquire_time="old", transitions=4)
    taken = lease_spec(Action.ACQUIRE, theirs, "me", WALL, TIMING)
    assert taken["holderIdentity"] == "me"
    assert taken["leaseTransitions"] == 5
    assert taken["acquireTime"] == "2026-11-27T03:00:00.000000Z"
    mine = replace(held_by("me"), acquire_time="then", transitions=5)
    later = WALL + datetime.timedelta(seconds=2)
    renewed = lease_spec(Action.RENEW, mine, "me", later, TIMING)
    assert renewed["acquireTime"] == "then"
    assert renewed["leaseTransitions"] == 5
    assert renewed["renewTime"] == "2026-11-27T03:00:02.000000Z"
    released = release_spec(mine, later)
    assert released["holderIdentity"] == ""
    assert released["leaseTransitions"] == 5
    with pytest.raises(ValueError, match="nothing is written while waiting"):
        lease_spec(Action.WAIT, mine, "me", WALL, TIMING)


def test_lease_duration_is_whole_seconds_rounded_up() -> None:
    odd = replace(TIMING, lease_duration=12.5, renew_deadline=8.0)
    assert lease_spec(Action.CREATE, None, "me", WALL, odd)["leaseDurationSeconds"] == 13


def test_lease_object_carries_the_resource_version_only_for_replace() -> None:
    created = lease_object("ns", "wsgauge-operator", {"holderIdentity": "me"})
    assert created["apiVersion"] == "coordination.k8s.io/v1"
    assert created["kind"] == "Lease"
    assert "resourceVersion" not in created["metadata"]
    replaced = lease_object("ns", "wsgauge-operator", {}, "17")
    assert replaced["metadata"] == {
        "name": "wsgauge-operator",
        "namespace": "ns",
        "resourceVersion": "17",
    }


@pytest.mark.parametrize(
    ("changes", "ok"),
    [
        ({}, True),
        ({"renew_deadline": 15.0}, False),
        ({"retry_period": 9.0}, False),
        ({"lease_duration": 0.0}, False),
        ({"lease_name": ""}, False),
    ],
)
def test_timing_validation(changes: dict[str, Any], ok: bool) -> None:
    assert (validate_timing(replace(TIMING, **changes)) is None) is ok


# --- one candidacy -------------------------------------------------------------------------


def test_candidacy_leads_until_the_renew_deadline_after_its_last_write_was_sent() -> None:
    me = Candidacy("me", TIMING)
    assert me.look(None, 0.0).action is Action.CREATE
    me.won(held_by("me", "1"), sent_at=0.5)
    assert me.is_leader(0.5)
    assert me.is_leader(10.49)
    assert not me.is_leader(10.5)
    assert me.leader_until() == pytest.approx(10.5)
    assert me.look(me.record, 2.0).action is Action.RENEW
    me.won(held_by("me", "2"), sent_at=2.0)
    assert me.is_leader(11.9)


def test_seeing_another_holder_ends_leadership_at_once() -> None:
    me = Candidacy("me", TIMING)
    me.won(held_by("me", "1"), sent_at=0.0)
    decision = me.look(held_by("other", "2"), 1.0)
    assert decision.action is Action.WAIT
    assert not me.is_leader(1.0)


def test_released_candidacy_is_not_leader() -> None:
    me = Candidacy("me", TIMING)
    me.won(held_by("me", "1"), sent_at=0.0)
    me.released(held_by("me", "1"), 1.0)
    assert not me.is_leader(1.0)
    assert me.leader_until() is None


def test_a_write_naming_someone_else_is_refused() -> None:
    with pytest.raises(ValueError, match="must name us as holder"):
        Candidacy("me", TIMING).won(held_by("other"), 0.0)
    with pytest.raises(ValueError, match="identity must not be empty"):
        Candidacy("", TIMING)


# --- simulation ----------------------------------------------------------------------------


@dataclass
class Store:
    """A Lease store with the API server's rules: create fails if present, replace needs the
    current resourceVersion (else 409)."""

    record: LeaseRecord | None = None
    version: int = 0

    def write(self, spec: dict[str, Any], expected: str | None) -> LeaseRecord | None:
        if expected is None and self.record is not None:
            return None  # 409 AlreadyExists
        if expected is not None and (
            self.record is None or self.record.resource_version != expected
        ):
            return None  # 409 Conflict / 404
        self.version += 1
        lease = {"metadata": {"resourceVersion": str(self.version)}, "spec": spec}
        self.record = record_from_lease(lease)
        return self.record


@dataclass
class Replica:
    candidacy: Candidacy
    next_at: float = 0.0
    paused_until: float = 0.0
    history: list[tuple[float, float]] = field(default_factory=list)


def step(replica: Replica, store: Store, now: float, lose_response: bool) -> None:
    """What leadership.LeaderElector does in one look: read, decide, maybe write."""
    candidacy = replica.candidacy
    leading = candidacy.is_leader(now)
    record = store.record
    decision = candidacy.look(record, now)
    replica.next_at = now + decision.retry_in
    if decision.action is Action.WAIT or (leading and decision.action is not Action.RENEW):
        return
    spec = lease_spec(decision.action, record, candidacy.identity, WALL, candidacy.settings)
    written = store.write(spec, None if record is None else record.resource_version)
    if written is not None and not lose_response:
        candidacy.won(written, sent_at=now)


def leaders_at(replicas: list[Replica], now: float) -> list[str]:
    return [r.candidacy.identity for r in replicas if r.candidacy.is_leader(now)]


EVENTS = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=2),  # which replica
        st.floats(min_value=0.0, max_value=6.0),  # time passing before the event
        st.sampled_from(["look", "look", "look", "pause", "lose", "crash"]),
        st.floats(min_value=0.0, max_value=30.0),  # pause length
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(events=EVENTS, lease_duration=st.sampled_from([15.0, 4.0]))
def test_never_two_leaders_and_a_leader_again_after_faults(
    events: list[tuple[int, float, str, float]], lease_duration: float
) -> None:
    timing = replace(
        TIMING,
        lease_duration=lease_duration,
        renew_deadline=lease_duration * 2 / 3,
        retry_period=lease_duration / 7.5,
    )
    assert validate_timing(timing) is None
    store = Store()
    replicas = [Replica(Candidacy(f"op-{i}", timing)) for i in range(3)]
    now = 0.0
    for index, elapsed, kind, pause in events:
        # time passes in small steps; every due, unpaused replica takes its look
        target = now + elapsed
        while now < target:
            now = min(target, now + 0.25)
            for replica in replicas:
                if replica.paused_until <= now and replica.next_at <= now:
                    step(replica, store, now, lose_response=False)
            assert len(leaders_at(replicas, now)) <= 1, (now, leaders_at(replicas, now))
        replica = replicas[index]
        if kind == "pause":
            replica.paused_until = now + pause  # SIGSTOP: it neither looks nor writes
        elif kind == "lose" and replica.paused_until <= now:
            step(replica, store, now, lose_response=True)  # written, but the answer was lost
        elif kind == "crash":
            # a restarted process has a new identity and an empty view
            replica.candidacy = Candidacy(replica.candidacy.identity + "'", timing)
            replica.next_at = now
        elif replica.paused_until <= now:
            step(replica, store, now, lose_response=False)
        assert len(leaders_at(replicas, now)) <= 1, (now, leaders_at(replicas, now))
    # everybody runs freely: within a lease duration and a few retries there is a leader again
    for replica in replicas:
        replica.paused_until = 0.0
    end = now + timing.lease_duration + 3 * timing.retry_period + 1.0
    while now < end:
        now += 0.25
        for replica in replicas:
            if replica.next_at <= now:
                step(replica, store, now, lose_response=False)
        assert len(leaders_at(replicas, now)) <= 1
    assert len(leaders_at(replicas, now)) == 1
    holder = store.record.holder if store.record else ""
    assert leaders_at(replicas, now) == [holder]


@settings(max_examples=100, deadline=None)
@given(order=st.permutations([0, 1, 2]))
def test_replicas_starting_together_elect_exactly_one(order: list[int]) -> None:
    store = Store()
    replicas = [Candidacy(f"op-{i}", TIMING) for i in range(3)]
    records = [store.record for _ in replicas]  # all read "no lease" before anyone writes
    for index in order:
        candidacy = replicas[index]
        decision = candidacy.look(records[index], 0.0)
        assert decision.action is Action.CREATE
        written = store.write(
            lease_spec(decision.action, None, candidacy.identity, WALL, TIMING), None
        )
        if written is not None:
            candidacy.won(written, 0.0)
    assert [c.identity for c in replicas if c.is_leader(0.1)] == [f"op-{order[0]}"]
