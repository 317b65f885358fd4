"""``wsgauge-sidecar`` entry point: wires settings, state, proxy, admin port, drain and signals.

Startup order: parse flags (exit 2 on bad ones), check the upstream once, bind
the admin port, bind the loopback report listener (report mode only), bind the data
port (not in report mode), log one line with the
addresses and the rule, then serve until SIGTERM/SIGINT starts the drain
(:mod:`wsgauge_sidecar.drain`). Exit code 0 after a drain, 1 if a port cannot
be bound. uvloop is used when it is installed.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import signal
import sys
from collections.abc import Callable, Sequence

from aiohttp import web
from wsgauge_contract.address import Address

from wsgauge_sidecar import __version__
from wsgauge_sidecar.admin import bound_port, start_admin_server, start_report_server
from wsgauge_sidecar.cli import parse_settings
from wsgauge_sidecar.drain import DrainController
from wsgauge_sidecar.proxy import ProxyServer
from wsgauge_sidecar.settings import SidecarSettings
from wsgauge_sidecar.shedder import Shedder
from wsgauge_sidecar.state import SidecarState, check_upstream_forever, probe_tcp

log = logging.getLogger("wsgauge.sidecar")


def _loop_factory() -> tuple[Callable[[], asyncio.AbstractEventLoop] | None, str]:
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        return None, "asyncio"
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory, "uvloop"


class Sidecar:
    """The running sidecar process (everything but argument parsing)."""

    def __init__(self, settings: SidecarSettings, loop_name: str = "asyncio") -> None:
        self.settings = settings
        self.loop_name = loop_name
        self.state = SidecarState(settings)
        self.proxy: ProxyServer | None = None if settings.report_mode else ProxyServer(self.state)
        self.drain = DrainController(self.state, self.proxy)
        self.shedder = Shedder(self.state, self.proxy)
        self._admin: web.AppRunner | None = None
        self._report: web.AppRunner | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Bind both ports and start the background checks (raises ``OSError`` if a bind fails)."""
        settings = self.settings
        upstream = settings.proxy.upstream
        interval = settings.admin.upstream_check_interval
        self.state.set_upstream_reachable(await probe_tcp(upstream.host, upstream.port, interval))
        self._admin = await start_admin_server(self.state, self.shedder)
        if settings.report_mode:
            self._report = await start_report_server(self.state)
        if self.proxy is not None:
            await self.proxy.start()
        self._tasks.append(asyncio.create_task(check_upstream_forever(self.state)))
        limits = settings.limits
        log.info(
            "wsgauge-sidecar %s: data %s, admin %s, report %s, upstream %s (%s), topic rule %s, "
            "max-connections %s, ready-below %s, max-topics %d, drain %.1f+%.1f s (%s, code %d), "
            "loop %s, relay %s",
            __version__,
            self.data_address(),
            self.admin_address(),
            self.report_address(),
            upstream,
            "reachable" if self.state.upstream_reachable else "NOT reachable",
            settings.proxy.topic_rule,
            limits.max_connections or "unlimited",
            limits.ready_below or "off",
            limits.max_topics,
            settings.drain.grace,
            settings.drain.spread,
            settings.drain.mode
            if settings.drain.mode == "spread"
            else f"{settings.drain.batches} batches",
            settings.drain.close_code,
            self.loop_name,
            "off (report mode)" if self.proxy is None else self.proxy.relay_description,
        )  # fmt: skip

    def data_address(self) -> str:
        """The data listen address, with the real port if it was 0."""
        if self.proxy is None:
            return "off (report mode)"
        listen = self.settings.proxy.listen
        if listen.port == 0:
            return str(Address(listen.host, self.proxy.port))
        return str(listen)

    def admin_address(self) -> str:
        """The admin listen address, with the real port if it was 0."""
        listen = self.settings.admin.listen
        if listen.port == 0 and self._admin is not None:
            return str(Address(listen.host, bound_port(self._admin)))
        return str(listen)

    def report_address(self) -> str:
        """The report listen address (loopback only), with the real port if it was 0."""
        if self._report is None:
            return "off (not report mode)"
        listen = self.settings.admin.report_listen
        if listen.port == 0:
            return str(Address(listen.host, bound_port(self._report)))
        return str(listen)

    def on_sigterm(self) -> None:
        """Start the drain (once)."""
        if self._drain_task is not None:
            log.info("SIGTERM again: already draining")
            return
        self._drain_task = asyncio.create_task(self._drain_then_stop())

    def on_sigint(self) -> None:
        """Drain at once: no grace, no spread."""
        log.info("SIGINT: draining without grace or spread")
        self.drain.hurry()
        if self._drain_task is None:
            self._drain_task = asyncio.create_task(self._drain_then_stop())

    async def _drain_then_stop(self) -> None:
        await self.drain.run()
        self._stop.set()

    async def serve_until_drained(self) -> None:
        """Serve until a drain has finished."""
        await self._stop.wait()

    async def close(self) -> None:
        """Release the ports and tasks."""
        self.state.stopping.set()
        if self.proxy is not None:
            self.proxy.stop_listening()
            self.proxy.abort_all("shutdown")
            self.proxy.release()
        for task in self._tasks:
            task.cancel()
        if self._report is not None:
            await self._report.cleanup()
        if self._admin is not None:
            await self._admin.cleanup()


async def run(settings: SidecarSettings, loop_name: str = "asyncio") -> int:
    """Run the sidecar until drained; the process exit code."""
    sidecar = Sidecar(settings, loop_name)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, sidecar.on_sigterm)
    loop.add_signal_handler(signal.SIGINT, sidecar.on_sigint)
    try:
        await sidecar.start()
    except OSError as error:
        log.error("cannot start: %s", error)
        await sidecar.close()
        return 1
    try:
        await sidecar.serve_until_drained()
    finally:
        await sidecar.close()
    log.info("wsgauge-sidecar exiting")
    return 0


def configure_logging(level: str) -> None:
    """One line per event on stderr: time, level, component, message."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if level != "debug":
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> None:
    """Console script ``wsgauge-sidecar``."""
    settings = parse_settings(argv)
    configure_logging(settings.log_level)
    factory, loop_name = _loop_factory()
    with asyncio.Runner(loop_factory=factory) as runner:
        code = runner.run(run(settings, loop_name))
    sys.exit(code)


if __name__ == "__main__":
    main()
