"""Hostile or broken sidecars against the real follower: refused, marked, and contained.

Fake sidecars (real aiohttp servers on 127.0.34.x) send what a broken or compromised
sidecar could: a line that never ends (fast, or dribbled a byte at a time), documents of
the wrong types, negative or absurd counts, a document larger than
``max_document_bytes``, HTML garbage then valid documents, an endless fast stream of
valid documents, a ``/stats`` body that never ends. All of them are followed at the same
time as one well-behaved sidecar, in one :class:`FleetState`, over one client session,
as in the operator. Each hostile pod ends up unreachable (with the reason kept) or, for
the valid-but-noisy ones, reporting the right numbers; the good pod keeps reporting and
its changes still arrive; what the follower reads from a never-ending line is bounded by
``max_document_bytes``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from operator_it_harness import eventually_async, free_port
from wsgauge_contract import StatsDocument, encode_watch_line
from wsgauge_operator.control.follower import SidecarFollower
from wsgauge_operator.model.fleet import EndpointKey, FleetState, PodRecord, SidecarState
from wsgauge_operator.model.settings import FollowerSettings

MAX_DOCUMENT = 64 * 1024
SETTINGS = FollowerSettings(
    connect_timeout=1.0,
    read_timeout=2.0,
    backoff_initial=0.1,
    backoff_max=0.5,
    poll_interval=0.3,
    startup_grace=2.0,
    max_document_bytes=MAX_DOCUMENT,
)
FLOOD_DOCUMENTS = 20_000
ENDLESS_BYTES = 64 * 2**20


def document_line(pod: str, count: int, seq: int, **changes: object) -> bytes:
    """A watch line: a valid document of ``pod``, with raw JSON ``changes`` applied."""
    valid = StatsDocument(pod=pod, connections=count, topics={"t": count}, started_at="T", seq=seq)
    if not changes:
        return encode_watch_line(valid)
    body = json.loads(encode_watch_line(valid))
    body.update(changes)
    return json.dumps(body).encode() + b"\n"


Behaviour = Callable[["FakeSidecar", web.StreamResponse, int], Awaitable[None]]


@dataclass
class FakeSidecar:
    """One fake sidecar: what its ``/stats/watch`` (or ``/stats``) sends is ``behaviour``."""

    pod: str
    behaviour: Behaviour | None
    poll_body: bytes | None = None
    connections: int = 0
    """Watch connections accepted so far."""
    bytes_sent: list[int] = field(default_factory=list)
    """Bytes written per watch connection (until the reader went away)."""
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/stats/watch", self._watch)
        app.router.add_get("/stats", self._stats)
        return app

    async def _watch(self, request: web.Request) -> web.StreamResponse:
        if self.behaviour is None:
            raise web.HTTPNotFound()
        self.connections += 1
        self.bytes_sent.append(0)
        response = web.StreamResponse()
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            await self.behaviour(self, response, self.connections)
        return response

    async def write(self, response: web.StreamResponse, data: bytes) -> None:
        await response.write(data)
        self.bytes_sent[-1] += len(data)

    async def heartbeats(self, response: web.StreamResponse, count: int = 300) -> None:
        for _ in range(count):  # bounded
            if self.stop.is_set():
                return
            await self.write(response, b"\n")
            await asyncio.sleep(0.2)

    async def _stats(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_type = "application/json"
        await response.prepare(request)
        self.bytes_sent.append(0)
        with contextlib.suppress(ConnectionError):
            assert self.poll_body is not None
            for _ in range(ENDLESS_BYTES // len(self.poll_body)):
                await self.write(response, self.poll_body)
        return response


# -- behaviours ------------------------------------------------------------------------------


async def endless_line(fake: FakeSidecar, response: web.StreamResponse, attempt: int) -> None:
    chunk = b'{"pod": "' + b"x" * 65536
    for _ in range(ENDLESS_BYTES // len(chunk)):
        await fake.write(response, chunk)


async def dribbled_line(fake: FakeSidecar, response: web.StreamResponse, attempt: int) -> None:
    # a valid document (first connection only), then one byte of a next line every 0.2 s,
    # never a line end: bytes keep coming (no socket read timeout), no document or heartbeat
    if attempt == 1:
        await fake.write(response, document_line(fake.pod, 4, attempt))
    for _ in range(300):  # bounded
        if fake.stop.is_set():
            return
        await fake.write(response, b"{")
        await asyncio.sleep(0.2)


def sends(*lines: bytes) -> Behaviour:
    async def behaviour(fake: FakeSidecar, response: web.StreamResponse, attempt: int) -> None:
        for line in lines:
            await fake.write(response, line)
        await fake.heartbeats(response)

    return behaviour


async def garbage_then_valid(fake: FakeSidecar, response: web.StreamResponse, attempt: int) -> None:
    if attempt == 1:
        await fake.write(response, b"<html><body>502 Bad Gateway</body></html>\n")
        await fake.heartbeats(response)
        return
    await fake.write(response, document_line(fake.pod, 7, attempt))
    await fake.heartbeats(response)


async def flood(fake: FakeSidecar, response: web.StreamResponse, attempt: int) -> None:
    batch = b"".join(
        document_line(fake.pod, seq % 50, seq) for seq in range(1, FLOOD_DOCUMENTS + 1)
    )
    for start in range(0, len(batch), 16384):  # as fast as the reader takes it
        await fake.write(response, batch[start : start + 16384])
    await fake.heartbeats(response)


class GoodSidecar(FakeSidecar):
    """Well behaved; ``update`` makes it send a new document on its open stream."""

    def __init__(self, pod: str) -> None:
        super().__init__(pod, None)
        self.count = 5
        self.changed = asyncio.Event()
        self.behaviour = self._serve

    async def _serve(self, fake: FakeSidecar, response: web.StreamResponse, attempt: int) -> None:
        seq = 1
        await self.write(response, document_line(self.pod, self.count, seq))
        for _ in range(600):  # bounded
            if self.stop.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), 0.2)
            if self.changed.is_set():
                self.changed.clear()
                seq += 1
                await self.write(response, document_line(self.pod, self.count, seq))
            else:
                await self.write(response, b"\n")

    def update(self, count: int) -> None:
        self.count = count
        self.changed.set()


def hostile_sidecars() -> dict[str, FakeSidecar]:
    huge_topics = {f"topic-{index:06d}": 1 for index in range(5000)}
    return {
        "endless-line": FakeSidecar("endless-line", endless_line),
        "dribbled-line": FakeSidecar("dribbled-line", dribbled_line),
        "wrong-types": FakeSidecar(
            "wrong-types", sends(document_line("wrong-types", 1, 1, connections="many"))
        ),
        "wrong-shape": FakeSidecar("wrong-shape", sends(b"[1, 2, 3]\n")),
        "topics-not-counts": FakeSidecar(
            "topics-not-counts", sends(document_line("topics-not-counts", 1, 1, topics={"a": [1]}))
        ),
        "negative": FakeSidecar("negative", sends(document_line("negative", -3, 1))),
        "absurd": FakeSidecar("absurd", sends(document_line("absurd", 10**30, 1))),
        "too-large": FakeSidecar(
            "too-large",
            sends(document_line("too-large", 5000, 1, topics=huge_topics)),
        ),
        "endless-poll": FakeSidecar("endless-poll", None, poll_body=b"[" * 8192),
    }


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def test_hostile_sidecars_are_contained_and_the_good_one_keeps_reporting(
    session: aiohttp.ClientSession,
) -> None:
    hostile = hostile_sidecars()
    noisy = {
        "garbage-then-valid": FakeSidecar("garbage-then-valid", garbage_then_valid),
        "flood": FakeSidecar("flood", flood),
    }
    good = GoodSidecar("good")
    fakes: dict[str, FakeSidecar] = {**hostile, **noisy, "good": good}
    fleet = FleetState()
    keys: dict[str, EndpointKey] = {}
    runners: list[web.AppRunner] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        for index, (name, fake) in enumerate(fakes.items()):
            ip = f"127.0.34.{index + 1}"
            port = free_port(ip)
            runner = web.AppRunner(fake.app())
            await runner.setup()
            await web.TCPSite(runner, ip, port).start()
            runners.append(runner)
            fleet.upsert_pod(
                PodRecord(namespace="ns", name=name, uid=f"u-{name}", ip=ip, phase="Running")
            )
            keys[name] = EndpointKey("ns", name, f"u-{name}", ip, port)
            follower = SidecarFollower(keys[name], fleet, session, SETTINGS)
            tasks.append(asyncio.create_task(follower.run()))

        def state(name: str) -> SidecarState | None:
            stats = fleet.endpoint(keys[name])
            return None if stats is None else stats.state

        def connections(name: str) -> int | None:
            stats = fleet.endpoint(keys[name])
            if stats is None or stats.document is None:
                return None
            return stats.document.connections

        await eventually_async(lambda: connections("good") == 5, what="good pod reporting")
        for name in hostile:

            def unreachable(name: str = name) -> bool:
                return state(name) is SidecarState.UNREACHABLE

            await eventually_async(unreachable, timeout=30, what=f"{name} unreachable")
            stats = fleet.endpoint(keys[name])
            assert stats is not None, name
            assert stats.last_error, name
        # the noisy but valid ones report exactly what they sent last
        await eventually_async(lambda: connections("garbage-then-valid") == 7, what="garbage->7")
        assert state("garbage-then-valid") is SidecarState.REPORTING

        def flood_read() -> StatsDocument | None:
            stats = fleet.endpoint(keys["flood"])
            if stats is None or stats.document is None:
                return None
            return stats.document if stats.document.seq == FLOOD_DOCUMENTS else None

        flooded = await eventually_async(
            flood_read,
            timeout=60,
            what="the whole flood read",
        )
        assert flooded.connections == FLOOD_DOCUMENTS % 50
        # the good pod was followed all along and still gets its changes through
        assert state("good") is SidecarState.REPORTING
        good.update(6)
        await eventually_async(lambda: connections("good") == 6, what="good pod update")
        # what a follower read of a line that never ends is bounded by max_document_bytes
        # (plus what the socket buffers hold), not by what the sidecar offered
        for name in ("endless-line", "endless-poll"):
            sent = hostile[name].bytes_sent
            print(f"{name}: bytes written per connection before the follower hung up: {sent}")
            assert sent, name
            assert max(sent) < 16 * 2**20 < ENDLESS_BYTES, (name, sent)
        # the aggregation the metrics API serves counts the reporting pods only
        by_pod = {pod.name: pod for pod in fleet.pods("ns")}
        assert by_pod["good"].connections == 6
        assert by_pod["good"].reachable
        for name in hostile:
            assert not by_pod[name].reachable, name
    finally:
        for fake in fakes.values():
            fake.stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for runner in runners:
            await runner.cleanup()
