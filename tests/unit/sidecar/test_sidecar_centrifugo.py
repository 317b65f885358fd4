"""Unit, model-based and fuzz tests of the Centrifugo reader
(wsgauge_sidecar.protocols.centrifugo)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsgauge_sidecar.exceptions import ProtocolError, ProtocolLimitError
from wsgauge_sidecar.protocols.base import Joined, Left, ProtocolEvent
from wsgauge_sidecar.protocols.centrifugo import CentrifugoSession
from wsgauge_sidecar.wsframes import MessageReader, Opcode, encode_frame

Splitter = Callable[[bytes], Iterator[bytes]]


def lines(*objects: object) -> bytes:
    return "\n".join(json.dumps(item) for item in objects).encode()


def test_subscribe_reply_counts_and_unsubscribe_leaves() -> None:
    session = CentrifugoSession()
    assert session.client_text(lines({"id": 1, "connect": {"name": "js"}})) == ()
    assert session.server_text(lines({"id": 1, "connect": {"client": "c", "ping": 25}})) == ()
    batch = lines(
        {"id": 2, "subscribe": {"channel": "news"}}, {"id": 3, "subscribe": {"channel": "x"}}
    )
    assert session.client_text(batch) == ()
    assert session.topics == frozenset()
    replies = lines(
        {"id": 2, "subscribe": {}}, {"id": 3, "error": {"code": 103, "message": "denied"}}
    )
    assert session.server_text(replies) == [Joined("news")]
    assert session.server_text(b"{}") == ()
    pub = {"push": {"channel": "news", "pub": {"data": {"text": "unsubscribe"}}}}
    assert session.server_text(lines(pub)) == ()
    assert session.client_text(lines({"id": 4, "unsubscribe": {"channel": "news"}})) == [
        Left("news", "leave")
    ]
    assert session.server_text(lines({"id": 4, "unsubscribe": {}})) == ()
    assert session.topics == frozenset()


def test_server_side_subscriptions_from_connect_and_pushes() -> None:
    session = CentrifugoSession()
    reply = {"id": 1, "connect": {"client": "c", "subs": {"personal:1": {}, "global": {}}}}
    assert session.server_text(lines(reply)) == [Joined("personal:1"), Joined("global")]
    assert session.server_text(lines({"push": {"channel": "extra", "subscribe": {}}})) == [
        Joined("extra")
    ]
    unsub = {"push": {"channel": "global", "unsubscribe": {"code": 2000, "reason": "server"}}}
    assert session.server_text(lines(unsub)) == [Left("global", "close")]
    uni: dict[str, object] = {"push": {"connect": {"subs": {"u": {}}}}}
    assert session.server_text(lines(uni)) == [Joined("u")]
    assert session.topics == frozenset({"personal:1", "extra", "u"})


def test_unanswered_and_unsubscribed_before_reply_are_not_counted() -> None:
    session = CentrifugoSession()
    session.client_text(lines({"id": 5, "subscribe": {"channel": "a"}}))
    session.client_text(lines({"id": 6, "unsubscribe": {"channel": "a"}}))
    assert session.server_text(lines({"id": 5, "subscribe": {}})) == ()
    assert session.topics == frozenset()


def test_replies_without_a_matching_subscribe_and_duplicates() -> None:
    session = CentrifugoSession()
    assert session.server_text(lines({"id": 9, "subscribe": {}})) == ()
    session.client_text(lines({"id": 1, "subscribe": {"channel": "a"}}))
    session.client_text(lines({"id": 2, "subscribe": {"channel": "a"}}))
    assert session.server_text(lines({"id": 1, "subscribe": {}})) == [Joined("a")]
    assert session.server_text(lines({"id": 2, "subscribe": {}})) == ()


def test_escaped_commands_are_inspected() -> None:
    session = CentrifugoSession()
    escaped = b'{"id":1,"\\u0073ubscribe":{"channel":"a"}}'
    session.client_text(escaped)
    assert session.server_text(b'{"id":1,"\\u0073ubscribe":{}}') == [Joined("a")]


@pytest.mark.parametrize("payload", [b"subscribe", b'["subscribe"]', b'{"subs"}\n', b"{}\n\\u"])
def test_malformed_inspected_messages_raise_1007(payload: bytes) -> None:
    with pytest.raises(ProtocolError) as raised:
        CentrifugoSession().server_text(payload)
    assert raised.value.close_code == 1007


def test_bounds_close_with_1008() -> None:
    session = CentrifugoSession(max_pending=1)
    session.client_text(lines({"id": 1, "subscribe": {"channel": "a"}}))
    with pytest.raises(ProtocolLimitError):
        session.client_text(lines({"id": 2, "subscribe": {"channel": "b"}}))
    session = CentrifugoSession(max_channels=1)
    with pytest.raises(ProtocolLimitError) as raised:
        session.server_text(lines({"id": 1, "connect": {"subs": {"a": {}, "b": {}}}}))
    assert raised.value.close_code == 1008


def test_session_through_the_frame_reader_over_any_split(splitter: Splitter) -> None:
    session = CentrifugoSession()
    client_reader, server_reader = MessageReader(masked=True), MessageReader(masked=False)
    command = lines({"id": 1, "subscribe": {"channel": "chat"}})
    client_bytes = encode_frame(Opcode.TEXT, command[:5], mask=True, fin=False) + encode_frame(
        Opcode.CONTINUATION, command[5:], mask=True
    )
    server_bytes = encode_frame(Opcode.TEXT, b"{}") + encode_frame(
        Opcode.TEXT, lines({"id": 1, "subscribe": {}}, {"push": {"channel": "chat", "pub": {}}})
    )
    events: list[ProtocolEvent] = []
    for piece in splitter(client_bytes):
        for _, payload in client_reader.feed(piece):
            events += session.client_text(payload)
    for piece in splitter(server_bytes):
        for _, payload in server_reader.feed(piece):
            events += session.server_text(payload)
    assert events == [Joined("chat")]


def check_events(events: Sequence[ProtocolEvent], joined: set[str]) -> None:
    """The interface's promise: no topic reported twice, no leave of a topic not joined."""
    for event in events:
        if isinstance(event, Joined):
            assert event.topic not in joined
            joined.add(event.topic)
        else:
            assert event.topic in joined
            joined.remove(event.topic)


# -------------------------------------------------------------------- model-based

_CHANNELS = ["a", "b", "c"]


@settings(max_examples=200, deadline=None)
@given(
    actions=st.lists(
        st.tuples(
            st.sampled_from(["subscribe", "unsubscribe", "reply", "push_sub", "push_unsub", "pub"]),
            st.sampled_from(_CHANNELS),
            st.booleans(),
        ),
        max_size=30,
    )
)
def test_session_follows_a_centrifugo_server(actions: list[tuple[str, str, bool]]) -> None:
    """The counted channels equal the subscriptions centrifuge-js holds after every message."""
    session = CentrifugoSession()
    pending: dict[int, str] = {}
    held: set[str] = set()
    next_id = 1
    for action, channel, accept in actions:
        if action == "subscribe":
            session.client_text(lines({"id": next_id, "subscribe": {"channel": channel}}))
            pending[next_id] = channel
            next_id += 1
        elif action == "unsubscribe":
            session.client_text(lines({"id": next_id, "unsubscribe": {"channel": channel}}))
            next_id += 1
            pending = {key: sent for key, sent in pending.items() if sent != channel}
            held.discard(channel)
        elif action == "reply" and pending:
            command_id = min(pending)
            answered = pending.pop(command_id)
            body = {"subscribe": {}} if accept else {"error": {"code": 103, "message": "no"}}
            session.server_text(lines({"id": command_id, **body}))
            if accept:
                held.add(answered)
        elif action == "push_sub":
            session.server_text(lines({"push": {"channel": channel, "subscribe": {}}}))
            held.add(channel)
        elif action == "push_unsub":
            session.server_text(lines({"push": {"channel": channel, "unsubscribe": {}}}))
            held.discard(channel)
        elif action == "pub":
            session.server_text(lines({"push": {"channel": channel, "pub": {"data": "x"}}}))
        assert session.topics == frozenset(held)


@settings(max_examples=300, deadline=None)
@given(
    payload=st.binary(max_size=60)
    | st.builds(
        lambda base, cut, tail: base[:cut] + tail,
        st.sampled_from(
            [
                lines({"id": 1, "subscribe": {"channel": "a"}}),
                lines({"id": 1, "connect": {"subs": {"a": {}}}}),
                lines({"push": {"channel": "a", "unsubscribe": {}}}),
            ]
        ),
        st.integers(0, 60),
        st.binary(max_size=10),
    ),
)
def test_fuzz_session_raises_only_protocol_errors(payload: bytes) -> None:
    session = CentrifugoSession(max_pending=3, max_channels=3)
    joined: set[str] = set()
    for method in (session.client_text, session.server_text) * 2:
        refused: ProtocolError | None = None
        try:
            check_events(method(payload), joined)
        except ProtocolError as error:
            refused = error
        if refused is not None:
            assert refused.close_code == (1008 if isinstance(refused, ProtocolLimitError) else 1007)
    assert session.topics == joined
    assert len(joined) <= 3
