"""Unit tests of the sans-I/O HTTP exchange of a data-port connection (wsgauge_sidecar.exchange).

A :class:`Wire` plays the asyncio adapter: it carries out the events (bytes to either side,
the upstream connection, the timer, the switch) and records them. Hypothesis cuts both byte
streams anywhere and interleaves them in any order an app could produce (an answer only
after its request was sent): the bytes relayed each way must be exactly the bytes sent.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsgauge_sidecar.admission import Refusal
from wsgauge_sidecar.exchange import (
    CancelTimer,
    CloseClient,
    ConnectUpstream,
    DropUpstream,
    Event,
    HandshakeFailed,
    HttpExchange,
    Linger,
    PauseClient,
    RelayToClient,
    ResumeClient,
    SendToClient,
    SendToUpstream,
    StartTimer,
    SwitchProtocols,
    TimerKind,
    UpgradeStarted,
)
from wsgauge_sidecar.httpwire import RequestHead


@dataclass
class Wire:
    """The adapter's part, recorded: what reached each side and what else was asked."""

    exchange: HttpExchange
    events: list[Event] = field(default_factory=list)
    to_upstream: bytearray = field(default_factory=bytearray)
    to_client: bytearray = field(default_factory=bytearray)
    connecting: bool = False
    timer: TimerKind | None = None
    switch: SwitchProtocols | None = None
    after_switch_client: bytearray = field(default_factory=bytearray)
    after_switch_upstream: bytearray = field(default_factory=bytearray)

    @classmethod
    def open(cls, refusal: Refusal | None = None, buffer_bytes: int = 1 << 20) -> Wire:
        wire = cls(
            HttpExchange(
                max_header_bytes=16384,
                buffer_bytes=buffer_bytes,
                handshake_timeout=10,
                upgrade_refusal=lambda request: refusal,
            )
        )
        wire.run(wire.exchange.start())
        return wire

    def run(self, events: list[Event]) -> None:
        for event in events:
            self.events.append(event)
            if isinstance(event, SendToUpstream):
                self.to_upstream += event.data
            elif isinstance(event, SendToClient | RelayToClient):
                self.to_client += event.data
            elif isinstance(event, ConnectUpstream):
                self.connecting = True
            elif isinstance(event, StartTimer):
                self.timer = event.kind
            elif isinstance(event, SwitchProtocols):
                assert self.switch is None
                self.switch = event
                self.to_client += event.response.raw
                self.timer = None
            elif isinstance(event, CancelTimer):
                self.timer = None

    def client(self, data: bytes) -> None:
        if self.switch is not None:
            self.after_switch_client += data  # the relay's from now on
        else:
            self.run(self.exchange.client_data(data))

    def upstream(self, data: bytes) -> None:
        if self.switch is not None:
            self.after_switch_upstream += data
        else:
            self.run(self.exchange.upstream_data(data))

    def connect(self) -> None:
        assert self.connecting
        self.connecting = False
        self.run(self.exchange.upstream_connected())

    def of(self, kind: type[Event]) -> list[Event]:
        return [event for event in self.events if isinstance(event, kind)]


def upgrade_request(path: str = "/ws/a", method: str = "GET", extra: str = "") -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()


SWITCH = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
)

# (request, response) pairs of plain HTTP, each framed differently
EXCHANGES = {
    "get": (
        b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    ),
    "post": (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 7\r\n\r\npayload",
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    ),
    "chunked": (
        b"PUT /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwxyz\r\n0\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
    ),
    "head": (
        b"HEAD /h HTTP/1.1\r\nHost: t\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n",
    ),
    "continue": (
        b"POST /e HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    ),
}


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
    return [data[start:end] for start, end in itertools.pairwise(points)]


def converse(
    wire: Wire,
    client_blob: bytes,
    responses: list[bytes],
    request_ends: list[int],
    draw: st.DataObject,
) -> None:
    """Feed ``client_blob`` and each response (after its request reached the app), both cut
    anywhere, in an order hypothesis picks; the upstream connects when hypothesis says."""
    client_pieces = _cut(client_blob, draw.draw(st.lists(st.integers(0, 10**6), max_size=12)))
    upstream_pieces: list[tuple[int, bytes]] = []
    for index, response in enumerate(responses):
        cuts = draw.draw(st.lists(st.integers(0, 10**6), max_size=6))
        upstream_pieces += [(request_ends[index], piece) for piece in _cut(response, cuts)]
    while client_pieces or upstream_pieces:
        if wire.exchange.closed:
            break
        can_answer = (
            bool(upstream_pieces)
            and not wire.connecting
            and (wire.switch is not None or len(wire.to_upstream) >= upstream_pieces[0][0])
        )
        choice = draw.draw(st.sampled_from(["client", "upstream", "connect"]))
        if wire.connecting and (choice == "connect" or not client_pieces):
            wire.connect()
        elif can_answer and (choice == "upstream" or not client_pieces):
            wire.upstream(upstream_pieces.pop(0)[1])
        elif client_pieces:
            wire.client(client_pieces.pop(0))
        else:
            raise AssertionError(f"stuck; events: {wire.events[-5:]}")


@settings(max_examples=300, deadline=None)
@given(
    kinds=st.lists(st.sampled_from(sorted(EXCHANGES)), min_size=1, max_size=6),
    close_last=st.booleans(),
    draw=st.data(),
)
def test_pipelined_exchanges_relay_exactly_their_bytes_over_any_split_and_order(
    kinds: list[str], close_last: bool, draw: st.DataObject
) -> None:
    requests = [EXCHANGES[kind][0] for kind in kinds]
    responses = [EXCHANGES[kind][1] for kind in kinds]
    if close_last:
        requests[-1] = requests[-1].replace(b"Host: t\r\n", b"Host: t\r\nConnection: close\r\n")
    ends = [sum(len(r) for r in requests[: index + 1]) for index in range(len(requests))]
    wire = Wire.open()
    converse(wire, b"".join(requests), responses, ends, draw)
    assert bytes(wire.to_upstream) == b"".join(requests)
    assert bytes(wire.to_client) == b"".join(responses)
    assert len(wire.of(ConnectUpstream)) == 1  # one upstream connection, reused
    assert not wire.of(Linger)
    assert not wire.of(UpgradeStarted)
    if close_last:
        assert wire.exchange.closed
        assert wire.of(CloseClient) == [CloseClient(False, "http_done")]
    else:
        assert not wire.exchange.closed
        assert not wire.of(CloseClient)
        assert wire.timer == "head"  # the next request head is awaited


@settings(max_examples=300, deadline=None)
@given(before=st.sampled_from(["", "get", "post"]), strip=st.booleans(), draw=st.data())
def test_an_upgrade_switches_once_with_every_byte_on_its_side(
    before: str, strip: bool, draw: st.DataObject
) -> None:
    """Bytes after the 101 and client bytes after the upgrade request reach the relay, exactly."""
    early_client = b"\x81\x85\x01\x02\x03\x04" + bytes(
        b ^ k for b, k in zip(b"hello", b"\x01\x02\x03\x04\x01", strict=True)
    )
    from_app = b"\x81\x02hi\x89\x00"
    extension = "Sec-WebSocket-Extensions: permessage-deflate\r\n"
    upgrade = upgrade_request(extra=extension)
    forwarded = upgrade.replace(extension.encode(), b"") if strip else upgrade
    plain = [EXCHANGES[before]] if before else []
    requests = [request for request, _ in plain]
    sent = [*requests, forwarded]
    ends = [sum(len(r) for r in sent[: index + 1]) for index in range(len(sent))]
    wire = Wire(
        HttpExchange(
            max_header_bytes=16384,
            buffer_bytes=1 << 20,
            handshake_timeout=10,
            strip_extensions=lambda head: strip,
        )
    )
    wire.run(wire.exchange.start())
    responses = [response for _, response in plain] + [SWITCH + from_app]
    converse(wire, b"".join(requests) + upgrade + early_client, responses, ends, draw)
    switch = wire.switch
    assert switch is not None
    assert switch.counted
    assert switch.request.target == "/ws/a"
    assert bytes(wire.to_upstream) == b"".join(sent)
    assert switch.client_rest + bytes(wire.after_switch_client) == early_client
    assert switch.upstream_rest + bytes(wire.after_switch_upstream) == from_app
    assert bytes(wire.to_client) == b"".join(r for _, r in plain) + SWITCH
    assert len(wire.of(UpgradeStarted)) == 1
    assert not wire.of(HandshakeFailed)
    assert wire.exchange.switched
    assert wire.timer is None


@pytest.mark.parametrize("method", ["POST", "PUT", "CONNECT"])
def test_a_non_get_websocket_upgrade_gets_400_and_never_reaches_the_app(method: str) -> None:
    wire = Wire.open()
    wire.client(upgrade_request(method=method))
    assert wire.to_client.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert wire.of(HandshakeFailed) == [HandshakeFailed("bad_request", pending=False)]
    assert not wire.of(ConnectUpstream)
    assert not wire.to_upstream
    assert wire.of(Linger)
    assert wire.exchange.closed


def test_a_refused_upgrade_gets_503_before_the_app() -> None:
    wire = Wire.open(refusal=Refusal("capacity"))
    wire.client(upgrade_request())
    assert wire.to_client.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"upgrade refused: capacity" in wire.to_client
    assert b"Retry-After" not in wire.to_client
    assert wire.of(HandshakeFailed) == [HandshakeFailed("capacity", pending=False)]
    assert not wire.of(ConnectUpstream)
    assert not wire.of(UpgradeStarted)


def test_a_rate_limited_upgrade_gets_503_with_retry_after() -> None:
    wire = Wire.open(refusal=Refusal("rate_limited", retry_after=7))
    wire.client(upgrade_request())
    head, _, body = bytes(wire.to_client).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"\r\nRetry-After: 7\r\n" in head + b"\r\n"
    assert body == b"upgrade refused: rate_limited\n"
    assert wire.of(HandshakeFailed) == [HandshakeFailed("rate_limited", pending=False)]


def test_the_gate_sees_the_request_and_started_upgrades_carry_it() -> None:
    seen: list[str] = []

    def gate(request: RequestHead) -> Refusal | None:
        seen.append(request.target)
        return None

    wire = Wire(HttpExchange(max_header_bytes=16384, buffer_bytes=1 << 20,
                             handshake_timeout=10, upgrade_refusal=gate))  # fmt: skip
    wire.run(wire.exchange.start())
    wire.client(upgrade_request())
    assert seen == ["/ws/a"]
    started = [event for event in wire.events if isinstance(event, UpgradeStarted)]
    assert [event.request.target for event in started] == ["/ws/a"]


@pytest.mark.parametrize(
    ("request_head", "answer"),
    [
        (b"GET /plain HTTP/1.1\r\nHost: t\r\n\r\n", SWITCH),
        (b"GET /h HTTP/1.1\r\nHost: t\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n", SWITCH),
        (
            b"GET /h HTTP/1.1\r\nHost: t\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\n\r\n",
        ),
    ],
)
def test_a_switch_nobody_asked_for_gets_502(request_head: bytes, answer: bytes) -> None:
    wire = Wire.open()
    wire.client(request_head)
    wire.connect()
    wire.upstream(answer)
    assert wire.switch is None
    assert wire.to_client.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert wire.of(DropUpstream) == [DropUpstream(abort=True)]
    assert wire.of(Linger)


def test_a_switch_to_an_asked_protocol_is_an_uncounted_tunnel() -> None:
    wire = Wire.open()
    wire.client(b"GET /h HTTP/1.1\r\nHost: t\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n")
    wire.connect()
    wire.upstream(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\nPRI")
    assert wire.switch is not None
    assert not wire.switch.counted
    assert wire.switch.upstream_rest == b"PRI"
    assert not wire.of(UpgradeStarted)


def test_upgrade_outcomes_are_reported_once_each() -> None:
    """Every UpgradeStarted ends in exactly one counted switch or one pending failure."""
    rejected = Wire.open()
    rejected.client(upgrade_request())
    rejected.connect()
    rejected.upstream(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
    assert rejected.of(HandshakeFailed) == [HandshakeFailed("upstream_rejected", pending=True)]
    assert not rejected.exchange.closed  # the connection stays for the next request

    timed_out = Wire.open()
    timed_out.client(upgrade_request())
    assert timed_out.timer == "upgrade"
    timed_out.connect()
    timed_out.run(timed_out.exchange.timer_fired("upgrade"))
    assert timed_out.of(HandshakeFailed) == [HandshakeFailed("upstream_timeout", pending=True)]
    assert timed_out.to_client.startswith(b"HTTP/1.1 504 ")

    unreachable = Wire.open()
    unreachable.client(upgrade_request())
    unreachable.run(unreachable.exchange.upstream_unreachable())
    assert unreachable.of(HandshakeFailed) == [
        HandshakeFailed("upstream_unreachable", pending=True)
    ]
    assert unreachable.to_client.startswith(b"HTTP/1.1 502 ")

    gone = Wire.open()
    gone.client(upgrade_request())
    gone.connect()
    gone.run(gone.exchange.client_lost())
    gone.run(gone.exchange.upstream_gone(reset=False))
    assert gone.of(HandshakeFailed) == [HandshakeFailed("client_gone", pending=True)]


def test_head_timeout_answers_408_or_closes_an_idle_connection_quietly() -> None:
    partial = Wire.open()
    partial.client(b"GET /slow HTTP/1.1\r\nHost:")
    partial.run(partial.exchange.timer_fired("head"))
    assert partial.to_client.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert partial.of(HandshakeFailed) == [HandshakeFailed("handshake_timeout", pending=False)]
    idle = Wire.open()
    idle.run(idle.exchange.timer_fired("head"))
    assert idle.of(CloseClient) == [CloseClient(False, "idle")]
    assert not idle.to_client
    # a late timer of the other kind does nothing
    busy = Wire.open()
    busy.client(EXCHANGES["get"][0])
    busy.run(busy.exchange.timer_fired("head"))
    busy.run(busy.exchange.timer_fired("upgrade"))
    assert not busy.exchange.closed
    assert not busy.to_client


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 431),
        (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: br, chunked\r\n\r\n", 501),
    ],
)
def test_bad_request_heads_are_answered_locally(head: bytes, status: int) -> None:
    wire = Wire.open()
    wire.client(head)
    assert wire.to_client.startswith(f"HTTP/1.1 {status} ".encode())
    assert wire.of(Linger)
    assert not wire.of(ConnectUpstream)


def test_upstream_closing_mid_response_or_before_it() -> None:
    before = Wire.open()
    before.client(EXCHANGES["get"][0])
    before.connect()
    before.run(before.exchange.upstream_gone(reset=False))
    assert before.to_client.startswith(b"HTTP/1.1 502 ")
    assert before.of(Linger)
    after = Wire.open()
    after.client(EXCHANGES["get"][0])
    after.connect()
    after.upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    after.run(after.exchange.upstream_gone(reset=True))
    assert after.of(CloseClient) == [CloseClient(True, "upstream_reset")]
    until_close = Wire.open()
    until_close.client(EXCHANGES["get"][0])
    until_close.connect()
    until_close.upstream(b"HTTP/1.1 200 OK\r\n\r\nstream")
    until_close.run(until_close.exchange.upstream_gone(reset=False))
    assert until_close.to_client.endswith(b"stream")
    assert until_close.of(CloseClient) == [CloseClient(False, "http_done")]


def test_an_idle_upstream_closing_is_reopened_for_the_next_request() -> None:
    wire = Wire.open()
    request, response = EXCHANGES["get"]
    wire.client(request)
    wire.connect()
    wire.upstream(response)
    wire.run(wire.exchange.upstream_gone(reset=False))
    assert not wire.exchange.closed
    wire.client(request)
    wire.connect()  # a second ConnectUpstream was asked for
    wire.upstream(response)
    assert bytes(wire.to_upstream) == request * 2
    assert bytes(wire.to_client) == response * 2


def test_pipelined_bytes_beyond_the_buffer_pause_the_client_until_consumed() -> None:
    wire = Wire.open(buffer_bytes=64)
    request, response = EXCHANGES["get"]
    wire.client(request * 5)
    wire.connect()
    assert wire.of(PauseClient)
    assert not wire.of(ResumeClient)
    for _ in range(5):
        wire.upstream(response)
    assert wire.of(ResumeClient)
    assert bytes(wire.to_upstream) == request * 5


def test_a_half_closed_client_still_gets_its_response_then_the_connection_closes() -> None:
    wire = Wire.open()
    request, response = EXCHANGES["post"]
    wire.client(request)
    wire.run(wire.exchange.client_eof())
    assert not wire.exchange.closed
    wire.connect()
    wire.upstream(response)
    assert bytes(wire.to_client) == response
    assert wire.of(CloseClient) == [CloseClient(False, "http_done")]
    idle = Wire.open()
    idle.run(idle.exchange.client_eof())
    assert idle.exchange.closed
    assert idle.of(CloseClient) == [CloseClient(False, "client")]
