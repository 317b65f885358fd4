"""Upgrade admission (admission.py) and the counter's named topics: pure, on a fake clock."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsgauge_contract.flags import parse_topic_limit
from wsgauge_sidecar.admission import Refusal, UpgradeAdmission, UpgradeRate
from wsgauge_sidecar.counter import OTHER_TOPIC, ConnectionCounter
from wsgauge_sidecar.exceptions import ConfigError


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_rate_admits_a_burst_of_one_second_then_the_rate() -> None:
    clock = Clock()
    rate = UpgradeRate(10, clock, random.Random(1))
    assert [rate.take() for _ in range(10)] == [None] * 10
    assert rate.take() is not None
    clock.now += 0.1  # one token back
    assert rate.take() is None
    assert rate.take() is not None
    clock.now += 5  # the bucket refills to the burst, not beyond
    assert [rate.take() for _ in range(10)] == [None] * 10
    assert rate.take() is not None


def test_a_slow_rate_still_admits_one() -> None:
    clock = Clock()
    rate = UpgradeRate(0.5, clock, random.Random(1))
    assert rate.burst == 1
    assert rate.take() is None
    assert rate.take() is not None
    clock.now += 2
    assert rate.take() is None


def test_retry_after_spreads_a_storm_over_the_time_the_rate_needs() -> None:
    """3,000 refused in one second at 100/s: told to come back within 1..30 s, spread."""
    clock = Clock()
    rate = UpgradeRate(100, clock, random.Random(7))
    for _ in range(100):
        assert rate.take() is None
    answers = [rate.take() for _ in range(3000)]
    retry = [a for a in answers if a is not None]
    assert len(retry) == 3000
    assert min(retry) >= 1
    assert max(retry) <= 31
    # the later refusals in the storm see the bigger window: the answers spread out
    late = retry[-1000:]
    assert len(set(late)) > 20
    per_second = [late.count(second) for second in range(1, 32)]
    assert max(per_second) < 100  # no second gets more than the rate among these


@given(
    rate=st.floats(min_value=0.1, max_value=1000),
    steps=st.lists(st.floats(min_value=0, max_value=3), max_size=60),
)
@settings(max_examples=200, deadline=None)
def test_the_rate_never_admits_more_than_burst_plus_rate_times_time(
    rate: float, steps: list[float]
) -> None:
    clock = Clock()
    limiter = UpgradeRate(rate, clock, random.Random(0))
    start = clock.now
    admitted = 0
    for step in steps:
        clock.now += step
        for _ in range(5):
            answer = limiter.take()
            if answer is None:
                admitted += 1
            else:
                assert answer >= 1
    assert admitted <= limiter.burst + rate * (clock.now - start) + 1e-6


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan")])
def test_a_rate_must_be_positive_and_finite(bad: float) -> None:
    with pytest.raises(ConfigError):
        UpgradeRate(bad, Clock(), random.Random())


def test_checks_run_in_order_and_refusals_do_not_use_the_rate() -> None:
    clock = Clock()
    admission = UpgradeAdmission(
        max_connections=5, topic_limits={"hot": 2}, upgrades_per_second=1, clock=clock
    )

    def decide(
        accepting: bool = True, connections: int = 0, topic: str | None = None, in_topic: int = 0
    ) -> Refusal | None:
        return admission.decide(
            accepting=accepting, connections=connections, topic=topic, topic_connections=in_topic
        )

    assert decide(accepting=False) == Refusal("draining")
    assert decide(connections=5) == Refusal("capacity")
    assert decide(topic="hot", in_topic=2) == Refusal("topic_capacity")
    assert decide(topic="cold", in_topic=99) is None  # no cap on it: charged to the rate
    refusal = decide(topic="hot", in_topic=1)
    assert refusal is not None
    assert refusal.reason == "rate_limited"
    assert refusal.retry_after is not None
    assert admission.refused() == {
        "draining": 1, "capacity": 1, "topic_capacity": 1, "rate_limited": 1,
    }  # fmt: skip


def test_without_limits_everything_goes_ahead() -> None:
    admission = UpgradeAdmission(clock=Clock())
    for connections in (0, 10**6):
        assert (
            admission.decide(
                accepting=True, connections=connections, topic="t", topic_connections=10**6
            )
            is None
        )
    assert admission.refused() == {}


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("stream=10", ("stream", 10)), ("a=b=0", ("a=b", 0)), ("/ws/x=3", ("/ws/x", 3))],
)
def test_topic_limits_parse(text: str, parsed: tuple[str, int]) -> None:
    assert parse_topic_limit(text) == parsed


@pytest.mark.parametrize("text", ["stream", "=5", "stream=", "stream=x", "stream=-1", "s=1.5"])
def test_bad_topic_limits_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"TOPIC=N|>= 0"):
        parse_topic_limit(text)


def test_named_topics_are_never_folded_and_counted_exactly() -> None:
    counter = ConnectionCounter(max_topics=1, named=frozenset({"hot", "_other"}))
    sockets = [counter.open_socket() for _ in range(4)]
    counter.join(sockets[0], "a")  # takes the one free slot
    counter.join(sockets[1], "b")  # folded
    counter.join(sockets[2], "hot")  # named: own name although the slots are full
    counter.join(sockets[3], "_other")  # a topic literally named _other, capped
    assert counter.topics() == {"a": 1, OTHER_TOPIC: 1, "hot": 1, "__other": 1}
    assert counter.topic_count("hot") == 1
    assert counter.topic_count("_other") == 1
    assert counter.topic_count("b") == 0  # folded: not known by name
    counter.close_socket(sockets[2], "client_close")
    assert counter.topic_count("hot") == 0
    assert "hot" not in counter.topics()
