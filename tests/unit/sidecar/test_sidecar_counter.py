"""Unit and property tests of the connection counters (wsgauge_sidecar.counter)."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsgauge_sidecar.counter import OTHER_TOPIC, ConnectionCounter, ReportedCounts, escape_topic
from wsgauge_sidecar.exceptions import ConfigError, CountError
from wsgauge_sidecar.topics import MAX_TOPIC_LENGTH


def test_open_join_leave_close() -> None:
    counter = ConnectionCounter()
    changes: list[int] = []
    counter.add_listener(lambda: changes.append(counter.seq))
    first = counter.open_socket()
    second = counter.open_socket()
    assert first != second
    counter.join(first, "a")
    counter.join(first, "a")  # idempotent
    counter.join(second, "a")
    counter.join(second, "b")
    assert counter.connections == 2
    assert counter.topics() == {"a": 2, "b": 1}
    assert counter.socket_topics(second) == frozenset({"a", "b"})
    counter.leave(second, "a")
    counter.leave(second, "zzz")  # not in it: no-op
    assert counter.topics() == {"a": 1, "b": 1}
    assert counter.close_socket(second, "client_close") is True
    assert counter.close_socket(second, "client_close") is False
    assert counter.topics() == {"a": 1}
    assert counter.close_socket(first, "upstream_close") is True
    assert (counter.connections, counter.opened, counter.closed) == (0, 2, 2)
    assert counter.topics() == {}
    assert counter.closed_by_reason() == {"client_close": 1, "upstream_close": 1}
    # one seq step and one listener call per real change, none for the no-ops
    assert changes == list(range(1, 9))
    assert counter.seq == 8


def test_join_unknown_socket_raises_and_leave_is_a_noop() -> None:
    counter = ConnectionCounter()
    with pytest.raises(CountError):
        counter.join(42, "a")
    counter.leave(42, "a")
    assert counter.close_socket(42, "x") is False
    assert counter.seq == 0


def test_empty_topic_is_ignored_and_long_topic_truncated() -> None:
    counter = ConnectionCounter()
    socket_id = counter.open_socket()
    counter.join(socket_id, "")
    assert counter.topics() == {}
    counter.join(socket_id, "x" * 500)
    assert counter.topics() == {"x" * MAX_TOPIC_LENGTH: 1}
    counter.leave(socket_id, "x" * 500)
    assert counter.topics() == {}


def test_other_fold_and_slot_reuse() -> None:
    counter = ConnectionCounter(max_topics=2)
    sockets = [counter.open_socket() for _ in range(4)]
    counter.join(sockets[0], "a")
    counter.join(sockets[1], "b")
    counter.join(sockets[2], "c")
    counter.join(sockets[3], "a")
    assert counter.topics() == {"a": 2, "b": 1, OTHER_TOPIC: 1}
    counter.close_socket(sockets[1], "x")  # "b" drops to 0: its slot is free again
    assert counter.topics() == {"a": 2, OTHER_TOPIC: 1}
    counter.join(sockets[3], "d")
    assert counter.topics() == {"a": 2, "d": 1, OTHER_TOPIC: 1}
    # the socket folded into _other stays there until it leaves
    counter.leave(sockets[2], "c")
    assert counter.topics() == {"a": 2, "d": 1}


def test_an_app_topic_named_like_the_fold_stays_apart_from_it() -> None:
    """``_other`` in the counts is only ever the fold: an app topic of that name is escaped."""
    counter = ConnectionCounter(max_topics=1)
    sockets = [counter.open_socket() for _ in range(3)]
    counter.join(sockets[0], OTHER_TOPIC)
    counter.join(sockets[1], "a")  # beyond max_topics: the fold
    counter.join(sockets[2], "__other")
    assert counter.topics() == {"__other": 1, OTHER_TOPIC: 2}
    counter.leave(sockets[0], OTHER_TOPIC)
    assert counter.topics() == {OTHER_TOPIC: 2}
    counter.join(sockets[0], "__other")  # "__other" (from "_other" escaped) is free again
    assert counter.topics() == {"___other": 1, OTHER_TOPIC: 2}


@given(st.text(alphabet="_othera", max_size=12), st.text(alphabet="_othera", max_size=12))
def test_escaped_topic_names_never_collide_and_are_never_the_fold(first: str, second: str) -> None:
    assert escape_topic(first) != OTHER_TOPIC
    assert (escape_topic(first) == escape_topic(second)) == (first == second)


def test_zero_max_topics_folds_everything() -> None:
    counter = ConnectionCounter(max_topics=0)
    socket_id = counter.open_socket()
    counter.join(socket_id, "a")
    counter.join(socket_id, "b")
    assert counter.topics() == {OTHER_TOPIC: 2}


@pytest.mark.parametrize("bad", [-1, True, 1.5])
def test_invalid_max_topics(bad: object) -> None:
    with pytest.raises(ConfigError):
        ConnectionCounter(max_topics=bad)  # type: ignore[arg-type]


_operation = st.one_of(
    st.tuples(st.just("open")),
    st.tuples(st.just("join"), st.integers(0, 15), st.sampled_from("abcdefgh")),
    st.tuples(st.just("leave"), st.integers(0, 15), st.sampled_from("abcdefgh")),
    st.tuples(st.just("close"), st.integers(0, 15)),
)


@settings(max_examples=150, deadline=None)
@given(operations=st.lists(_operation, max_size=80), max_topics=st.integers(0, 10))
def test_any_interleaving_keeps_counts_consistent(
    operations: list[tuple[object, ...]], max_topics: int
) -> None:
    counter = ConnectionCounter(max_topics=max_topics)
    ids: list[int] = []
    model: dict[int, set[str]] = {}
    closed_model = 0
    for operation in operations:
        kind = operation[0]
        if kind == "open":
            socket_id = counter.open_socket()
            ids.append(socket_id)
            model[socket_id] = set()
            continue
        if not ids:
            continue
        socket_id = ids[int(operation[1]) % len(ids)]  # type: ignore[call-overload]
        if kind == "join":
            if socket_id in model:
                counter.join(socket_id, str(operation[2]))
                model[socket_id].add(str(operation[2]))
            else:
                with pytest.raises(CountError):
                    counter.join(socket_id, str(operation[2]))
        elif kind == "leave":
            counter.leave(socket_id, str(operation[2]))
            if socket_id in model:
                model[socket_id].discard(str(operation[2]))
        else:  # close, possibly a double close
            was_open = socket_id in model
            assert counter.close_socket(socket_id, "test") is was_open
            if was_open:
                del model[socket_id]
                closed_model += 1
        expected = Counter(topic for topics in model.values() for topic in topics)
        topics = counter.topics()
        assert counter.connections == counter.opened - counter.closed == len(model)
        assert counter.closed == closed_model
        assert sum(topics.values()) == sum(expected.values())
        assert all(count > 0 for count in topics.values())
        assert len([name for name in topics if name != OTHER_TOPIC]) <= max_topics
        for name, count in topics.items():
            if name != OTHER_TOPIC:
                assert count <= expected[name]
        if max_topics >= 8:
            assert topics == dict(expected)
    for socket_id in ids:
        counter.close_socket(socket_id, "end")
    assert counter.connections == 0
    assert counter.topics() == {}
    assert counter.opened == counter.closed == len(ids)


def test_flood_of_random_topic_names_keeps_memory_flat() -> None:
    rng = random.Random(7)
    counter = ConnectionCounter(max_topics=20)
    live: list[int] = []
    for step in range(5000):
        if live and rng.random() < 0.3:
            counter.close_socket(live.pop(rng.randrange(len(live))), "flood")
        else:
            socket_id = counter.open_socket()
            live.append(socket_id)
            for _ in range(rng.randint(1, 3)):
                counter.join(socket_id, f"topic-{rng.getrandbits(64):x}-{step}")
        assert len(counter.topics()) <= counter.max_topics + 1
        assert len(counter._table.counts) <= counter.max_topics + 1
    for socket_id in live:
        counter.close_socket(socket_id, "end")
    assert counter.topics() == {}
    assert counter.connections == 0


# ----------------------------------------------------------------- report mode


def test_reported_snapshot_and_delta() -> None:
    counts = ReportedCounts(max_topics=10)
    seen: list[int] = []
    counts.add_listener(lambda: seen.append(counts.seq))
    counts.apply_snapshot(5, {"a": 3, "b": 2, "zero": 0})
    assert (counts.connections, counts.opened, counts.closed) == (5, 5, 0)
    assert counts.topics() == {"a": 3, "b": 2}
    counts.apply_delta(-2, {"a": -1, "c": 1})
    assert (counts.connections, counts.opened, counts.closed) == (3, 5, 2)
    assert counts.topics() == {"a": 2, "b": 2, "c": 1}
    counts.apply_delta(0, {})  # no change: no seq step
    counts.apply_snapshot(3, {"a": 2, "b": 2, "c": 1})  # identical: no seq step
    assert seen == [1, 2]
    counts.apply_snapshot(0, {})
    assert (counts.connections, counts.opened, counts.closed) == (0, 5, 5)
    assert counts.topics() == {}


@pytest.mark.parametrize(
    ("connections", "topics"),
    [
        (-1, {}),
        (True, {}),
        ("3", {}),
        (1.0, {}),
        (1, {"a": -1}),
        (1, {"a": 1.5}),
        (1, {"": 1}),
        (1, {3: 1}),
        (1, ["a"]),
        (2**60, {}),
    ],
)
def test_reported_snapshot_rejects_bad_input_without_change(
    connections: object, topics: object
) -> None:
    counts = ReportedCounts()
    counts.apply_snapshot(2, {"keep": 2})
    with pytest.raises(CountError):
        counts.apply_snapshot(connections, topics)  # type: ignore[arg-type]
    assert counts.connections == 2
    assert counts.topics() == {"keep": 2}
    assert counts.seq == 1


def test_reported_delta_rejects_negative_results_without_change() -> None:
    counts = ReportedCounts()
    counts.apply_snapshot(2, {"a": 2})
    with pytest.raises(CountError):
        counts.apply_delta(-3, {})
    with pytest.raises(CountError):
        counts.apply_delta(1, {"a": -3})
    with pytest.raises(CountError):
        counts.apply_delta(1, {"b": 1, "a": -3})
    assert counts.connections == 2
    assert counts.topics() == {"a": 2}
    assert counts.seq == 1


def test_reported_fold_snapshot_keeps_existing_slots() -> None:
    counts = ReportedCounts(max_topics=2)
    counts.apply_snapshot(10, {"a": 1, "b": 1})
    counts.apply_snapshot(10, {"a": 1, "b": 1, "c": 9, "d": 3})
    assert counts.topics() == {"a": 1, "b": 1, OTHER_TOPIC: 12}
    counts.apply_snapshot(10, {"c": 9, "d": 3, "e": 1})
    assert counts.topics() == {"c": 9, "d": 3, OTHER_TOPIC: 1}


def test_reported_fold_delta_draws_from_other() -> None:
    counts = ReportedCounts(max_topics=1)
    counts.apply_delta(2, {"a": 1, "b": 1})
    assert counts.topics() == {"a": 1, OTHER_TOPIC: 1}
    counts.apply_delta(0, {"a": -1})  # frees the slot
    counts.apply_delta(0, {"b": 1})  # b now gets the slot; its first 1 is still in _other
    assert counts.topics() == {"b": 1, OTHER_TOPIC: 1}
    counts.apply_delta(0, {"b": -2})
    assert counts.topics() == {}
    with pytest.raises(CountError):
        counts.apply_delta(0, {"b": -1})


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.booleans(),
            st.integers(-5, 5),
            st.dictionaries(st.sampled_from("abcdefg"), st.integers(-3, 6), max_size=4),
        ),
        max_size=40,
    ),
    max_topics=st.integers(0, 4),
)
def test_reported_counts_never_negative_and_bounded(
    steps: list[tuple[bool, int, dict[str, int]]], max_topics: int
) -> None:
    counts = ReportedCounts(max_topics=max_topics)
    for is_snapshot, connections, topics in steps:
        try:
            if is_snapshot:
                counts.apply_snapshot(connections, topics)
            else:
                counts.apply_delta(connections, topics)
        except CountError:
            pass
        assert counts.connections == counts.opened - counts.closed >= 0
        assert all(value > 0 for value in counts.topics().values())
        assert len(counts.topics()) <= max_topics + 1


def test_topic_protocols_follow_the_sockets_of_each_protocol() -> None:
    counter = ConnectionCounter(max_topics=2)
    plain = counter.open_socket()
    counter.join(plain, "a")
    assert counter.topic_protocols() == {}
    first = counter.open_socket("socketio")
    counter.join(first, "a")
    second = counter.open_socket("centrifugo")
    counter.join(second, "a")
    counter.join(second, "b")
    counter.join(second, "c")  # folded into _other
    assert counter.topic_protocols() == {
        "a": "centrifugo,socketio",
        "b": "centrifugo",
        "_other": "centrifugo",
    }
    counter.leave(second, "a")
    assert counter.topic_protocols()["a"] == "socketio"
    counter.close_socket(second, "normal")
    counter.close_socket(first, "normal")
    assert counter.topic_protocols() == {}
