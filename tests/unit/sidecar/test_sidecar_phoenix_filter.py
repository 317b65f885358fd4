"""Tests of the Phoenix pre-filters (``PhoenixSession.client_text`` / ``server_text``).

The relay hands text messages to the pre-filters, which decode only the messages
that can change the socket's topics. These tests check that the filtered session
reports exactly the events of the full decoder (``client_message`` /
``server_message``) on every valid stream, including lifecycle events spelled
with JSON ``\\u`` escapes, and that an inspected message that is not valid
JSON still raises the 1007 error while other messages are not decoded.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsgauge_sidecar.exceptions import PhoenixProtocolError
from wsgauge_sidecar.protocols.phoenix import Joined, Left, PhoenixSession, Serializer


def v2(join_ref: object, ref: object, topic: str, event: str, payload: object = None) -> bytes:
    return json.dumps([join_ref, ref, topic, event, {} if payload is None else payload]).encode()


def escape_underscores(message: bytes) -> bytes:
    """The same JSON with every ``_`` written as the escape ``\\u005f``."""
    return message.replace(b"_", b"\\u005f")


def test_join_reply_leave_through_the_filters() -> None:
    session = PhoenixSession("v2")
    assert session.client_text(v2("1", "1", "room:a", "phx_join")) == []
    assert session.server_text(v2("1", "1", "room:a", "phx_reply", {"status": "ok"})) == [
        Joined("room:a")
    ]
    assert session.client_text(v2("1", "2", "room:a", "msg", {"body": "x"})) == []
    assert session.server_text(v2("1", "2", "room:a", "phx_reply", {"status": "ok"})) == []
    assert session.client_text(v2("1", "3", "room:a", "phx_leave")) == [Left("room:a", "leave")]


def test_escaped_lifecycle_events_are_not_missed() -> None:
    session = PhoenixSession("v2")
    session.client_text(escape_underscores(v2("1", "1", "room:a", "phx_join")))
    reply = escape_underscores(v2("1", "1", "room:a", "phx_reply", {"status": "ok"}))
    assert b"phx_" not in reply
    assert session.server_text(reply) == [Joined("room:a")]
    close = escape_underscores(v2("1", "1", "room:a", "phx_close"))
    assert session.server_text(close) == [Left("room:a", "close")]


@pytest.mark.parametrize(
    ("from_client", "text"),
    [
        (True, b'["1","1","room:a","phx_join",{'),
        (True, b"phx_leave is not json"),
        (True, b'{"event": "x\\u0041"'),
        (False, b'["1",null,"room:a","phx_close"'),
        (False, b"phx_error"),
    ],
)
def test_inspected_invalid_json_raises_1007(from_client: bool, text: bytes) -> None:
    session = PhoenixSession("v2")
    with pytest.raises(PhoenixProtocolError) as caught:
        (session.client_text if from_client else session.server_text)(text)
    assert caught.value.close_code == 1007


def test_reply_is_inspected_only_while_a_join_is_pending() -> None:
    session = PhoenixSession("v2")
    broken_reply = b'["1","1","room:a","phx_reply",'
    assert session.server_text(broken_reply) == []  # no join pending: not decoded
    session.client_text(v2("1", "1", "room:a", "phx_join"))
    with pytest.raises(PhoenixProtocolError):
        session.server_text(broken_reply)


def test_messages_that_cannot_change_topics_are_not_decoded() -> None:
    session = PhoenixSession("v2")
    assert session.client_text(b"this is not json") == []
    assert session.server_text(b'{"a V1 object": "on a V2 socket"}') == []
    assert session.serializer == "v2"


_refs = st.sampled_from([None, "1", "2", 1])
_events = st.sampled_from(["phx_join", "phx_leave", "phx_reply", "phx_close", "phx_error", "msg"])
_payloads = st.sampled_from([{}, {"status": "ok"}, {"status": "error"}, {"body": "phx_x"}])


def encode(v2_shape: bool, join_ref: object, ref: object, topic: str, event: str,
           payload: object) -> bytes:  # fmt: skip
    if v2_shape:
        return json.dumps([join_ref, ref, topic, event, payload]).encode()
    return json.dumps({"topic": topic, "event": event, "payload": payload, "ref": ref}).encode()


@st.composite
def phoenix_streams(draw: st.DrawFn) -> list[tuple[bool, bytes]]:
    """Valid V1/V2 messages both ways, some underscores escaped; joins often answered ok."""
    stream: list[tuple[bool, bytes]] = []
    v2_shape = draw(st.booleans())
    last_join: tuple[object, object, str] | None = None
    for _ in range(draw(st.integers(0, 25))):
        if last_join is not None and draw(st.booleans()):
            join_ref, ref, topic = last_join
            event = draw(st.sampled_from(["phx_reply", "phx_reply", "phx_close", "phx_error"]))
            from_client, payload = False, {"status": "ok"}
            last_join = None
        else:
            from_client = draw(st.booleans())
            join_ref, ref, event, payload = draw(_refs), draw(_refs), draw(_events), draw(_payloads)
            topic = draw(st.sampled_from(["a", "b", "phoenix"]))
            if from_client and event == "phx_join":
                last_join = (join_ref, ref, topic)
        if draw(st.integers(0, 9)) == 0:
            v2_shape = not v2_shape  # a mixed stream: the full decoder rejects it
        text = encode(v2_shape, join_ref, ref, topic, event, payload)
        stream.append(
            (from_client, escape_underscores(text) if draw(st.integers(0, 4)) == 0 else text)
        )
    return stream


@settings(max_examples=400, deadline=None)
@given(messages=phoenix_streams(), serializer=st.sampled_from([None, "v1", "v2"]))
def test_filters_give_exactly_the_events_of_the_full_decoder(
    messages: list[tuple[bool, bytes]], serializer: Serializer | None
) -> None:
    full, filtered = PhoenixSession(serializer), PhoenixSession(serializer)
    for from_client, text in messages:
        try:
            if from_client:
                expected = full.client_message(text.decode())
            else:
                expected = full.server_message(text.decode())
        except PhoenixProtocolError:
            return  # a mixed V1/V2 stream: the full decoder stops it; nothing more to compare
        got = filtered.client_text(text) if from_client else filtered.server_text(text)
        assert got == expected
        assert filtered.topics == full.topics
