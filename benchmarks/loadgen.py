"""The load generator: raw asyncio WebSocket clients, run as worker processes.

``python -m benchmarks.loadgen --task throughput|latency|idle ...`` opens its
sockets (in ``phoenix`` mode each socket also joins a channel and waits for the
``phx_reply``; in the other frame protocol modes it subscribes, see ``Workload``),
prints ``{"event": "ready", ...}`` as one JSON line on stdout,
waits for the line ``go`` on stdin, does its task, prints ``{"event": "done",
...}``, and (task ``idle``) holds its sockets until the line ``close``.

Tasks:

* ``throughput``: every socket runs a closed loop (send one message, wait for
  its reply, send the next) until the worker has done ``--round-trips``;
* ``latency``: one socket, ``--warmup`` untimed round trips, then
  ``--round-trips`` timed ones one after the other; p50/p99/mean in µs;
* ``idle``: the sockets stay open and silent.

The client does no per-message work beyond counting frames: each socket's
message frame is built and masked (with a random key) once, replies are only
counted (the sidecar's :class:`~wsgauge_sidecar.wsframes.FrameBoundaryTracker`; frames are
built by its ``encode_frame``, the handshake keys by the ``websockets`` library). Sockets can
be spread over several loopback source addresses (``--sources``) so that many thousands of
them never run out of ephemeral ports.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from websockets.utils import accept_key, generate_key
from wsgauge_sidecar.exceptions import WebSocketProtocolError
from wsgauge_sidecar.wsframes import FrameBoundaryTracker, Opcode, encode_close_frame, encode_frame

from benchmarks.exceptions import LoadError

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
"""Linux: bind a source address without reserving a port until ``connect``."""

HEAD_END = b"\r\n\r\n"
"""End of an HTTP head."""

PHOENIX_PATH = "/socket/websocket?vsn=2.0.0"
ECHO_PROTOCOL_MODES = (
    "graphql-ws",
    "mqtt",
    "stomp",
    "pusher",
    "socketio",
    "actioncable",
    "centrifugo",
)
"""Frame protocols measured against the echo server: the sidecar reads the protocol's data
messages both ways (sent by the client, echoed as the server's)."""
MODES = ("path", "phoenix", *ECHO_PROTOCOL_MODES)
"""The topic rules a worker can load: ``path`` and the frame protocols."""
TOPICS = 10
"""Sockets are spread over this many topics (``/ws/room0`` ... or ``room:0`` ...)."""


def handshake_request(host: str, port: int, target: str) -> tuple[bytes, bytes]:
    """An upgrade request for ``target`` and the accept value its 101 answer must carry."""
    key = generate_key()
    request = (
        f"GET {target} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "\r\n"
    ).encode()
    return request, accept_key(key).encode()


def new_mask_key() -> bytes:
    """A random masking key for one socket's frames (built once per socket)."""
    return os.urandom(4)


def text_frame(message: bytes, mask_key: bytes, *, binary: bool = False) -> bytes:
    """One masked text (or binary) frame (client to server)."""
    return encode_frame(Opcode.BINARY if binary else Opcode.TEXT, message, mask=True,
                        mask_key=mask_key)  # fmt: skip


def _mqtt_packet(kind: int, body: bytes, flags: int = 0) -> bytes:
    size, length = len(body), bytearray()
    while True:
        byte, size = size & 0x7F, size >> 7
        length.append(byte | (0x80 if size else 0))
        if not size:
            break
    return bytes([kind << 4 | flags]) + bytes(length) + body


def _mqtt_string(text: str) -> bytes:
    return len(text).to_bytes(2, "big") + text.encode()


@dataclass(frozen=True)
class Workload:
    """What each socket of a worker does."""

    mode: str = "path"
    """``path`` (echo server, topic = request path), ``phoenix`` (Phoenix v2 channels) or a
    protocol of :data:`ECHO_PROTOCOL_MODES` (echo server)."""
    payload_bytes: int = 64
    """Size of the message body (path: the whole text message; others: the data field)."""

    @property
    def binary(self) -> bool:
        """Messages go in binary frames (MQTT)."""
        return self.mode == "mqtt"

    def target(self, index: int) -> str:
        """The request target of socket number ``index``."""
        if self.mode == "phoenix":
            return PHOENIX_PATH
        if self.mode in ECHO_PROTOCOL_MODES:
            return f"/{self.mode}"
        return f"/ws/room{index % TOPICS}"

    def join_message(self, index: int) -> bytes | None:
        """What socket ``index`` sends first and waits for one frame back (None: nothing).

        Phoenix: its ``phx_join``. Against the echo server the message is chosen so that
        its echo completes the subscription (the socket is counted in a topic): MQTT
        CONNECT + SUBSCRIBE + the SUBACK, a Pusher ``subscription_succeeded``, a GraphQL
        ``subscribe``, a STOMP ``SUBSCRIBE``, a Socket.IO namespace connect (``40/room0,``, whose
        echo is the server's acceptance), an Action Cable ``subscribe`` command that carries
        ``"type": "confirm_subscription"`` (its echo confirms it), a Centrifugo ``subscribe``
        command (its echo is the reply with the same id).
        """
        room = f"room{index % TOPICS}"
        if self.mode == "phoenix":
            return json.dumps(["1", "1", f"room:{index % TOPICS}", "phx_join", {}]).encode()
        if self.mode == "graphql-ws":
            query = f"subscription {{ {room} }}"
            return json.dumps(
                {"id": "1", "type": "subscribe", "payload": {"query": query}}
            ).encode()
        if self.mode == "mqtt":
            connect = _mqtt_string("MQTT") + bytes([4, 2, 0, 60]) + _mqtt_string(f"c{index}")
            subscribe = b"\x00\x01" + _mqtt_string(room) + b"\x00"
            return (_mqtt_packet(1, connect) + _mqtt_packet(8, subscribe, 2)
                    + _mqtt_packet(9, b"\x00\x01\x00"))  # fmt: skip
        if self.mode == "stomp":
            return f"SUBSCRIBE\nid:0\ndestination:/topic/{room}\n\n\0".encode()
        if self.mode == "pusher":
            event = "pusher_internal:subscription_succeeded"
            return json.dumps({"event": event, "channel": room, "data": "{}"}).encode()
        if self.mode == "socketio":
            return f"40/{room},".encode()
        if self.mode == "actioncable":
            return json.dumps(
                {"command": "subscribe", "identifier": self._cable_identifier(index),
                 "type": "confirm_subscription"}
            ).encode()  # fmt: skip
        if self.mode == "centrifugo":
            return json.dumps({"id": 1, "subscribe": {"channel": room}}).encode()
        return None

    @staticmethod
    def _cable_identifier(index: int) -> str:
        return json.dumps({"channel": f"room{index % TOPICS}"})

    def message(self, index: int) -> bytes:
        """The message socket ``index`` sends in every round trip (a data message)."""
        body = "x" * self.payload_bytes
        room = f"room{index % TOPICS}"
        if self.mode == "phoenix":
            return json.dumps(["1", "2", f"room:{index % TOPICS}", "msg", {"body": body}]).encode()
        if self.mode == "graphql-ws":
            payload = {"data": {room: body}}
            return json.dumps({"id": "1", "type": "next", "payload": payload}).encode()
        if self.mode == "mqtt":
            return _mqtt_packet(3, _mqtt_string(room) + body.encode())
        if self.mode == "stomp":
            head = f"SEND\ndestination:/topic/{room}\ncontent-length:{len(body)}\n\n"
            return (head + body + "\0").encode()
        if self.mode == "pusher":
            return json.dumps(
                {"event": "client-msg", "channel": room, "data": {"body": body}}
            ).encode()
        if self.mode == "socketio":
            return f"42/{room},".encode() + json.dumps(["msg", {"body": body}]).encode()
        if self.mode == "actioncable":
            data = json.dumps({"action": "speak", "body": body})
            return json.dumps(
                {"command": "message", "identifier": self._cable_identifier(index), "data": data}
            ).encode()
        if self.mode == "centrifugo":
            return json.dumps({"push": {"channel": room, "pub": {"data": {"body": body}}}}).encode()
        return body.encode()


def percentile(sorted_values: Sequence[int | float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return float(sorted_values[rank - 1])


class BenchSocket(asyncio.Protocol):
    """One client WebSocket: handshake, then closed-loop round trips or silence."""

    def __init__(self, request: bytes, accept: bytes) -> None:
        loop = asyncio.get_running_loop()
        self._request = request
        self._accept = accept
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = loop.create_future()
        self._head = bytearray()
        self._open = False
        self.counter = FrameBoundaryTracker(masked=False)
        self._waiter: asyncio.Future[None] | None = None
        self._wait_for_frames = 0
        self._frame = b""
        self._remaining = 0
        self._done: asyncio.Future[None] | None = None
        self.times: list[int] | None = None
        self._sent_at = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        if not self._open:
            self._head += data
            end = self._head.find(HEAD_END)
            if end < 0:
                return
            head = bytes(self._head[:end])
            rest = bytes(self._head[end + 4 :])
            self._head.clear()
            status_line = head.split(b"\r\n", 1)[0]
            if b" 101 " not in status_line + b" " or self._accept not in head:
                self._fail(LoadError(f"upgrade refused: {status_line.decode(errors='replace')}"))
                return
            self._open = True
            if not self.opened.done():
                self.opened.set_result(None)
            if not rest:
                return
            data = rest
        counter = self.counter
        before = counter.frames_completed
        try:
            counter.feed(data)
        except WebSocketProtocolError as error:
            self._fail(LoadError(f"bad frames from the server: {error}"))
            return
        completed = counter.frames_completed - before
        if not completed:
            return
        if self._remaining:
            times = self.times
            if times is not None:
                times.append(time.perf_counter_ns() - self._sent_at)
            self._remaining -= completed
            if self._remaining > 0:
                if times is not None:
                    self._sent_at = time.perf_counter_ns()
                assert self.transport is not None
                self.transport.write(self._frame)
            elif self._done is not None and not self._done.done():
                self._remaining = 0
                self._done.set_result(None)
        elif (
            self._waiter is not None
            and not self._waiter.done()
            and self.counter.frames_completed >= self._wait_for_frames
        ):
            self._waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(LoadError(f"socket closed early: {exc or 'by the peer'}"))

    def _fail(self, error: LoadError) -> None:
        for future in (self.opened, self._waiter, self._done):
            if future is not None and not future.done():
                future.set_exception(error)
        if self.transport is not None:
            self.transport.abort()

    async def request_reply(self, message: bytes, mask_key: bytes, *, binary: bool = False) -> None:
        """Send one message and wait for one frame back (a join / subscription)."""
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self._wait_for_frames = self.counter.frames_completed + 1
        self.transport.write(text_frame(message, mask_key, binary=binary))
        await self._waiter

    def round_trips(self, frame: bytes, count: int, *, timed: bool) -> asyncio.Future[None]:
        """Start ``count`` closed-loop round trips of ``frame``; the future ends with them."""
        assert self.transport is not None
        assert count > 0
        self._done = asyncio.get_running_loop().create_future()
        self._frame = frame
        self._remaining = count
        if not timed:
            self.times = None
        elif self.times is None:
            self.times = []  # timed calls accumulate until the caller resets ``times``
        self._sent_at = time.perf_counter_ns()
        self.transport.write(frame)
        return self._done

    def close(self) -> None:
        """Send a close frame and close TCP."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_close_frame(1000, mask=True))
            self.transport.close()


async def open_socket(
    host: str, port: int, target: str, source: str, timeout: float
) -> BenchSocket:
    """Connect from ``source`` and complete the WebSocket handshake."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if source != "127.0.0.1":
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), timeout)
    except (OSError, TimeoutError) as error:
        sock.close()
        raise LoadError(f"cannot connect to {host}:{port} from {source}: {error!r}") from None
    request, accept = handshake_request(host, port, target)
    _, protocol = await loop.create_connection(lambda: BenchSocket(request, accept), sock=sock)
    try:
        await asyncio.wait_for(protocol.opened, timeout)
    except TimeoutError:
        protocol.close()
        raise LoadError(f"handshake with {host}:{port}{target} timed out") from None
    return protocol


async def open_sockets(
    host: str,
    port: int,
    workload: Workload,
    count: int,
    *,
    first_index: int = 0,
    sources: Sequence[str] = ("127.0.0.1",),
    parallel: int = 64,
    timeout: float = 30.0,
) -> list[tuple[BenchSocket, bytes]]:
    """Open ``count`` sockets (joined, in phoenix mode); each with its masked message frame."""
    limiter = asyncio.Semaphore(parallel)

    async def one(index: int) -> tuple[BenchSocket, bytes]:
        async with limiter:
            source = sources[index % len(sources)]
            bench = await open_socket(host, port, workload.target(index), source, timeout)
            mask_key = new_mask_key()
            join = workload.join_message(index)
            if join is not None:
                await asyncio.wait_for(
                    bench.request_reply(join, mask_key, binary=workload.binary), timeout
                )
            return bench, text_frame(workload.message(index), mask_key, binary=workload.binary)

    tasks = [asyncio.ensure_future(one(first_index + number)) for number in range(count)]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is None:
                task.result()[0].close()
        raise


async def run_round_trips(
    sockets: Sequence[tuple[BenchSocket, bytes]], total: int, timeout: float
) -> float:
    """``total`` closed-loop round trips spread over ``sockets``; the seconds they took."""
    if total <= 0 or not sockets:
        raise LoadError("nothing to do: no round trips or no sockets")
    share, extra = divmod(total, len(sockets))
    started = time.perf_counter()
    waits = [
        bench.round_trips(frame, share + (1 if number < extra else 0), timed=False)
        for number, (bench, frame) in enumerate(sockets)
        if share + (1 if number < extra else 0) > 0
    ]
    await asyncio.wait_for(asyncio.gather(*waits), timeout)
    return time.perf_counter() - started


def _figures(times_ns: list[int]) -> dict[str, float]:
    ordered = sorted(times_ns)
    return {
        "count": float(len(ordered)),
        "p50_us": percentile(ordered, 0.50) / 1000.0,
        "p99_us": percentile(ordered, 0.99) / 1000.0,
        "mean_us": sum(ordered) / len(ordered) / 1000.0,
    }


async def measure_latency(
    target: tuple[BenchSocket, bytes],
    baseline: tuple[BenchSocket, bytes] | None,
    count: int,
    warmup: int,
    timeout: float,
) -> dict[str, dict[str, float]]:
    """``warmup`` untimed then ``count`` timed sequential round trips on ``target``.

    With a ``baseline`` socket (straight to the upstream) the round trips
    alternate between the two, one at a time, so both series see the same
    background load. The result has ``target`` (and ``baseline``) figures:
    count, p50/p99/mean in µs.
    """
    pairs = [target] if baseline is None else [baseline, target]
    for bench, frame in pairs:
        if warmup > 0:
            await asyncio.wait_for(bench.round_trips(frame, warmup, timed=False), timeout)
        bench.times = []
    deadline = time.monotonic() + timeout
    for _ in range(count):
        for bench, frame in pairs:
            await asyncio.wait_for(
                bench.round_trips(frame, 1, timed=True), max(0.001, deadline - time.monotonic())
            )
    figures: dict[str, dict[str, float]] = {}
    for name, pair in (("target", target), ("baseline", baseline)):
        if pair is None:
            continue
        times = pair[0].times or []
        if len(times) != count:
            raise LoadError(f"expected {count} timings, got {len(times)}")
        figures[name] = _figures(times)
    return figures


# -- worker process ----------------------------------------------------------------------------


def _emit(document: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(document) + "\n")
    sys.stdout.flush()


async def _read_command(reader: asyncio.StreamReader, expected: str, timeout: float) -> None:
    line = await asyncio.wait_for(reader.readline(), timeout)
    if line.strip().decode() != expected:
        raise LoadError(f"expected {expected!r} on stdin, got {line!r}")


async def _worker(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    workload = Workload(mode=args.mode, payload_bytes=args.payload)
    sources = [f"127.0.0.{2 + number}" for number in range(args.sources)] or ["127.0.0.1"]
    timeout: float = args.timeout
    connections = 1 if args.task == "latency" else args.connections
    started = time.perf_counter()
    sockets = await asyncio.wait_for(
        open_sockets(
            args.host,
            args.port,
            workload,
            connections,
            first_index=args.first_index,
            sources=sources,
            timeout=timeout,
        ),
        timeout,
    )
    baseline: list[tuple[BenchSocket, bytes]] = []
    if args.task == "latency" and args.baseline_port:
        baseline = await asyncio.wait_for(
            open_sockets(args.host, args.baseline_port, workload, 1, timeout=timeout), timeout
        )
        sockets += baseline
    _emit(
        {"event": "ready", "sockets": len(sockets), "open_seconds": time.perf_counter() - started}
    )
    await _read_command(stdin, "go", timeout)
    try:
        if args.task == "throughput":
            seconds = await run_round_trips(sockets, args.round_trips, timeout)
            _emit({"event": "done", "round_trips": args.round_trips, "seconds": seconds})
        elif args.task == "latency":
            figures = await measure_latency(
                sockets[0],
                baseline[0] if baseline else None,
                args.round_trips,
                args.warmup,
                timeout,
            )
            _emit({"event": "done", **figures})
        else:
            _emit({"event": "done", "sockets": len(sockets)})
            await _read_command(stdin, "close", timeout)
    finally:
        for bench, _ in sockets:
            bench.close()
        await asyncio.sleep(0.05)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m benchmarks.loadgen``: one load worker (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="benchmarks.loadgen",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=MODES, default="path")
    parser.add_argument("--task", choices=("throughput", "latency", "idle"), required=True)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--first-index", type=int, default=0, help="number of the first socket")
    parser.add_argument(
        "--baseline-port",
        type=int,
        default=0,
        help="latency: also time round trips straight to this port, alternating",
    )
    parser.add_argument("--round-trips", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--payload", type=int, default=64)
    parser.add_argument(
        "--sources", type=int, default=0, help="spread sockets over 127.0.0.2.. (0: use 127.0.0.1)"
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="bound of every step")
    args = parser.parse_args(argv)
    try:
        import uvloop  # noqa: PLC0415 (optional dependency)
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(_worker(args))
    except (LoadError, TimeoutError, OSError) as error:
        _emit({"event": "error", "message": f"{type(error).__name__}: {error}"})
        sys.exit(1)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
