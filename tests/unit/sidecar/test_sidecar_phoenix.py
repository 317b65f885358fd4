"""Unit, model-based and fuzz tests of the Phoenix channels reader (protocols.phoenix).

The model server below answers the way ``lib/phoenix/socket.ex`` does (reply to a
join; on a duplicate join the new join's ok reply *before* the old channel's
``phx_close``; leave = ok reply then ``phx_close``; crash = ``phx_error`` with
``ref = join_ref``), with its output delivered to the session after arbitrary
delays, so the races a real proxy sees are covered.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsgauge_sidecar.counter import ConnectionCounter
from wsgauge_sidecar.exceptions import (
    PhoenixLimitError,
    PhoenixProtocolError,
    WebSocketProtocolError,
)
from wsgauge_sidecar.protocols.phoenix import (
    MAX_REF_LENGTH,
    Joined,
    Left,
    PhoenixEvent,
    PhoenixSession,
    Serializer,
    decode_text,
    encode_message,
    serializer_from_query,
)
from wsgauge_sidecar.wsframes import MessageReader, Opcode, encode_frame

Splitter = Callable[[bytes], Iterator[bytes]]  # the conftest "splitter" fixture


def v2(join_ref: object, ref: object, topic: str, event: str, payload: object = None) -> str:
    return json.dumps([join_ref, ref, topic, event, {} if payload is None else payload])


def v1(topic: str, event: str, ref: object, payload: object = None, **extra: object) -> str:
    return json.dumps(
        {"topic": topic, "event": event, "payload": {} if payload is None else payload, "ref": ref}
        | extra
    )


def ok(response: object = None) -> dict[str, object]:
    return {"status": "ok", "response": {} if response is None else response}


def error() -> dict[str, object]:
    return {"status": "error", "response": {"reason": "unauthorized"}}


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/socket/websocket?vsn=2.0.0", "v2"),
        ("/socket/websocket?token=x&vsn=1.0.0", "v1"),
        ("/socket/websocket", None),
        ("/socket/websocket?vsn=3.0.0", None),
        ("/socket/websocket?vsn=", None),
    ],
)
def test_serializer_from_query(target: str, expected: Serializer | None) -> None:
    assert serializer_from_query(target) == expected


def test_v2_join_leave() -> None:
    session = PhoenixSession("v2")
    assert session.client_message(v2("1", "1", "room:a", "phx_join")) == []
    assert session.topics == frozenset()
    assert session.server_message(v2("1", "1", "room:a", "phx_reply", ok())) == [Joined("room:a")]
    assert session.topics == frozenset({"room:a"})
    assert session.client_message(v2("1", "2", "room:a", "new_msg", {"body": "x"})) == []
    assert session.client_message(v2("1", "3", "room:a", "phx_leave")) == [Left("room:a", "leave")]
    assert session.server_message(v2("1", "3", "room:a", "phx_reply", ok())) == []
    assert session.server_message(v2("1", "1", "room:a", "phx_close")) == []
    assert session.topics == frozenset()


def test_v2_join_refused_and_unmatched_topic() -> None:
    session = PhoenixSession("v2")
    session.client_message(v2("1", "1", "deny:x", "phx_join"))
    assert session.server_message(v2("1", "1", "deny:x", "phx_reply", error())) == []
    session.client_message(v2("2", "2", "nope", "phx_join"))
    unmatched = v2(None, "2", "nope", "phx_reply", {"status": "error", "response": {}})
    assert session.server_message(unmatched) == []
    assert session.topics == frozenset()


def test_reply_must_match_topic_and_ref() -> None:
    session = PhoenixSession("v2")
    session.client_message(v2("1", "1", "a", "phx_join"))
    assert session.server_message(v2("1", "1", "b", "phx_reply", ok())) == []
    assert session.server_message(v2("1", "9", "a", "phx_reply", ok())) == []
    assert session.server_message(v2("1", "1", "a", "phx_reply", ok())) == [Joined("a")]
    # a second reply to the same join does nothing
    assert session.server_message(v2("1", "1", "a", "phx_reply", ok())) == []


def test_server_close_and_error_leave() -> None:
    session = PhoenixSession("v2")
    for index, topic in enumerate(["a", "b"], start=1):
        session.client_message(v2(str(index), str(index), topic, "phx_join"))
        session.server_message(v2(str(index), str(index), topic, "phx_reply", ok()))
    assert session.server_message(v2("1", "1", "a", "phx_error")) == [Left("a", "error")]
    assert session.server_message(v2("2", "2", "b", "phx_close")) == [Left("b", "close")]
    assert session.topics == frozenset()


def test_outdated_close_after_rejoin_is_ignored() -> None:
    """Phoenix answers a duplicate join before it sends the old channel's phx_close."""
    session = PhoenixSession("v2")
    session.client_message(v2("1", "1", "a", "phx_join"))
    assert session.server_message(v2("1", "1", "a", "phx_reply", ok())) == [Joined("a")]
    session.client_message(v2("5", "5", "a", "phx_join"))
    assert session.server_message(v2("5", "5", "a", "phx_reply", ok())) == []  # not twice
    assert session.server_message(v2("1", "1", "a", "phx_close")) == []  # old join_ref
    assert session.topics == frozenset({"a"})
    assert session.server_message(v2("5", "5", "a", "phx_error")) == [Left("a", "error")]


def test_leave_with_other_join_ref_is_ignored_like_the_server_does() -> None:
    session = PhoenixSession("v2")
    session.client_message(v2("3", "3", "a", "phx_join"))
    session.server_message(v2("3", "3", "a", "phx_reply", ok()))
    assert session.client_message(v2("1", "4", "a", "phx_leave")) == []
    assert session.client_message(v2(None, "5", "a", "phx_leave")) == [Left("a", "leave")]


def test_heartbeat_topic_is_never_counted() -> None:
    session = PhoenixSession("v2")
    session.client_message(v2(None, "1", "phoenix", "heartbeat"))
    session.client_message(v2("2", "2", "phoenix", "phx_join"))
    assert session.server_message(v2(None, "1", "phoenix", "phx_reply", ok())) == []
    assert session.server_message(v2("2", "2", "phoenix", "phx_reply", ok())) == []
    assert session.topics == frozenset()


def test_v1_without_join_refs() -> None:
    session = PhoenixSession()
    session.client_message(v1("a", "phx_join", "1"))
    assert session.serializer == "v1"
    assert session.server_message(v1("a", "phx_reply", "1", ok())) == [Joined("a")]
    # duplicate join: ok reply, then the old channel's phx_close (ref = join_ref = null)
    session.client_message(v1("a", "phx_join", "2"))
    assert session.server_message(v1("a", "phx_reply", "2", ok())) == []
    assert session.server_message(v1("a", "phx_close", None)) == []
    assert session.topics == frozenset({"a"})
    # leave, then rejoin before the leave's phx_close arrives
    assert session.client_message(v1("a", "phx_leave", "3")) == [Left("a", "leave")]
    session.client_message(v1("a", "phx_join", "4"))
    assert session.server_message(v1("a", "phx_reply", "3", ok())) == []
    assert session.server_message(v1("a", "phx_reply", "4", ok())) == [Joined("a")]
    assert session.server_message(v1("a", "phx_close", None)) == []  # the left channel's
    assert session.server_message(v1("a", "phx_error", None)) == [Left("a", "error")]


def test_v1_with_join_refs() -> None:
    session = PhoenixSession("v1")
    session.client_message(v1("a", "phx_join", "1", join_ref="1"))
    assert session.server_message(v1("a", "phx_reply", "1", ok())) == [Joined("a")]
    assert session.server_message(v1("a", "phx_close", "0")) == []  # another channel's
    assert session.server_message(v1("a", "phx_close", "1")) == [Left("a", "close")]


def test_integer_refs_match_their_text() -> None:
    session = PhoenixSession("v2")
    session.client_message(json.dumps([7, 7, "a", "phx_join", {}]))
    assert session.server_message(v2("7", "7", "a", "phx_reply", ok())) == [Joined("a")]


def test_long_topics_are_cut_and_a_join_with_a_long_ref_closes_with_1008() -> None:
    session = PhoenixSession("v2")
    topic = "t" * 500
    session.client_message(v2("1", "1", topic, "phx_join"))
    assert session.server_message(v2("1", "1", topic, "phx_reply", ok())) == [Joined("t" * 200)]
    long_ref = "r" * (MAX_REF_LENGTH + 1)
    for join_ref, ref in ((long_ref, "2"), ("2", long_ref)):
        with pytest.raises(PhoenixLimitError) as raised:
            session.client_message(v2(join_ref, ref, "b", "phx_join"))
        assert raised.value.close_code == 1008
    # elsewhere a long ref only fails to match anything
    assert session.server_message(v2(long_ref, long_ref, "b", "phx_reply", ok())) == []


def test_every_pending_join_is_remembered_up_to_the_bound_then_1008() -> None:
    """The bound never drops a join (it used to forget the oldest: pipelined joins were lost)."""
    session = PhoenixSession("v2", max_pending_joins=3)
    for ref in range(3):
        session.client_message(v2(str(ref), str(ref), f"t{ref}", "phx_join"))
    session.client_message(v2("2", "2", "t2", "phx_join"))  # the same join again: no new slot
    with pytest.raises(PhoenixLimitError) as raised:
        session.client_message(v2("3", "3", "t3", "phx_join"))
    assert raised.value.close_code == 1008
    assert session.server_message(v2("0", "0", "t0", "phx_reply", ok())) == [Joined("t0")]
    session.client_message(v2("3", "3", "t3", "phx_join"))  # a slot is free again
    events = [
        event
        for ref in (1, 2, 3)
        for event in session.server_message(v2(str(ref), str(ref), f"t{ref}", "phx_reply", ok()))
    ]
    assert events == [Joined("t1"), Joined("t2"), Joined("t3")]


def test_a_leave_forgets_the_pending_joins_of_its_topic() -> None:
    session = PhoenixSession("v2", max_pending_joins=2)
    session.client_message(v2("1", "1", "a", "phx_join"))
    session.client_message(v2("2", "2", "a", "phx_join"))
    session.client_message(v2(None, "3", "a", "phx_leave"))
    session.client_message(v2("4", "4", "b", "phx_join"))
    session.client_message(v2("5", "5", "c", "phx_join"))
    assert session.server_message(v2("1", "1", "a", "phx_reply", ok())) == []
    assert session.server_message(v2("5", "5", "c", "phx_reply", ok())) == [Joined("c")]


def test_one_joined_topic_past_the_bound_closes_with_1008() -> None:
    session = PhoenixSession("v2", max_joined_topics=2)
    events: list[PhoenixEvent] = []
    for ref in range(2):
        session.client_message(v2(str(ref), str(ref), f"t{ref}", "phx_join"))
        events += session.server_message(v2(str(ref), str(ref), f"t{ref}", "phx_reply", ok()))
    assert events == [Joined("t0"), Joined("t1")]
    session.client_message(v2("2", "2", "t2", "phx_join"))
    assert session.server_message(v2("2", "2", "t2", "phx_reply", error())) == []  # refused
    session.client_message(v2("3", "3", "t3", "phx_join"))
    with pytest.raises(PhoenixLimitError):
        session.server_message(v2("3", "3", "t3", "phx_reply", ok()))


@pytest.mark.parametrize(
    ("serializer", "text"),
    [
        (None, "not json"),
        (None, ""),
        (None, "42"),
        (None, '"string"'),
        (None, "[1, 2, 3]"),
        (None, '[null, null, 5, "ev", {}]'),
        (None, '{"topic": "a"}'),
        (None, '{"topic": 1, "event": "x"}'),
        ("v2", '{"topic": "a", "event": "b", "payload": {}, "ref": null}'),
        ("v1", '[null, null, "a", "b", {}]'),
        (None, "[" * 100_000 + "]" * 100_000),
    ],
)
def test_malformed_messages_raise_1007(serializer: Serializer | None, text: str) -> None:
    for feed in (
        PhoenixSession(serializer).client_message,
        PhoenixSession(serializer).server_message,
    ):
        with pytest.raises(PhoenixProtocolError) as caught:
            feed(text)
        assert caught.value.close_code == 1007


def test_binary_v2_messages() -> None:
    session = PhoenixSession("v2")

    def fields(kind: int, *parts: bytes, data: bytes = b"") -> bytes:
        return bytes([kind, *(len(part) for part in parts)]) + b"".join(parts) + data

    assert session.client_binary(fields(0, b"4", b"4", b"bin", b"phx_join", data=b"\x00")) == []
    assert session.server_binary(fields(1, b"4", b"4", b"bin", b"ok", data=b"x")) == [Joined("bin")]
    assert session.server_binary(fields(2, b"bin", b"ev", data=b"x")) == []
    assert session.server_binary(fields(0, b"4", b"bin", b"ev", data=b"x")) == []
    assert session.server_message(v2("4", "4", "bin", "phx_close")) == [Left("bin", "close")]
    with pytest.raises(PhoenixProtocolError):
        session.server_binary(b"")
    with pytest.raises(PhoenixProtocolError):
        session.server_binary(bytes([1, 200, 0, 0, 0]))
    with pytest.raises(PhoenixProtocolError):
        session.client_binary(bytes([7]))
    assert PhoenixSession("v1").server_binary(b"\x09garbage") == []


def test_encode_message_round_trips() -> None:
    for serializer in ("v1", "v2"):
        text = encode_message(
            serializer, join_ref="1", ref="2", topic="t", event="e", payload={"a": 1}
        )
        found, message = decode_text(text, None)
        assert found == serializer
        assert (message.topic, message.event, message.payload) == ("t", "e", {"a": 1})
        assert (message.join_ref, message.ref) == ("1", "2")


# ------------------------------------------------- whole wire, any byte split


def frames(texts: list[str], *, mask: bool) -> bytes:
    out = b""
    for text in texts:
        data = text.encode()
        if len(data) > 20:  # fragment longer messages, with a ping in between
            out += encode_frame(Opcode.TEXT, data[:10], fin=False, mask=mask)
            out += encode_frame(Opcode.PING, b"hb", mask=mask)
            out += encode_frame(Opcode.CONTINUATION, data[10:], mask=mask)
        else:
            out += encode_frame(Opcode.TEXT, data, mask=mask)
    return out


def run_wire(
    client_texts: list[str], server_texts: list[str], splitter: Splitter
) -> tuple[list[PhoenixEvent], frozenset[str]]:
    """Client bytes first (all joins), then server bytes, each through its own reader."""
    session = PhoenixSession(serializer_from_query("/socket/websocket?vsn=2.0.0"))
    events: list[PhoenixEvent] = []
    for direction, data in (
        (True, frames(client_texts, mask=True)),
        (False, frames(server_texts, mask=False)),
    ):
        reader = MessageReader(masked=direction, max_message_bytes=4096)
        for piece in splitter(data):
            for message in reader.feed(piece):
                if message.opcode == Opcode.TEXT:
                    handler = session.client_message if direction else session.server_message
                    events += handler(message.text)
    return events, session.topics


def test_session_through_the_frame_reader_over_any_split(splitter: Splitter) -> None:
    client = [
        v2(None, "1", "phoenix", "heartbeat"),
        v2("2", "2", "room:lobby", "phx_join", {"token": "x" * 40}),
        v2("3", "3", "room:ü", "phx_join"),
        v2("4", "4", "deny:secret", "phx_join"),
    ]
    server = [
        v2(None, "1", "phoenix", "phx_reply", ok()),
        v2("2", "2", "room:lobby", "phx_reply", ok({"history": ["a" * 50]})),
        v2("3", "3", "room:ü", "phx_reply", ok()),
        v2("4", "4", "deny:secret", "phx_reply", error()),
        v2(None, None, "room:lobby", "new_msg", {"body": "hi"}),
        v2("3", "3", "room:ü", "phx_error"),
    ]
    events, topics = run_wire(client, server, splitter)
    assert events == [Joined("room:lobby"), Joined("room:ü"), Left("room:ü", "error")]
    assert topics == frozenset({"room:lobby"})


# ------------------------------------------------------ model-based property


@dataclass
class ModelServer:
    """Answers like Phoenix's socket (lib/phoenix/socket.ex), output queued."""

    serializer: Serializer
    send_join_refs: bool
    channels: dict[str, object] = field(default_factory=dict)
    queue: list[str] = field(default_factory=list)

    def encode(self, join_ref: object, ref: object, topic: str, event: str, payload: object) -> str:
        if self.serializer == "v2":
            return v2(join_ref, ref, topic, event, payload)
        return v1(topic, event, ref, payload)  # V1 server messages carry no join_ref

    def join(self, topic: str, ref: str, join_ref: object) -> None:
        if topic.startswith("deny:"):
            self.queue.append(self.encode(join_ref, ref, topic, "phx_reply", error()))
            return
        old = self.channels.pop(topic, "absent")
        self.queue.append(self.encode(join_ref, ref, topic, "phx_reply", ok()))
        if old != "absent":  # duplicate join: the old channel's close comes after
            self.queue.append(self.encode(old, old, topic, "phx_close", {}))
        self.channels[topic] = join_ref

    def leave(self, topic: str, ref: str, join_ref: object) -> None:
        if topic not in self.channels:
            self.queue.append(self.encode(join_ref, ref, topic, "phx_reply", ok()))
            return
        current = self.channels[topic]
        if join_ref not in (current, None):
            return  # raced a server close: no reply
        self.queue.append(self.encode(join_ref, ref, topic, "phx_reply", ok()))
        self.queue.append(self.encode(current, current, topic, "phx_close", {}))
        del self.channels[topic]

    def stop(self, topic: str, event: str) -> None:
        if topic in self.channels:
            join_ref = self.channels.pop(topic)
            self.queue.append(self.encode(join_ref, join_ref, topic, event, {}))


_actions = st.lists(
    st.tuples(
        st.sampled_from(["join", "join", "leave", "crash", "stop", "heartbeat", "push"]),
        st.sampled_from(["a", "b", "deny:c"]),
        st.integers(0, 3),  # server messages delivered after this client action
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(
    actions=_actions,
    serializer=st.sampled_from(["v1", "v2"]),
    send_join_refs=st.booleans(),
    declared=st.booleans(),
)
def test_session_follows_a_phoenix_server_through_any_delays(
    actions: list[tuple[str, str, int]],
    serializer: Serializer,
    send_join_refs: bool,
    declared: bool,
) -> None:
    # The JS client (V2) always sends join_refs; V1 clients may or may not.
    send_join_refs = send_join_refs or serializer == "v2"
    server = ModelServer(serializer, send_join_refs)
    session = PhoenixSession(serializer if declared else None)
    counter = ConnectionCounter()
    socket_id = counter.open_socket()
    client_join_refs: dict[str, object] = {}

    def client(join_ref: object, ref: str, topic: str, event: str) -> None:
        if serializer == "v2":
            text = v2(join_ref, ref, topic, event)
        elif send_join_refs:
            text = v1(topic, event, ref, join_ref=join_ref)
        else:
            text = v1(topic, event, ref)
        apply(session.client_message(text))

    def apply(events: list[PhoenixEvent]) -> None:
        for event in events:
            if isinstance(event, Joined):
                assert event.topic not in counter.socket_topics(socket_id)
                counter.join(socket_id, event.topic)
            else:
                assert event.topic in counter.socket_topics(socket_id)
                counter.leave(socket_id, event.topic)
        assert counter.socket_topics(socket_id) == session.topics

    def deliver(count: int) -> None:
        for _ in range(count):
            if server.queue:
                apply(session.server_message(server.queue.pop(0)))

    for ref_counter, (action, topic, delay) in enumerate(actions, start=1):
        ref = str(ref_counter)
        join_ref: object
        if action == "join":
            join_ref = ref if send_join_refs else None
            client_join_refs[topic] = join_ref
            client(join_ref, ref, topic, "phx_join")
            server.join(topic, ref, join_ref)
        elif action == "leave":
            join_ref = client_join_refs.get(topic) if send_join_refs else None
            client(join_ref, ref, topic, "phx_leave")
            server.leave(topic, ref, join_ref)
        elif action in ("crash", "stop"):
            server.stop(topic, "phx_error" if action == "crash" else "phx_close")
        elif action == "heartbeat":
            client(None, ref, "phoenix", "heartbeat")
            server.queue.append(server.encode(None, ref, "phoenix", "phx_reply", ok()))
        else:
            client(client_join_refs.get(topic), ref, topic, "new_msg")
        deliver(delay)
    deliver(len(server.queue))
    assert session.topics == frozenset(server.channels)
    assert counter.topics() == {topic: 1 for topic in server.channels}
    counter.close_socket(socket_id, "end")
    assert counter.topics() == {}
    assert counter.connections == 0


# ---------------------------------------------------------------- fuzzing

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=6), children, max_size=5)
    ),
    max_leaves=8,
)
_phoenixish = st.one_of(
    st.text(max_size=40),
    _json_values.map(json.dumps),
    st.tuples(
        st.sampled_from([None, "1", "2", 1]),
        st.sampled_from([None, "1", "2", 1]),
        st.sampled_from(["a", "b", "phoenix", "", 5]),
        st.sampled_from(["phx_join", "phx_leave", "phx_reply", "phx_close", "phx_error", "x"]),
        st.one_of(_json_values, st.just({"status": "ok"}), st.just({"status": "error"})),
    ).map(lambda parts: json.dumps(list(parts))),
)


@settings(max_examples=150, deadline=None)
@given(
    messages=st.lists(st.tuples(st.booleans(), _phoenixish), max_size=20),
    serializer=st.sampled_from([None, "v1", "v2"]),
)
def test_fuzz_session_raises_only_phoenix_protocol_errors(
    messages: list[tuple[bool, str]], serializer: Serializer | None
) -> None:
    session = PhoenixSession(serializer)
    joined: set[str] = set()
    for from_client, text in messages:
        refused: PhoenixProtocolError | None = None
        try:
            events = (session.client_message if from_client else session.server_message)(text)
        except PhoenixProtocolError as error:
            refused = error
        if refused is not None:  # a bound (a long ref) is 1008, the rest 1007
            assert refused.close_code == (1008 if isinstance(refused, PhoenixLimitError) else 1007)
            continue
        for event in events:
            if isinstance(event, Joined):
                assert event.topic not in joined
                joined.add(event.topic)
            else:
                assert event.topic in joined
                joined.remove(event.topic)
        assert session.topics == joined


@settings(max_examples=100, deadline=None)
@given(
    messages=st.lists(_phoenixish, max_size=8),
    noise=st.binary(max_size=12),
    masked=st.booleans(),
    cut=st.integers(1, 6),
)
def test_fuzz_frames_into_session_whole_and_byte_by_byte(
    messages: list[str], noise: bytes, masked: bool, cut: int
) -> None:
    data = frames(messages, mask=masked) + noise

    def run(pieces: list[bytes]) -> object:
        reader = MessageReader(masked=masked, max_message_bytes=1024)
        session = PhoenixSession()
        events: list[object] = []
        try:
            for piece in pieces:
                for message in reader.feed(piece):
                    if message.opcode == Opcode.TEXT:
                        feed = session.client_message if masked else session.server_message
                        events += feed(message.text)
        except (WebSocketProtocolError, PhoenixProtocolError) as error:
            return ("error", type(error).__name__, error.close_code)
        return events, session.topics

    # Fed whole, a frame error in the noise surfaces before the messages of the same
    # feed are handed on; fed in pieces, a Phoenix error in them may come first.
    # Either way the outcome is an error, or else exactly the same events.
    whole = run([data])
    for pieces in (
        [data[i : i + 1] for i in range(len(data))],
        [data[i : i + cut] for i in range(0, len(data), cut)],
    ):
        split = run(pieces)
        if isinstance(whole, tuple) and whole[0] == "error":
            assert isinstance(split, tuple)
            assert split[0] == "error"
        else:
            assert split == whole
