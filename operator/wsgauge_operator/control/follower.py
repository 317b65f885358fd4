"""One asyncio task per sidecar: follow ``GET /stats/watch``, fall back to polling ``/stats``.

The follower feeds what it reads into :class:`~wsgauge_operator.model.fleet.FleetState`:

- every document (first one at once, then one per change) -> ``report``;
- blank-line heartbeats -> ``heartbeat``; no complete line (document or
  heartbeat) for ``read_timeout`` seconds (longer than the sidecar's heartbeat)
  breaks the stream, even while bytes of an unfinished line keep coming;
- a broken stream is retried at once; if that fails too the sidecar is marked
  unreachable and retried with jittered exponential backoff
  (:class:`~wsgauge_operator.model.backoff.Backoff`: followers that failed together do not retry in
  lockstep; capped at one second while a new pod's sidecar has never answered, so that it is seen
  within a second or two of starting; :meth:`SidecarFollower.poke` cuts a backoff short);
- a sidecar that answers 404 on ``/stats/watch`` is polled on ``/stats`` instead.

A restarted sidecar (``seq`` starting over, new ``startedAt``) simply replaces
the previous document: counts are a snapshot per pod, never summed over time,
so nothing is counted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import aiohttp
from wsgauge_contract import (
    Address,
    ContractError,
    StatsDocument,
    WatchStreamDecoder,
    decode_stats_document,
)

from wsgauge_operator.control.telemetry import Telemetry
from wsgauge_operator.model.backoff import Backoff
from wsgauge_operator.model.exceptions import SidecarError
from wsgauge_operator.model.fleet import EndpointKey, FleetState, SidecarState
from wsgauge_operator.model.settings import FollowerSettings

logger = logging.getLogger(__name__)

NEVER_SEEN_BACKOFF_MAX = 1.0
"""Longest retry delay for a sidecar that has not answered yet."""


class WatchUnsupported(SidecarError):
    """The sidecar has no ``/stats/watch`` (HTTP 404): poll ``/stats``."""


class SidecarFollower:
    """Follows one sidecar until cancelled."""

    def __init__(
        self,
        key: EndpointKey,
        fleet: FleetState,
        session: aiohttp.ClientSession,
        settings: FollowerSettings,
        *,
        telemetry: Telemetry | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.key = key
        self._fleet = fleet
        self._session = session
        self._settings = settings
        self._telemetry = telemetry
        self._monotonic = monotonic
        self._wall = wall
        self._poke = asyncio.Event()
        self._polling = False
        self._ever_reported = False
        self._received = False

    @property
    def base_url(self) -> str:
        """``http://IP:PORT`` of the sidecar's admin port."""
        return f"http://{Address(self.key.ip, self.key.port)}"

    def poke(self) -> None:
        """Retry now if waiting in a backoff (e.g. the pod just became ready)."""
        self._poke.set()

    async def run(self) -> None:
        """Follow the sidecar until cancelled; never raises otherwise."""
        self._fleet.add_endpoint(self.key)
        started = self._monotonic()
        backoff = Backoff(self._settings.backoff_initial, self._settings.backoff_max)
        failures = 0
        while True:
            self._received = False
            try:
                if self._polling:
                    await self._poll_once()
                else:
                    await self._watch()
            except WatchUnsupported:
                logger.info("%s has no /stats/watch; polling /stats", self.base_url)
                self._polling = True
                continue
            except SidecarError as error:
                if self._received:  # the attempt worked for a while: start counting afresh
                    failures = 0
                    backoff.reset()
                failures += 1
                self._count_failure()
                self._fleet.note_error(self.key, str(error))
                reporting = self._state() is SidecarState.REPORTING
                if reporting and failures == 1 and not self._polling:
                    logger.debug("stream from %s broke (%s); reconnecting", self.base_url, error)
                    continue
                if self._ever_reported or self._monotonic() - started >= (
                    self._settings.startup_grace
                ):
                    if self._state() is not SidecarState.UNREACHABLE:
                        logger.info("sidecar %s unreachable: %s", self._describe(), error)
                    self._fleet.mark_unreachable(self.key, str(error))
            else:
                if self._polling:
                    failures = 0
                    backoff.reset()
                    await self._sleep(self._settings.poll_interval)
                    continue
            limit = self._settings.backoff_max if self._ever_reported else NEVER_SEEN_BACKOFF_MAX
            await self._sleep(backoff.next(cap=limit))

    def _state(self) -> SidecarState | None:
        stats = self._fleet.endpoint(self.key)
        return None if stats is None else stats.state

    def _describe(self) -> str:
        return f"{self.key.namespace}/{self.key.pod} ({self.base_url})"

    def _count_failure(self) -> None:
        if self._telemetry is not None:
            self._telemetry.follower_failures.inc()

    async def _sleep(self, seconds: float) -> None:
        self._poke.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._poke.wait(), timeout=seconds)

    def _accept(self, document: StatsDocument) -> None:
        if document.pod and document.pod != self.key.pod:
            raise SidecarError(
                f"{self.base_url} reports pod {document.pod!r}, expected {self.key.pod!r}"
            )
        stats = self._fleet.endpoint(self.key)
        restarts_before = stats.restarts if stats is not None else 0
        self._fleet.report(self.key, document, self._wall())
        self._ever_reported = True
        self._received = True
        if self._telemetry is not None:
            self._telemetry.documents.inc()
            if stats is not None and stats.restarts > restarts_before:
                self._telemetry.sidecar_restarts.inc()
                logger.info("sidecar %s restarted", self._describe())

    def _timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(
            total=None,
            connect=self._settings.connect_timeout,
            sock_connect=self._settings.connect_timeout,
            sock_read=self._settings.read_timeout,
        )

    async def _watch(self) -> None:
        """Follow the watch stream until it breaks (always ends in an exception)."""
        url = f"{self.base_url}/stats/watch"
        if self._telemetry is not None:
            self._telemetry.follower_connects.labels("watch").inc()
        try:
            async with self._session.get(url, timeout=self._timeout()) as response:
                if response.status == 404:
                    raise WatchUnsupported(f"{url}: 404")
                if response.status != 200:
                    raise SidecarError(f"{url}: HTTP {response.status}")
                decoder = WatchStreamDecoder(max_line_bytes=self._settings.max_document_bytes)
                # bytes alone do not keep a stream alive: a document or heartbeat must
                # complete within read_timeout (a line dribbled forever is cut). One timeout
                # per stream, moved on at each complete line: no task or timer per read.
                read_timeout = self._settings.read_timeout
                loop = asyncio.get_running_loop()
                try:
                    async with asyncio.timeout(read_timeout) as line_deadline:
                        while True:
                            chunk = await response.content.readany()
                            if not chunk:
                                raise SidecarError(f"{url}: stream ended")
                            for event in decoder.feed(chunk):
                                line_deadline.reschedule(loop.time() + read_timeout)
                                if isinstance(event, StatsDocument):
                                    self._accept(event)
                                else:
                                    self._fleet.heartbeat(self.key, self._wall())
                except TimeoutError:
                    if not line_deadline.expired():
                        raise  # aiohttp's own socket read timeout
                    raise SidecarError(f"{url}: no complete line in {read_timeout} s") from None
        except (aiohttp.ClientError, TimeoutError, ContractError) as error:
            raise SidecarError(f"{url}: {type(error).__name__}: {error}") from None

    async def _poll_once(self) -> None:
        """One ``GET /stats``."""
        url = f"{self.base_url}/stats"
        if self._telemetry is not None:
            self._telemetry.follower_connects.labels("poll").inc()
        timeout = aiohttp.ClientTimeout(
            total=self._settings.connect_timeout + self._settings.read_timeout,
            connect=self._settings.connect_timeout,
        )
        try:
            async with self._session.get(url, timeout=timeout) as response:
                if response.status != 200:
                    raise SidecarError(f"{url}: HTTP {response.status}")
                body = await response.content.read(self._settings.max_document_bytes + 1)
            self._accept(decode_stats_document(body, max_bytes=self._settings.max_document_bytes))
        except (aiohttp.ClientError, TimeoutError, ContractError) as error:
            raise SidecarError(f"{url}: {type(error).__name__}: {error}") from None
