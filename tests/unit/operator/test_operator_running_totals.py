"""RunningAggregate and RunningReadiness (kept one pod at a time) give exactly what
aggregate() and decide_readiness() compute from scratch, over random sequences of changes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from wsgauge_operator.model.aggregation import (
    AggregationLimits,
    PodObservation,
    PodState,
    aggregate,
)
from wsgauge_operator.model.readiness import ReadinessInput, RunningReadiness, decide_readiness
from wsgauge_operator.model.running_totals import RunningAggregate

NAMES = [f"pod-{i}" for i in range(12)]

observations = st.builds(
    PodObservation,
    name=st.sampled_from(NAMES),
    state=st.sampled_from(list(PodState)),
    node=st.sampled_from(["", "n1", "n2", "n3"]),
    connections=st.integers(min_value=0, max_value=30),
    topics=st.dictionaries(
        st.sampled_from(["a", "b", "c", "_other", "zero"]),
        st.integers(min_value=0, max_value=10),
        max_size=4,
    ),
    ready=st.booleans(),
    draining=st.booleans(),
    terminating=st.booleans(),
)
steps = st.lists(st.one_of(observations, st.sampled_from(NAMES)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(
    steps=steps,
    limit=st.one_of(st.none(), st.integers(min_value=0, max_value=20)),
    busiest=st.integers(min_value=0, max_value=4),
    top_topics=st.integers(min_value=0, max_value=3),
    max_nodes=st.integers(min_value=0, max_value=3),
)
def test_incremental_equals_from_scratch(
    steps: list[PodObservation | str],
    limit: int | None,
    busiest: int,
    top_topics: int,
    max_nodes: int,
) -> None:
    limits = AggregationLimits(
        top_topics=top_topics,
        busiest_pods=busiest,
        max_nodes=max_nodes,
        max_connections_per_pod=limit,
    )
    running = RunningAggregate(limit)
    current: dict[str, PodObservation] = {}
    for step in steps:
        if isinstance(step, str):
            running.remove(step)
            current.pop(step, None)
        else:
            running.set(step)
            current[step.name] = step
        expected = aggregate((current[name] for name in sorted(current)), limits)
        assert running.result(limits) == expected
        assert running.warming == any(
            o.state is PodState.STARTING and not o.terminating for o in current.values()
        )
        assert sorted(running.names()) == sorted(current)


def test_a_removed_topic_disappears_and_a_zero_topic_stays() -> None:
    running = RunningAggregate()
    running.set(PodObservation("a", PodState.REPORTING, connections=2, topics={"x": 2, "z": 0}))
    running.set(PodObservation("b", PodState.REPORTING, connections=1, topics={"x": 1}))
    assert running.result(AggregationLimits()).totals == {"x": 3, "z": 0}
    running.remove("a")
    assert running.result(AggregationLimits()).totals == {"x": 1}
    assert running.result(AggregationLimits()).connections == 1


readiness_inputs = st.builds(
    ReadinessInput,
    name=st.sampled_from(NAMES),
    has_gate=st.booleans(),
    state=st.sampled_from(list(PodState)),
    connections=st.integers(min_value=0, max_value=30),
    draining=st.booleans(),
    terminating=st.booleans(),
    containers_ready=st.booleans(),
    ready=st.booleans(),
    gate_status=st.one_of(st.none(), st.booleans()),
)


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(st.one_of(readiness_inputs, st.sampled_from(NAMES)), max_size=60),
    limit=st.one_of(st.none(), st.integers(min_value=0, max_value=20)),
    min_ready=st.integers(min_value=0, max_value=6),
)
def test_running_readiness_equals_decide_readiness(
    steps: list[ReadinessInput | str], limit: int | None, min_ready: int
) -> None:
    running = RunningReadiness(limit, min_ready)
    current: dict[str, ReadinessInput] = {}
    for step in steps:
        if isinstance(step, str):
            running.remove(step)
            current.pop(step, None)
        else:
            running.set(step)
            current[step.name] = step
        expected = decide_readiness(current.values(), max_per_pod=limit, min_ready_pods=min_ready)
        assert dict(running.decisions()) == expected
