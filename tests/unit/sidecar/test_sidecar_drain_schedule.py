"""The drain schedule (sans-I/O): every socket exactly once, in order, inside the window."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wsgauge_contract.flags import DRAIN_MODES
from wsgauge_sidecar.drain_schedule import DrainSchedule, plan_drain

counts = st.integers(min_value=0, max_value=3000)
spreads = st.floats(min_value=0, max_value=3600, allow_nan=False, allow_infinity=False)
batch_counts = st.integers(min_value=1, max_value=500)
seeds = st.integers(min_value=0, max_value=2**32)


def _check_guarantees(schedule: DrainSchedule, sockets: int, spread: float) -> None:
    indexes = [index for batch in schedule for index in batch.indexes]
    assert indexes == list(range(sockets))  # each socket exactly once, oldest first
    assert schedule.sockets == sockets
    times = [batch.at for batch in schedule]
    assert times == sorted(times)
    assert all(0 <= at <= spread for at in times)
    assert all(batch.size >= 1 for batch in schedule)


@given(counts, spreads, st.sampled_from(DRAIN_MODES), batch_counts, seeds)
def test_every_socket_once_in_order_inside_the_window(
    sockets: int, spread: float, mode: str, batches: int, seed: int
) -> None:
    schedule = plan_drain(sockets, spread, mode, batches, random.Random(seed))
    _check_guarantees(schedule, sockets, spread)


@given(st.integers(min_value=1, max_value=3000), spreads)
def test_spread_mode_is_the_even_spread(sockets: int, spread: float) -> None:
    schedule = plan_drain(sockets, spread, "spread")
    assert len(schedule) == sockets
    assert [batch.at for batch in schedule] == [i * spread / sockets for i in range(sockets)]


@given(st.integers(min_value=1, max_value=3000), spreads, batch_counts, seeds)
def test_batches_are_even_and_each_lands_in_its_own_slot(
    sockets: int, spread: float, batches: int, seed: int
) -> None:
    schedule = plan_drain(sockets, spread, "batches", batches, random.Random(seed))
    count = min(batches, sockets)
    assert len(schedule) == count
    sizes = [batch.size for batch in schedule]
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)  # the older batches take the extra socket
    slot = spread / count
    for k, batch in enumerate(schedule):
        assert k * slot - 1e-9 * (1 + spread) <= batch.at <= (k + 1) * slot + 1e-9 * (1 + spread)


def test_batch_times_are_jittered_and_replayable() -> None:
    first = plan_drain(1000, 50.0, "batches", 10, random.Random(7))
    again = plan_drain(1000, 50.0, "batches", 10, random.Random(7))
    other = plan_drain(1000, 50.0, "batches", 10, random.Random(8))
    assert first == again
    assert [b.at for b in first] != [b.at for b in other]
    assert [b.at for b in first] != [k * 5.0 for k in range(10)]  # not the slot starts
    assert [b.size for b in first] == [100] * 10


def test_small_counts() -> None:
    assert len(plan_drain(0, 10.0, "batches", 5)) == 0
    three = plan_drain(3, 9.0, "batches", 5, random.Random(1))
    assert [(b.first, b.size) for b in three] == [(0, 1), (1, 1), (2, 1)]
    assert [b.at for b in plan_drain(4, 8.0)] == [0.0, 2.0, 4.0, 6.0]
    seven = plan_drain(7, 0.0, "batches", 3, random.Random(1))
    assert [(b.at, b.first, b.size) for b in seven] == [(0.0, 0, 3), (0.0, 3, 2), (0.0, 5, 2)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-1, 1.0, "spread", 1), "negative"),
        ((1, -1.0, "spread", 1), "spread"),
        ((1, float("inf"), "spread", 1), "spread"),
        ((1, float("nan"), "spread", 1), "spread"),
        ((1, 1.0, "burst", 1), "mode"),
        ((1, 1.0, "batches", 0), "batch"),
    ],
)
def test_bad_input_is_a_value_error(args: tuple[int, float, str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan_drain(*args)
