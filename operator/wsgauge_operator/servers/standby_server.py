"""What a replica answers on its probe ports before it serves (a standby, or a leader starting).

The kubelet probes every replica, the standby of a leader election (Lease held by another, no
kopf, no controller) as well as a leader whose controller is still starting:

- on the stats server address (``--listen``), the :class:`~.stats_server.StatsServer` listens
  from the process's start and, until the controller runs, answers with a :class:`Holding`:
  ``GET /healthz`` 200 (alive: the startup probe passes) and everything else, ``/readyz``
  included, 503 with a short note (not ready: the operator's Services, and so the custom metrics
  API, route only to a serving leader). The same listener then serves the stats routes: the port
  never closes across the hand-over from standby to leader;
- on kopf's liveness endpoint (``--liveness``), a :class:`StandbyLiveness` answers 200 on its
  path, so the liveness probe does not restart a healthy standby. kopf binds that address
  itself, so this listener is closed just before kopf starts (the liveness probe tolerates the
  moment: it fails only after several missed periods).
"""

from __future__ import annotations

import logging
import urllib.parse
from dataclasses import dataclass

from aiohttp import web

from wsgauge_operator.model.exceptions import ConfigError
from wsgauge_operator.tls.serving import start_site

SHUTDOWN_SECONDS = 60.0
"""How long a stop waits for open requests (aiohttp's default)."""

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Holding:
    """The answers of the stats address while the operator does not serve yet."""

    label: str
    """Word in the ``/healthz`` answer (``ok (LABEL)``)."""
    note: str
    """Body of every 503 answer (all paths but ``/healthz``)."""

    def answer(self, path: str) -> web.Response:
        """The answer to a request for ``path``."""
        if path == "/healthz":
            return web.Response(text=f"ok ({self.label})\n")
        return web.Response(text=self.note, status=503)


STANDBY = Holding("standby", "standby: another replica holds the leader lease\n")
"""Answers of a replica waiting for the leader Lease."""

STARTING = Holding("starting", "starting: the operator is not serving yet\n")
"""Answers of a replica that leads (or needs no Lease) while its controller starts."""


def liveness_address(url: str) -> tuple[str, int, str]:
    """kopf's liveness endpoint URL -> (host, port, path)."""
    parsed = urllib.parse.urlsplit(url)
    if not parsed.port:
        raise ConfigError(f"liveness endpoint {url!r} has no port")
    return parsed.hostname or "0.0.0.0", parsed.port, parsed.path or "/"


class StandbyLiveness:
    """Answers kopf's liveness path for a standby until it is stopped."""

    def __init__(self, liveness_endpoint: str) -> None:
        self._liveness_endpoint = liveness_endpoint
        self._runner: web.AppRunner | None = None

    @staticmethod
    async def _alive(request: web.Request) -> web.Response:
        return web.Response(text="ok (standby)\n")

    async def start(self) -> None:
        """Listen on the liveness endpoint (no-op when none is configured)."""
        if not self._liveness_endpoint:
            return
        host, port, path = liveness_address(self._liveness_endpoint)
        app = web.Application()
        app.router.add_get(path, self._alive)
        try:
            self._runner, _ = await start_site(app, host, port, shutdown_timeout=SHUTDOWN_SECONDS)
        except OSError as error:
            raise ConfigError(f"cannot listen on {host}:{port}: {error}") from None
        logger.info("standby: liveness answered on %s", self._liveness_endpoint)

    async def stop(self) -> None:
        """Close the listener (idempotent)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
