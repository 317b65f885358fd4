"""The stats document and the watch-stream framing: round trips, strict
validation, byte-by-byte decoding, and fuzzing (only documented errors escape)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsgauge_contract import (
    Capacity,
    ContractError,
    InvalidStatsDocument,
    StatsDocument,
    WatchHeartbeat,
    WatchStreamDecoder,
    WatchStreamError,
    decode_stats_document,
    encode_stats_document,
    encode_watch_heartbeat,
    encode_watch_line,
)

DESIGN_EXAMPLE = (
    b'{"pod": "chat-7d9f-abc", "namespace": "prod", "node": "node-1",'
    b' "connections": 120, "topics": {"stream": 100, "stats": 20},'
    b' "opened": 1234, "closed": 1114,'
    b' "capacity": {"max": 5000, "readyBelow": 4000},'
    b' "ready": true, "draining": false,'
    b' "startedAt": "2026-11-26T10:00:00Z", "seq": 17}'
)


def test_design_example_decodes_field_by_field() -> None:
    doc = decode_stats_document(DESIGN_EXAMPLE)
    assert doc.pod == "chat-7d9f-abc"
    assert doc.namespace == "prod"
    assert doc.node == "node-1"
    assert doc.connections == 120
    assert dict(doc.topics) == {"stream": 100, "stats": 20}
    assert (doc.opened, doc.closed) == (1234, 1114)
    assert doc.capacity == Capacity(max=5000, ready_below=4000)
    assert doc.ready is True
    assert doc.draining is False
    assert doc.started_at == "2026-11-26T10:00:00Z"
    assert doc.seq == 17


def test_encode_uses_the_contract_keys() -> None:
    doc = StatsDocument(pod="p", connections=3, topics={"a": 2}, capacity=Capacity(max=10))
    data = json.loads(encode_stats_document(doc))
    assert set(data) == {
        "pod", "namespace", "node", "connections", "topics", "opened", "closed",
        "capacity", "refused", "ready", "draining", "startedAt", "seq",
    }  # fmt: skip
    assert data["capacity"] == {
        "max": 10, "readyBelow": None, "topics": {}, "upgradesPerSecond": None,
    }  # fmt: skip
    assert data["refused"] == {}
    assert decode_stats_document(encode_stats_document(doc)) == doc


def test_limits_and_refusals_round_trip_and_are_optional() -> None:
    doc = StatsDocument(
        capacity=Capacity(topics={"stream": 40}, upgrades_per_second=2.5),
        refused={"rate_limited": 7, "topic_capacity": 1},
    )
    data = json.loads(encode_stats_document(doc))
    assert data["capacity"]["topics"] == {"stream": 40}
    assert data["capacity"]["upgradesPerSecond"] == 2.5
    assert data["refused"] == {"rate_limited": 7, "topic_capacity": 1}
    assert decode_stats_document(encode_stats_document(doc)) == doc
    # a document of an earlier sidecar, without them, still decodes
    earlier = decode_stats_document(b'{"capacity": {"max": 3, "readyBelow": null}}')
    assert earlier.capacity == Capacity(max=3)
    assert dict(earlier.refused) == {}


@pytest.mark.parametrize(
    "raw",
    [
        b'{"refused": []}',
        b'{"refused": {"rate_limited": -1}}',
        b'{"refused": {"rate_limited": true}}',
        b'{"capacity": {"topics": {"a": 1.5}}}',
        b'{"capacity": {"upgradesPerSecond": 0}}',
        b'{"capacity": {"upgradesPerSecond": "5"}}',
        b'{"capacity": {"upgradesPerSecond": true}}',
    ],
)
def test_bad_limits_or_refusals_are_invalid(raw: bytes) -> None:
    with pytest.raises(InvalidStatsDocument):
        decode_stats_document(raw)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"[]", "JSON object"),
        (b"{", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b'{"connections": -1}', "negative"),
        (b'{"connections": true}', "boolean"),
        (b'{"connections": 1.5}', "integer"),
        (b'{"connections": "7"}', "integer"),
        (b'{"connections": 1e300}', "large"),
        (b'{"topics": []}', "'topics' must be an object"),
        (b'{"topics": {"a": -3}}', "negative"),
        (b'{"ready": "yes"}', "boolean"),
        (b'{"capacity": 5}', "'capacity' must be an object"),
        (b'{"pod": 5}', "must be a string"),
        (b'{"pod": "' + b"x" * 300 + b'"}', "longer than"),
    ],
)
def test_invalid_documents_are_refused_with_a_clear_message(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidStatsDocument, match=message):
        decode_stats_document(raw)


def test_size_and_topic_limits() -> None:
    with pytest.raises(InvalidStatsDocument, match="exceeds"):
        decode_stats_document(b" " * 101 + b"{}", max_bytes=100)
    many = json.dumps({"topics": {f"t{i}": 1 for i in range(11)}})
    with pytest.raises(InvalidStatsDocument, match="limit 10"):
        decode_stats_document(many, max_topics=10)


def test_unknown_keys_are_ignored_for_forward_compatibility() -> None:
    assert decode_stats_document(b'{"connections": 2, "future": {"x": 1}}').connections == 2


def test_watch_stream_byte_by_byte_equals_whole() -> None:
    docs = [StatsDocument(pod="p", connections=i, seq=i) for i in range(3)]
    stream = (
        encode_watch_line(docs[0])
        + encode_watch_heartbeat()
        + encode_watch_line(docs[1])
        + encode_watch_line(docs[2])
    )
    whole = WatchStreamDecoder().feed(stream)
    assert whole == [docs[0], WatchHeartbeat(), docs[1], docs[2]]
    decoder = WatchStreamDecoder()
    piecewise: list[StatsDocument | WatchHeartbeat] = []
    for index in range(len(stream)):
        piecewise.extend(decoder.feed(stream[index : index + 1]))
    assert piecewise == whole


def test_watch_stream_refuses_an_endless_line() -> None:
    decoder = WatchStreamDecoder(max_line_bytes=64)
    with pytest.raises(WatchStreamError):
        decoder.feed(b"{" + b" " * 100)


def test_watch_stream_crlf_lines_are_accepted() -> None:
    line = encode_stats_document(StatsDocument(seq=4)) + b"\r\n"
    assert WatchStreamDecoder().feed(line) == [StatsDocument(seq=4)]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_decoder_raises_only_contract_errors(data: bytes) -> None:
    decoder = WatchStreamDecoder(max_line_bytes=200)
    try:
        events = decoder.feed(data)
    except ContractError:
        return
    assert all(isinstance(e, (StatsDocument, WatchHeartbeat)) for e in events)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            ["pod", "connections", "topics", "capacity", "ready", "seq", "opened", "startedAt"]
        ),
        json_values,
    )
)
def test_fuzz_json_shapes_raise_only_invalid_document(data: dict[str, object]) -> None:
    try:
        doc = StatsDocument.from_json_dict(data)
    except InvalidStatsDocument:
        return
    assert doc.connections >= 0
    assert all(count >= 0 for count in doc.topics.values())
    assert decode_stats_document(encode_stats_document(doc)) == doc


def test_topic_protocols_are_optional_and_round_trip() -> None:
    plain = StatsDocument(topics={"/chat": 2})
    assert "topicProtocols" not in plain.to_json_dict()
    assert decode_stats_document(encode_stats_document(plain)).topic_protocols is None
    auto = StatsDocument(
        topics={"/chat": 2, "x": 1}, topic_protocols={"/chat": "socketio", "x": "centrifugo,path"}
    )
    decoded = decode_stats_document(encode_stats_document(auto))
    assert decoded.to_json_dict()["topicProtocols"] == {"/chat": "socketio", "x": "centrifugo,path"}
    assert decoded == auto


@pytest.mark.parametrize("value", [[], {"t": 1}, {"t": None}, {"t": "x" * 300}])
def test_bad_topic_protocols_are_refused(value: object) -> None:
    with pytest.raises(InvalidStatsDocument):
        StatsDocument.from_json_dict({"topicProtocols": value})
