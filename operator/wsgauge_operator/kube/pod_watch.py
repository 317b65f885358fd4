"""The operator's own pod watch: list, then watch, handed to the controller in batches.

Why not kopf's ``@kopf.on.event`` on pods (as before): kopf runs one task per pod ("worker"),
and starting one costs a full turn of the event loop (its scheduler yields with
``asyncio.sleep(0)`` per new worker; a worker exits after 5 s without events). With thousands
of followers and 100 ConnectionStats rounds sharing the loop, a turn takes tens of
milliseconds, so a listing of 10,000 pods (start, restart, every re-list after the API server
dropped the slow watch) reached the controller at a few dozen pods per second, and a watch that
falls behind is closed by the API server ("Forcing pods watcher close due to
unresponsiveness"), which makes kopf re-list again: a restart on 100 ConnectionStats x 100
pods did not converge in 12 minutes. kopf also diffed every pod body against its last
state, work the controller does not need (it compares the few fields it uses).

Here one task per watched namespace (or one for the cluster) reads the watch stream through
:meth:`~.kubeapi.KubeApi.watch_pods` and parses it; the events of each chunk read go to
:meth:`~wsgauge_operator.control.controller.Controller.pod_event` handles each in about 0.1 ms. A
listing (at start, after ``410 Gone`` or an error) is handed over in slices, and pods the controller
knew before the listing that it no longer contains are handed over as deleted (a watch gap loses
``DELETED`` events; :mod:`wsgauge_operator.control.pod_resync` stays as a second line).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import aiohttp

from wsgauge_operator.model.backoff import jittered
from wsgauge_operator.model.exceptions import KubeApiError, OperatorError

logger = logging.getLogger(__name__)

WATCH_SECONDS = 300
"""Server-side timeout of one watch request (it is then resumed from the last version)."""
READ_TIMEOUT_SECONDS = 150.0
"""No byte for this long (bookmarks come about every minute): the stream is resumed."""
LIST_SLICE = 500
"""Listed pods handed to the controller per turn of the event loop."""
MIN_WATCH_SECONDS = 1.0
"""A watch request that ended sooner than this is resumed only after this long."""
RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0)
"""Waits after consecutive failures of a listing or watch request (each jittered by
:func:`~wsgauge_operator.model.backoff.jittered`: operators that failed together do not retry
together)."""

PodEvent = tuple[str | None, Mapping[str, Any]]
"""(event type, pod body); type ``None`` for a listed pod."""


class PodEventSink(Protocol):
    """What the watch feeds (implemented by
    :class:`~wsgauge_operator.control.controller.Controller`).
    """

    def pod_event(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A pod was listed, added, modified or deleted."""

    def pod_listing_mark(self) -> int:
        """A mark to take just before listing pods."""

    def pods_seen_before(self, namespaces: Sequence[str], mark: int) -> set[tuple[str, str, str]]:
        """(namespace, name, uid) of the known pods first seen no later than ``mark``."""


class PodWatchApi(Protocol):
    """The API calls (implemented by :class:`~.kubeapi.KubeApi`)."""

    async def list_pods(self, namespace: str | None) -> tuple[list[dict[str, Any]], str]:
        """Every pod (raw JSON) and the list's resourceVersion."""

    def watch_pods(
        self,
        namespace: str | None,
        resource_version: str,
        timeout_seconds: int,
        read_timeout: float,
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """A watch request: opening raises ``KubeApiError``; the body comes chunk by chunk
        (``TimeoutError`` after ``read_timeout`` seconds without a byte)."""


class WatchGone(OperatorError):
    """The watch's resource version is no longer served (``410 Gone``): list again."""


class LineSplitter:
    """Newline-delimited JSON watch events from arbitrary chunks (pure)."""

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, chunk: bytes) -> list[dict[str, Any]]:
        """The complete events in ``chunk`` (with what was left of the previous one)."""
        lines = (self._rest + chunk).split(b"\n")
        self._rest = lines.pop()
        events: list[dict[str, Any]] = []
        for line in lines:
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                logger.warning("pod watch: unparsable line skipped (%d bytes)", len(line))
                continue
            if isinstance(event, dict):
                events.append(event)
        return events


def watch_events(raw: Iterable[dict[str, Any]]) -> tuple[list[PodEvent], str | None]:
    """Pod events to hand over and the newest resource version seen (pure).

    Raises :class:`WatchGone` on an ``ERROR`` event with code 410 and :class:`KubeApiError` on
    another ``ERROR`` (the events before it in the same batch are then not handed over; the
    listing or watch that follows delivers their pods' state again).
    """
    events: list[PodEvent] = []
    version: str | None = None
    for event in raw:
        kind = event.get("type")
        body = event.get("object")
        if not isinstance(body, Mapping):
            continue
        if kind == "ERROR":
            code = int(body.get("code") or 0)
            if code == 410:
                raise WatchGone(str(body.get("message") or "410 Gone"))
            raise KubeApiError(f"pod watch error: {body.get('message')}", code)
        resource_version = (body.get("metadata") or {}).get("resourceVersion")
        if resource_version:
            version = str(resource_version)
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            events.append((str(kind), body))
    return events, version


class PodWatch:
    """Lists and watches pods (per namespace, or the cluster) and feeds the controller."""

    def __init__(
        self,
        sink: PodEventSink,
        api: PodWatchApi,
        namespaces: Sequence[str] = (),
        *,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._sink = sink
        self._api = api
        self._namespaces: tuple[str | None, ...] = tuple(namespaces) or (None,)
        self._on_error = on_error
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.listings = 0
        """Listings done so far (start, and after each ``410 Gone`` or failure)."""

    async def start(self) -> None:
        """Start one list-and-watch task per namespace."""
        if self._tasks:
            return
        self._stopping = False
        for namespace in self._namespaces:
            task = asyncio.create_task(self._run(namespace), name=f"pod watch {namespace or '*'}")
            task.add_done_callback(_log_unexpected_end)
            self._tasks.append(task)

    async def stop(self) -> None:
        """Stop the tasks (a read in progress is cancelled with its task)."""
        self._stopping = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        # their ends are logged by _log_unexpected_end; stopping does not raise them again
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, namespace: str | None) -> None:
        version: str | None = None
        failures = 0
        while not self._stopping:
            try:
                if version is None:
                    version = await self._relist(namespace)
                began = asyncio.get_running_loop().time()
                version = await self._watch(namespace, version)
                failures = 0
                if asyncio.get_running_loop().time() - began < MIN_WATCH_SECONDS:
                    await asyncio.sleep(MIN_WATCH_SECONDS)  # a stream cut at once: not in a loop
            except WatchGone:
                logger.info("pod watch of %s: resource version gone; listing", namespace or "*")
                version = None
            except KubeApiError as error:
                if error.status == 410:  # the request itself refused the version
                    version = None
                    continue
                failures = await self._back_off(namespace, error, failures)
                if failures > 1:
                    version = None  # list again: the version may be what fails
            except OSError as error:
                failures = await self._back_off(namespace, error, failures)
                if failures > 1:
                    version = None
            except ValueError as error:  # a listing that is not JSON: list again, later
                failures = await self._back_off(namespace, error, failures)
                version = None

    async def _back_off(self, namespace: str | None, error: Exception, failures: int) -> int:
        """Log a failure, wait by the number of failures so far; return it plus one."""
        logger.warning("pod watch of %s: %s", namespace or "*", error)
        await asyncio.sleep(jittered(RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)]))
        return failures + 1

    async def _relist(self, namespace: str | None) -> str:
        """List; hand every pod over (in slices), and the vanished ones as deleted."""
        mark = self._sink.pod_listing_mark()
        items, version = await self._api.list_pods(namespace)
        self.listings += 1
        listed: set[tuple[str, str, str]] = set()
        for start in range(0, len(items), LIST_SLICE):
            for body in items[start : start + LIST_SLICE]:
                metadata = body.get("metadata") or {}
                listed.add(
                    (
                        str(metadata.get("namespace") or ""),
                        str(metadata.get("name") or ""),
                        str(metadata.get("uid") or ""),
                    )
                )
                self._handle(None, body)
            await asyncio.sleep(0)
        namespaces = () if namespace is None else (namespace,)
        for gone_namespace, name, uid in sorted(
            self._sink.pods_seen_before(namespaces, mark) - listed
        ):
            body = {"metadata": {"namespace": gone_namespace, "name": name, "uid": uid}}
            self._handle("DELETED", body)
        return version

    async def _watch(self, namespace: str | None, version: str) -> str:
        """Watch from ``version`` until the request ends; return the last version seen."""
        splitter = LineSplitter()
        async with self._api.watch_pods(
            namespace, version, WATCH_SECONDS, READ_TIMEOUT_SECONDS
        ) as chunks:
            try:
                async for chunk in chunks:
                    events, newer = watch_events(splitter.feed(chunk))
                    self._handle_batch(events)
                    version = newer or version
            except (TimeoutError, aiohttp.ClientError, OSError) as error:  # silence, reset
                logger.info("pod watch of %s ended: %s", namespace or "*", error or "timed out")
        return version

    def _handle_batch(self, events: list[PodEvent]) -> None:
        for event_type, body in events:
            self._handle(event_type, body)

    def _handle(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        try:
            self._sink.pod_event(event_type, body)
        except OperatorError as error:
            logger.warning("pod event %s: %s", event_type, error)
            if self._on_error is not None:
                self._on_error(error)


def _log_unexpected_end(task: asyncio.Task[None]) -> None:
    """A watch task ends only when stopped; say so loudly if anything else ended it."""
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        logger.error(
            "%s ended by %s: %s; pods are no longer watched",
            task.get_name(),
            type(error).__name__,
            error,
            exc_info=error,
        )
