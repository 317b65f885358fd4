"""The sidecar follower against real sidecar processes and small fake sidecars on loopback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from operator_it_harness import Clients, SidecarPair, eventually_async, free_port
from wsgauge_contract import StatsDocument, encode_stats_document, encode_watch_line
from wsgauge_operator.control.follower import SidecarFollower
from wsgauge_operator.model.fleet import EndpointKey, FleetState, PodRecord, SidecarState
from wsgauge_operator.model.settings import FollowerSettings

SETTINGS = FollowerSettings(
    connect_timeout=1.0,
    read_timeout=2.5,
    backoff_initial=0.1,
    backoff_max=0.5,
    poll_interval=0.3,
    startup_grace=3.0,
)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[SidecarPair]:
    sidecar = SidecarPair("127.0.33.1", tmp_path, "pod-a")
    try:
        yield sidecar
    finally:
        sidecar.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def fleet_with(pod: str, ip: str, port: int) -> tuple[FleetState, EndpointKey]:
    fleet = FleetState()
    fleet.upsert_pod(PodRecord(namespace="ns", name=pod, uid="u1", ip=ip, phase="Running"))
    key = EndpointKey("ns", pod, "u1", ip, port)
    fleet.add_endpoint(key)
    return fleet, key


async def test_follows_real_sidecar_counts_kill_and_restart(
    pair: SidecarPair, session: aiohttp.ClientSession
) -> None:
    fleet, key = fleet_with("pod-a", pair.ip, pair.admin_port)
    follower = SidecarFollower(key, fleet, session, SETTINGS)
    task = asyncio.create_task(follower.run())
    clients = Clients()
    try:

        def counts() -> tuple[str, int, dict[str, int]] | None:
            stats = fleet.endpoint(key)
            if stats is None or stats.document is None:
                return None
            return stats.state.value, stats.document.connections, dict(stats.document.topics)

        await eventually_async(lambda: counts() == ("reporting", 0, {}), what="first document")
        await clients.open(pair.ip, pair.data_port, "stream", 3)
        await clients.open(pair.ip, pair.data_port, "stats", 2)
        await eventually_async(
            lambda: counts() == ("reporting", 5, {"stream": 3, "stats": 2}), what="5 sockets"
        )
        await clients.close(pair.ip, pair.data_port, "stream", 2)
        await eventually_async(
            lambda: counts() == ("reporting", 3, {"stream": 1, "stats": 2}), what="3 sockets"
        )
        await clients.aclose()
        clients = Clients()

        assert pair.sidecar is not None
        pair.sidecar.kill()
        await eventually_async(
            lambda: fleet.endpoint(key).state is SidecarState.UNREACHABLE,  # type: ignore[union-attr]
            what="unreachable after SIGKILL",
        )
        assert fleet.pods("ns")[0].reachable is False

        pair.start_sidecar()
        await clients.open(pair.ip, pair.data_port, "stream", 4)
        await eventually_async(lambda: counts() == ("reporting", 4, {"stream": 4}), what="restart")
        stats = fleet.endpoint(key)
        assert stats is not None
        assert stats.restarts == 1
        assert fleet.pods("ns")[0].connections == 4  # replaced, not added to the old counts
    finally:
        await clients.aclose()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class FakeSidecar:
    """A tiny sidecar speaking the contract, whose behaviour a test controls."""

    def __init__(self, *, watch: bool = True) -> None:
        self.document = StatsDocument(
            pod="fake", connections=1, topics={"t": 1}, started_at="T", seq=1
        )
        self.silent = asyncio.Event()
        self.stopping = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_get("/stats", self._stats)
        if watch:
            self.app.router.add_get("/stats/watch", self._watch)
        self.polls = 0

    async def _stats(self, request: web.Request) -> web.Response:
        self.polls += 1
        return web.Response(
            body=encode_stats_document(self.document), content_type="application/json"
        )

    async def _watch(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        if not self.silent.is_set():
            await response.write(encode_watch_line(self.document))
        for _ in range(200):  # heartbeats until told to freeze (bounded)
            if self.silent.is_set():  # frozen: the connection stays open, nothing comes
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), 30)
                break
            await response.write(b"\n")
            await asyncio.sleep(0.2)
        return response


async def serve(app: web.Application, ip: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, ip, port).start()
    return runner


async def test_silence_longer_than_read_timeout_means_unreachable(
    session: aiohttp.ClientSession,
) -> None:
    ip, port = "127.0.33.2", free_port("127.0.33.2")
    fake = FakeSidecar()
    runner = await serve(fake.app, ip, port)
    fleet, key = fleet_with("fake", ip, port)
    task = asyncio.create_task(SidecarFollower(key, fleet, session, SETTINGS).run())
    try:
        await eventually_async(
            lambda: fleet.endpoint(key).state is SidecarState.REPORTING,  # type: ignore[union-attr]
            what="reporting",
        )
        await asyncio.sleep(SETTINGS.read_timeout + 0.5)  # heartbeats keep it reporting
        assert fleet.endpoint(key).state is SidecarState.REPORTING  # type: ignore[union-attr]
        fake.silent.set()
        await eventually_async(
            lambda: fleet.endpoint(key).state is SidecarState.UNREACHABLE,  # type: ignore[union-attr]
            timeout=3 * SETTINGS.read_timeout + 5,
            what="unreachable after silence",
        )
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        fake.stopping.set()
        await runner.cleanup()


async def test_polls_when_watch_is_missing_and_rejects_a_foreign_pod(
    session: aiohttp.ClientSession,
) -> None:
    ip, port = "127.0.33.3", free_port("127.0.33.3")
    fake = FakeSidecar(watch=False)
    runner = await serve(fake.app, ip, port)
    fleet, key = fleet_with("fake", ip, port)
    task = asyncio.create_task(SidecarFollower(key, fleet, session, SETTINGS).run())
    try:
        await eventually_async(lambda: fake.polls >= 3, what="three polls")
        stats = fleet.endpoint(key)
        assert stats is not None
        assert stats.state is SidecarState.REPORTING
        assert stats.document is not None
        assert stats.document.connections == 1
        fake.document = StatsDocument(pod="somebody-else", connections=50, started_at="T", seq=2)
        await eventually_async(lambda: stats.state is SidecarState.UNREACHABLE, what="foreign pod")
        assert "somebody-else" in stats.last_error
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await runner.cleanup()


async def test_never_answering_sidecar_becomes_unreachable_after_the_grace(
    session: aiohttp.ClientSession,
) -> None:
    ip = "127.0.33.4"
    fleet, key = fleet_with("nobody", ip, free_port(ip))
    task = asyncio.create_task(SidecarFollower(key, fleet, session, SETTINGS).run())
    try:
        await asyncio.sleep(0.5)
        assert fleet.endpoint(key).state is SidecarState.STARTING  # type: ignore[union-attr]
        await eventually_async(
            lambda: fleet.endpoint(key).state is SidecarState.UNREACHABLE,  # type: ignore[union-attr]
            timeout=SETTINGS.startup_grace + 5,
            what="unreachable after the startup grace",
        )
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
