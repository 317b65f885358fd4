"""Unit, model-based and fuzz tests of the STOMP reader (protocols.stomp), raw and SockJS."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsgauge_sidecar.exceptions import ProtocolError, ProtocolLimitError
from wsgauge_sidecar.protocols.base import Joined, Left, ProtocolEvent
from wsgauge_sidecar.protocols.stomp import StompSession, is_sockjs_target


def frame(command: str, body: bytes = b"", eol: str = "\n", **headers: str) -> bytes:
    lines = [command] + [f"{name.replace('_', '-')}:{value}" for name, value in headers.items()]
    return (eol.join(lines) + eol + eol).encode() + body + b"\0"


CONNECTED = frame("CONNECTED", version="1.2", heart_beat="0,0")


def feed(
    session: StompSession, stream: list[tuple[bool, bytes]], split: str = "whole", seed: int = 0
) -> list[ProtocolEvent]:
    rng = random.Random(seed)
    events: list[ProtocolEvent] = []
    for from_client, data in stream:
        if split == "bytes":
            chunks = [data[i : i + 1] for i in range(len(data))]
        elif split == "random":
            chunks, position = [], 0
            while position < len(data):
                step = rng.randint(1, max(1, len(data) // 2))
                chunks.append(data[position : position + step])
                position += step
        else:
            chunks = [data]
        for chunk in chunks:
            events.extend((session.client_text if from_client else session.server_text)(chunk))
    return events


@pytest.mark.parametrize("split", ["whole", "bytes", "random"])
@pytest.mark.parametrize("eol", ["\n", "\r\n"])
def test_subscribe_unsubscribe_several_frames_per_message(split: str, eol: str) -> None:
    session = StompSession()
    stream = [
        (True, frame("CONNECT", eol=eol, accept_version="1.0,1.1,1.2", host="x")),
        (False, CONNECTED),
        (
            True,
            frame("SUBSCRIBE", eol=eol, id="sub-0", destination="/topic/chat")
            + b"\n"
            + frame("SUBSCRIBE", eol=eol, id="sub-1", destination="/topic/chat")
            + frame("SUBSCRIBE", eol=eol, id="sub-2", destination="/queue/a\\cb"),
        ),
        (
            False,
            frame(
                "MESSAGE",
                b"hello\0with nul",
                eol=eol,
                subscription="sub-0",
                destination="/topic/chat",
                content_length="14",
            ),
        ),
        (True, frame("SEND", b"x" * 100, eol=eol, destination="/topic/chat")),
        (True, frame("UNSUBSCRIBE", eol=eol, id="sub-0")),
        (False, b"\n"),  # heart-beat
    ]
    events = feed(session, stream, split, seed=len(eol))
    assert events == [Joined("/topic/chat"), Joined("/queue/a:b")]
    assert session.topics == {"/topic/chat", "/queue/a:b"}
    events = feed(session, [(True, frame("UNSUBSCRIBE", id="sub-1"))], split)
    assert events == [Left("/topic/chat", "unsubscribe")]


def test_error_ends_every_subscription_and_reused_id_replaces() -> None:
    session = StompSession()
    session.server_text(CONNECTED)
    assert list(session.client_text(frame("SUBSCRIBE", id="1", destination="/a"))) == [Joined("/a")]
    assert list(session.client_text(frame("SUBSCRIBE", id="1", destination="/b"))) == [
        Left("/a", "replaced"),
        Joined("/b"),
    ]
    session.client_text(frame("SUBSCRIBE", id="2", destination="/c"))
    events = session.server_text(frame("ERROR", b"denied", message="forbidden"))
    assert sorted(events, key=str) == [Left("/b", "error"), Left("/c", "error")]


def test_stomp_1_0_ids_optional_and_no_escapes() -> None:
    session = StompSession()
    session.server_text(frame("CONNECTED", session="s"))  # no version: 1.0
    assert list(session.client_text(frame("SUBSCRIBE", destination="/q\\c"))) == [Joined("/q\\c")]
    assert list(session.client_text(frame("UNSUBSCRIBE", destination="/q\\c"))) == [
        Left("/q\\c", "unsubscribe")
    ]


def test_sockjs_is_unwrapped_when_the_server_opens_with_o() -> None:
    assert is_sockjs_target("/stomp/123/abcdef/websocket")
    assert not is_sockjs_target("/stomp/websocket")
    session = StompSession(sockjs=True)
    assert list(session.server_text(b"o")) == []
    connected = CONNECTED.decode()
    assert list(session.server_text(b"a" + json.dumps([connected]).encode())) == []
    subscribe = frame("SUBSCRIBE", id="0", destination="/topic/x").decode()
    half = len(subscribe) // 2
    assert list(session.client_text(json.dumps([subscribe[:half]]).encode())) == []
    assert list(session.client_text(json.dumps([subscribe[half:]]).encode())) == [
        Joined("/topic/x")
    ]
    assert list(session.server_text(b"h")) == []
    error = frame("ERROR", message="x").decode()
    assert list(session.server_text(b"a" + json.dumps([error]).encode())) == [
        Left("/topic/x", "error")
    ]
    # a client speaking first on a SockJS-shaped URL: raw STOMP
    raw = StompSession(sockjs=True)
    raw.client_text(frame("CONNECT", accept_version="1.2"))
    assert list(raw.client_text(frame("SUBSCRIBE", id="0", destination="/r"))) == [Joined("/r")]


@pytest.mark.parametrize(
    ("sockjs", "chunks", "code"),
    [
        (False, [b"SUBSCRIBE\nno colon here\n\n\0"], 1007),
        (False, [b"SEND\ncontent-length:abc\n\nx\0"], 1007),
        (False, [b"SEND\ncontent-length:1\n\nxyz\0"], 1007),
        (False, [b"SEND\ncontent-length:" + b"9" * 19 + b"\n\nx\0"], 1009),
        (False, [b"SEND\ncontent-length:" + b"9" * 4301 + b"\n\nx\0"], 1009),
        (True, [b"not json"], 1007),
        (True, [b"[1,2]"], 1007),
    ],
)
def test_malformed_input_closes_the_socket(sockjs: bool, chunks: list[bytes], code: int) -> None:
    session = StompSession(sockjs=sockjs)
    if sockjs:
        session.server_text(b"o")
    with pytest.raises(ProtocolError) as caught:
        session.client_text(b"".join(chunks))
    assert caught.value.close_code == code


def test_bounds() -> None:
    with pytest.raises(ProtocolError) as caught:
        StompSession(max_frame_bytes=50).client_text(b"SEND\n\n" + b"x" * 100)
    assert caught.value.close_code == 1009
    session = StompSession(max_subscriptions=1)
    session.client_text(frame("SUBSCRIBE", id="1", destination="/a"))
    with pytest.raises(ProtocolLimitError):
        session.client_text(frame("SUBSCRIBE", id="2", destination="/b"))


@st.composite
def conversations(draw: st.DrawFn) -> tuple[list[tuple[bool, bytes]], set[str]]:
    stream: list[tuple[bool, bytes]] = [(False, CONNECTED)]
    subscriptions: dict[str, str] = {}
    for _ in range(draw(st.integers(0, 15))):
        ident = draw(st.sampled_from(["0", "1", "2"]))
        choice = draw(st.integers(0, 3))
        if choice == 0:
            destination = draw(st.sampled_from(["/a", "/b", "/c:d"]))
            stream.append(
                (True, frame("SUBSCRIBE", id=ident, destination=destination.replace(":", "\\c")))
            )
            subscriptions[ident] = destination
        elif choice == 1:
            stream.append((True, frame("UNSUBSCRIBE", id=ident)))
            subscriptions.pop(ident, None)
        elif choice == 2:
            body = draw(st.binary(max_size=30)).replace(b"\0", b"")
            stream.append((True, frame("SEND", body, destination="/a")))
        else:
            body = draw(st.binary(max_size=30))
            stream.append((False, frame("MESSAGE", body, content_length=str(len(body)))))
    return stream, set(subscriptions.values())


@settings(max_examples=150, deadline=None)
@given(conversations(), st.integers(0, 1000), st.sampled_from(["whole", "bytes", "random"]))
def test_model_topics_equal_the_live_subscriptions(
    conversation: tuple[list[tuple[bool, bytes]], set[str]], seed: int, split: str
) -> None:
    stream, expected = conversation
    session = StompSession()
    live: set[str] = set()
    for event in feed(session, stream, split, seed):
        if isinstance(event, Joined):
            assert event.topic not in live
            live.add(event.topic)
        else:
            live.remove(event.topic)
    assert live == expected == session.topics


@settings(max_examples=200, deadline=None)
@given(st.booleans(), st.lists(st.tuples(st.booleans(), st.binary(max_size=40)), max_size=10))
def test_fuzz_random_bytes_raise_only_protocol_errors(
    sockjs: bool, stream: list[tuple[bool, bytes]]
) -> None:
    session = StompSession(sockjs=sockjs, max_frame_bytes=200)
    code = None
    try:
        for from_client, data in stream:
            (session.client_binary if from_client else session.server_binary)(data)
            (session.client_text if from_client else session.server_text)(data)
    except ProtocolError as error:
        code = error.close_code
    assert code in (None, 1007, 1008, 1009)
