"""Unit tests of the sans-I/O HTTP/1.1 framing (wsgauge_sidecar.httpwire)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsgauge_sidecar.exceptions import HttpParseError
from wsgauge_sidecar.httpwire import (
    BodyFramer,
    RequestHead,
    ResponseHead,
    parse_request_head,
    parse_response_head,
)

MAX = 16384
Splitter = Callable[[bytes], Iterator[bytes]]  # the conftest "splitter" fixture
Head = TypeVar("Head", RequestHead, ResponseHead)


def read_messages(
    pieces: Iterable[bytes],
    parse: Callable[[bytearray, int], tuple[Head, int] | None],
    framer_for: Callable[[Head], BodyFramer],
) -> list[tuple[Head, bytes]]:
    """Drive the parser the way the proxy does: heads, then bodies, over any split."""
    buffer = bytearray()
    messages: list[tuple[Head, bytes]] = []
    head: Head | None = None
    framer: BodyFramer | None = None
    body = bytearray()
    for piece in pieces:
        buffer += piece
        while buffer:
            if framer is None:
                parsed = parse(buffer, MAX)
                if parsed is None:
                    break
                head, used = parsed
                assert bytes(buffer[:used]).endswith(head.raw)
                del buffer[:used]
                framer = framer_for(head)
            used = framer.feed(bytes(buffer))
            body += buffer[:used]
            del buffer[:used]
            if framer.done:
                assert head is not None
                messages.append((head, bytes(body)))
                body.clear()
                framer = None
            elif not buffer:
                break
        if framer is not None and framer.done and head is not None:
            messages.append((head, bytes(body)))
            body.clear()
            framer = None
    if framer is not None and framer.until_close and head is not None:
        messages.append((head, bytes(body)))
    return messages


def read_requests(pieces: Iterable[bytes]) -> list[tuple[RequestHead, bytes]]:
    return read_messages(pieces, parse_request_head, BodyFramer.for_request)


PIPELINE = (
    b"\r\nGET /ws/stream?x=1 HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n"
    b"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
    b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
    b"POST /chunked HTTP/1.1\nHost: a\nTransfer-Encoding: gzip, chunked\n\n"
    b"5;ext=1\r\nabcde\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: yes\r\n\r\n"
    b"GET /last HTTP/1.0\r\nConnection: close\r\n\r\n"
)


def test_pipelined_requests_over_any_split(splitter: Splitter) -> None:
    messages = read_requests(splitter(PIPELINE))
    assert [(head.method, head.target) for head, _ in messages] == [
        ("GET", "/ws/stream?x=1"),
        ("POST", "/echo"),
        ("POST", "/chunked"),
        ("GET", "/last"),
    ]
    upgrade, echo, chunked, last = messages
    assert upgrade[0].is_websocket_upgrade
    assert upgrade[0].keep_alive
    assert upgrade[0].header("sec-websocket-extensions") == b"permessage-deflate"
    assert echo[1] == b"hello"
    assert (
        chunked[1] == b"5;ext=1\r\nabcde\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: yes\r\n\r\n"
    )
    assert not last[0].keep_alive
    assert last[0].version == "HTTP/1.0"
    assert not echo[0].is_websocket_upgrade
    # the bytes of the stream are exactly heads + bodies (+ the skipped blank line)
    rebuilt = b"".join(head.raw + body for head, body in messages)
    assert b"\r\n" + rebuilt == PIPELINE


RESPONSES = (
    b"HTTP/1.1 100 Continue\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nxyz\r\n0\r\n\r\n"
    b"HTTP/1.1 204 No Content\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"  # answer to HEAD: no body
    b"HTTP/1.1 304\r\n\r\n"
    b"HTTP/1.0 200 OK\r\n\r\nuntil the connection closes"
)
METHODS = ["POST", "POST", "GET", "GET", "HEAD", "GET", "GET"]


def test_responses_over_any_split(splitter: Splitter) -> None:
    methods = iter(METHODS)
    messages = read_messages(
        splitter(RESPONSES),
        parse_response_head,
        lambda head: BodyFramer.for_response(head, next(methods)),
    )
    assert [(head.status, body) for head, body in messages] == [
        (100, b""),
        (200, b"abc"),
        (200, b"3\r\nxyz\r\n0\r\n\r\n"),
        (204, b""),
        (200, b""),
        (304, b""),
        (200, b"until the connection closes"),
    ]
    assert messages[0][0].is_interim
    assert messages[5][0].reason == ""
    assert not messages[6][0].keep_alive


def test_websocket_upgrade_response() -> None:
    raw = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\nrest"
    )
    parsed = parse_response_head(raw, MAX)
    assert parsed is not None
    head, used = parsed
    assert raw[used:] == b"rest"
    assert head.is_websocket_upgrade
    assert not head.is_interim
    assert BodyFramer.for_response(head, "GET").done


def test_until_close_framer_takes_everything() -> None:
    head, _ = parse_response_head(b"HTTP/1.1 200 OK\r\n\r\n", MAX) or (None, 0)
    assert head is not None
    framer = BodyFramer.for_response(head, "GET")
    assert framer.until_close
    assert not framer.done
    assert framer.feed(b"abc") == 3
    connect = BodyFramer.for_response(head, "CONNECT")
    assert connect.until_close


def test_response_with_non_chunked_transfer_encoding_reads_until_close() -> None:
    head, _ = parse_response_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", MAX) or (
        None,
        0,
    )
    assert head is not None
    assert BodyFramer.for_response(head, "GET").until_close


def test_serialize_drops_headers_and_keeps_other_lines_byte_for_byte() -> None:
    raw = (
        b"GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: a\r\nX-Odd:   spaced  \r\n"
        b"sec-websocket-extensions: permessage-deflate\r\nUpgrade: websocket\r\n\r\n"
    )
    parsed = parse_request_head(raw, MAX)
    assert parsed is not None
    head = parsed[0]
    assert head.serialize() == raw
    assert head.header("x-odd") == b"spaced"
    assert head.serialize(drop_headers={"Sec-WebSocket-Extensions"}) == (
        b"GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: a\r\nX-Odd:   spaced  \r\n"
        b"Upgrade: websocket\r\n\r\n"
    )
    assert head.serialize(add_headers=[(b"X-Forwarded-For", b"127.0.0.1")]).endswith(
        b"Upgrade: websocket\r\nX-Forwarded-For: 127.0.0.1\r\n\r\n"
    )


def test_serialize_without_raw_rebuilds() -> None:
    head = RequestHead("GET", "/", "HTTP/1.1", [(b"Host", b"a"), (b"X", b"1")])
    assert head.serialize(drop_headers=[b"x"]) == b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    response = ResponseHead("HTTP/1.1", 200, "OK", [(b"A", b"b")])
    assert response.serialize(drop_headers=["none"]) == b"HTTP/1.1 200 OK\r\nA: b\r\n\r\n"


def test_keep_alive_rules() -> None:
    def head(raw: bytes) -> RequestHead:
        parsed = parse_request_head(raw, MAX)
        assert parsed is not None
        return parsed[0]

    assert head(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").keep_alive
    assert not head(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Close\r\n\r\n").keep_alive
    assert not head(b"GET / HTTP/1.0\r\n\r\n").keep_alive
    assert head(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive


def test_incomplete_head_needs_more() -> None:
    data = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    for end in range(len(data)):
        assert parse_request_head(data[:end], MAX) is None
    assert parse_request_head(data, MAX) is not None


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"y" * 200 + b"\r\n\r\n", 413),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"y" * 200, 413),
        (b"GET /\r\n\r\n", 400),
        (b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 400),
        (b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\x00\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n", 400),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: magic, chunked\r\n\r\n", 501),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"\rGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ],
)
def test_malformed_requests(raw: bytes, status: int) -> None:
    with pytest.raises(HttpParseError) as caught:
        parse_request_head(raw, 128)
    assert caught.value.status == status


def test_identical_content_length_values_are_accepted() -> None:
    raw = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\n"
    parsed = parse_request_head(raw, MAX)
    assert parsed is not None
    framer = BodyFramer.for_request(parsed[0])
    assert framer.feed(b"abc") == 2
    assert framer.done


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 099 x\r\n\r\n",
        b"HTTP/3 200 OK\r\n\r\n",
        b"200 OK\r\n\r\n",
    ],
)
def test_malformed_responses(raw: bytes) -> None:
    with pytest.raises(HttpParseError):
        parse_response_head(raw, MAX)


@pytest.mark.parametrize(
    "body",
    [
        b"x\r\n",
        b"-1\r\n",
        b"0x5\r\n",
        b"\r\n",
        b"3\r\nabcd\r\n",
        b"3\r\nabc\rX",
        b"1" * 17 + b"\r\n",
        b"0\r\nbad trailer\r\n",
        b"5;" + b"e" * 5000,
    ],
)
def test_malformed_chunked_bodies(body: bytes, splitter: Splitter) -> None:
    framer = BodyFramer.for_request(
        RequestHead("POST", "/", "HTTP/1.1", [(b"Transfer-Encoding", b"chunked")])
    )
    pieces = splitter(body)

    def feed_all() -> None:
        for piece in pieces:
            framer.feed(piece)

    with pytest.raises(HttpParseError):
        feed_all()


def test_framer_after_done_takes_nothing() -> None:
    framer = BodyFramer.for_request(
        RequestHead("POST", "/", "HTTP/1.1", [(b"Transfer-Encoding", b"chunked")])
    )
    assert framer.chunked
    assert framer.feed(b"0\r\n\r\nGET") == 5
    assert framer.done
    assert framer.feed(b"more") == 0


# --------------------------------------------------------------------- fuzzing

_request_like = st.lists(
    st.sampled_from(
        [
            b"GET ",
            b"POST ",
            b"/x?y=1 ",
            b"HTTP/1.1",
            b"HTTP/1.0",
            b"\r\n",
            b"\n",
            b"\r",
            b"Host: a",
            b"Content-Length: 3",
            b"Content-Length: 5",
            b"Transfer-Encoding: chunked",
            b"Transfer-Encoding: gzip",
            b"Connection: close",
            b": ",
            b" ",
            b"\x00",
            b"abc",
            b"3\r\nabc\r\n",
            b"0\r\n\r\n",
            b"5;x=y",
        ]
    )
    | st.binary(max_size=8),
    max_size=30,
).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(data=_request_like, cut=st.integers(1, 7))
def test_fuzz_request_stream_raises_only_http_parse_error(data: bytes, cut: int) -> None:
    pieces = [data[index : index + cut] for index in range(0, len(data), cut)]
    whole_result: object
    try:
        whole_result = [(h.raw, b) for h, b in read_requests([data])]
    except HttpParseError as error:
        whole_result = ("error", error.status)
    try:
        split_result: object = [(h.raw, b) for h, b in read_requests(pieces)]
    except HttpParseError as error:
        split_result = ("error", error.status)
    assert whole_result == split_result


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), method=st.sampled_from(["GET", "HEAD"]))
def test_fuzz_response_parser_raises_only_http_parse_error(data: bytes, method: str) -> None:
    try:
        parsed = parse_response_head(b"HTTP/1.1 200 OK\r\n" + data, 256)
        if parsed is not None:
            framer = BodyFramer.for_response(parsed[0], method)
            framer.feed(data[parsed[1] :])
    except HttpParseError as error:
        status: int | None = error.status
    else:
        status = None
    assert status in (None, 400, 413, 501)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=120), cut=st.integers(1, 5))
def test_fuzz_chunked_framer(data: bytes, cut: int) -> None:
    def run(pieces: list[bytes]) -> object:
        framer = BodyFramer.for_request(
            RequestHead("POST", "/", "HTTP/1.1", [(b"Transfer-Encoding", b"chunked")])
        )
        taken = 0
        try:
            for piece in pieces:
                used = framer.feed(piece)
                assert 0 <= used <= len(piece)
                taken += used
                if framer.done:
                    break
        except HttpParseError:
            return "error"
        return (taken, framer.done)

    whole_result = run([data])
    split_result = run([data[index : index + cut] for index in range(0, len(data), cut)])
    assert whole_result == split_result


@pytest.mark.parametrize(
    ("upgrade", "protocols"),
    [
        (b"websocket", [b"websocket"]),
        (b"WebSocket/13, h2c", [b"websocket", b"h2c"]),
        (b" h2c ,foo/2", [b"h2c", b"foo"]),
        (None, []),
    ],
)
def test_upgrade_protocols_name_what_upgrade_asks_for(
    upgrade: bytes | None, protocols: list[bytes]
) -> None:
    """``names_websocket`` ignores the method and ``Connection``: the proxy's upgrade gate."""
    field = b"" if upgrade is None else b"Upgrade: " + upgrade + b"\r\n"
    parsed = parse_request_head(b"POST /x HTTP/1.1\r\nHost: t\r\n" + field + b"\r\n", MAX)
    assert parsed is not None
    head = parsed[0]
    assert head.upgrade_protocols == protocols
    assert head.names_websocket == (b"websocket" in protocols)
    assert not head.is_websocket_upgrade  # a POST is never a WebSocket handshake
