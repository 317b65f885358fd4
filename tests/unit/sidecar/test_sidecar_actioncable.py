"""Unit, model-based and fuzz tests of the Action Cable reader
(wsgauge_sidecar.protocols.actioncable)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsgauge_sidecar.exceptions import ProtocolError, ProtocolLimitError
from wsgauge_sidecar.protocols.actioncable import (
    ActionCableSession,
    decode_signed_stream_name,
    topic_of_identifier,
)
from wsgauge_sidecar.protocols.base import Joined, Left, ProtocolEvent
from wsgauge_sidecar.wsframes import MessageReader, Opcode, encode_frame

Splitter = Callable[[bytes], Iterator[bytes]]


def ident(channel: str, **params: str) -> str:
    return json.dumps({"channel": channel, **params})


def command(kind: str, identifier: str, **extra: object) -> bytes:
    return json.dumps({"command": kind, "identifier": identifier, **extra}).encode()


def server(kind: str, identifier: str) -> bytes:
    return json.dumps({"type": kind, "identifier": identifier}).encode()


def signed(name: object, *, urlsafe: bool = False) -> str:
    raw = json.dumps(name).encode()
    data = base64.urlsafe_b64encode(raw) if urlsafe else base64.b64encode(raw)
    return data.decode() + "--0123abcd"


ROOM1, ROOM2 = ident("ChatChannel", room="1"), ident("ChatChannel", room="2")


def test_confirmed_subscription_counts_and_unsubscribe_leaves() -> None:
    session = ActionCableSession()
    assert session.server_text(b'{"type":"welcome"}') == ()
    assert session.client_text(command("subscribe", ROOM1)) == ()
    assert session.topics == frozenset()
    assert session.server_text(server("confirm_subscription", ROOM1)) == [Joined("ChatChannel")]
    assert session.server_text(b'{"type":"ping","message":1700000000}') == ()
    broadcast = json.dumps({"identifier": ROOM1, "message": {"type": "confirm_subscription"}})
    assert session.server_text(broadcast.encode()) == ()
    assert session.client_text(command("unsubscribe", ROOM1)) == [Left("ChatChannel", "leave")]
    assert session.topics == frozenset()


def test_rejected_and_silent_subscriptions_do_not_count() -> None:
    session = ActionCableSession()
    session.client_text(command("subscribe", ROOM1))
    assert session.server_text(server("reject_subscription", ROOM1)) == ()
    session.client_text(command("subscribe", ROOM2))
    assert session.topics == frozenset()


def test_repeated_subscribes_are_one_subscription() -> None:
    session = ActionCableSession()
    for _ in range(3):
        session.client_text(command("subscribe", ROOM1))
    assert session.server_text(server("confirm_subscription", ROOM1)) == [Joined("ChatChannel")]
    session.client_text(command("subscribe", ROOM1))
    assert session.server_text(server("confirm_subscription", ROOM1)) == ()
    assert session.client_text(command("unsubscribe", ROOM1)) == [Left("ChatChannel", "leave")]


def test_two_identifiers_of_one_channel_are_one_topic() -> None:
    session = ActionCableSession()
    for identifier in (ROOM1, ROOM2):
        session.client_text(command("subscribe", identifier))
    assert session.server_text(server("confirm_subscription", ROOM1)) == [Joined("ChatChannel")]
    assert session.server_text(server("confirm_subscription", ROOM2)) == ()
    assert session.client_text(command("unsubscribe", ROOM1)) == ()
    assert session.client_text(command("unsubscribe", ROOM2)) == [Left("ChatChannel", "leave")]


def test_unsubscribe_before_the_confirmation_is_not_counted() -> None:
    session = ActionCableSession()
    session.client_text(command("subscribe", ROOM1))
    session.client_text(command("unsubscribe", ROOM1))
    assert session.server_text(server("confirm_subscription", ROOM1)) == ()
    assert session.topics == frozenset()


def test_reject_after_a_confirmation_leaves() -> None:
    session = ActionCableSession()
    session.client_text(command("subscribe", ROOM1))
    session.server_text(server("confirm_subscription", ROOM1))
    session.client_text(command("subscribe", ROOM1))
    assert session.server_text(server("reject_subscription", ROOM1)) == [
        Left("ChatChannel", "error")
    ]


def test_turbo_streams_and_anycable_pubsub_topics_are_stream_names() -> None:
    assert (
        topic_of_identifier(
            ident("Turbo::StreamsChannel", signed_stream_name=signed("gid://app/Room/1"))
        )
        == "gid://app/Room/1"
    )
    assert (
        topic_of_identifier(
            ident("Turbo::StreamsChannel", signed_stream_name=signed("a?b>c", urlsafe=True))
        )
        == "a?b>c"
    )
    envelope = {"_rails": {"data": "gid://app/Room/2:messages", "pur": None}}
    assert (
        topic_of_identifier(ident("Turbo::StreamsChannel", signed_stream_name=signed(envelope)))
        == "gid://app/Room/2:messages"
    )
    assert topic_of_identifier(ident("$pubsub", stream_name="chat_42")) == "chat_42"
    assert (
        topic_of_identifier(ident("Turbo::StreamsChannel", signed_stream_name="not base64!--sig"))
        == "Turbo::StreamsChannel"
    )
    assert topic_of_identifier("not json") is None
    assert topic_of_identifier('{"room": 1}') is None
    assert decode_signed_stream_name("no-separator") is None
    assert decode_signed_stream_name(signed(42)) is None


def test_identifier_without_channel_is_held_in_no_topic() -> None:
    session = ActionCableSession()
    session.client_text(command("subscribe", "{}"))
    assert session.server_text(server("confirm_subscription", "{}")) == ()
    assert session.client_text(command("unsubscribe", "{}")) == ()


def test_escaped_commands_are_inspected() -> None:
    session = ActionCableSession()
    escaped = ('{"command":"\\u0073ubscribe","identifier":' + json.dumps(ROOM1) + "}").encode()
    assert b"subscribe" not in escaped
    session.client_text(escaped)
    assert session.server_text(server("confirm_subscription", ROOM1)) == [Joined("ChatChannel")]


@pytest.mark.parametrize(
    "payload", [b"subscribe_subscription", b'["subscribe_subscription"]', b"{\\u", b'"\\u0041"']
)
def test_malformed_inspected_messages_raise_1007(payload: bytes) -> None:
    for method in (ActionCableSession().client_text, ActionCableSession().server_text):
        with pytest.raises(ProtocolError) as raised:
            method(payload)
        assert raised.value.close_code == 1007


def test_bounds_close_with_1008() -> None:
    session = ActionCableSession(max_identifiers=2)
    for room in "12":
        session.client_text(command("subscribe", ident("C", room=room)))
    with pytest.raises(ProtocolLimitError):
        session.client_text(command("subscribe", ident("C", room="3")))
    session = ActionCableSession(max_identifiers=1)
    session.client_text(command("subscribe", ROOM1))
    session.server_text(server("confirm_subscription", ROOM1))
    session.client_text(command("subscribe", ROOM2))
    with pytest.raises(ProtocolLimitError) as raised:
        session.server_text(server("confirm_subscription", ROOM2))
    assert raised.value.close_code == 1008


def test_session_through_the_frame_reader_over_any_split(splitter: Splitter) -> None:
    session = ActionCableSession()
    client_reader, server_reader = MessageReader(masked=True), MessageReader(masked=False)
    subscribe = command("subscribe", ROOM1)
    client_bytes = encode_frame(Opcode.TEXT, subscribe[:7], mask=True, fin=False) + encode_frame(
        Opcode.CONTINUATION, subscribe[7:], mask=True
    )
    server_bytes = encode_frame(Opcode.TEXT, b'{"type":"welcome"}') + encode_frame(
        Opcode.TEXT, server("confirm_subscription", ROOM1)
    )
    events: list[ProtocolEvent] = []
    for piece in splitter(client_bytes):
        for _, payload in client_reader.feed(piece):
            events += session.client_text(payload)
    for piece in splitter(server_bytes):
        for _, payload in server_reader.feed(piece):
            events += session.server_text(payload)
    assert events == [Joined("ChatChannel")]


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

_IDENTIFIERS = [ROOM1, ROOM2, ident("Other"), ident("$pubsub", stream_name="s")]


@settings(max_examples=200, deadline=None)
@given(
    actions=st.lists(
        st.tuples(
            st.sampled_from(["subscribe", "unsubscribe", "answer", "broadcast"]),
            st.sampled_from(_IDENTIFIERS),
            st.booleans(),
        ),
        max_size=30,
    )
)
def test_session_follows_what_the_client_holds(actions: list[tuple[str, str, bool]]) -> None:
    """A model of @rails/actioncable: a subscription is held once confirmed, forgotten on
    unsubscribe or rejection; the counted topics are the topics of what it holds."""
    session = ActionCableSession()
    asked: set[str] = set()
    held: set[str] = set()
    for action, identifier, accept in actions:
        if action == "subscribe":
            session.client_text(command("subscribe", identifier))
            asked.add(identifier)
        elif action == "unsubscribe":
            session.client_text(command("unsubscribe", identifier))
            asked.discard(identifier)
            held.discard(identifier)
        elif action == "answer" and identifier in asked:
            kind = "confirm_subscription" if accept else "reject_subscription"
            session.server_text(server(kind, identifier))
            asked.discard(identifier)
            if accept:
                held.add(identifier)
            else:
                held.discard(identifier)
        elif action == "broadcast":
            body = {"identifier": identifier, "message": {"type": "reject_subscription"}}
            session.server_text(json.dumps(body).encode())
        expected = {topic_of_identifier(identifier) for identifier in held}
        assert session.topics == frozenset(topic for topic in expected if topic)


@settings(max_examples=300, deadline=None)
@given(
    payload=st.binary(max_size=60)
    | st.builds(
        lambda kind, identifier, tail: (
            json.dumps({"command": kind, "type": kind, "identifier": identifier}).encode()[
                : len(tail) + 10
            ]
            + tail
        ),
        st.sampled_from(["subscribe", "unsubscribe", "confirm_subscription"]),
        st.sampled_from(_IDENTIFIERS) | st.text(max_size=10),
        st.binary(max_size=10),
    ),
)
def test_fuzz_session_raises_only_protocol_errors(payload: bytes) -> None:
    session = ActionCableSession(max_identifiers=3)
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
