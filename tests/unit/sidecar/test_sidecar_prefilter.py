"""The pre-filter's scans (protocols.prefilter): the pure-Python reference of each, byte by
byte; the native relay's scans against that reference on fuzzed payloads; and the MQTT and
STOMP sessions followed through their filters, with packets and frames split across and
batched within messages anywhere, reporting what sessions given every message report."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_sidecar_message_filters import ERROR, feed
from test_sidecar_proto_mqtt import packet as mqtt_packet
from test_sidecar_proto_mqtt import string as mqtt_string
from test_sidecar_proto_stomp import frame as stomp_frame
from wsgauge_sidecar.native_relay import load_extension, native_test
from wsgauge_sidecar.protocols.base import ProtocolSession
from wsgauge_sidecar.protocols.mqtt import MqttPacketScan, MqttSession
from wsgauge_sidecar.protocols.prefilter import (
    EVERY,
    MessageTest,
    PrefixSkip,
    message_passes,
)
from wsgauge_sidecar.protocols.stomp import StompFrameScan, StompSession
from wsgauge_sidecar.wsframes import Opcode, encode_frame

extension, why = load_extension()

MQTT_CLIENT = MqttPacketScan(frozenset({1, 8, 10}))
STOMP_CLIENT = StompFrameScan((b"SUBSCRIBE", b"UNSUBSCRIBE"))


PUBLISH = mqtt_packet(3, mqtt_string("chat") + b"hello")
BIG_PUBLISH = mqtt_packet(3, mqtt_string("chat") + b"x" * 300)  # a 2-byte remaining length
SUBSCRIBE = mqtt_packet(8, b"\x00\x01" + mqtt_string("chat") + b"\x01", 2)


# -- the references, byte by byte ---------------------------------------------------------


def test_prefix_skip_passes_all_but_its_prefixes() -> None:
    skip = PrefixSkip((b"2", b"42"))
    assert not skip.passes(b"2probe")
    assert not skip.passes(b'42["ev"]')
    assert skip.passes(b"40/chat,")
    assert skip.passes(b"4")
    assert skip.passes(b"")


def test_mqtt_scan_skips_only_whole_packets_of_other_types() -> None:
    assert not MQTT_CLIENT.passes(PUBLISH)
    assert not MQTT_CLIENT.passes(PUBLISH + BIG_PUBLISH + b"\xc0\x00")  # batched, PINGREQ
    assert not MQTT_CLIENT.passes(b"")
    assert MQTT_CLIENT.passes(PUBLISH + SUBSCRIBE)  # a wanted packet in the batch
    for cut in range(1, len(BIG_PUBLISH)):
        assert MQTT_CLIENT.passes(BIG_PUBLISH[:cut])  # the packet goes on in a later message
    assert MQTT_CLIENT.passes(b"\x00\x00")  # reserved type 0: the session refuses it
    assert MQTT_CLIENT.passes(b"\x30\xff\xff\xff\xff\x01")  # remaining length over 4 bytes
    assert not MqttPacketScan(frozenset()).passes(SUBSCRIBE)


@pytest.mark.parametrize("eol", ["\n", "\r\n"])
def test_stomp_scan_skips_only_whole_frames_of_other_commands(eol: str) -> None:
    send = stomp_frame("SEND", b"a\0b", eol, destination="/q", content_length="3")
    message = stomp_frame("MESSAGE", b"hi", eol, destination="/q")
    subscribe = stomp_frame("SUBSCRIBE", b"", eol, destination="/q", id="1")
    assert not STOMP_CLIENT.passes(send)
    assert not STOMP_CLIENT.passes(b"\n\r\n" + send + eol.encode() + message + b"\n")
    assert not STOMP_CLIENT.passes(b"\n")  # heart-beats
    assert STOMP_CLIENT.passes(send + subscribe)
    for cut in range(1, len(message)):
        assert STOMP_CLIENT.passes(message[:cut]) == bool(message[:cut].strip(b"\r\n"))
    bad_length = stomp_frame("SEND", b"x", eol, content_length="one")
    assert STOMP_CLIENT.passes(bad_length)  # malformed: the session says so
    assert STOMP_CLIENT.passes(stomp_frame("SEND", b"xy", eol, content_length="1"))
    assert STOMP_CLIENT.passes(stomp_frame("SEND", b"x", eol, content_length="9" * 19))


def test_message_passes_reads_needles_and_scans() -> None:
    assert message_passes(EVERY, b"")
    assert not message_passes((), b"anything")
    assert message_passes((b"phx_",), b'["phx_join"]')
    assert not message_passes(MQTT_CLIENT, PUBLISH)


# -- the native scans against the references ------------------------------------------------

mqtt_payloads = st.lists(
    st.one_of(
        st.sampled_from([PUBLISH, BIG_PUBLISH, SUBSCRIBE, b"\xc0\x00", b"\xd0\x00"]),
        st.builds(mqtt_packet, st.integers(0, 15), st.binary(max_size=140)),
        st.binary(max_size=6),
    ),
    max_size=5,
).map(b"".join)

stomp_payloads = st.lists(
    st.one_of(
        st.builds(
            stomp_frame,
            st.sampled_from(["SEND", "MESSAGE", "SUBSCRIBE", "UNSUBSCRIBE", "ERROR", "ACK"]),
            st.binary(max_size=20),
            st.sampled_from(["\n", "\r\n"]),
        ),
        st.builds(
            lambda body, length: stomp_frame("SEND", body, content_length=length),
            st.binary(max_size=20),
            st.sampled_from(["0", "3", " 5\r", "x", "", "12345678901234567890"]),
        ),
        st.sampled_from([b"\n", b"\r\n", b"SEND\n", b"\n\n", b"\0", b"content-length:2\n"]),
        st.binary(max_size=8),
    ),
    max_size=5,
).map(b"".join)


def native_passes(test: MessageTest, payload: bytes) -> bool:
    """Whether the native relay's message reader hands over a binary message under ``test``."""
    assert extension is not None
    reader = extension.Reader(False, 1 << 20, (), native_test(test, extension))
    return bool(reader.feed(encode_frame(Opcode.BINARY, payload)))


@pytest.mark.skipif(extension is None, reason=f"the native relay is {why}")
@settings(max_examples=600, deadline=None)
@given(
    st.one_of(
        st.tuples(st.just(MQTT_CLIENT), mqtt_payloads),
        st.tuples(st.just(MqttPacketScan(frozenset({9, 11}))), mqtt_payloads),
        st.tuples(st.just(STOMP_CLIENT), stomp_payloads),
        st.tuples(st.just(StompFrameScan((b"CONNECTED", b"ERROR"))), stomp_payloads),
        st.tuples(
            st.just(PrefixSkip((b"0", b"2", b"42"))),
            st.sampled_from([b"", b"0", b"2probe", b"4", b"40", b"42[]", b"1", b"x"]),
        ),
    )
)
def test_native_scans_agree_with_the_references(case: tuple[MessageTest, bytes]) -> None:
    test, payload = case
    assert native_passes(test, payload) == message_passes(test, payload)


# -- sessions through their filters, packets and frames split anywhere -----------------------

MQTT_CLIENT_PACKETS = [
    mqtt_packet(1, mqtt_string("MQTT") + b"\x05\x02\x00\x3c\x00" + mqtt_string("c")),
    mqtt_packet(8, b"\x00\x01\x00" + mqtt_string("a") + b"\x01", 2),
    mqtt_packet(8, b"\x00\x02\x00" + mqtt_string("b") + b"\x01" + mqtt_string("c") + b"\x00", 2),
    mqtt_packet(10, b"\x00\x03\x00" + mqtt_string("a"), 2),
    PUBLISH,
    BIG_PUBLISH,
    b"\xc0\x00",
    b"\x00\x00",  # malformed
]
MQTT_SERVER_PACKETS = [
    mqtt_packet(2, b"\x00\x00\x00"),
    mqtt_packet(9, b"\x00\x01\x00\x00"),
    mqtt_packet(9, b"\x00\x02\x00\x01\x80"),
    mqtt_packet(11, b"\x00\x03\x00\x00"),
    PUBLISH,
    BIG_PUBLISH,
    b"\xd0\x00",
]
STOMP_CLIENT_FRAMES = [
    stomp_frame("CONNECT", accept_version="1.2", host="h"),
    stomp_frame("SUBSCRIBE", id="1", destination="/topic/a"),
    stomp_frame("SUBSCRIBE", b"", "\r\n", id="2", destination="/topic/b"),
    stomp_frame("UNSUBSCRIBE", id="1"),
    stomp_frame("SEND", b"x\0y", destination="/topic/a", content_length="3"),
    stomp_frame("SEND", b"hello", destination="/topic/a"),
    b"\n",
    stomp_frame("SEND", b"xy", content_length="1"),  # malformed
]
STOMP_SERVER_FRAMES = [
    stomp_frame("CONNECTED", version="1.2"),
    stomp_frame("MESSAGE", b"hi", destination="/topic/a", subscription="1"),
    stomp_frame("MESSAGE", b"hi\0", destination="/topic/b", content_length="3"),
    stomp_frame("ERROR", message="no"),
    b"\r\n",
]


@st.composite
def chopped(
    draw: st.DrawFn, client: Sequence[bytes], server: Sequence[bytes]
) -> list[tuple[bool, bytes]]:
    """A conversation of whole packets (frames), then cut into messages anywhere: runs of one
    direction joined, and cut at random points (a message may end inside a packet)."""
    items = draw(
        st.lists(
            st.one_of(
                st.tuples(st.just(True), st.sampled_from(client)),
                st.tuples(st.just(False), st.sampled_from(server)),
            ),
            max_size=14,
        )
    )
    messages: list[tuple[bool, bytes]] = []
    index = 0
    while index < len(items):
        from_client = items[index][0]
        run = b""
        while index < len(items) and items[index][0] == from_client:
            run += items[index][1]
            index += 1
        cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(run) - 1)), max_size=4))))
        start = 0
        for end in [*cuts, len(run)]:
            if end > start:
                messages.append((from_client, run[start:end]))
                start = end
    return messages


def follow_both(
    new_session: Callable[[], ProtocolSession], messages: list[tuple[bool, bytes]], binary: bool
) -> None:
    """A session given every message and one given those its filter passes agree throughout."""
    every, filtered = new_session(), new_session()
    for from_client, payload in messages:
        expected = feed(every, (from_client, binary, payload))
        if filtered.message_filter.wants(payload, from_client=from_client, binary=binary):
            got = feed(filtered, (from_client, binary, payload))
        else:
            got = []
        assert list(got) == list(expected)
        if ERROR in expected:
            return
        assert filtered.topics == every.topics


@settings(max_examples=500, deadline=None)
@given(chopped(MQTT_CLIENT_PACKETS, MQTT_SERVER_PACKETS))
def test_mqtt_filtered_session_follows_the_same_topics(messages: list[tuple[bool, bytes]]) -> None:
    follow_both(MqttSession, messages, binary=True)


@settings(max_examples=500, deadline=None)
@given(chopped(STOMP_CLIENT_FRAMES, STOMP_SERVER_FRAMES), st.booleans())
def test_stomp_filtered_session_follows_the_same_topics(
    messages: list[tuple[bool, bytes]], binary: bool
) -> None:
    follow_both(StompSession, messages, binary=binary)


def client_test(session: ProtocolSession, *, binary: bool) -> MessageTest:
    """The session's test of client messages now."""
    return session.message_filter.test(from_client=True, binary=binary)


def test_mqtt_filter_widens_inside_a_packet_and_narrows_after_it() -> None:
    session = MqttSession()
    session.client_binary(MQTT_CLIENT_PACKETS[0])
    assert client_test(session, binary=True) == MQTT_CLIENT
    session.client_binary(BIG_PUBLISH[:10])
    assert client_test(session, binary=True) == EVERY
    session.client_binary(BIG_PUBLISH[10:])
    assert client_test(session, binary=True) == MQTT_CLIENT


def test_stomp_filter_is_every_message_on_sockjs_sockets() -> None:
    raw, sockjs = StompSession(), StompSession(sockjs=True)
    assert client_test(raw, binary=False) == STOMP_CLIENT
    raw.client_text(b"SEND\n")
    assert client_test(raw, binary=False) == EVERY
    assert client_test(sockjs, binary=False) == EVERY
    sockjs.server_text(b"o")
    assert sockjs.message_filter.server_text == EVERY
