"""Unit tests of ``--topic auto`` (wsgauge_sidecar.protocols.auto and its rule parsing)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsgauge_sidecar.exceptions import InvalidTopicRule
from wsgauge_sidecar.httpwire import (
    RequestHead,
    ResponseHead,
    parse_request_head,
    parse_response_head,
)
from wsgauge_sidecar.protocols.auto import candidate_protocols, choose_rule
from wsgauge_sidecar.protocols.registry import PROTOCOLS
from wsgauge_sidecar.topics import parse_topic_rule

KNOWN = frozenset(PROTOCOLS)


def request(target: str, *headers: str) -> RequestHead:
    lines = [
        f"GET {target} HTTP/1.1",
        "Host: x",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        *headers,
    ]
    parsed = parse_request_head(("\r\n".join(lines) + "\r\n\r\n").encode(), 65536)
    assert parsed is not None
    return parsed[0]


def response(*headers: str) -> ResponseHead:
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        *headers,
    ]
    parsed = parse_response_head(("\r\n".join(lines) + "\r\n\r\n").encode(), 65536)
    assert parsed is not None
    return parsed[0]


@pytest.mark.parametrize(
    ("target", "headers", "accepted", "expected"),
    [
        (
            "/cable",
            ["Sec-WebSocket-Protocol: actioncable-v1-json, actioncable-unsupported"],
            ["Sec-WebSocket-Protocol: actioncable-v1-json"],
            "actioncable",
        ),
        (
            "/anything",
            ["Sec-WebSocket-Protocol: actioncable-v1-ext-json"],
            ["Sec-WebSocket-Protocol: ActionCable-V1-Ext-Json"],
            "actioncable",
        ),
        ("/cable", [], [], "actioncable"),
        ("/socket.io/?EIO=4&transport=websocket", [], [], "socketio"),
        ("/custom/?EIO=4&transport=websocket", [], [], "socketio"),
        ("/connection/websocket", [], [], "centrifugo"),
        ("/connection/websocket?format=json", [], [], "centrifugo"),
        ("/socket/websocket?vsn=2.0.0", [], [], "phoenix"),
        ("/realtime/v1/websocket?apikey=k&vsn=1.0.0", [], [], "phoenix"),
        ("/socket/websocket", [], [], "path"),
        ("/stomp/123/x8k2/websocket", [], [], "stomp"),
        (
            "/ws",
            ["Sec-WebSocket-Protocol: v12.stomp, v11.stomp"],
            ["Sec-WebSocket-Protocol: v12.stomp"],
            "stomp",
        ),
        (
            "/graphql",
            ["Sec-WebSocket-Protocol: graphql-transport-ws"],
            ["Sec-WebSocket-Protocol: graphql-transport-ws"],
            "graphql-ws",
        ),
        ("/mqtt", ["Sec-WebSocket-Protocol: mqtt"], ["Sec-WebSocket-Protocol: mqtt"], "mqtt"),
        ("/app/key123?protocol=7&client=js", [], [], "pusher"),
        ("/ws/stream", [], [], "path"),
        ("/ws/stream", ["Sec-WebSocket-Protocol: chat"], ["Sec-WebSocket-Protocol: chat"], "path"),
    ],
)
def test_choose_rule(target: str, headers: list[str], accepted: list[str], expected: str) -> None:
    assert choose_rule(request(target, *headers), response(*accepted), "path", KNOWN) == expected


def test_an_unknown_protocol_is_never_chosen() -> None:
    head = request("/socket.io/?EIO=4", "Sec-WebSocket-Protocol: actioncable-v1-json")
    accepted = response("Sec-WebSocket-Protocol: actioncable-v1-json")
    assert choose_rule(head, accepted, "query:room", frozenset()) == "query:room"
    assert choose_rule(head, accepted, "path", frozenset({"socketio"})) == "socketio"


def test_compression_is_refused_only_where_messages_may_be_read() -> None:
    auto, auto_phoenix = parse_topic_rule("auto"), parse_topic_rule("auto:phoenix")
    assert not auto.strips_extensions(request("/ws"))
    assert auto_phoenix.strips_extensions(request("/ws"))
    assert auto.strips_extensions(request("/cable"))
    offered = request("/ws", "Sec-WebSocket-Protocol: x, actioncable-v1-json")
    assert auto.strips_extensions(offered)
    assert candidate_protocols(offered, KNOWN) == {"actioncable"}
    assert parse_topic_rule("socketio").strips_extensions(request("/ws"))
    assert not parse_topic_rule("query:room").strips_extensions(request("/cable"))


def test_for_socket_gives_the_chosen_rule() -> None:
    rule = parse_topic_rule("auto:path:^/ws/([^/]+)")
    fallback = rule.for_socket(request("/ws/room"), response())
    assert (fallback.kind, fallback.argument) == ("path_regex", "^/ws/([^/]+)")
    assert rule.for_socket(request("/socket.io/?EIO=4"), response()).kind == "socketio"
    plain = parse_topic_rule("centrifugo")
    assert plain.for_socket(request("/socket.io/?EIO=4"), response()) is plain


def test_auto_rule_parsing() -> None:
    rule = parse_topic_rule("auto")
    assert (rule.kind, rule.argument, str(rule)) == ("auto", "path", "auto")
    rule = parse_topic_rule("auto:query:room")
    assert (rule.kind, rule.argument, str(rule)) == ("auto", "query:room", "auto:query:room")
    assert parse_topic_rule("auto:socketio").argument == "socketio"
    assert rule.needs_frames
    for bad in ("auto:report", "auto:auto", "auto:nope", "auto:"):
        with pytest.raises(InvalidTopicRule):
            parse_topic_rule(bad)


@settings(max_examples=200, deadline=None)
@given(
    path=st.text(alphabet="/abcio.?=&EIOvsn", max_size=30),
    offered=st.lists(
        st.sampled_from(["mqtt", "chat", "actioncable-v1-json", "v12.stomp"]), max_size=2
    ),
)
def test_the_chosen_protocol_was_foreseen_from_the_request(path: str, offered: list[str]) -> None:
    """Compression is only kept for sockets whose rule will not read frames."""
    headers = [f"Sec-WebSocket-Protocol: {', '.join(offered)}"] if offered else []
    head = request("/" + path.lstrip("/"), *headers)
    for accepted in [None, *offered]:
        answer = response(f"Sec-WebSocket-Protocol: {accepted}") if accepted else response()
        chosen = choose_rule(head, answer, "path", KNOWN)
        if chosen in KNOWN:
            assert chosen in candidate_protocols(head, KNOWN)
            assert parse_topic_rule("auto").strips_extensions(head)
