"""Deletion-cost planning: bands, urgent exact order, token-bucket rate limit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from wsgauge_operator.autoscaling.deletion_cost import (
    CostPatch,
    DeletionCostPlanner,
    DeletionCostSettings,
    PodCostInput,
    TokenBucket,
    cost_inputs,
    order_is_exact,
    outside_band,
    plan_deletion_costs,
)
from wsgauge_operator.model.fleet import DELETION_COST_ANNOTATION, parse_deletion_cost
from wsgauge_operator.model.metrics_source import PodMetrics


class FakeClock:
    """A monotonic clock moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pods(*items: tuple[str, int | None, int | None]) -> list[PodCostInput]:
    return [PodCostInput(name, connections, cost) for name, connections, cost in items]


def apply(state: list[PodCostInput], patches: list[CostPatch]) -> list[PodCostInput]:
    written = {patch.pod: patch.cost for patch in patches}
    return [
        PodCostInput(pod.name, pod.connections, written.get(pod.name, pod.current_cost))
        for pod in state
    ]


def test_parse_annotation() -> None:
    assert parse_deletion_cost(None) is None
    assert parse_deletion_cost({}) is None
    assert parse_deletion_cost({DELETION_COST_ANNOTATION: "12"}) == 12
    assert parse_deletion_cost({DELETION_COST_ANNOTATION: " -3 "}) == -3
    assert parse_deletion_cost({DELETION_COST_ANNOTATION: "abc"}) is None
    assert parse_deletion_cost({DELETION_COST_ANNOTATION: str(2**31)}) is None


def test_merge_patch_body() -> None:
    assert CostPatch("p", 7).merge_patch() == {
        "metadata": {"annotations": {DELETION_COST_ANNOTATION: "7"}}
    }


def test_band_hysteresis() -> None:
    config = DeletionCostSettings(band_ratio=2.0, min_change=2)
    assert not outside_band(1000, 1000, config)
    assert not outside_band(1500, 1000, config)
    assert outside_band(2100, 1000, config)
    assert outside_band(400, 1000, config)
    assert not outside_band(2, None, config)  # small absolute change
    assert outside_band(3, None, config)
    # oscillating around any value causes no rewrite once written
    assert not any(outside_band(count, 1024, config) for count in range(1000, 1050))


def test_normal_plan_writes_only_pods_out_of_band_biggest_error_first() -> None:
    state = pods(("a", 1000, 990), ("b", 5000, 1000), ("c", 10, 1000), ("d", None, 5))
    patches = plan_deletion_costs(state, urgent=False)
    assert patches == [CostPatch("c", 10), CostPatch("b", 5000)]


def test_unreachable_pods_are_never_written() -> None:
    state = pods(("a", None, None), ("b", None, 100))
    assert plan_deletion_costs(state, urgent=False) == []
    assert plan_deletion_costs(state, urgent=True) == []


def test_urgent_fixes_order_inside_the_band_emptiest_first() -> None:
    # within the band (no normal write), but b (fewer sockets) costs more than a
    state = pods(("a", 100, 100), ("b", 80, 120), ("c", 60, 60))
    assert plan_deletion_costs(state, urgent=False) == []
    assert not order_is_exact(state)
    patches = plan_deletion_costs(state, urgent=True)
    assert patches == [CostPatch("b", 80)]
    assert order_is_exact(apply(state, patches))


def test_urgent_writes_nothing_when_order_already_exact() -> None:
    state = pods(("a", 100, 7), ("b", 80, 5), ("c", 60, None), ("d", 60, 0))
    assert order_is_exact(state)
    assert plan_deletion_costs(state, urgent=True) == []


def test_order_is_exact_allows_ties_within_equal_counts() -> None:
    assert order_is_exact(pods(("a", 5, 3), ("b", 5, 1), ("c", 9, 4)))
    assert not order_is_exact(pods(("a", 5, 3), ("b", 5, 1), ("c", 9, 3)))


def test_token_bucket() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock)
    assert bucket.take_up_to(10) == 3
    assert bucket.take_up_to(1) == 0
    assert bucket.seconds_until_available() == 0.5
    clock.now += 0.5
    assert bucket.take_up_to(5) == 1
    clock.now += 100
    assert bucket.available() == 3
    clock.now -= 50  # a clock going backwards never creates tokens
    assert bucket.take_up_to(10) == 3
    assert bucket.available() == 0


def test_planner_spreads_writes_over_time() -> None:
    clock = FakeClock()
    planner = DeletionCostPlanner(DeletionCostSettings(writes_per_second=1.0, burst=2), clock=clock)
    state = [PodCostInput(f"p{i}", 100 * i + 50, None) for i in range(5)]
    first = planner.plan(state, urgent=True)
    assert len(first) == 2
    assert planner.plan(apply(state, first), urgent=True) == []
    assert planner.retry_after() == 1.0
    clock.now += 1.0
    state = apply(state, first)
    second = planner.plan(state, urgent=True)
    assert len(second) == 1
    assert {p.pod for p in first}.isdisjoint({p.pod for p in second})


counts = st.one_of(st.none(), st.integers(0, 20_000))
costs = st.one_of(st.none(), st.integers(-100, 30_000))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(counts, costs), min_size=1, max_size=40),
    st.integers(1, 10),
    st.integers(1, 10),
)
def test_urgent_passes_converge_to_exact_order(
    raw: list[tuple[int | None, int | None]], rate: int, burst: int
) -> None:
    """After enough rate-limited urgent passes the costs order the pods like their counts."""
    clock = FakeClock()
    planner = DeletionCostPlanner(
        DeletionCostSettings(writes_per_second=float(rate), burst=burst), clock=clock
    )
    state = [PodCostInput(f"p{i}", count, cost) for i, (count, cost) in enumerate(raw)]
    for _ in range(len(state) + 2):
        state = apply(state, planner.plan(state, urgent=True))
        clock.now += 1.0
    assert order_is_exact(state)
    reachable = [pod for pod in state if pod.connections is not None]
    for low in reachable:
        for high in reachable:
            assert low.connections is not None
            assert high.connections is not None
            if low.connections < high.connections:
                assert (low.current_cost or 0) < (high.current_cost or 0)
    # and once exact, nothing more is written
    assert planner.plan(state, urgent=True) == []


@settings(max_examples=100, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.floats(0.0, 2.0),
            st.booleans(),
            st.lists(st.integers(0, 5000), min_size=1, max_size=30),
        ),
        min_size=1,
        max_size=30,
    ),
    rate=st.integers(1, 20),
    burst=st.integers(1, 20),
)
def test_rate_limit_is_never_exceeded(
    steps: list[tuple[float, bool, list[int]]], rate: int, burst: int
) -> None:
    """Writes in any window of length T never exceed burst + rate * T."""
    clock = FakeClock()
    planner = DeletionCostPlanner(
        DeletionCostSettings(writes_per_second=float(rate), burst=burst), clock=clock
    )
    start = clock.now
    writes: list[tuple[float, int]] = []
    state: dict[str, int | None] = {}
    for advance, urgent, values in steps:
        clock.now += advance
        current = [
            PodCostInput(f"p{i}", value, state.get(f"p{i}")) for i, value in enumerate(values)
        ]
        patches = planner.plan(current, urgent=urgent)
        for patch in patches:
            state[patch.pod] = patch.cost
        writes.append((clock.now, len(patches)))
    for index, (begin, _) in enumerate(writes):
        total = 0
        for moment, count in writes[index:]:
            total += count
            assert total <= burst + rate * (moment - begin) + 1e-9
    assert sum(count for _, count in writes) <= burst + rate * (clock.now - start) + 1e-9


def test_cost_inputs_from_metrics() -> None:
    now = datetime(2026, 11, 26, 10, 0, 0, tzinfo=UTC)
    fresh = now - timedelta(seconds=1)
    metrics = [
        PodMetrics("prod", "a", {}, 5, {}, fresh, True),
        PodMetrics("prod", "b", {}, 9, {}, fresh, False),
        PodMetrics("prod", "c", {}, 7, {}, now - timedelta(minutes=5), True),
        PodMetrics("prod", "other", {}, 1, {}, fresh, True),
    ]
    annotations = {
        "a": {DELETION_COST_ANNOTATION: "4"},
        "b": None,
        "c": {},
        "d": {DELETION_COST_ANNOTATION: "x"},
    }
    assert cost_inputs(metrics, annotations, now=now, max_age_seconds=30) == [
        PodCostInput("a", 5, 4),
        PodCostInput("b", None, None),
        PodCostInput("c", None, None),
        PodCostInput("d", None, None),
    ]


def in_band_cost(count: int, factor: float, offset: int, use_offset: bool) -> int:
    return count + offset if use_offset else round((count + 1) * factor - 1)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 100_000),
    st.integers(1, 64),
    st.floats(1.5, 8.0),
    st.integers(0, 20),
    st.tuples(st.floats(0.0, 1.0), st.integers(-20, 20), st.booleans()),
    st.tuples(st.floats(0.0, 1.0), st.integers(-20, 20), st.booleans()),
)
def test_costs_in_band_order_clearly_different_counts(
    low: int,
    multiple: int,
    ratio: float,
    min_change: int,
    low_shape: tuple[float, int, bool],
    high_shape: tuple[float, int, bool],
) -> None:
    """The guarantee of the normal (banded) mode, as documented in the module."""
    config = DeletionCostSettings(band_ratio=ratio, min_change=min_change)
    high = int(ratio**2 * (low + 1 + min_change)) + multiple
    costs = []
    for count, (position, offset, use_offset) in ((low, low_shape), (high, high_shape)):
        factor = ratio ** (2 * position - 1)  # anywhere in [1/ratio, ratio]
        cost = in_band_cost(count, factor, max(-min_change, min(min_change, offset)), use_offset)
        assume(not outside_band(count, cost, config))
        costs.append(cost)
    assert high + 1 > ratio**2 * (low + 1 + min_change)
    assert costs[0] < costs[1]
