"""CPU cost per message of the sidecar's pure cores, measured in-process without any I/O.

``python -m benchmarks.core_costs`` (also part of ``make bench``) feeds the
benchmark's own messages, already framed, to the sidecar's sans-I/O objects in
a tight loop and reports process CPU µs per call: the frame boundary tracker
that the ``path`` rule runs on server-to-client bytes, and the message readers
and Phoenix session that the ``phoenix`` rule runs on both directions. Together
with the end-to-end figures this shows how much of the sidecar's CPU per
message is protocol work (these rows) and how much is relaying (event loop,
Python glue, system calls and the kernel's TCP work).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from wsgauge_sidecar.httpwire import RequestHead, ResponseHead
from wsgauge_sidecar.protocols.phoenix import PhoenixSession
from wsgauge_sidecar.protocols.registry import PROTOCOLS
from wsgauge_sidecar.wsframes import FrameBoundaryTracker, MessageReader, Opcode, encode_frame

from benchmarks.loadgen import ECHO_PROTOCOL_MODES, Workload


@dataclass(frozen=True)
class CoreCost:
    """One pure-core step and its CPU cost."""

    step: str
    """What was called, on what."""
    mode: str
    """The topic rule that runs this step for every relayed message."""
    us_per_call: float
    """Process CPU µs per call."""


def _measure(call: Callable[[], object], iterations: int) -> float:
    for _ in range(min(1000, iterations)):
        call()
    started = time.process_time()
    for _ in range(iterations):
        call()
    return (time.process_time() - started) / iterations * 1e6


def measure_core_costs(iterations: int = 50_000, payload_bytes: int = 64) -> list[CoreCost]:
    """The cost of each pure-core step on the benchmark's messages."""
    path = Workload("path", payload_bytes)
    phoenix = Workload("phoenix", payload_bytes)
    key = os.urandom(4)
    echo_frame = encode_frame(Opcode.TEXT, path.message(0))
    request = phoenix.message(0)
    reply = json.dumps(
        ["1", "2", "room:0", "phx_reply", {"status": "ok", "response": {"body": "x" * 64}}]
    ).encode()
    client_frame = encode_frame(Opcode.TEXT, request, mask=True, mask_key=key)
    server_frame = encode_frame(Opcode.TEXT, reply)
    session = PhoenixSession("v2")
    session.client_message(json.dumps(["1", "1", "room:0", "phx_join", {}]))
    session.server_message(
        json.dumps(["1", "1", "room:0", "phx_reply", {"status": "ok", "response": {}}])
    )
    tracker = FrameBoundaryTracker(masked=False)
    phoenix_tracker = FrameBoundaryTracker(masked=False)
    client_reader = MessageReader(masked=True, max_message_bytes=1 << 20)
    server_reader = MessageReader(masked=False, max_message_bytes=1 << 20)
    request_text, reply_text = request.decode(), reply.decode()
    steps: list[tuple[str, str, Callable[[], object]]] = [
        ("FrameBoundaryTracker.feed(echo frame, server to client)", "path",
         lambda: tracker.feed(echo_frame)),
        ("MessageReader.feed(masked client frame)", "phoenix",
         lambda: client_reader.feed(client_frame)),
        ("PhoenixSession.client_text(event)", "phoenix", lambda: session.client_text(request)),
        ("MessageReader.feed(server frame)", "phoenix", lambda: server_reader.feed(server_frame)),
        ("PhoenixSession.server_text(phx_reply, no join pending)", "phoenix",
         lambda: session.server_text(reply)),
        ("PhoenixSession.client_message(event) (full decode, as for a join)", "-",
         lambda: session.client_message(request_text)),
        ("PhoenixSession.server_message(phx_reply) (full decode)", "-",
         lambda: session.server_message(reply_text)),
        ("FrameBoundaryTracker.feed(server frame)", "phoenix",
         lambda: phoenix_tracker.feed(server_frame)),
        ("json.loads(event) (for scale)", "-", lambda: json.loads(request_text)),
    ]  # fmt: skip
    for mode in ECHO_PROTOCOL_MODES:
        steps.extend(_protocol_steps(Workload(mode, payload_bytes)))
    return [CoreCost(step, mode, _measure(call, iterations)) for step, mode, call in steps]


def _protocol_steps(workload: Workload) -> list[tuple[str, str, Callable[[], object]]]:
    """The session calls of a frame protocol's relayed message (as the bench sends it, after
    its subscription): the client's message and its echo as the server's."""
    spec = PROTOCOLS[workload.mode]
    request = RequestHead("GET", workload.target(0), "HTTP/1.1", [])
    response = ResponseHead("HTTP/1.1", 101, "Switching Protocols", [])
    session = spec.factory(request, response)
    join, message = workload.join_message(0), workload.message(0)
    client, server = (
        (session.client_binary, session.server_binary)
        if workload.binary
        else (session.client_text, session.server_text)
    )
    if join is not None:
        client(join)
        server(join)
    kind = "binary" if workload.binary else "text"
    return [
        (f"{type(session).__name__}.client_{kind}(data message)", workload.mode,
         lambda: client(message)),
        (f"{type(session).__name__}.server_{kind}(data message)", workload.mode,
         lambda: server(message)),
    ]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.core_costs", description=__doc__)
    parser.add_argument("--iterations", type=int, default=50_000)
    args = parser.parse_args(argv)
    for cost in measure_core_costs(args.iterations):
        print(f"{cost.us_per_call:7.2f} µs  [{cost.mode}] {cost.step}")


if __name__ == "__main__":
    main()
