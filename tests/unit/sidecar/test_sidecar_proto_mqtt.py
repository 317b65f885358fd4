"""Unit, model-based and fuzz tests of the MQTT reader (wsgauge_sidecar.protocols.mqtt).

Packets are encoded here from the MQTT 3.1.1 / 5.0 standards and fed split
anywhere (byte by byte, at random points, several per message).
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsgauge_sidecar.exceptions import ProtocolError, ProtocolLimitError
from wsgauge_sidecar.protocols.base import Joined, Left, ProtocolEvent
from wsgauge_sidecar.protocols.mqtt import MqttSession, PacketReader


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def packet(kind: int, body: bytes, flags: int = 0) -> bytes:
    return bytes([kind << 4 | flags]) + varint(len(body)) + body


def string(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def connect(level: int) -> bytes:
    name = "MQIsdp" if level == 3 else "MQTT"
    body = string(name) + bytes([level, 2]) + (60).to_bytes(2, "big")
    if level == 5:
        body += varint(0)
    return packet(1, body + string("client"))


def props(level: int) -> bytes:
    return varint(0) if level == 5 else b""


def subscribe(level: int, packet_id: int, *filters: str) -> bytes:
    body = packet_id.to_bytes(2, "big") + props(level)
    for name in filters:
        body += string(name) + b"\x01"
    return packet(8, body, 2)


def suback(level: int, packet_id: int, *codes: int) -> bytes:
    return packet(9, packet_id.to_bytes(2, "big") + props(level) + bytes(codes))


def unsubscribe(level: int, packet_id: int, *filters: str) -> bytes:
    body = packet_id.to_bytes(2, "big") + props(level)
    return packet(10, body + b"".join(string(name) for name in filters), 2)


def unsuback(level: int, packet_id: int, *codes: int) -> bytes:
    if level == 5:
        return packet(11, packet_id.to_bytes(2, "big") + varint(0) + bytes(codes))
    return packet(11, packet_id.to_bytes(2, "big"))


def publish(topic: str, payload: bytes) -> bytes:
    return packet(3, string(topic) + payload)


def pieces(data: bytes, rng: random.Random) -> list[bytes]:
    out, position = [], 0
    while position < len(data):
        step = rng.randint(1, max(1, len(data) // 3))
        out.append(data[position : position + step])
        position += step
    return out


def run(
    session: MqttSession, stream: list[tuple[bool, bytes]], split: str = "whole", seed: int = 0
) -> list[ProtocolEvent]:
    """Feed (from_client, bytes) chunks; ``split``: whole, bytes or random."""
    rng = random.Random(seed)
    events: list[ProtocolEvent] = []
    for from_client, data in stream:
        if split == "bytes":
            chunks = [data[i : i + 1] for i in range(len(data))]
        elif split == "random":
            chunks = pieces(data, rng)
        else:
            chunks = [data]
        for chunk in chunks:
            feed = session.client_binary if from_client else session.server_binary
            events.extend(feed(chunk))
    return events


@pytest.mark.parametrize("level", [3, 4, 5])
@pytest.mark.parametrize("split", ["whole", "bytes", "random"])
def test_subscribe_granted_refused_resubscribe_unsubscribe(level: int, split: str) -> None:
    session = MqttSession()
    stream = [
        (True, connect(level)),
        (False, packet(2, b"\x00\x00" + props(level))),  # CONNACK
        (True, subscribe(level, 1, "chat/a", "chat/+", "denied")),
        (True, publish("chat/a", b"x" * 300)),
        (False, suback(level, 1, 0, 1, 0x80)),
        (False, publish("chat/a", b"y" * 200)),
        (True, subscribe(level, 2, "chat/a")),  # re-subscribe: replaces, still one
        (False, suback(level, 2, 2)),
        (True, unsubscribe(level, 3, "chat/+", "never")),
    ]
    events = run(session, stream, split, seed=level)
    assert events == [Joined("chat/a"), Joined("chat/+")]
    assert session.topics == {"chat/a", "chat/+"}
    codes = (0x00, 0x11) if level == 5 else ()
    events = run(session, [(False, unsuback(level, 3, *codes))], split)
    assert events == [Left("chat/+", "unsubscribe")]
    assert session.topics == {"chat/a"}
    assert session.version == level


def test_batched_packets_in_one_message_and_a_refused_unsubscribe_in_5() -> None:
    session = MqttSession()
    session.client_binary(connect(5) + subscribe(5, 7, "a", "b") + publish("a", b"p"))
    assert list(session.server_binary(suback(5, 7, 0, 0) + publish("a", b"q"))) == [
        Joined("a"),
        Joined("b"),
    ]
    session.client_binary(unsubscribe(5, 8, "a", "b"))
    # "a" refused (0x87 not authorized): stays; "b" removed
    assert list(session.server_binary(unsuback(5, 8, 0x87, 0x00))) == [Left("b", "unsubscribe")]
    assert session.topics == {"a"}


def test_unknown_packet_ids_and_server_packets_change_nothing() -> None:
    session = MqttSession()
    session.client_binary(connect(4))
    assert list(session.server_binary(suback(4, 99, 0))) == []
    assert list(session.server_binary(unsuback(4, 98))) == []
    assert session.topics == frozenset()


@pytest.mark.parametrize(
    ("chunks", "code"),
    [
        ([b"\x10\xff\xff\xff\xff\x01"], 1007),  # remaining length over 4 bytes
        ([b"\x00\x00"], 1007),  # reserved type 0
        ([subscribe(4, 1, "a")], 1007),  # before CONNECT
        ([connect(9)], 1007),  # unknown level
        ([connect(4), packet(8, b"\x00\x01\x00\x05ab")], 1007),  # filter past the end
        ([connect(4), packet(8, b"\x00\x01\x00\x02\xff\xfe\x00")], 1007),  # not UTF-8
        ([connect(4), packet(8, b"\x00\x01" + string("x" * 1025) + b"\x00")], 1008),
    ],
)
def test_malformed_client_packets(chunks: list[bytes], code: int) -> None:
    session = MqttSession()
    with pytest.raises(ProtocolError) as caught:
        session.client_binary(b"".join(chunks))
    assert caught.value.close_code == code


def test_text_messages_close_with_1003_and_suback_short_of_codes_with_1007() -> None:
    with pytest.raises(ProtocolError) as caught:
        MqttSession().client_text(b"hello")
    assert caught.value.close_code == 1003
    session = MqttSession()
    session.client_binary(connect(4) + subscribe(4, 1, "a", "b"))
    with pytest.raises(ProtocolError) as caught:
        session.server_binary(suback(4, 1, 0))
    assert caught.value.close_code == 1007


def test_bounds_close_with_1008_and_big_packets_with_1009() -> None:
    session = MqttSession(max_topics=2, max_pending=2)
    session.client_binary(connect(4) + subscribe(4, 1, "a", "b", "c"))
    with pytest.raises(ProtocolLimitError):
        session.server_binary(suback(4, 1, 0, 0, 0))
    session = MqttSession(max_pending=2)
    session.client_binary(connect(4) + subscribe(4, 1, "a") + subscribe(4, 2, "b"))
    with pytest.raises(ProtocolLimitError):
        session.client_binary(subscribe(4, 3, "c"))
    reader = PacketReader(frozenset({8}), max_packet_bytes=10)
    with pytest.raises(ProtocolError) as caught:
        reader.feed(subscribe(4, 1, "x" * 20))
    assert caught.value.close_code == 1009
    # an unwanted packet of any size is skipped, never buffered
    assert reader.feed(publish("t", b"z" * 5000)) == []
    assert reader.at_boundary


# ------------------------------------------------------------ model-based


@st.composite
def conversations(draw: st.DrawFn) -> tuple[int, list[tuple[bool, bytes]], set[str]]:
    """A valid conversation and the filters a broker would hold at its end."""
    level = draw(st.sampled_from([4, 5]))
    names = st.sampled_from(["a", "b", "c/#", "d/+/e"])
    stream: list[tuple[bool, bytes]] = [(True, connect(level))]
    held: set[str] = set()
    for packet_id in range(1, draw(st.integers(0, 12)) + 1):
        filters = draw(st.lists(names, min_size=1, max_size=3, unique=True))
        if draw(st.booleans()):
            codes = [draw(st.sampled_from([0, 1, 2, 0x80, 0x87])) for _ in filters]
            stream.append((True, subscribe(level, packet_id, *filters)))
            if draw(st.booleans()):
                stream.append((True, publish("a", b"m" * draw(st.integers(0, 200)))))
            stream.append((False, suback(level, packet_id, *codes)))
            held |= {name for name, code in zip(filters, codes, strict=True) if code < 0x80}
        else:
            codes = [draw(st.sampled_from([0, 0x11, 0x80])) for _ in filters]
            stream.append((True, unsubscribe(level, packet_id, *filters)))
            stream.append((False, unsuback(level, packet_id, *codes)))
            removed = {
                name for name, code in zip(filters, codes, strict=True) if level == 4 or code < 0x80
            }
            held -= removed
    return level, stream, held


@settings(max_examples=150, deadline=None)
@given(conversations(), st.integers(0, 10_000), st.sampled_from(["whole", "bytes", "random"]))
def test_model_counts_equal_the_brokers_subscriptions(
    conversation: tuple[int, list[tuple[bool, bytes]], set[str]], seed: int, split: str
) -> None:
    _, stream, held = conversation
    session = MqttSession()
    live: set[str] = set()
    for event in run(session, stream, split, seed):
        if isinstance(event, Joined):
            assert event.topic not in live
            live.add(event.topic)
        else:
            live.remove(event.topic)
    assert live == held == session.topics


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=40)), max_size=20))
def test_fuzz_random_bytes_raise_only_protocol_errors(chunks: list[tuple[bool, bytes]]) -> None:
    session = MqttSession()
    code = None
    try:
        run(session, [(True, connect(5)), *chunks])
    except ProtocolError as error:
        code = error.close_code
    assert code in (None, 1007, 1008, 1009)
