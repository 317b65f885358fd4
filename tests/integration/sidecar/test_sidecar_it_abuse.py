"""Abusive clients against a real sidecar process, over real loopback sockets.

Every test keeps one *healthy* client open across all the abuse and checks after each
attack that it still echoes and that ``/stats`` still counts exactly the healthy sockets:
the abuse gets a clear refusal (an HTTP status or a WebSocket close code) and nothing
else is affected. What is already covered elsewhere (a single 431, a stalled half head,
report-mode shape errors, GETs of admin paths on the data port) is not repeated here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import string
import struct
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import websockets
from sidecar_it_harness import (
    LOOPBACK,
    RawWebSocket,
    SidecarFactory,
    SidecarProcess,
    eventually,
    mask_frame,
)

RELAY_PATHS = True
"""Tests that start sidecars run on both relay paths (``--relay python`` and ``native``)."""

HEALTHY_TOPIC = "healthy"
PATH_RULE = ("--topic", r"path:^/ws/(.+)")
NAME_CHARACTERS = string.ascii_letters + string.digits + "-_.~"


class HealthyClient:
    """A well-behaved WebSocket client that must survive every attack on its sidecar."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.round = 0

    @classmethod
    async def open(cls, sidecar: SidecarProcess, path: str = f"/ws/{HEALTHY_TOPIC}") -> Any:
        return cls(await websockets.connect(f"{sidecar.ws_base}{path}", max_size=None))

    async def check(self) -> None:
        """It still echoes (the demo app answers every text message with itself)."""
        self.round += 1
        message = f"still here {self.round}"
        await self.ws.send(message)
        assert await asyncio.wait_for(self.ws.recv(), 10) == message

    async def close(self) -> None:
        await self.ws.close()


async def _read_all(client: RawWebSocket, timeout: float = 15) -> bytes:
    """Everything the sidecar sends until it closes (a reset after an answer keeps the answer)."""
    received = bytearray()
    with contextlib.suppress(ConnectionError):
        while chunk := await asyncio.wait_for(client.reader.read(65536), timeout):
            received += chunk
    return bytes(received)


async def _send_until_cut(port: int, data: bytes, *, step: int, pause: float) -> bytes:
    """Send ``data`` ``step`` bytes at a time until the sidecar answers and closes; its answer."""
    client = await RawWebSocket.open_tcp(port)
    answer = asyncio.create_task(_read_all(client))
    try:
        for start in range(0, len(data), step):
            if answer.done():
                break
            client.writer.write(data[start : start + step])
            await client.writer.drain()
            await asyncio.sleep(pause)
    except ConnectionError:
        pass
    try:
        return await answer
    finally:
        await client.close_tcp()


async def _close_code(client: RawWebSocket) -> int:
    """The close code of the next frame from the sidecar (skips data frames)."""
    for _ in range(50):
        opcode, payload = await client.read_frame()
        if opcode == 0x8:
            return int.from_bytes(payload[:2], "big")
    raise AssertionError("no close frame")


async def _only_healthy_counted(sidecar: SidecarProcess, healthy: HealthyClient) -> None:
    await healthy.check()
    await sidecar.wait_stats(
        lambda d: d["connections"] == 1 and d["topics"] == {HEALTHY_TOPIC: 1}, timeout=20
    )


async def test_slowloris_clients_are_cut_after_the_handshake_timeout(
    start_sidecar: SidecarFactory,
) -> None:
    sidecar = start_sidecar(*PATH_RULE, "--handshake-timeout", "1")
    healthy = await HealthyClient.open(sidecar)
    await _only_healthy_counted(sidecar, healthy)
    # 30 clients each dribble an upgrade request with 100 junk headers at 10 bytes a second:
    # the whole head would take minutes, the timeout is one second from the connection on
    # (sending bytes does not extend it).
    head = RawWebSocket.upgrade_request(
        "/ws/slow", {f"X-Pad-{index}": "p" * 10 for index in range(100)}
    )
    answers = await asyncio.gather(
        *(_send_until_cut(sidecar.port, head, step=1, pause=0.1) for _ in range(30))
    )
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
    assert sidecar.metric("wsgauge_handshake_failures_total", 'reason="handshake_timeout"') == 30
    assert sidecar.stats()["opened"] == 1
    await _only_healthy_counted(sidecar, healthy)
    # a slow but complete plain request (an idle keep-alive client) is closed quietly too
    client = await RawWebSocket.open_tcp(sidecar.port)
    client.writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    answer = await _read_all(client)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:80]  # and then closed: read() ended
    await _only_healthy_counted(sidecar, healthy)
    await healthy.close()
    await sidecar.wait_stats(lambda d: d["connections"] == 0)


async def test_oversized_heads_in_every_shape_get_431(start_sidecar: SidecarFactory) -> None:
    sidecar = start_sidecar(*PATH_RULE, "--max-header-bytes", "4096")
    healthy = await HealthyClient.open(sidecar)
    many_small = RawWebSocket.upgrade_request(
        "/ws/x", {f"X-H-{index}": "v" * 20 for index in range(400)}
    )
    long_target = RawWebSocket.upgrade_request("/ws/" + "t" * 10_000)
    # a head that never ends: header lines forever, no blank line
    endless = b"GET /ws/e HTTP/1.1\r\nHost: t\r\n" + b"X-Endless: 1\r\n" * 2000
    # line ends before any head (skipped as blank lines, but they count toward the limit)
    only_blank_lines = b"\r\n" * 5000
    for attack in (many_small, long_target, endless, only_blank_lines):
        client = await RawWebSocket.open_tcp(sidecar.port)
        client.writer.write(attack)
        with contextlib.suppress(ConnectionError):
            await client.writer.drain()
        answer = await _read_all(client)
        assert answer.startswith(b"HTTP/1.1 431"), answer[:80]
        await _only_healthy_counted(sidecar, healthy)
    # the same oversized head in 1-byte writes is refused once it is too long
    answer = await _send_until_cut(sidecar.port, many_small, step=1, pause=0)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:80]
    assert sidecar.stats()["opened"] == 1
    await _only_healthy_counted(sidecar, healthy)
    await healthy.close()


async def test_data_port_never_reaches_the_admin_api(start_sidecar: SidecarFactory) -> None:
    sidecar = start_sidecar(*PATH_RULE)
    healthy = await HealthyClient.open(sidecar)
    async with aiohttp.ClientSession() as session:
        for method, path in (
            ("PUT", "/report"),
            ("POST", "/report"),
            ("GET", "/stats/watch"),
            ("GET", "/stats?x=1"),
            ("GET", "/metrics/"),
            ("GET", "//stats"),
            ("GET", "/%73tats"),
        ):
            body = json.dumps({"connections": 999}).encode()
            url = f"http://{LOOPBACK}:{sidecar.port}{path}"
            async with session.request(method, url, data=body) as response:
                # the app answered (its marker header), never the sidecar's admin API
                assert response.headers.get("X-Demo-App") == "1", (method, path)
                text = await response.text()
                assert "wsgauge_connections" not in text
                assert '"seq"' not in text
    # an absolute-form target naming the admin port goes to the app too
    client = await RawWebSocket.open_tcp(sidecar.port)
    client.writer.write(
        f"GET http://{LOOPBACK}:{sidecar.admin_port}/stats HTTP/1.1\r\n"
        f"Host: {LOOPBACK}:{sidecar.admin_port}\r\nConnection: close\r\n\r\n".encode()
    )
    answer = await _read_all(client)
    # the app answers it, or the sidecar refuses the form: never the admin API
    assert answer.startswith((b"HTTP/1.1 200", b"HTTP/1.1 400")), answer[:200]
    assert b'"seq"' not in answer, answer[:200]
    assert b"wsgauge_" not in answer, answer[:200]
    # a WebSocket upgrade to an admin path is an ordinary socket of the app
    ws = await websockets.connect(f"{sidecar.ws_base}/stats/watch")
    await ws.send("echo")
    assert await asyncio.wait_for(ws.recv(), 10) == "echo"
    await ws.close()
    await _only_healthy_counted(sidecar, healthy)
    await healthy.close()


def _topic_rows(sidecar: SidecarProcess) -> int:
    _, text = sidecar.get("/metrics")
    return sum(1 for line in text.splitlines() if line.startswith("wsgauge_topic_connections{"))


async def test_random_topic_flood_keeps_the_topic_table_bounded(
    start_sidecar: SidecarFactory,
) -> None:
    max_topics = 20
    sidecar = start_sidecar(*PATH_RULE, "--max-topics", str(max_topics))
    healthy = await HealthyClient.open(sidecar)
    rng = random.Random(8)
    rss_after_round: list[int] = []
    opened = 1
    for _round in range(5):
        names = [
            "".join(
                rng.choices(string.ascii_letters + string.digits + "-_.~", k=rng.randint(1, 60))
            )
            for _ in range(120)
        ]
        sockets = await asyncio.gather(
            *(websockets.connect(f"{sidecar.ws_base}/ws/{name}") for name in names)
        )
        opened += len(sockets)
        expected = len(sockets) + 1

        def all_counted(document: dict[str, Any], n: int = expected) -> bool:
            return bool(document["connections"] == n)

        document = await sidecar.wait_stats(all_counted)
        # the table: at most max_topics names plus _other, whatever names clients invent
        assert len(document["topics"]) <= max_topics + 1, len(document["topics"])
        assert sum(document["topics"].values()) == len(sockets) + 1
        assert document["topics"]["_other"] >= len(sockets) + 1 - max_topics
        assert _topic_rows(sidecar) <= max_topics + 1
        await asyncio.gather(*(ws.close() for ws in sockets))
        await sidecar.wait_stats(lambda d: d["connections"] == 1)
        await healthy.check()
        rss_after_round.append(sidecar.rss_bytes())
    document = sidecar.stats()
    assert document["opened"] == opened
    assert document["closed"] == opened - 1
    # the healthy socket joined first, so it kept its own slot; the rest is forgotten
    assert document["topics"] == {HEALTHY_TOPIC: 1}
    assert _topic_rows(sidecar) == 1
    print("sidecar RSS after each round (MiB):", [round(r / 2**20, 1) for r in rss_after_round])
    # memory flat: 480 more sockets with fresh names after the first round cost < 8 MiB
    assert rss_after_round[-1] - rss_after_round[0] < 8 * 2**20, rss_after_round
    await healthy.close()


# -- phoenix mode: client messages are read, so frame limits and UTF-8 are enforced -------------


class PhoenixHealthy(HealthyClient):
    """A v2 Phoenix client joined to one room; its check is a round trip of a push."""

    topic = "room:healthy"

    @classmethod
    async def open(cls, sidecar: SidecarProcess, path: str = "") -> Any:
        ws = await websockets.connect(
            f"{sidecar.ws_base}/socket/websocket?vsn=2.0.0", max_size=None
        )
        client = cls(ws)
        reply = await client.push("phx_join")
        assert reply[4]["status"] == "ok", reply
        return client

    async def push(self, event: str) -> list[Any]:
        self.round += 1
        ref = str(self.round)
        await self.ws.send(json.dumps(["1", ref, self.topic, event, {"n": self.round}]))
        while True:
            message = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
            if message[3] == "phx_reply" and message[1] == ref:
                return list(message)

    async def check(self) -> None:
        reply = await self.push("ping")
        assert reply[4] == {"status": "ok", "response": {"n": self.round}}, reply


def _frame_header(opcode: int, size: int, *, fin: bool = True) -> bytes:
    first = (0x80 if fin else 0) | opcode
    if size < 126:
        return bytes([first, 0x80 | size])
    if size < 65536:
        return bytes([first, 0x80 | 126]) + struct.pack("!H", size)
    return bytes([first, 0x80 | 127]) + struct.pack("!Q", size)


async def test_oversized_frames_get_1009_and_invalid_utf8_gets_1007(
    start_sidecar: SidecarFactory,
) -> None:
    sidecar = start_sidecar("--topic", "phoenix", "--max-message-bytes", "4096")
    healthy = await PhoenixHealthy.open(sidecar)

    async def only_healthy() -> None:
        await healthy.check()
        await sidecar.wait_stats(
            lambda d: d["connections"] == 1 and d["topics"] == {PhoenixHealthy.topic: 1}
        )

    await only_healthy()
    join = json.dumps(["1", "1", "room:evil", "phx_join", {"pad": "x" * 5000}]).encode()
    attacks: list[tuple[str, bytes, int]] = [
        ("one big text frame", mask_frame(0x1, join), 1009),
        ("one big binary frame", mask_frame(0x2, os.urandom(5000)), 1009),
        (
            "fragments adding up past the limit",
            mask_frame(0x1, b"a" * 3000, fin=False) + mask_frame(0x0, b"b" * 3000),
            1009,
        ),
        # a 64-bit length of 1 TiB: refused from the header, before any payload arrives
        ("a huge announced length", _frame_header(0x2, 2**40) + os.urandom(4), 1009),
        (
            "invalid UTF-8 in a text frame",
            mask_frame(0x1, b'["1","1","r","phx_join",{"\xff"}]'),
            1007,
        ),
        ("a lone surrogate", mask_frame(0x1, b"\xed\xa0\x80"), 1007),
        (
            "invalid UTF-8 split over fragments",
            mask_frame(0x1, b"ok \xe2\x82", fin=False) + mask_frame(0x0, b"\x28 no"),
            1007,
        ),
        ("a truncated code point", mask_frame(0x1, b"\xf0\x9f\x98"), 1007),
    ]
    for name, data, code in attacks:
        client = await RawWebSocket.connect(sidecar.port, "/socket/websocket?vsn=2.0.0")
        await sidecar.wait_stats(lambda d: d["connections"] == 2)
        client.writer.write(data)
        with contextlib.suppress(ConnectionError):
            await client.writer.drain()
        assert await _close_code(client) == code, name
        await client.close_tcp()
        await only_healthy()
    errors = sidecar.metric("wsgauge_connections_closed_total", 'reason="protocol_error"')
    assert errors == len(attacks)
    # a message just under the limit is fine
    client = await RawWebSocket.connect(sidecar.port, "/socket/websocket?vsn=2.0.0")
    await client.send_text(json.dumps(["1", "1", "room:big", "phx_join", {"p": "y" * 3900}]))
    opcode, payload = await client.read_frame()
    assert opcode == 0x1
    assert json.loads(payload)[4]["status"] == "ok"
    await sidecar.wait_stats(lambda d: d["topics"].get("room:big") == 1)
    await client.send_close()
    await client.close_tcp()
    await only_healthy()
    await healthy.close()


async def test_a_client_writing_a_huge_frame_without_reading_still_gets_its_1009(
    start_sidecar: SidecarFactory,
) -> None:
    """The 1009 must not be destroyed by a reset: the sidecar sends the close frame, shuts its
    write side and discards what the client still sends before it closes (lingering close)."""
    sidecar = start_sidecar("--topic", "phoenix")  # default --max-message-bytes: 1 MiB
    healthy = await PhoenixHealthy.open(sidecar)
    client = await RawWebSocket.connect(sidecar.port, "/socket/websocket?vsn=2.0.0")
    await sidecar.wait_stats(lambda d: d["connections"] == 2)
    huge = mask_frame(0x1, b"[" + b" " * (2 * 2**20) + b"]")  # 2 MiB + 2 bytes
    step = 64 * 1024
    for start in range(0, len(huge), step):  # all of it, before reading anything
        client.writer.write(huge[start : start + step])
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(client.writer.drain(), 10)
    assert await _close_code(client) == 1009
    await client.close_tcp()
    await sidecar.wait_stats(lambda d: d["connections"] == 1)
    await healthy.check()
    await healthy.close()


async def test_random_phoenix_topic_flood_on_one_socket_is_capped(
    start_sidecar: SidecarFactory,
) -> None:
    sidecar = start_sidecar("--topic", "phoenix", "--max-topics", "10")
    healthy = await PhoenixHealthy.open(sidecar)
    flooder = await RawWebSocket.connect(sidecar.port, "/socket/websocket?vsn=2.0.0")
    rng = random.Random(80)
    joins = 600
    for index in range(joins):
        topic = "r:" + "".join(rng.choices(string.printable, k=rng.randint(1, 40)))
        flooder.writer.write(mask_frame(0x1, json.dumps([str(index), str(index), topic,
                                                          "phx_join", {}]).encode()))  # fmt: skip
    await flooder.writer.drain()
    replies = 0
    while replies < joins:
        opcode, _ = await flooder.read_frame()
        replies += opcode == 0x1
    document = await sidecar.wait_stats(lambda d: d["connections"] == 2)
    assert len(document["topics"]) <= 11, document["topics"]
    assert document["topics"][PhoenixHealthy.topic] == 1
    await healthy.check()
    await flooder.send_close()
    await flooder.close_tcp()
    await sidecar.wait_stats(
        lambda d: d["connections"] == 1 and d["topics"] == {PhoenixHealthy.topic: 1}
    )
    await healthy.check()
    await healthy.close()


async def test_admin_port_closes_idle_and_half_sent_connections(
    start_sidecar: SidecarFactory,
) -> None:
    # the admin port is an aiohttp server: without a limit it kept a half-sent request for
    # an hour, so a slowloris there could use up the file descriptors the data port needs
    sidecar = start_sidecar(*PATH_RULE, "--handshake-timeout", "1", "--watch-heartbeat", "0.3")
    healthy = await HealthyClient.open(sidecar)
    async with aiohttp.ClientSession() as session:
        watch = await session.get(f"{sidecar.admin}/stats/watch")
        assert json.loads(await asyncio.wait_for(watch.content.readline(), 10))["connections"] == 1
        lingering = []
        for index in range(40):
            reader, writer = await asyncio.open_connection(LOOPBACK, sidecar.admin_port)
            if index % 2:
                writer.write(b"GET /stats HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            lingering.append((reader, writer))
        for reader, writer in lingering:
            assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the sidecar
            writer.close()
        # the watch stream (a request in progress) outlived the timeout and still flows
        for _ in range(3):
            assert await asyncio.wait_for(watch.content.readline(), 5) == b"\n"
        watch.close()
    await _only_healthy_counted(sidecar, healthy)
    await healthy.close()


# -- half-open sockets ------------------------------------------------------------------------


def _keepalive_seconds(port: int) -> list[float | None]:
    """Per established client connection of the sidecar on ``port``: the keepalive timer.

    ``ss -o`` shows one timer per socket, the retransmission timer while data is in flight,
    so a socket is looked at until it is idle. ``None`` for a socket without keepalive.
    """
    result = subprocess.run(
        ["ss", "-tnoH", "state", "established", f"( sport = :{port} )"],
        capture_output=True, text=True, check=True, timeout=10,
    )  # fmt: skip
    found: list[float | None] = []
    for line in result.stdout.splitlines():
        match = re.search(r"timer:\(keepalive,([\d.]+)(ms|sec|min)", line)
        if match is None:
            found.append(None)
            continue
        scale = {"ms": 0.001, "sec": 1.0, "min": 60.0}[match.group(2)]
        found.append(float(match.group(1)) * scale)
    return found


async def test_client_connections_have_tcp_keepalive_against_half_open_sockets(
    start_sidecar: SidecarFactory,
) -> None:
    # A peer that vanishes without FIN or RST cannot be produced on loopback without
    # packet filtering, so this checks the kernel timer the sidecar asked for: with it the
    # kernel resets such a socket after the probes fail, and the relay uncounts it like
    # any reset (test_sidecar_it_endings.py::test_client_reset_with_rst).
    sidecar = start_sidecar(*PATH_RULE, "--tcp-keepalive", "30")
    healthy = await HealthyClient.open(sidecar)
    await _only_healthy_counted(sidecar, healthy)
    timers: list[float | None] = []

    def keepalive_armed() -> bool:
        nonlocal timers
        timers = _keepalive_seconds(sidecar.port)
        return len(timers) == 1 and timers[0] is not None

    await eventually(keepalive_armed, timeout=10, what=lambda: f"keepalive timer: {timers}")
    assert timers[0] is not None
    assert 0 < timers[0] <= 30
    await healthy.close()
    off = start_sidecar(*PATH_RULE, "--tcp-keepalive", "0")
    healthy = await HealthyClient.open(off)
    await _only_healthy_counted(off, healthy)
    await asyncio.sleep(0.5)  # let the echo's ACKs settle; no keepalive timer appears
    assert _keepalive_seconds(off.port) == [None]
    await healthy.close()


# -- report mode ------------------------------------------------------------------------------


async def test_report_api_abuse_leaves_counts_and_watchers_intact(
    start_sidecar: SidecarFactory,
) -> None:
    sidecar = start_sidecar("--topic", "report", "--max-topics", "5", wait_data_port=False)
    assert sidecar.send("PUT", "/report", {"connections": 3, "topics": {"a": 3}})[0] == 200
    async with aiohttp.ClientSession() as session:
        watch = await session.get(f"{sidecar.admin}/stats/watch")
        first = json.loads(await asyncio.wait_for(watch.content.readline(), 10))
        assert first["connections"] == 3
        abuse: list[tuple[str, bytes, int]] = [
            ("PUT", b"[" * 100_000 + b"]" * 100_000, 400),  # deep nesting
            ("PUT", b'{"connections": 1e400}', 400),
            ("PUT", b'{"connections": NaN}', 400),
            ("PUT", b'{"connections": 1.5}', 400),
            ("PUT", b'{"connections": ' + b"9" * 5000 + b"}", 400),  # beyond int digits limit
            ("PUT", json.dumps({"connections": 10**18}).encode(), 400),
            ("PUT", json.dumps({"connections": 1, "topics": {"a": None}}).encode(), 400),
            ("PUT", json.dumps({"connections": 1, "topics": ["a"]}).encode(), 400),
            ("PUT", json.dumps({"connections": 1, "extra": 1}).encode(), 400),
            ("PUT", b"\xff\xfe{", 400),
            ("PUT", b"", 400),
            ("POST", json.dumps({"connections": -4}).encode(), 409),
            ("POST", json.dumps({"topics": {"a": -4}}).encode(), 409),
            ("POST", json.dumps({"connections": 10**18}).encode(), 409),
        ]
        for method, body, status in abuse:
            answer_status, answer = sidecar.send(method, "/report", body)
            assert answer_status == status, (body[:40], answer_status, answer)
            assert answer["error"], answer
            assert sidecar.stats()["connections"] == 3

        # a chunked body (no Content-Length) larger than the limit is refused while reading
        async def endless() -> AsyncIterator[bytes]:
            for _ in range(300):
                yield b"x" * 8192

        async with session.put(f"{sidecar.admin}/report", data=endless()) as response:
            assert response.status == 413
        # many topics in one snapshot fold into _other
        topics = {f"t{index}": 1 for index in range(5000)}
        status, document = sidecar.send("PUT", "/report", {"connections": 5000, "topics": topics})
        assert status == 200
        assert len(document["topics"]) == 6
        assert document["topics"]["_other"] == 4995
        # the watcher saw the valid change and nothing of the abuse
        for _ in range(10):
            line = await asyncio.wait_for(watch.content.readline(), 10)
            if line.strip():
                latest = json.loads(line)
                if latest["connections"] == 5000:
                    break
        else:
            raise AssertionError("watch stream did not deliver the valid report")
        assert latest["seq"] == first["seq"] + 1
        watch.close()
    await eventually(lambda: sidecar.get("/healthz") == (200, "ok"))
