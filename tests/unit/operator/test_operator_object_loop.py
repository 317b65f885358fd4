"""The per-object loop (:mod:`wsgauge_operator.control.object_loop`), in plain asyncio: a woken loop
debounces a burst into one round, repeats on the delay its round returns (or its period), runs
once more for a wake during a round, is paced, and survives failing rounds with a growing
back-off that starts over after a round that worked."""

from __future__ import annotations

import asyncio
import logging

import pytest
from wsgauge_operator.control.object_loop import LoopTiming, ObjectLoop
from wsgauge_operator.model.backoff import Backoff

SLACK = 0.01
"""How early an asyncio timer may fire (clock resolution)."""


class Rounds:
    """A round that records when it ran and returns (or raises) what it is told to."""

    def __init__(self, results: list[float | Exception | None] | None = None) -> None:
        self.results = list(results or [])
        self.times: list[float] = []
        self.ran = asyncio.Event()
        self.block: asyncio.Event | None = None

    async def __call__(self) -> float | None:
        self.times.append(asyncio.get_running_loop().time())
        self.ran.set()
        if self.block is not None:
            await self.block.wait()
        result = self.results.pop(0) if self.results else None
        if isinstance(result, Exception):
            raise result
        return result

    async def wait_for(self, count: int, timeout: float = 5.0) -> None:
        async def reached() -> None:
            while len(self.times) < count:
                self.ran.clear()
                await self.ran.wait()

        await asyncio.wait_for(reached(), timeout)


def now() -> float:
    return asyncio.get_running_loop().time()


async def test_first_round_at_once_and_a_burst_of_wakes_is_one_round() -> None:
    rounds = Rounds()
    loop = ObjectLoop("cs ns/a", rounds, LoopTiming(debounce=0.05, period=60.0))
    started = now()
    loop.start()
    loop.start()  # idempotent
    await rounds.wait_for(1)
    assert rounds.times[0] - started >= 0.05 - SLACK  # the debounce
    for _ in range(20):
        loop.wake()
        await asyncio.sleep(0.001)
    await rounds.wait_for(2)
    await asyncio.sleep(0.15)
    assert len(rounds.times) == 2
    assert not loop.woken
    await loop.stop()
    assert not loop.running


async def test_repeats_after_the_delay_the_round_returns_else_after_the_period() -> None:
    rounds = Rounds([0.05, 0.05, None])
    loop = ObjectLoop("cs ns/a", rounds, LoopTiming(debounce=0.0, period=0.3))
    loop.start()
    await rounds.wait_for(4)
    gaps = [b - a for a, b in zip(rounds.times, rounds.times[1:], strict=False)]
    assert gaps[0] >= 0.05 - SLACK
    assert gaps[1] >= 0.05 - SLACK
    assert gaps[2] >= 0.3 - SLACK  # the third round returned None: the period
    await loop.stop()


async def test_a_returned_delay_below_the_debounce_waits_the_debounce() -> None:
    rounds = Rounds([0.0, 0.0])
    loop = ObjectLoop("cs ns/a", rounds, LoopTiming(debounce=0.05, period=60.0))
    loop.start()
    await rounds.wait_for(3)
    assert rounds.times[2] - rounds.times[1] >= 2 * 0.05 - SLACK  # the wait, then the debounce
    await loop.stop()


async def test_a_wake_during_a_round_runs_one_more_round() -> None:
    rounds = Rounds()
    rounds.block = asyncio.Event()
    loop = ObjectLoop("cs ns/a", rounds, LoopTiming(debounce=0.01, period=60.0))
    loop.start()
    await rounds.wait_for(1)
    loop.wake()
    loop.wake()
    assert loop.woken
    rounds.block.set()
    await rounds.wait_for(2)
    await asyncio.sleep(0.1)
    assert len(rounds.times) == 2
    await loop.stop()


async def test_pace_delays_a_woken_round() -> None:
    rounds = Rounds()
    pauses = [0.0, 0.2]
    loop = ObjectLoop(
        "cs ns/a",
        rounds,
        LoopTiming(debounce=0.01, period=60.0),
        pace=lambda: pauses[min(len(rounds.times), 1)],
    )
    loop.start()
    await rounds.wait_for(1)
    woken = now()
    loop.wake()
    await rounds.wait_for(2)
    assert rounds.times[1] - woken >= 0.2 - SLACK
    await loop.stop()


async def test_failing_rounds_back_off_and_a_success_starts_over(
    caplog: pytest.LogCaptureFixture,
) -> None:
    boom: list[float | Exception | None] = [KeyError("bug"), ValueError("expected"), 0.02]
    rounds = Rounds([*boom, KeyError("bug again"), 60.0])
    loop = ObjectLoop(
        "cs ns/a",
        rounds,
        LoopTiming(debounce=0.0, period=60.0),
        expected_errors=(ValueError,),
        backoff=Backoff(0.05, 1.0, spread=0.0),
    )
    with caplog.at_level(logging.WARNING, logger="wsgauge_operator.control.object_loop"):
        loop.start()
        await rounds.wait_for(5)
        await asyncio.sleep(0.01)
    gaps = [b - a for a, b in zip(rounds.times, rounds.times[1:], strict=False)]
    assert gaps[0] >= 0.05 - SLACK  # first failure: the initial retry delay
    assert gaps[1] >= 0.1 - SLACK  # second failure in a row: doubled
    assert gaps[2] >= 0.02 - SLACK  # a success returns its own delay
    assert gaps[2] < 0.1  # not the back-off
    assert gaps[3] >= 0.05 - SLACK  # a failure after a success: back to the initial delay
    assert gaps[3] < 0.1
    assert loop.rounds == 5
    assert loop.failures == 0
    traced = [r for r in caplog.records if r.exc_info]
    plain = [r for r in caplog.records if not r.exc_info]
    assert len(traced) == 2  # the two bugs, with their traceback
    assert [r.getMessage() for r in plain] == ["cs ns/a: expected"]
    assert loop.running  # survived
    await loop.stop()


async def test_a_wake_cuts_a_back_off_short() -> None:
    rounds = Rounds([KeyError("bug")])
    loop = ObjectLoop(
        "cs ns/a",
        rounds,
        LoopTiming(debounce=0.0, period=60.0),
        backoff=Backoff(30.0, 30.0, spread=0.0),
        log=logging.getLogger("test.object_loop"),
    )
    loop.start()
    await rounds.wait_for(1)
    await asyncio.sleep(0.02)
    loop.wake()  # new input: do not wait out the back-off
    await rounds.wait_for(2, timeout=2.0)
    assert rounds.times[1] - rounds.times[0] < 1.0
    assert loop.failures == 0  # the woken round worked
    await loop.stop()


async def test_cancel_ends_the_task_and_start_begins_a_new_one() -> None:
    rounds = Rounds()
    loop = ObjectLoop("cs ns/a", rounds, LoopTiming(debounce=0.0, period=60.0))
    loop.start()
    await rounds.wait_for(1)
    loop.cancel()
    await asyncio.sleep(0)
    assert not loop.running
    loop.start()
    await rounds.wait_for(2)
    assert loop.running
    await loop.stop()
    await loop.stop()  # idempotent


def test_timing_defaults_document_a_periodic_loop() -> None:
    timing = LoopTiming()
    assert timing.retry_initial <= timing.retry_max
    assert timing.debounce == 0.0
    assert timing.period == 10.0
