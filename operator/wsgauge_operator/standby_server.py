"""The health endpoints of a standby replica (leader election on, Lease held by another).

A standby runs neither kopf nor the controller, yet the kubelet probes it. Until it leads, it
answers on the addresses the leader will use:

- on the stats server address (``--listen``): ``GET /healthz`` 200 (alive: the startup probe
  passes) and ``GET /readyz`` 503 (not ready: the operator's Services, and so the custom metrics
  API, route only to the leader); everything else 503 with a short note;
- on kopf's liveness endpoint (``--liveness``): its path answers 200, so the liveness probe
  does not restart a healthy standby.

Both listeners are closed before kopf starts, which then binds the same addresses.
"""

from __future__ import annotations

import logging
import urllib.parse

from aiohttp import web

from wsgauge_operator.exceptions import ConfigError
from wsgauge_operator.metrics_api_tls import start_site

SHUTDOWN_SECONDS = 60.0
"""How long a stop waits for open requests (aiohttp's default)."""

logger = logging.getLogger(__name__)

STANDBY_NOTE = "standby: another replica holds the leader lease\n"
"""Body of every answer that is not a plain liveness check."""


def host_port(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (host may be empty or bracketed) -> (host, port)."""
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        raise ConfigError(f"address {address!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def liveness_address(url: str) -> tuple[str, int, str]:
    """kopf's liveness endpoint URL -> (host, port, path)."""
    parsed = urllib.parse.urlsplit(url)
    if not parsed.port:
        raise ConfigError(f"liveness endpoint {url!r} has no port")
    return parsed.hostname or "0.0.0.0", parsed.port, parsed.path or "/"


class StandbyServer:
    """Answers the probes of a standby replica until it is stopped."""

    def __init__(self, listen: str, liveness_endpoint: str) -> None:
        self._listen = listen
        self._liveness_endpoint = liveness_endpoint
        self._runners: list[web.AppRunner] = []

    @staticmethod
    async def _alive(request: web.Request) -> web.Response:
        return web.Response(text="ok (standby)\n")

    @staticmethod
    async def _standby(request: web.Request) -> web.Response:
        return web.Response(text=STANDBY_NOTE, status=503)

    async def _serve(self, app: web.Application, host: str, port: int) -> None:
        try:
            runner, _ = await start_site(app, host, port, shutdown_timeout=SHUTDOWN_SECONDS)
        except OSError as error:
            raise ConfigError(f"cannot listen on {host}:{port}: {error}") from None
        self._runners.append(runner)

    async def start(self) -> None:
        """Listen on the stats address and on the liveness endpoint (each if configured)."""
        try:
            if self._listen:
                stats = web.Application()
                stats.router.add_get("/healthz", self._alive)
                stats.router.add_route("*", "/{tail:.*}", self._standby)
                await self._serve(stats, *host_port(self._listen))
            if self._liveness_endpoint:
                host, port, path = liveness_address(self._liveness_endpoint)
                liveness = web.Application()
                liveness.router.add_get(path, self._alive)
                await self._serve(liveness, host, port)
        except ConfigError:
            await self.stop()
            raise
        logger.info("standby: probes answered on %s", self._listen or "(no stats address)")

    async def stop(self) -> None:
        """Close every listener (idempotent)."""
        runners, self._runners = self._runners, []
        for runner in runners:
            await runner.cleanup()
