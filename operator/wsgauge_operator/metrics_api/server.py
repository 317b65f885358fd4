"""The custom metrics API server (``custom.metrics.k8s.io`` v1beta1/v1beta2) and the KEDA endpoint.

An aiohttp HTTPS server answering from a
:class:`~wsgauge_operator.model.metrics_source.MetricsSource` (memory only, no I/O
per request); the answers themselves are built by
:mod:`.core`, TLS by :mod:`wsgauge_operator.tls.serving`.

Only the aggregation layer may call it: every request except ``/healthz``
must come with a TLS client certificate that chains to the request-header
client CA (otherwise 401) and, when allowed names are configured, whose
common name is one of them (otherwise 403). Authorization of the end user
happens in the kube-apiserver before it proxies.

The KEDA endpoint (``GET /keda/namespaces/{ns}/connectionstats/{name}``) is
plain HTTP: either its own listener (``keda_port``) or routes added to another
aiohttp app with :func:`add_keda_routes`.

Entry point: :func:`start_metrics_api` returns a :class:`MetricsApiServer`
handle with ``async stop()``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiohttp import web
from aiohttp.typedefs import Middleware

from wsgauge_operator.metrics_api.core import (
    ApiResponse,
    error_response,
    handle_metrics_request,
    keda_document,
)
from wsgauge_operator.model.exceptions import ConfigError
from wsgauge_operator.model.metrics_source import MetricsSource
from wsgauge_operator.tls.serving import (
    peer_common_name,
    server_ssl_context,
    serving_certificate_pair,
    start_site,
)

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]
"""Returns the current time (timezone-aware)."""

KEDA_PREFIX = "/keda"
"""Path prefix of the KEDA endpoint."""


@dataclass(frozen=True)
class MetricsApiSettings:
    """Settings of the custom metrics API server and the KEDA endpoint."""

    host: str = "0.0.0.0"
    """Address the HTTPS server binds to."""
    port: int = 6443
    """HTTPS port (0: any free port; the handle says which)."""
    cert_file: str | None = None
    """Serving certificate (PEM); None with ``key_file`` None: self-signed at start."""
    key_file: str | None = None
    """Private key of ``cert_file`` (PEM)."""
    self_signed_hosts: tuple[str, ...] = ("localhost", "127.0.0.1")
    """DNS names / IPs put in a generated self-signed certificate."""
    client_ca_file: str | None = None
    """Request-header client CA bundle (PEM file); see also ``client_ca_pem``."""
    client_ca_pem: str | None = None
    """Request-header client CA bundle (PEM text), e.g. from ``KubeApi.request_header_auth``."""
    allowed_names: tuple[str, ...] = ()
    """Client certificate common names accepted; empty: any the CA signed."""
    allow_unauthenticated: bool = False
    """Serve without a client CA (development only); otherwise a missing CA is a ConfigError."""
    max_metric_age_seconds: float = 30.0
    """Values last confirmed longer ago than this are left out (stale)."""
    keda_host: str = "0.0.0.0"
    """Address of the plain-HTTP KEDA listener."""
    keda_port: int | None = None
    """Port of the KEDA listener; None: no own listener (use :func:`add_keda_routes`)."""
    shutdown_timeout: float = 5.0
    """Seconds given to open requests when stopping."""


@dataclass
class MetricsApiServer:
    """Handle of a running metrics API server."""

    port: int
    """Bound HTTPS port."""
    serving_cert_pem: bytes
    """The serving certificate (PEM), e.g. for an APIService ``caBundle``."""
    keda_port: int | None = None
    """Bound KEDA port, when it has its own listener."""
    _runners: list[web.AppRunner] = field(default_factory=list)

    async def stop(self) -> None:
        """Stop accepting and close open connections."""
        runners, self._runners = self._runners, []
        for runner in runners:
            await runner.cleanup()


def _json_response(response: ApiResponse) -> web.Response:
    return web.Response(
        status=response.status,
        body=json.dumps(response.body, separators=(",", ":")).encode(),
        content_type="application/json",
    )


def _default_clock() -> datetime:
    return datetime.now(UTC)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _auth_middleware(settings: MetricsApiSettings, require_cert: bool) -> Middleware:
    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/healthz" or not require_cert:
            return await handler(request)
        transport = request.transport
        peercert = transport.get_extra_info("peercert") if transport is not None else None
        if not peercert:
            return _json_response(
                error_response(401, "a client certificate of the aggregation layer is required")
            )
        name = peer_common_name(peercert)
        if settings.allowed_names and name not in settings.allowed_names:
            return _json_response(
                error_response(403, f"client certificate name {name!r} is not allowed")
            )
        return await handler(request)

    return authenticate


def build_metrics_app(
    settings: MetricsApiSettings,
    source: MetricsSource,
    *,
    clock: Clock = _default_clock,
    require_client_cert: bool = True,
) -> web.Application:
    """The aiohttp application of the custom metrics API (TLS is the caller's)."""
    app = web.Application(middlewares=[_auth_middleware(settings, require_client_cert)])

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def metrics(request: web.Request) -> web.Response:
        response = handle_metrics_request(
            request.method,
            request.path,
            request.query,
            source,
            now=clock(),
            max_age_seconds=settings.max_metric_age_seconds,
        )
        return _json_response(response)

    app.router.add_get("/healthz", healthz)
    app.router.add_route("*", "/{tail:.*}", metrics)
    return app


def add_keda_routes(
    app: web.Application,
    source: MetricsSource,
    *,
    max_age_seconds: float = MetricsApiSettings.max_metric_age_seconds,
    clock: Clock = _default_clock,
    prefix: str = KEDA_PREFIX,
) -> None:
    """Add ``GET {prefix}/namespaces/{ns}/connectionstats/{name}`` to an aiohttp app."""

    async def keda(request: web.Request) -> web.Response:
        response = keda_document(
            source,
            request.match_info["namespace"],
            request.match_info["name"],
            now=clock(),
            max_age_seconds=max_age_seconds,
        )
        return _json_response(response)

    app.router.add_get(prefix + "/namespaces/{namespace}/connectionstats/{name}", keda)


def _client_ca(settings: MetricsApiSettings) -> str | None:
    parts: list[str] = []
    if settings.client_ca_file:
        try:
            with open(settings.client_ca_file, encoding="ascii") as ca_file:
                parts.append(ca_file.read())
        except OSError as error:
            raise ConfigError(f"cannot read the client CA file: {error}") from error
    if settings.client_ca_pem:
        parts.append(settings.client_ca_pem)
    return "\n".join(parts) if parts else None


async def start_metrics_api(
    settings: MetricsApiSettings, source: MetricsSource, *, clock: Clock = _default_clock
) -> MetricsApiServer:
    """Start the HTTPS metrics API (and the KEDA listener when ``keda_port`` is set).

    Raises :class:`~wsgauge_operator.model.exceptions.ConfigError` for unusable TLS
    settings, OSError when a port cannot be bound.
    """
    client_ca = _client_ca(settings)
    if client_ca is None and not settings.allow_unauthenticated:
        raise ConfigError(
            "no request-header client CA configured (client_ca_file / client_ca_pem); "
            "load it with KubeApi.request_header_auth() or set allow_unauthenticated"
        )
    pair = serving_certificate_pair(
        settings.cert_file, settings.key_file, settings.self_signed_hosts
    )
    context = server_ssl_context(pair, client_ca)
    app = build_metrics_app(
        settings, source, clock=clock, require_client_cert=client_ca is not None
    )
    runner, port = await start_site(
        app, settings.host, settings.port, settings.shutdown_timeout, context
    )
    handle = MetricsApiServer(port=port, serving_cert_pem=pair.cert_pem, _runners=[runner])
    logger.info("custom metrics API listening on https://%s:%d", settings.host, port)
    if settings.keda_port is not None:
        keda_app = web.Application()
        add_keda_routes(
            keda_app, source, max_age_seconds=settings.max_metric_age_seconds, clock=clock
        )
        try:
            keda_runner, keda_port = await start_site(
                keda_app, settings.keda_host, settings.keda_port, settings.shutdown_timeout
            )
        except OSError:
            await handle.stop()
            raise
        handle._runners.append(keda_runner)
        handle.keda_port = keda_port
        logger.info("KEDA endpoint listening on http://%s:%d", settings.keda_host, keda_port)
    return handle
