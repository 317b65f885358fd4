"""The operator's own pod watch (kube/pod_watch.py): stream parsing, ``410 Gone`` and errors,
listing then watching, deletions found by a new listing, and a listing handed to the controller
in a few turns of the event loop (kopf's per-object workers took one turn per pod). No I/O: a
scripted fake of the two API calls and recording fake followers."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from test_operator_controller_followers import Factory, connection_stats, followed, pod
from wsgauge_operator.control.controller import Controller
from wsgauge_operator.kube.pod_watch import (
    LIST_SLICE,
    LineSplitter,
    PodWatch,
    WatchGone,
    watch_events,
)
from wsgauge_operator.model.exceptions import KubeApiError
from wsgauge_operator.model.settings import OperatorSettings


def line(kind: str, body: dict[str, Any]) -> bytes:
    return json.dumps({"type": kind, "object": body}).encode() + b"\n"


def with_version(body: dict[str, Any], version: str) -> dict[str, Any]:
    body["metadata"]["resourceVersion"] = version
    return body


class FakeResponse:
    """A watch response: scripted chunks, then (``hold``) waits until its request is closed."""

    def __init__(self, chunks: list[bytes], hold: bool) -> None:
        self.chunks = chunks
        self.hold = hold
        self.closed = False

    async def stream(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        if self.hold:
            await asyncio.Event().wait()  # until the watch task is cancelled


class FakeApi:
    """Listings and watch streams from scripts; the last watch holds until shut down."""

    def __init__(
        self, listings: list[list[dict[str, Any]]], streams: list[list[bytes] | KubeApiError]
    ) -> None:
        self.listings = listings
        self.streams = streams
        self.watched_from: list[str] = []
        self.list_calls = 0
        self.responses: list[FakeResponse] = []

    async def list_pods(self, namespace: str | None) -> tuple[list[dict[str, Any]], str]:
        items = self.listings[min(self.list_calls, len(self.listings) - 1)]
        self.list_calls += 1
        return items, f"list-{self.list_calls}"

    @contextlib.asynccontextmanager
    async def watch_pods(
        self,
        namespace: str | None,
        resource_version: str,
        timeout_seconds: int,
        read_timeout: float,
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        self.watched_from.append(resource_version)
        chunks = self.streams.pop(0) if self.streams else []
        if isinstance(chunks, KubeApiError):
            raise chunks
        response = FakeResponse(chunks, hold=not self.streams)
        self.responses.append(response)
        try:
            yield response.stream()
        finally:
            response.closed = True


async def until(condition: Any, turns: int = 2000) -> None:
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


def test_line_splitter_joins_chunks_and_skips_blank_and_broken_lines() -> None:
    splitter = LineSplitter()
    whole = line("ADDED", pod("a")) + b"\n" + b"{broken\n" + line("DELETED", pod("b"))
    first, second = whole[:17], whole[17:-3]
    assert splitter.feed(first) == []
    events = splitter.feed(second)
    assert [e["type"] for e in events] == ["ADDED"]
    assert [e["type"] for e in splitter.feed(whole[-3:])] == ["DELETED"]


def test_watch_events_keep_bookmark_versions_and_stop_at_errors() -> None:
    bookmark = {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}}
    added = {"type": "ADDED", "object": with_version(pod("a"), "7")}
    events, version = watch_events([added, bookmark])
    assert [(kind, body["metadata"]["name"]) for kind, body in events] == [("ADDED", "a")]
    assert version == "9"
    gone = {"type": "ERROR", "object": {"code": 410, "message": "too old resource version"}}
    with pytest.raises(WatchGone):
        watch_events([added, gone])
    with pytest.raises(KubeApiError):
        watch_events([{"type": "ERROR", "object": {"code": 500, "message": "boom"}}])


async def test_list_then_watch_then_410_lists_again_and_forgets_pods_gone_meanwhile() -> None:
    controller = Controller(OperatorSettings(), None, follower_factory=Factory())
    controller.connectionstats_event(None, connection_stats())
    await controller.start()
    first_stream = [
        line("ADDED", with_version(pod("c"), "11")),
        line("DELETED", with_version(pod("a"), "12")),
        json.dumps({"type": "ERROR", "object": {"code": 410}}).encode() + b"\n",
    ]
    # "b" is deleted while the watch is gone: the second listing misses it, no DELETED comes.
    api = FakeApi([[pod("a"), pod("b")], [pod("c"), pod("d")]], [first_stream])
    watch = PodWatch(controller, api, ("ns",))
    await watch.start()
    try:
        await until(lambda: followed(controller) == {"c", "d"})
        # the watch opens again after the second listing reached the controller: wait for it
        await until(lambda: api.watched_from == ["list-1", "list-2"])
        assert api.list_calls == 2
        assert watch.listings == 2
        assert controller.fleet.pod("ns", "b") is None
        assert controller.selection.members(("ns", "chat")) == frozenset({"c", "d"})
    finally:
        await watch.stop()
        await controller.stop()
    assert all(r.closed for r in api.responses)


async def test_a_listing_reaches_the_controller_in_a_few_loop_turns_not_one_per_pod() -> None:
    """kopf started a worker task per listed pod, one event-loop turn each: with a busy loop
    (10,000 followers, 100 ConnectionStats) a restart listing trickled in for minutes."""
    controller = Controller(OperatorSettings(), None, follower_factory=Factory())
    controller.connectionstats_event(None, connection_stats())
    await controller.start()
    pods = 2000
    names = [f"p{i:04d}" for i in range(pods)]
    listing = [pod(name, ip=f"127.0.{61 + i // 250}.{i % 250 + 1}") for i, name in enumerate(names)]
    api = FakeApi([listing], [])
    watch = PodWatch(controller, api, ("ns",))
    turns = 0
    await watch.start()
    try:
        while len(followed(controller)) < pods:
            turns += 1
            assert turns < 100, f"{len(followed(controller))} of {pods} after {turns} turns"
            await asyncio.sleep(0)
        assert turns <= pods // LIST_SLICE + 5
    finally:
        await watch.stop()
        await controller.stop()


async def test_a_watch_request_refused_with_410_lists_again_at_once() -> None:
    controller = Controller(OperatorSettings(), None, follower_factory=Factory())
    controller.connectionstats_event(None, connection_stats())
    await controller.start()
    api = FakeApi([[pod("a")], [pod("b")]], [KubeApiError("watch pods: HTTP 410 Gone", 410)])
    watch = PodWatch(controller, api, ("ns",))
    await watch.start()
    try:
        await until(lambda: followed(controller) == {"b"})
        await until(lambda: api.watched_from == ["list-1", "list-2"])  # opened after the listing
        assert api.list_calls == 2
    finally:
        await watch.stop()
        await controller.stop()


class UnparsableFirstListing(FakeApi):
    """The first listing's body is not JSON (as ``json.loads`` raises it in ``KubeApi``)."""

    async def list_pods(self, namespace: str | None) -> tuple[list[dict[str, Any]], str]:
        if self.list_calls == 0:
            self.list_calls += 1
            raise json.JSONDecodeError("Expecting value", "<html>", 0)
        return await super().list_pods(namespace)


async def test_an_unparsable_listing_is_retried_not_the_end_of_the_watch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("wsgauge_operator.kube.pod_watch.RETRY_SECONDS", (0.01,))
    controller = Controller(OperatorSettings(), None, follower_factory=Factory())
    controller.connectionstats_event(None, connection_stats())
    await controller.start()
    api = UnparsableFirstListing([[pod("a")], [pod("a")]], [])
    watch = PodWatch(controller, api, ("ns",))
    await watch.start()
    try:
        await until(lambda: followed(controller) == {"a"})
        await until(lambda: api.watched_from == ["list-2"])  # the watch goes on after it
        assert api.list_calls == 2
    finally:
        await watch.stop()
        await controller.stop()


class BrokenApi(FakeApi):
    """A listing that fails in a way the watch has no rule for."""

    async def list_pods(self, namespace: str | None) -> tuple[list[dict[str, Any]], str]:
        self.list_calls += 1
        raise RuntimeError("a bug")


async def test_a_watch_ended_by_an_unexpected_error_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    controller = Controller(OperatorSettings(), None, follower_factory=Factory())
    api = BrokenApi([], [])
    watch = PodWatch(controller, api, ("ns",))
    await watch.start()
    try:
        await until(lambda: "pods are no longer watched" in caplog.text)
    finally:
        await watch.stop()
    assert "pod watch ns ended by RuntimeError: a bug" in caplog.text
