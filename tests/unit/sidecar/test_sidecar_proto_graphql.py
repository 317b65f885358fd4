"""Unit and fuzz tests of the GraphQL-over-WebSocket reader (protocols.graphql)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsgauge_sidecar.exceptions import ProtocolError, ProtocolLimitError
from wsgauge_sidecar.protocols.base import Joined, Left
from wsgauge_sidecar.protocols.graphql import GraphQLSession, subscription_topic


def message(kind: str, ident: str | None = None, **payload: object) -> bytes:
    body: dict[str, object] = {"type": kind}
    if ident is not None:
        body["id"] = ident
    if payload:
        body["payload"] = payload
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("document", "operation", "topic"),
    [
        ("subscription { messageAdded { id } }", None, "messageAdded"),
        ('subscription OnMessage { messageAdded(room: "a") { id } }', None, "OnMessage"),
        ("subscription { alias: greetings }", None, "greetings"),
        ("subscription ($room: ID!) @live { ticks(room: $room) }", None, "ticks"),
        (
            "# comment\nsubscription{...F} fragment F on Subscription { first second }",
            None,
            "first",
        ),
        ("subscription { ... on Subscription { inline } }", None, "inline"),
        ('subscription { s(arg: """block { } """) }', None, "s"),
        ("query A { a } subscription B { b }", "B", "B"),
        ("query A { a } subscription B { b }", "A", None),
        ("query A { a } subscription B { b }", None, None),  # ambiguous without a name
        ("{ hello }", None, None),
        ("mutation { add }", None, None),
        ("subscription { unbalanced ", None, None),
        ("subscription { bad ` char }", None, None),
        ("type Query { a: Int } subscription { s }", None, "s"),
    ],
)
def test_subscription_topic(document: str, operation: str | None, topic: str | None) -> None:
    assert subscription_topic(document, operation) == topic


@pytest.mark.parametrize("modern", [True, False])
def test_subscribe_refused_complete_both_subprotocols(modern: bool) -> None:
    start, stop = ("subscribe", "complete") if modern else ("start", "stop")
    data = "next" if modern else "data"
    session = GraphQLSession("graphql-transport-ws" if modern else "graphql-ws")
    assert session.client_text(message("connection_init")) == ()
    query = "subscription OnTick { tick }"
    assert list(session.client_text(message(start, "1", query=query))) == [Joined("OnTick")]
    assert list(session.client_text(message(start, "2", query=query))) == []  # same topic
    assert list(session.client_text(message(start, "3", query="{ hello }"))) == []  # a query
    assert session.server_text(message(data, "1", data={"tick": 1})) == ()
    assert list(session.server_text(message("complete", "2"))) == []
    # refused: the server's error for it ends it
    assert list(session.client_text(message(start, "4", query="subscription { nope }"))) == [
        Joined("nope")
    ]
    assert list(session.server_text(message("error", "4"))) == [Left("nope", "error")]
    assert list(session.client_text(message(stop, "1"))) == [Left("OnTick", stop)]
    assert session.topics == frozenset()


def test_legacy_start_with_a_running_id_replaces_and_modern_duplicate_is_kept() -> None:
    session = GraphQLSession("graphql-ws")
    session.client_text(message("start", "1", query="subscription { a }"))
    events = session.client_text(message("start", "1", query="subscription { b }"))
    assert list(events) == [Left("a", "replaced"), Joined("b")]
    session = GraphQLSession("graphql-transport-ws")
    session.client_text(message("subscribe", "1", query="subscription { a }"))
    assert session.client_text(message("subscribe", "1", query="subscription { b }")) == ()
    assert session.topics == {"a"}


def test_operation_name_in_the_payload_wins_and_escapes_are_not_missed() -> None:
    session = GraphQLSession()
    text = message(
        "subscribe", "x", query="subscription A { a } subscription B { b }", operationName="B"
    )
    assert list(session.client_text(text)) == [Joined("B")]
    escaped = message("complete", "x").replace(b"complete", b"\\u0063omplete")
    assert list(session.server_text(escaped)) == [Left("B", "complete")]


@pytest.mark.parametrize(
    "text",
    [
        b'{"type": "subscribe"',
        b'["subscribe"]',
        b'{"type":"subscribe","id":1,"payload":{}}',
        b'{"type":"start","id":"1","payload":"x"}',
    ],
)
def test_inspected_malformed_messages_raise_1007(text: bytes) -> None:
    with pytest.raises(ProtocolError) as caught:
        GraphQLSession().client_text(text)
    assert caught.value.close_code == 1007


def test_bounds_raise_1008() -> None:
    session = GraphQLSession(max_operations=1)
    session.client_text(message("subscribe", "1", query="subscription { a }"))
    with pytest.raises(ProtocolLimitError):
        session.client_text(message("subscribe", "2", query="subscription { a }"))
    with pytest.raises(ProtocolLimitError):
        GraphQLSession().client_text(message("subscribe", "i" * 201, query="subscription { a }"))


_KINDS = ["subscribe", "start", "complete", "stop", "next", "data", "error", "ping", "ka"]


@st.composite
def exchanges(draw: st.DrawFn) -> list[tuple[bool, bytes]]:
    out: list[tuple[bool, bytes]] = []
    for _ in range(draw(st.integers(0, 15))):
        kind = draw(st.sampled_from(_KINDS))
        ident = draw(st.sampled_from(["1", "2", "3"]))
        field = draw(st.sampled_from(["a", "b"]))
        text = message(kind, ident, query=f"subscription {{ {field} }}")
        if draw(st.booleans()):
            text = text.replace(b"e", b"\\u0065")
        out.append((draw(st.booleans()), text))
    return out


@settings(max_examples=200, deadline=None)
@given(exchanges())
def test_fuzz_the_filters_follow_the_same_topics_as_full_decoding(
    stream: list[tuple[bool, bytes]],
) -> None:
    fast, full = GraphQLSession(), GraphQLSession()
    for from_client, text in stream:
        fast_events = (fast.client_text if from_client else fast.server_text)(text)
        full_events = (full.client_message if from_client else full.server_message)(text)
        assert list(fast_events) == list(full_events)
    assert fast.topics == full.topics


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=60)), max_size=10))
def test_fuzz_random_bytes_raise_only_1007(stream: list[tuple[bool, bytes]]) -> None:
    session = GraphQLSession()
    for from_client, data in stream:
        text = data.decode("utf-8", errors="replace").encode()
        code = None
        try:
            (session.client_text if from_client else session.server_text)(text)
        except ProtocolError as error:
            code = error.close_code
        assert code in (None, 1007)
        if code is not None:
            return


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_fuzz_documents_never_raise(document: str) -> None:
    topic = subscription_topic("subscription " + document, None)
    assert topic is None or 0 < len(topic) <= 200
