"""Unit and fuzz tests of the Pusher protocol reader (protocols.pusher)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsgauge_sidecar.exceptions import ProtocolError, ProtocolLimitError
from wsgauge_sidecar.protocols.base import Joined, Left
from wsgauge_sidecar.protocols.pusher import PusherSession


def event(name: str, channel: str | None = None, data: object = None) -> bytes:
    body: dict[str, object] = {"event": name, "data": data if data is not None else {}}
    if channel is not None:
        body["channel"] = channel
    return json.dumps(body).encode()


def test_counted_on_success_refusal_not_counted_left_on_unsubscribe() -> None:
    session = PusherSession()
    assert (
        session.server_text(event("pusher:connection_established", data='{"socket_id":"1.2"}'))
        == ()
    )
    assert session.client_text(event("pusher:subscribe", data={"channel": "chat"})) == ()
    assert list(session.server_text(event("pusher_internal:subscription_succeeded", "chat"))) == [
        Joined("chat")
    ]
    # a second success for the same channel changes nothing
    assert list(session.server_text(event("pusher_internal:subscription_succeeded", "chat"))) == []
    session.client_text(event("pusher:subscribe", data={"channel": "private-x", "auth": "bad"}))
    assert list(session.server_text(event("pusher:subscription_error", "private-x"))) == []
    assert session.server_text(event("new-message", "chat", data='{"t":"hi"}')) == ()
    assert session.client_text(event("client-typing", "chat")) == ()
    assert list(session.client_text(event("pusher:unsubscribe", data={"channel": "chat"}))) == [
        Left("chat", "unsubscribe")
    ]
    assert list(session.client_text(event("pusher:unsubscribe", data='{"channel":"chat"}'))) == []
    assert session.topics == frozenset()


def test_string_data_and_escaped_names_are_followed() -> None:
    session = PusherSession()
    text = event("pusher_internal:subscription_succeeded", "presence-r")
    assert list(session.server_text(text.replace(b"_", b"\\u005f"))) == [Joined("presence-r")]
    text = event("pusher:unsubscribe", data=json.dumps({"channel": "presence-r"}))
    escaped = text.replace(b"pusher:unsubscribe", b"pusher\\u003aunsubscribe")
    assert list(session.client_text(escaped)) == [Left("presence-r", "unsubscribe")]


@pytest.mark.parametrize("text", [b"pusher:unsubscribe", b'["pusher:unsubscribe"]', b'{"\\u'])
def test_inspected_malformed_messages_raise_1007(text: bytes) -> None:
    with pytest.raises(ProtocolError) as caught:
        PusherSession().client_text(text)
    assert caught.value.close_code == 1007


def test_more_channels_than_the_bound_raise_1008() -> None:
    session = PusherSession(max_channels=1)
    session.server_text(event("pusher_internal:subscription_succeeded", "a"))
    with pytest.raises(ProtocolLimitError):
        session.server_text(event("pusher_internal:subscription_succeeded", "b"))


_EVENTS = [
    "pusher:subscribe",
    "pusher:unsubscribe",
    "pusher_internal:subscription_succeeded",
    "pusher:subscription_error",
    "message",
    "pusher:ping",
]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.booleans(),
            st.sampled_from(_EVENTS),
            st.sampled_from(["a", "b"]),
            st.booleans(),
        ),
        max_size=20,
    )
)
def test_fuzz_the_filters_follow_the_same_channels_as_full_decoding(
    stream: list[tuple[bool, str, str, bool]],
) -> None:
    fast, full = PusherSession(), PusherSession()
    for from_client, name, channel, escape in stream:
        text = event(name, channel, data={"channel": channel})
        if escape:
            text = text.replace(b"s", b"\\u0073")
        fast_events = (fast.client_text if from_client else fast.server_text)(text)
        full_events = (full.client_message if from_client else full.server_message)(text)
        assert list(fast_events) == list(full_events)
    assert fast.topics == full.topics


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.text(max_size=60)), max_size=10))
def test_fuzz_random_text_raises_only_1007(stream: list[tuple[bool, str]]) -> None:
    session = PusherSession()
    for from_client, text in stream:
        code = None
        try:
            (session.client_text if from_client else session.server_text)(text.encode())
        except ProtocolError as error:
            code = error.close_code
        assert code in (None, 1007)
        if code is not None:
            return
