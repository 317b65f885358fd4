"""The operator's HTTP server: cluster-wide stats, a live stream of them, and ``/metrics``.

- ``GET /stats``: the fleet-wide answer to a sidecar's ``/stats``: total sockets,
  top topics (rest folded into ``_other``), followed pods by state, and one
  summary per ConnectionStats;
- ``GET /stats/watch``: NDJSON, the same document at once and after every change
  (at most one per ``watch_min_interval``), a blank line as heartbeat every
  ``watch_heartbeat`` seconds when nothing changed;
- ``GET /stats/{namespace}/{name}``: the live status of one ConnectionStats;
- ``GET /stats/live``: the live view's cluster document (:mod:`.live_view`) as JSON, what
  ``kubectl wsgauge`` reads through the API server's service proxy;
- ``GET /stats/ws``: a WebSocket with the live view's cluster document, pushed at once and
  after every change, answering ``{"get": "cluster"}`` and ``{"get": "connectionstats", ...}``
  (:mod:`.live_view`, :mod:`wsgauge_contract.live`);
- ``GET /ui/``: the live page (:mod:`.live_page`), unless ``server.live_page`` is off;
- ``GET /metrics``: the operator's own Prometheus metrics; ``GET /healthz``.

One listener serves the process's whole life: :meth:`StatsServer.open` listens at start and
answers as a :class:`~.standby_server.Holding` (a standby, a leader starting) until
:meth:`StatsServer.start` switches the same listener to the routes above, so the probe port
never closes between standby and leader.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from wsgauge_contract import LIVE_PATH, WATCH_CONTENT_TYPE, Address, AddressError
from wsgauge_contract.live_session import LiveClients

from wsgauge_operator.control.controller import Controller
from wsgauge_operator.model.aggregation import fold_topics
from wsgauge_operator.model.exceptions import ConfigError
from wsgauge_operator.model.settings import ServerSettings
from wsgauge_operator.servers.live_page import add_page_routes
from wsgauge_operator.servers.live_socket import handle_live
from wsgauge_operator.servers.live_view import ClusterLiveSource, LiveDocuments
from wsgauge_operator.servers.standby_server import STARTING, Holding

logger = logging.getLogger(__name__)

SUMMARY_FIELDS = ("connections", "topics", "pods", "averagePerPod", "desiredReplicas")
"""Status fields repeated per ConnectionStats in the cluster-wide document."""


def cluster_document(controller: Controller) -> dict[str, Any]:
    """The cluster-wide stats document (bounded like a status)."""
    totals: dict[str, int] = {}
    connections = 0
    followed = reporting = 0
    for namespace in controller.fleet.namespaces():
        for pod in controller.fleet.pods(namespace):
            followed += 1
            if not pod.reachable:
                continue
            reporting += 1
            connections += pod.connections
            for topic, count in pod.topics.items():
                totals[topic] = totals.get(topic, 0) + count
    summaries = []
    for (namespace, name), status in sorted(controller.summaries.items()):
        summary: dict[str, Any] = {"namespace": namespace, "name": name}
        summary.update({key: status[key] for key in SUMMARY_FIELDS if key in status})
        summary["conditions"] = {
            str(c.get("type")): str(c.get("status")) for c in status.get("conditions") or []
        }
        summaries.append(summary)
    return {
        "connections": connections,
        "topics": fold_topics(totals, controller.settings.status.top_topics),
        "pods": {"followed": followed, "reporting": reporting, "unreachable": followed - reporting},
        "connectionStats": summaries,
        "generatedAt": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "seq": controller.version,
    }


def _encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


class StatsServer:
    """aiohttp application around a :class:`~wsgauge_operator.control.controller.Controller`, on one
    listener.
    """

    def __init__(self, controller: Controller, settings: ServerSettings) -> None:
        self._controller = controller
        self._settings = settings
        self._runner: web.AppRunner | None = None
        self._holding: Holding | None = None
        self.app = web.Application(middlewares=[self._gate])
        self.app.router.add_get("/stats", self._stats)
        self.app.router.add_get("/stats/watch", self._watch)
        self.app.router.add_get(LIVE_PATH, self._live)
        self.app.router.add_get("/stats/live", self._live_document)
        self._live_clients = LiveClients(settings.live.max_clients)
        self._live_documents = LiveDocuments(controller)
        if settings.live_page:
            add_page_routes(self.app)
        self.app.router.add_get("/stats/{namespace}/{name}", self._one)
        self.app.router.add_get("/metrics", self._metrics)
        self.app.router.add_get("/healthz", self._healthz)

    @property
    def holding(self) -> Holding | None:
        """The answers given instead of the routes; None while serving."""
        return self._holding

    def hold(self, holding: Holding) -> None:
        """Answer as ``holding`` (the listener, if open, stays open)."""
        self._holding = holding

    @web.middleware
    async def _gate(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        holding = self._holding
        if holding is not None:
            return holding.answer(request.path)
        return await handler(request)

    async def open(self, holding: Holding) -> None:
        """Listen on ``settings.listen`` answering as ``holding`` (no-op when empty)."""
        self._holding = holding
        if not self._settings.listen or self._runner is not None:
            return
        try:
            address = Address.parse_listen(self._settings.listen)
        except AddressError as error:
            raise ConfigError(f"stats server address: {error}") from None
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, address.host, address.port)
        try:
            await site.start()
        except OSError as error:
            await runner.cleanup()
            raise ConfigError(f"cannot listen on {self._settings.listen}: {error}") from None
        self._runner = runner
        logger.info("probes answered on %s (%s)", self._settings.listen, holding.label)

    async def start(self) -> None:
        """Serve the routes on ``settings.listen``, opening it unless :meth:`open` did."""
        if self._runner is None:
            await self.open(STARTING)
        self._holding = None
        if self._runner is not None:
            logger.info("stats server listening on %s", self._settings.listen)

    async def stop(self) -> None:
        """Stop listening and close open streams (idempotent)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _stats(self, request: web.Request) -> web.Response:
        return web.Response(
            body=_encode(cluster_document(self._controller)), content_type="application/json"
        )

    async def _live_document(self, request: web.Request) -> web.Response:
        return web.Response(
            body=_encode(self._live_documents.current()), content_type="application/json"
        )

    async def _live(self, request: web.Request) -> web.StreamResponse:
        source = ClusterLiveSource(self._live_documents, self._settings.watch_heartbeat)
        return await handle_live(request, source, self._settings.live, self._live_clients)

    async def _one(self, request: web.Request) -> web.Response:
        key = (request.match_info["namespace"], request.match_info["name"])
        status = self._controller.summaries.get(key)
        if status is None:
            return web.json_response({"error": "no such ConnectionStats"}, status=404)
        return web.json_response({"namespace": key[0], "name": key[1], "status": status})

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._controller.telemetry.registry)
        response = web.Response(body=body)
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _watch(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": WATCH_CONTENT_TYPE})
        response.enable_chunked_encoding()
        await response.prepare(request)
        controller = self._controller
        version = controller.version
        await response.write(_encode(cluster_document(controller)) + b"\n")
        last_sent = time.monotonic()
        try:
            while True:
                new_version = await controller.wait_for_change(
                    version, self._settings.watch_heartbeat
                )
                if new_version == version:
                    await response.write(b"\n")
                    continue
                pause = self._settings.watch_min_interval - (time.monotonic() - last_sent)
                if pause > 0:
                    await asyncio.sleep(pause)
                version = controller.version
                await response.write(_encode(cluster_document(controller)) + b"\n")
                last_sent = time.monotonic()
        except ConnectionResetError:
            logger.debug("stats watcher went away")
        return response
