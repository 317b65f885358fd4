"""Unit, model-based and fuzz tests of the Socket.IO reader (wsgauge_sidecar.protocols.socketio)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsgauge_sidecar.exceptions import ProtocolError, ProtocolLimitError
from wsgauge_sidecar.protocols.base import Joined, Left, ProtocolEvent
from wsgauge_sidecar.protocols.socketio import SocketIoSession, parse_namespace_packet
from wsgauge_sidecar.wsframes import MessageReader, Opcode, encode_frame

Splitter = Callable[[bytes], Iterator[bytes]]


def test_main_namespace_and_a_named_one() -> None:
    session = SocketIoSession()
    assert session.server_text(b'0{"sid":"e1","upgrades":[],"pingInterval":25000}') == ()
    assert session.client_text(b"40") == ()
    assert session.topics == frozenset()
    assert session.server_text(b'40{"sid":"s1"}') == [Joined("/")]
    assert session.client_text(b'40/chat,{"token":"t"}') == ()
    assert session.server_text(b'40/chat,{"sid":"s2"}') == [Joined("/chat")]
    assert session.topics == frozenset({"/", "/chat"})
    assert session.client_text(b'42/chat,["msg","41/chat,"]') == ()
    assert session.server_text(b'42["news",{"a":1}]') == ()
    assert session.client_text(b"41/chat,") == [Left("/chat", "leave")]
    assert session.server_text(b"41") == [Left("/", "close")]
    assert session.topics == frozenset()


def test_refused_namespace_is_not_counted() -> None:
    session = SocketIoSession()
    session.client_text(b"40/admin,")
    assert session.server_text(b'44/admin,{"message":"Not authorized"}') == ()
    assert session.topics == frozenset()


def test_connect_error_for_a_connected_namespace_leaves_it() -> None:
    session = SocketIoSession()
    session.server_text(b'40/a,{"sid":"x"}')
    assert session.server_text(b'44/a,{"message":"gone"}') == [Left("/a", "error")]


def test_repeated_connect_counts_once_and_engine_close_leaves_all() -> None:
    session = SocketIoSession()
    assert session.server_text(b'40/a,{"sid":"1"}') == [Joined("/a")]
    assert session.server_text(b'40/a,{"sid":"2"}') == ()
    session.server_text(b'40{"sid":"3"}')
    assert session.client_text(b"1") == [Left("/", "close"), Left("/a", "close")]
    assert session.topics == frozenset()


def test_client_connect_requests_and_error_packets_never_count() -> None:
    session = SocketIoSession()
    assert session.client_text(b"40/a,") == ()
    assert session.client_text(b'44/a,{"message":"x"}') == ()
    assert session.topics == frozenset()


def test_v2_query_on_namespace_is_not_part_of_the_name() -> None:
    assert parse_namespace_packet(b"40/chat?token=abc,") == (ord("0"), "/chat", None)
    assert parse_namespace_packet(b"40/chat") == (ord("0"), "/chat", None)
    assert parse_namespace_packet(b'4012{"sid":"x"}') == (ord("0"), "/", {"sid": "x"})


def test_binary_attachments_and_probes_pass() -> None:
    session = SocketIoSession()
    assert session.client_text(b"2probe") == ()
    assert session.server_text(b"3probe") == ()
    assert session.client_text(b"5") == ()
    assert session.client_binary(b"\x04\x00\x01") == ()
    assert session.server_binary(b"") == ()
    assert session.server_text(b'451-["file",{"_placeholder":true,"num":0}]') == ()


@pytest.mark.parametrize(
    "payload", [b"", b"7", b"x", b"4", b"49", b'40{"sid":', b"41/a,{nope", b"44/a,{"]
)
def test_malformed_inspected_packets_raise_1007(payload: bytes) -> None:
    with pytest.raises(ProtocolError) as raised:
        SocketIoSession().server_text(payload)
    assert raised.value.close_code == 1007


def test_one_namespace_past_the_bound_closes_with_1008() -> None:
    session = SocketIoSession(max_namespaces=2)
    session.server_text(b"40/a,")
    session.server_text(b"40/b,")
    with pytest.raises(ProtocolLimitError) as raised:
        session.server_text(b"40/c,")
    assert raised.value.close_code == 1008


def _feed(reader: MessageReader, session: SocketIoSession, data: bytes, *, client: bool,
          splitter: Splitter) -> list[ProtocolEvent]:  # fmt: skip
    events: list[ProtocolEvent] = []
    for piece in splitter(data):
        for opcode, payload in reader.feed(piece):
            if opcode == Opcode.TEXT:
                events += session.client_text(payload) if client else session.server_text(payload)
            elif opcode == Opcode.BINARY:
                events += session.client_binary(payload) if client else []
    return events


def test_session_through_the_frame_reader_over_any_split(splitter: Splitter) -> None:
    session = SocketIoSession()
    client, server = MessageReader(masked=True), MessageReader(masked=False)
    client_bytes = b"".join(
        [
            encode_frame(Opcode.TEXT, b"40/chat,", mask=True),
            encode_frame(Opcode.TEXT, b'42/chat,["a"]', mask=True, fin=False),
            encode_frame(Opcode.CONTINUATION, b"", mask=True),
            encode_frame(Opcode.BINARY, b"\x01\x02", mask=True),
        ]
    )
    server_bytes = encode_frame(Opcode.TEXT, b'40/chat,{"sid":"q"}', fin=False) + encode_frame(
        Opcode.CONTINUATION, b""
    )
    assert _feed(client, session, client_bytes, client=True, splitter=splitter) == []
    assert _feed(server, session, server_bytes, client=False, splitter=splitter) == [
        Joined("/chat")
    ]
    leave = encode_frame(Opcode.TEXT, b"41/chat,", mask=True)
    assert _feed(client, session, leave, client=True, splitter=splitter) == [Left("/chat", "leave")]


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

_NAMESPACES = ["/", "/chat", "/admin", "/a,b"]
_action = st.tuples(
    st.sampled_from(["connect", "refuse", "client_leave", "server_leave", "event", "close"]),
    st.sampled_from(_NAMESPACES[:3]),
)


def _prefix(namespace: str) -> str:
    return "" if namespace == "/" else namespace + ","


@settings(max_examples=200, deadline=None)
@given(actions=st.lists(_action, max_size=30))
def test_session_follows_a_socketio_server(actions: list[tuple[str, str]]) -> None:
    """The counted namespaces equal those socket.io-client holds after every packet."""
    session = SocketIoSession()
    held: set[str] = set()
    for action, namespace in actions:
        events: list[ProtocolEvent] = []
        if action == "connect":
            events += session.client_text(f"40{_prefix(namespace)}".encode())
            events += session.server_text(f'40{_prefix(namespace)}{{"sid":"x"}}'.encode())
            held.add(namespace)
        elif action == "refuse":
            events += session.server_text(f'44{_prefix(namespace)}{{"message":"no"}}'.encode())
            held.discard(namespace)
        elif action == "client_leave" and namespace in held:
            events += session.client_text(f"41{_prefix(namespace)}".encode())
            held.discard(namespace)
        elif action == "server_leave":
            events += session.server_text(f"41{_prefix(namespace)}".encode())
            held.discard(namespace)
        elif action == "event":
            body = json.dumps(["ev", "40/evil,", {"41": namespace}])
            events += session.server_text(f"42{_prefix(namespace)}{body}".encode())
        elif action == "close":
            events += session.server_text(b"1")
            held.clear()
        assert session.topics == frozenset(held)
        for event in events:
            assert isinstance(event, Joined | Left)


@settings(max_examples=300, deadline=None)
@given(
    payload=st.binary(max_size=40)
    | st.builds(
        lambda head, body: head + body,
        st.sampled_from([b"40", b"41", b"44", b"42", b"1", b"4", b"40/x,", b"6"]),
        st.binary(max_size=20) | st.text(max_size=20).map(str.encode),
    ),
    client=st.booleans(),
)
def test_fuzz_session_raises_only_protocol_errors(payload: bytes, client: bool) -> None:
    session = SocketIoSession(max_namespaces=4)
    joined: set[str] = set()
    refused: ProtocolError | None = None
    try:
        for _ in range(2):
            check_events(session.client_text(payload) if client else session.server_text(payload),
                         joined)  # fmt: skip
    except ProtocolError as error:
        refused = error
    if refused is not None:
        assert refused.close_code == (1008 if isinstance(refused, ProtocolLimitError) else 1007)
    assert session.topics == joined
    assert len(joined) <= 4
