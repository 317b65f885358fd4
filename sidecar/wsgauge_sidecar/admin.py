"""The admin port (metrics, stats, its watch and WebSocket, health, readiness), the report listener.

An aiohttp application bound to ``--admin-listen`` only; the data port never
serves these paths (there they are ordinary requests for the app). Errors are
JSON ``{"error": "..."}`` with 400/403/404/405/409/413. ``/report`` exists only in
report mode (``--topic report``): ``PUT`` replaces the counts with a snapshot,
``POST`` applies deltas. It is served on its own loopback-only listener
(``--report-listen``, :func:`start_report_server`) and, for apps that still report to the
admin port, there too. On both, every state-changing request from a peer that is not on
the loopback (not the pod itself) gets 403 and a (throttled) log line, and changes nothing
(:mod:`wsgauge_sidecar.access`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Protocol

from aiohttp import web
from wsgauge_contract import (
    LIVE_PATH,
    WATCH_CONTENT_TYPE,
    Address,
    encode_stats_document,
    encode_watch_heartbeat,
    encode_watch_line,
)
from wsgauge_contract.control import (
    CERTIFICATE_HEADER,
    SHED_PATH,
    SIGNATURE_HEADER,
    decode_shed_order,
)
from wsgauge_contract.live_session import LiveClients

from wsgauge_sidecar.access import LogThrottle, peer_host, refusal
from wsgauge_sidecar.counter import ReportedCounts
from wsgauge_sidecar.exceptions import ControlAuthError, CountError
from wsgauge_sidecar.live import LocalLiveSource
from wsgauge_sidecar.live_socket import handle_live
from wsgauge_sidecar.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from wsgauge_sidecar.shed import OrderGate
from wsgauge_sidecar.shedder import Shedder
from wsgauge_sidecar.state import SidecarState

log = logging.getLogger("wsgauge.sidecar.admin")

STATE_KEY = web.AppKey("state", SidecarState)
SHEDDER_KEY = web.AppKey("shedder", Shedder)
GATE_KEY = web.AppKey("order_gate", OrderGate)


class Verifier(Protocol):
    """What checks a control order's signature (:class:`.order_auth.OrderVerifier`)."""

    def verify(
        self, body: bytes, certificate: str | None, signature: str | None, now: datetime
    ) -> str: ...


VERIFIER_KEY = web.AppKey("order_verifier", Verifier)
NO_VERIFIER_KEY = web.AppKey("no_verifier_reason", str)
THROTTLE_KEY = web.AppKey("refusal_log", LogThrottle)
LIVE_CLIENTS_KEY = web.AppKey("live_clients", LiveClients)

INDEX_TEXT = """wsgauge sidecar admin port
GET /metrics       Prometheus metrics
GET /stats         stats document (JSON)
GET /stats/watch   stream of stats documents (NDJSON, blank-line heartbeats)
GET /stats/ws      WebSocket: the stats document on connect and on change; {"get": "local"}
GET /healthz       liveness
GET /readyz        readiness (200 ready / 503 reason)
PUT /report        report mode, loopback only: full snapshot {"connections": N, "topics": {...}}
POST /report       report mode, loopback only: deltas {"connections": +d, "topics": {"t": +d}}
POST /control/shed the operator only (signed with its certificate): close N sockets gently
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


@web.middleware
async def _loopback_only_changes(request: web.Request, handler: Handler) -> web.StreamResponse:
    """403 (and a throttled log line) for a state-changing request from outside the pod."""
    peer = peer_host(request.transport.get_extra_info("peername") if request.transport else None)
    reason = refusal(request.method, peer, request.rel_url.path)
    if reason is None:
        return await handler(request)
    held_back = request.app[THROTTLE_KEY].admit(time.monotonic())
    if held_back is not None:
        log.warning(
            "refused %s %s from %s: not the pod itself (403, nothing changed)%s",
            request.method,
            request.rel_url.path,
            peer or "an unknown peer",
            f"; {held_back} more refused since the last line" if held_back else "",
        )
    return _json_error(403, reason)


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


async def _live(request: web.Request) -> web.StreamResponse:
    """``/stats/ws``: the stats document on connect and on change (see :mod:`.live`)."""
    state = request.app[STATE_KEY]
    return await handle_live(
        request, LocalLiveSource(state), state.settings.live, request.app[LIVE_CLIENTS_KEY]
    )


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


async def _shed(request: web.Request) -> web.Response:
    """``POST /control/shed``: an order of the operator (signed) to close sockets gently."""
    app = request.app
    state, shedder = app[STATE_KEY], app.get(SHEDDER_KEY)
    verifier = app.get(VERIFIER_KEY)
    peer = peer_host(request.transport.get_extra_info("peername") if request.transport else None)
    body = await request.read()
    try:
        if verifier is None:
            raise ControlAuthError(app[NO_VERIFIER_KEY])
        signer = verifier.verify(
            body,
            request.headers.get(CERTIFICATE_HEADER),
            request.headers.get(SIGNATURE_HEADER),
            datetime.now(UTC),
        )
    except ControlAuthError as error:
        _log_refusal(app, "refused POST %s from %s: %s (403, nothing changed)", peer, error)
        return _json_error(403, str(error))
    try:
        order = decode_shed_order(body)
    except ValueError as error:
        return _json_error(400, f"invalid order: {error}")
    if shedder is None or shedder.proxy is None:
        return _json_error(409, "this sidecar holds no sockets (report mode)")
    refused = app[GATE_KEY].check(order, time.time(), busy=shedder.busy)
    if refused is not None:
        _log_refusal(app, "refused POST %s from %s: %s", peer, refused.reason)
        return _json_error(refused.status, refused.reason)
    closing = shedder.start(order)
    log.info(
        "shed order from %s (%s): close %d sockets with %d over %.1f s; closing %d",
        signer, peer, order.count, order.close_code, order.spread_seconds, closing,
    )  # fmt: skip
    return web.json_response(
        {"closing": closing, "connections": state.counter.connections}, status=202
    )


def _log_refusal(app: web.Application, message: str, peer: str | None, reason: object) -> None:
    held_back = app[THROTTLE_KEY].admit(time.monotonic())
    if held_back is not None:
        suffix = f"; {held_back} more refused since the last line" if held_back else ""
        log.warning(message + "%s", SHED_PATH, peer or "an unknown peer", reason, suffix)


def _base_app(state: SidecarState) -> web.Application:
    app = web.Application(
        middlewares=[_json_errors, _loopback_only_changes],
        client_max_size=state.settings.admin.max_report_bytes,
    )
    app[STATE_KEY] = state
    app[THROTTLE_KEY] = LogThrottle()
    return app


def build_report_app(state: SidecarState) -> web.Application:
    """The aiohttp application of the report listener: ``PUT``/``POST /report`` only."""
    app = _base_app(state)
    app.router.add_route("PUT", "/report", _report)
    app.router.add_route("POST", "/report", _report)
    return app


def order_verifier(control_ca: str) -> tuple[Verifier | None, str]:
    """The verifier of control orders for ``--control-ca``, or None and why orders are refused.

    Without the ``control`` extra (``cryptography``) or with a CA that does not load, the
    sidecar still runs and counts; it logs why once here and refuses every control order.
    """
    if not control_ca:
        return None, "this sidecar has no --control-ca: it takes no control orders"
    try:
        from wsgauge_sidecar import order_auth  # noqa: PLC0415 (needs the `control` extra)
    except ImportError as error:
        reason = (
            f"this sidecar cannot verify control orders ({error}): install the `control` "
            "extra, pip install 'wsgauge-sidecar[control]' (the sidecar image has it)"
        )
        log.error("--control-ca is set but %s; every control order is refused", reason)
        return None, reason
    try:
        return order_auth.OrderVerifier(order_auth.load_ca_bundle(control_ca)), ""
    except ValueError as error:
        reason = f"the --control-ca certificate does not load ({error})"
        log.error("%s; every control order is refused", reason)
        return None, reason


def build_admin_app(state: SidecarState, shedder: Shedder | None = None) -> web.Application:
    """The aiohttp application of the admin port (``shedder``: who runs shed orders)."""
    app = _base_app(state)
    if shedder is not None:
        app[SHEDDER_KEY] = shedder
    verifier, reason = order_verifier(state.settings.admin.control_ca)
    if verifier is not None:
        app[VERIFIER_KEY] = verifier
    app[NO_VERIFIER_KEY] = reason
    identity = state.settings.pod
    app[GATE_KEY] = OrderGate(identity.namespace, identity.pod)
    app.router.add_post(SHED_PATH, _shed)
    app.router.add_get("/", _index)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/stats", _stats)
    app.router.add_get("/stats/watch", _watch)
    app.router.add_get(LIVE_PATH, _live)
    app[LIVE_CLIENTS_KEY] = LiveClients(state.settings.live.max_clients)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_route("PUT", "/report", _report)
    app.router.add_route("POST", "/report", _report)
    return app


async def _serve(state: SidecarState, app: web.Application, listen: Address) -> web.AppRunner:
    # an idle or half-sent connection is closed after --handshake-timeout (aiohttp's default
    # keeps it for an hour: a slowloris could pile up file descriptors the data port needs)
    runner = web.AppRunner(
        app,
        access_log=None,
        shutdown_timeout=2.0,
        keepalive_timeout=state.settings.proxy.handshake_timeout,
    )
    await runner.setup()
    site = web.TCPSite(runner, listen.host, listen.port, reuse_address=True)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    return runner


async def start_admin_server(state: SidecarState, shedder: Shedder | None = None) -> web.AppRunner:
    """Bind the admin port and serve it; the caller cleans the runner up on exit."""
    return await _serve(state, build_admin_app(state, shedder), state.settings.admin.listen)


async def start_report_server(state: SidecarState) -> web.AppRunner:
    """Bind the loopback-only report listener (``--report-listen``) and serve it."""
    return await _serve(state, build_report_app(state), state.settings.admin.report_listen)


def bound_port(runner: web.AppRunner) -> int:
    """The TCP port the runner's first site listens on (for ``--admin-listen HOST:0``)."""
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    raise RuntimeError("admin server is not listening")
