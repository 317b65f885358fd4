"""Unit tests of the per-round pod observations and their cache (reused only while nothing
they were computed from changed)."""

from __future__ import annotations

from wsgauge_contract import StatsDocument
from wsgauge_operator.model.aggregation import PodState
from wsgauge_operator.model.fleet import EndpointKey, FleetState, PodRecord
from wsgauge_operator.model.observation import Observed, observe, observe_all
from wsgauge_operator.model.spec import parse_spec

SPEC = parse_spec({"selector": {"matchLabels": {"app": "chat"}}, "sidecarPort": 9090})


def record(ip: str = "127.0.70.1", **changes: object) -> PodRecord:
    base = PodRecord(
        namespace="ns", name="a", uid="u-a", labels={"app": "chat"}, ip=ip, phase="Running"
    )
    return PodRecord(**{**base.__dict__, **changes})


def test_cached_answers_follow_every_change() -> None:
    fleet = FleetState()
    pod = record()
    fleet.upsert_pod(pod)
    key = EndpointKey("ns", "a", "u-a", "127.0.70.1", 9090)
    cache: dict[str, Observed] = {}
    held_back: dict[EndpointKey, None] = {}

    assert observe(pod, SPEC, cache, fleet, held_back)[0].state is PodState.STARTING
    fleet.add_endpoint(key)
    fleet.report(key, StatsDocument(pod="a", connections=3, topics={"t": 3}, seq=1), now=100.0)
    observation, readiness, observed_at, _ = observe(pod, SPEC, cache, fleet, held_back)
    assert (observation.state, observation.connections, observed_at) == (PodState.REPORTING, 3, 100)
    assert readiness.connections == 3

    fleet.heartbeat(key, now=105.0)  # same document: cached answer, fresh report time
    cached = cache["a"]
    observation, _, observed_at, _ = observe(pod, SPEC, cache, fleet, held_back)
    assert cache["a"] is cached
    assert observation.connections == 3
    assert observed_at == 105.0

    fleet.report(key, StatsDocument(pod="a", connections=7, topics={"t": 7}, seq=2), now=106.0)
    assert observe(pod, SPEC, cache, fleet, held_back)[0].connections == 7
    fleet.mark_unreachable(key, "gone")
    observation, _, observed_at, _ = observe(pod, SPEC, cache, fleet, held_back)
    assert (observation.state, observation.connections, observed_at) == (
        PodState.UNREACHABLE,
        0,
        0.0,
    )
    held_back[key] = None
    assert observe(pod, SPEC, cache, fleet, held_back)[0].state is PodState.NOT_FOLLOWED

    moved = record(ip="127.0.70.2", ready=True)  # a new record: computed anew (new endpoint)
    fleet.upsert_pod(moved)
    observation, readiness, _, _ = observe(moved, SPEC, cache, fleet, held_back)
    assert observation.state is PodState.STARTING
    assert observation.ready
    assert readiness.ready

    other_port = parse_spec({"selector": {"matchLabels": {"app": "chat"}}, "sidecarPort": "nope"})
    assert observe(moved, other_port, cache, fleet, held_back)[0].state is PodState.PORT_MISSING


def test_observe_all_keeps_only_current_pods() -> None:
    fleet = FleetState()
    pods = [record(), PodRecord(namespace="ns", name="b", uid="u-b", labels={"app": "chat"})]
    answers, cache = observe_all(pods, SPEC, {}, fleet, {})
    assert [a[0].state for a in answers] == [PodState.STARTING, PodState.PENDING]
    answers, cache = observe_all(pods[:1], SPEC, cache, fleet, {})
    assert list(cache) == ["a"]
    assert len(answers) == 1
