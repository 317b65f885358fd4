"""The admin port: metrics, stats, stats watch, health, readiness and the report API.

An aiohttp application bound to ``--admin-listen`` only; the data port never
serves these paths (there they are ordinary requests for the app). Errors are
JSON ``{"error": "..."}`` with 400/404/405/409/413. ``/report`` exists only in
report mode (``--topic report``): ``PUT`` replaces the counts with a snapshot,
``POST`` applies deltas.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from wsgauge_contract import (
    WATCH_CONTENT_TYPE,
    encode_stats_document,
    encode_watch_heartbeat,
    encode_watch_line,
)

from wsgauge_sidecar.counter import ReportedCounts
from wsgauge_sidecar.exceptions import CountError
from wsgauge_sidecar.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from wsgauge_sidecar.state import SidecarState

log = logging.getLogger("wsgauge.sidecar.admin")

STATE_KEY = web.AppKey("state", SidecarState)

INDEX_TEXT = """wsgauge sidecar admin port
GET /metrics       Prometheus metrics
GET /stats         stats document (JSON)
GET /stats/watch   stream of stats documents (NDJSON, blank-line heartbeats)
GET /healthz       liveness
GET /readyz        readiness (200 ready / 503 reason)
PUT /report        report mode: full snapshot {"connections": N, "topics": {...}}
POST /report       report mode: deltas {"connections": +d, "topics": {"t": +d}}
"""


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn aiohttp's HTTP errors (404, 405, 413, ...) into JSON error bodies."""
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        message = error.reason if error.status != 413 else "request body too large"
        response = _json_error(error.status, message.lower())
        if error.status == 405:
            response.headers["Allow"] = error.headers.get("Allow", "")
        return response


async def _index(request: web.Request) -> web.Response:
    return web.Response(text=INDEX_TEXT)


async def _metrics(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    response = web.Response(body=state.metrics.render())
    response.headers["Content-Type"] = METRICS_CONTENT_TYPE
    return response


async def _stats(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    return web.Response(
        body=encode_stats_document(state.document()), content_type="application/json"
    )


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _readyz(request: web.Request) -> web.Response:
    ready, reason = request.app[STATE_KEY].readiness()
    return web.Response(text=reason, status=200 if ready else 503)


async def _watch(request: web.Request) -> web.StreamResponse:
    """First document at once, then one per change (coalesced), blank lines when idle."""
    state = request.app[STATE_KEY]
    settings = state.settings.admin
    response = web.StreamResponse(headers={"Cache-Control": "no-cache"})
    response.content_type = WATCH_CONTENT_TYPE
    response.enable_chunked_encoding()
    await response.prepare(request)
    last_seq = -1
    stopping = asyncio.ensure_future(state.stopping.wait())
    try:
        while not state.stopping.is_set():
            if state.seq != last_seq:
                document = state.document()
                last_seq = document.seq
                await response.write(encode_watch_line(document))
                if settings.watch_min_interval > 0:
                    await asyncio.sleep(settings.watch_min_interval)
                continue
            changed = asyncio.ensure_future(state.changes.current().wait())
            try:
                done, _ = await asyncio.wait(
                    {changed, stopping},
                    timeout=settings.watch_heartbeat,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                changed.cancel()
            if not done and state.seq == last_seq:
                await response.write(encode_watch_heartbeat())
        if state.seq != last_seq:
            await response.write(encode_watch_line(state.document()))
    except ConnectionError:
        log.debug("watch reader %s went away", request.remote)
    finally:
        stopping.cancel()
    return response


def _check_report_body(body: object, *, snapshot: bool) -> tuple[int, Mapping[str, int]]:
    """Shape checks of a report body; raises ``ValueError`` with a message for a 400."""
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    unknown = set(body) - {"connections", "topics"}
    if unknown:
        raise ValueError(f"unknown keys: {', '.join(sorted(unknown))}")
    if snapshot and "connections" not in body:
        raise ValueError("a snapshot needs 'connections'")
    connections = body.get("connections", 0)
    if isinstance(connections, bool) or not isinstance(connections, int):
        raise ValueError("'connections' must be an integer")
    topics = body.get("topics", {})
    if not isinstance(topics, dict):
        raise ValueError("'topics' must be an object")
    for name, value in topics.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"topics[{name!r}] must be an integer")
    return connections, topics


async def _report(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    counter = state.counter
    if not isinstance(counter, ReportedCounts):
        return _json_error(404, "the report API exists only with --topic report")
    snapshot = request.method == "PUT"
    try:
        raw = await request.read()
        body = json.loads(raw)
        connections, topics = _check_report_body(body, snapshot=snapshot)
    except web.HTTPRequestEntityTooLarge:
        return _json_error(413, "request body too large")
    except (ValueError, RecursionError) as error:  # json errors are ValueErrors
        return _json_error(400, f"invalid report: {error}")
    try:
        if snapshot:
            counter.apply_snapshot(connections, topics)
        else:
            counter.apply_delta(connections, topics)
    except CountError as error:
        return _json_error(400 if snapshot else 409, str(error))
    return web.Response(
        body=encode_stats_document(state.document()), content_type="application/json"
    )


def build_admin_app(state: SidecarState) -> web.Application:
    """The aiohttp application of the admin port."""
    app = web.Application(
        middlewares=[_json_errors], client_max_size=state.settings.admin.max_report_bytes
    )
    app[STATE_KEY] = state
    app.router.add_get("/", _index)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/stats", _stats)
    app.router.add_get("/stats/watch", _watch)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_route("PUT", "/report", _report)
    app.router.add_route("POST", "/report", _report)
    return app


async def start_admin_server(state: SidecarState) -> web.AppRunner:
    """Bind the admin port and serve it; the caller cleans the runner up on exit."""
    # an idle or half-sent connection is closed after --handshake-timeout (aiohttp's default
    # keeps it for an hour: a slowloris could pile up file descriptors the data port needs)
    runner = web.AppRunner(
        build_admin_app(state),
        access_log=None,
        shutdown_timeout=2.0,
        keepalive_timeout=state.settings.proxy.handshake_timeout,
    )
    await runner.setup()
    listen = state.settings.admin.listen
    site = web.TCPSite(runner, listen.host, listen.port, reuse_address=True)
    await site.start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The TCP port the runner's first site listens on (for ``--admin-listen HOST:0``)."""
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    raise RuntimeError("admin server is not listening")
