"""Jittered retry delays (:mod:`wsgauge_operator.model.backoff`): bounds, growth, reset, and that
many clients failing together spread their retries; followers of unreachable sidecars use it."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import aiohttp
import pytest
from wsgauge_operator.control.follower import NEVER_SEEN_BACKOFF_MAX, SidecarFollower
from wsgauge_operator.model.backoff import DEFAULT_SPREAD, Backoff, jittered
from wsgauge_operator.model.fleet import EndpointKey, FleetState
from wsgauge_operator.model.settings import FollowerSettings


def test_jittered_stays_within_the_spread_below_the_nominal_delay() -> None:
    rng = random.Random(1)
    draws = [jittered(4.0, 0.5, rng) for _ in range(2000)]
    assert all(2.0 <= d <= 4.0 for d in draws)
    assert max(draws) - min(draws) > 1.9  # uses the whole range
    assert jittered(4.0, 0.0, rng) == 4.0
    assert jittered(0.0, 0.5, rng) == 0.0
    assert jittered(-1.0, 0.5, rng) == 0.0
    with pytest.raises(ValueError, match="spread"):
        jittered(1.0, 1.5)


def test_backoff_doubles_to_its_maximum_and_starts_over_after_reset() -> None:
    backoff = Backoff(0.25, 10.0, spread=0.0)
    assert [backoff.next() for _ in range(8)] == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    backoff.reset()
    assert backoff.nominal == 0.25
    assert backoff.next(cap=0.1) == 0.1  # a cap bounds the delay, the sequence still grows
    assert backoff.nominal == 0.5


def test_backoff_with_a_maximum_below_its_start_uses_the_maximum_from_the_second_attempt() -> None:
    backoff = Backoff(0.25, 0.1, spread=0.0)
    assert [backoff.next() for _ in range(3)] == [0.25, 0.1, 0.1]


def test_jittered_backoff_delays_stay_below_the_nominal_ones() -> None:
    rng = random.Random(2)
    backoff = Backoff(0.25, 10.0, rng=rng)
    for nominal in (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0):
        delay = backoff.next()
        assert (1 - DEFAULT_SPREAD) * nominal <= delay <= nominal


def test_backoff_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="back-off"):
        Backoff(-1.0, 1.0)
    with pytest.raises(ValueError, match="back-off"):
        Backoff(1.0, 2.0, factor=0.5)
    with pytest.raises(ValueError, match="spread"):
        Backoff(1.0, 2.0, spread=-0.1)


def test_ten_thousand_clients_failing_together_do_not_retry_in_lockstep() -> None:
    rng = random.Random(3)
    clients = [Backoff(0.25, 10.0, rng=rng) for _ in range(10_000)]
    retry_at = [0.0] * len(clients)
    for _ in range(6):  # six failed attempts in a row, all started at the same instant
        retry_at = [at + client.next() for at, client in zip(retry_at, clients, strict=True)]
    # retries land spread over seconds: no 10 ms slot holds more than 1 % of the clients
    slots = Counter(int(at * 100) for at in retry_at)
    assert max(slots.values()) <= 100, max(slots.values())
    assert max(retry_at) - min(retry_at) > 3.0


async def test_followers_of_unreachable_sidecars_retry_at_different_times() -> None:
    settings = FollowerSettings(backoff_initial=0.05, backoff_max=0.4, startup_grace=0.0)
    fleet = FleetState()
    delays: dict[str, list[float]] = {}
    enough = asyncio.Event()

    class Recording(SidecarFollower):
        async def _sleep(self, seconds: float) -> None:
            delays.setdefault(self.key.pod, []).append(seconds)
            if len(delays) == 2 and min(len(d) for d in delays.values()) >= 6:
                enough.set()
            await asyncio.sleep(0)

    async with aiohttp.ClientSession() as session:
        followers = [
            Recording(EndpointKey("ns", f"p{i}", f"u{i}", "127.0.0.1", 1), fleet, session, settings)
            for i in range(2)
        ]
        tasks = [asyncio.create_task(f.run()) for f in followers]
        try:
            await asyncio.wait_for(enough.wait(), 20)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    first, second = (delays[f"p{i}"][:6] for i in range(2))
    assert first != second  # same failures at the same time, different waits
    for sequence in (first, second):  # never seen: capped at one second, jitter below it
        nominal = 0.05
        for delay in sequence:
            assert (1 - DEFAULT_SPREAD) * min(nominal, NEVER_SEEN_BACKOFF_MAX) <= delay
            assert delay <= min(nominal, NEVER_SEEN_BACKOFF_MAX)
            nominal = min(nominal * 2, 0.4)
