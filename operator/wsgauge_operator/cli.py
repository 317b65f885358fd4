"""``wsgauge-operator``: command line, environment, logging, and the kopf run loop.

The flags are a :class:`wsgauge_contract.flags.FlagSet` over
:class:`~wsgauge_operator.model.settings.OperatorSettings`: each flag's default and ``--help`` text
are its settings field's default and docstring. Every flag can also be set by an environment
variable ``WSGAUGE_OPERATOR_<FLAG>`` (upper case, dashes as underscores, e.g.
``WSGAUGE_OPERATOR_STATUS_INTERVAL=1s``); a flag on the command line wins. Out of cluster,
pass ``--kubeconfig``; in a pod, the service account is used.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping, Sequence

import kopf
from aiohttp import web
from kopf._core.engines.peering import Identity  # the NewType kopf.operator() takes
from wsgauge_contract import FlagError
from wsgauge_contract.flags import Flag, FlagSet

from wsgauge_operator.autoscaling.services import install_autoscaling
from wsgauge_operator.control.controller import Controller
from wsgauge_operator.control.pod_resync import PodResync
from wsgauge_operator.handlers import build_registry
from wsgauge_operator.kube.kubeapi import KubeApi
from wsgauge_operator.kube.leader_lease import validate_timing
from wsgauge_operator.kube.leadership import (
    LeaderElector,
    LeaseApi,
    RenewalThread,
    holder_identity,
    lease_namespace,
)
from wsgauge_operator.kube.pod_watch import PodWatch
from wsgauge_operator.model.exceptions import ConfigError
from wsgauge_operator.model.settings import CollectorSettings, OperatorSettings
from wsgauge_operator.model.spec import parse_duration
from wsgauge_operator.servers.standby_server import STANDBY, STARTING, StandbyLiveness
from wsgauge_operator.servers.stats_server import StatsServer

ENV_PREFIX = "WSGAUGE_OPERATOR_"
"""Prefix of the environment variables that set the flags."""


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return parse_duration(text)


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _namespaces(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _gc_thresholds(text: str) -> tuple[int, int, int]:
    parts = [part.strip() for part in text.split(",")]
    if len(parts) != 3:
        raise ValueError(f"three comma-separated integers expected, got {text!r}")
    try:
        first, second, third = (int(part) for part in parts)
    except ValueError:
        raise ValueError(f"three comma-separated integers expected, got {text!r}") from None
    if first < 0 or second < 0 or third < 0:
        raise ValueError(f"thresholds must not be negative, got {text!r}")
    return (first, second, third)


FLAGS = FlagSet(
    OperatorSettings,
    (
        Flag("kubeconfig", "kube.kubeconfig"),
        Flag("namespaces", "kube.namespaces", _namespaces),
        Flag("instance", "kube.instance"),
        Flag("listen", "server.listen"),
        Flag("watch-heartbeat", "server.watch_heartbeat", _seconds),
        Flag("live-page", "server.live_page", _boolean),
        Flag("live-send-timeout", "server.live.send_timeout", _seconds),
        Flag("live-max-clients", "server.live.max_clients", int),
        Flag("status-interval", "status.default_interval", _seconds),
        Flag("min-status-interval", "status.min_interval", _seconds),
        Flag("top-topics", "status.top_topics", int),
        Flag("busiest-pods", "status.busiest_pods", int),
        Flag("max-nodes", "status.max_nodes", int),
        Flag("connect-timeout", "follower.connect_timeout", _seconds),
        Flag("read-timeout", "follower.read_timeout", _seconds),
        Flag("backoff-max", "follower.backoff_max", _seconds),
        Flag("poll-interval", "follower.poll_interval", _seconds),
        Flag("startup-grace", "follower.startup_grace", _seconds),
        Flag("max-followed-pods", "follower.max_followed_pods", int),
        Flag("readiness", "readiness.enabled", _boolean),
        Flag("condition-type", "readiness.condition_type"),
        Flag("events", "events.enabled", _boolean),
        Flag("event-repeat", "events.repeat_after", _seconds),
        Flag("metrics-api", "autoscaling.metrics_api", _boolean),
        Flag("metrics-api-listen", "autoscaling.metrics_api_listen"),
        Flag("metrics-api-cert-file", "autoscaling.metrics_api_cert_file"),
        Flag("metrics-api-key-file", "autoscaling.metrics_api_key_file"),
        Flag("keda-listen", "autoscaling.keda_listen"),
        Flag("leader-elect", "leader_election.enabled", _boolean),
        Flag("leader-election-namespace", "leader_election.namespace"),
        Flag("leader-election-lease-name", "leader_election.lease_name"),
        Flag("leader-election-identity", "leader_election.identity"),
        Flag("leader-election-lease-duration", "leader_election.lease_duration", _seconds),
        Flag("leader-election-renew-deadline", "leader_election.renew_deadline", _seconds),
        Flag("leader-election-retry-period", "leader_election.retry_period", _seconds),
        Flag("gc-thresholds", "collector.thresholds", _gc_thresholds),
        Flag("log-level", "log_level"),
        Flag("liveness", "liveness_endpoint"),
    ),
    ENV_PREFIX,
)
"""The operator's flags; defaults and ``--help`` texts come from
:mod:`wsgauge_operator.model.settings`.
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (defaults and help from the settings dataclasses)."""
    parser = argparse.ArgumentParser(
        prog="wsgauge-operator",
        description="Follows wsgauge sidecars and keeps ConnectionStats resources live. "
        f"Every option can be set by environment variable {ENV_PREFIX}<OPTION> "
        "(upper case, dashes as underscores); the flag wins.",
    )
    FLAGS.add_arguments(parser)
    return parser


def settings_from(
    argv: Sequence[str] | None, environ: Mapping[str, str] | None = None
) -> OperatorSettings:
    """Settings from flags, then environment, then defaults. Raises :class:`ConfigError`."""
    try:
        settings: OperatorSettings = FLAGS.parse(
            build_parser(), argv, os.environ if environ is None else environ
        )
    except FlagError as error:
        raise ConfigError(str(error)) from None
    if settings.follower.read_timeout <= 0 or settings.status.min_interval <= 0:
        raise ConfigError("timeouts and intervals must be positive")
    if settings.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"--log-level: unknown level {settings.log_level!r}")
    if settings.leader_election.enabled:
        problem = validate_timing(settings.leader_election)
        if problem:
            raise ConfigError(f"leader election: {problem}")
    return settings


EXIT_LEADERSHIP_LOST = 3
"""Exit status when the leader could not keep its Lease (the Deployment restarts it)."""

logger = logging.getLogger("wsgauge_operator")


def exit_on_lost_leadership(reason: str) -> None:
    """Stop the process at once: a leader without a Lease must not write another byte."""
    logger.error("leader election: leadership lost (%s); exiting", reason)
    logging.shutdown()
    os._exit(EXIT_LEADERSHIP_LOST)


def stop_on_signals(stop: asyncio.Event) -> None:
    """SIGINT/SIGTERM set ``stop``, until kopf installs its own handlers over these.

    Never restored to the default action: a SIGTERM between winning the Lease and kopf's start
    must still stop gracefully (and release the Lease), not kill the process.
    """
    loop = asyncio.get_running_loop()
    for number in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # no signals / not main
            loop.add_signal_handler(number, stop.set)


async def wait_for_leadership(
    settings: OperatorSettings, elector: LeaderElector, stop: asyncio.Event
) -> bool:
    """Answer kopf's liveness path as a standby until this replica leads (True) or ``stop``."""
    standby = StandbyLiveness(settings.liveness_endpoint)
    await standby.start()
    try:
        return await elector.acquire(stop)
    finally:
        await standby.stop()


class Operator:
    """The leader's parts, built before the election so that its stats listener opens first.

    Building touches no API: the controller, its services and the stats server's routes only
    run once :meth:`run` starts kopf. Until then the stats server answers as a standby or as
    starting (:mod:`wsgauge_operator.servers.standby_server`) on the listener it keeps.
    """

    def __init__(self, settings: OperatorSettings) -> None:
        self.settings = settings
        self.elector: LeaderElector | None = None
        """Set once this replica leads with leader election on (``/readyz`` follows it)."""
        self.kube = KubeApi(settings.kube)
        self.controller = Controller(settings, self.kube)
        self.server = StatsServer(self.controller, settings.server)
        install_autoscaling(self.controller, self.kube, settings.autoscaling, self.server.app)
        pod_watch = PodWatch(self.controller, self.kube, settings.kube.namespaces)
        self.controller.add_service(pod_watch.start, pod_watch.stop)
        resync = PodResync(self.controller, self.kube, settings.kube.namespaces)
        self.controller.add_service(resync.start, resync.stop)
        self.server.app.router.add_get("/readyz", self._readyz)
        self._closed = False

    async def _readyz(self, request: web.Request) -> web.Response:
        if self.elector is not None and not self.elector.leading:
            return web.Response(text="not leading\n", status=503)
        return web.Response(text="ok\n")

    async def run(self, stop: asyncio.Event) -> None:
        """Run kopf (whose startup handler starts the controller and serves the stats)."""
        self.server.hold(STARTING)
        namespaces = list(self.settings.kube.namespaces)
        await kopf.operator(
            registry=build_registry(self.settings.kube),
            standalone=True,
            clusterwide=not namespaces,
            namespaces=namespaces,
            memo=kopf.Memo(controller=self.controller, server=self.server),
            # kopf's default identity asks getpass.getuser(), which fails for a uid without a
            # passwd entry (the images run as 65532): name this process ourselves
            identity=Identity(
                self.elector.identity if self.elector is not None else socket.gethostname()
            ),
            liveness_endpoint=self.settings.liveness_endpoint or None,
            stop_flag=stop,
        )

    async def close(self) -> None:
        """Stop serving, stop the controller, release the API client (idempotent)."""
        await self.server.stop()
        await self.controller.stop()
        if not self._closed:
            self._closed = True
            await self.kube.close()


async def run(
    settings: OperatorSettings, on_lost: Callable[[str], None] = exit_on_lost_leadership
) -> None:
    """Run the operator until it is stopped (SIGINT/SIGTERM).

    The stats listener opens first and stays open to the end. With leader election, wait as a
    standby until this replica holds the Lease, keep renewing it while the operator runs
    (``on_lost`` when that fails), and release it last.
    """
    election = settings.leader_election
    operator = Operator(settings)
    try:
        await operator.kube.open()  # the credentials, checked before anything is served
        await operator.server.open(STANDBY if election.enabled else STARTING)
        await _lead_and_run(settings, operator, on_lost)
    finally:
        await operator.close()


async def _lead_and_run(
    settings: OperatorSettings, operator: Operator, on_lost: Callable[[str], None]
) -> None:
    stop = asyncio.Event()
    election = settings.leader_election
    if not election.enabled:
        await operator.run(stop)
        return
    lease_api = LeaseApi(settings.kube, lease_namespace(election), election.lease_name)
    elector = LeaderElector(election, holder_identity(election, settings.kube.instance), lease_api)
    try:
        await lease_api.open()
        stop_on_signals(stop)
        leading = await wait_for_leadership(settings, elector, stop)
    finally:
        await lease_api.close()  # this loop's client: the renewal thread makes its own
    if not leading:
        logger.info("standby: stopped before leading")
        return
    operator.elector = elector
    renewal = RenewalThread(elector, on_lost)
    renewal.start()
    try:
        if not stop.is_set():
            await operator.run(stop)
    finally:
        await operator.close()  # nothing acts any more when the Lease is released
        await asyncio.to_thread(renewal.stop)
        try:
            await elector.release()
        finally:
            await elector.close()


def configure_collector(collector: CollectorSettings) -> None:
    """Apply the garbage collector thresholds to this process (``0,0,0``: cyclic GC off)."""
    if collector.thresholds[0] == 0:
        gc.disable()
        logger.info("garbage collector: cyclic collection off")
        return
    gc.enable()
    gc.set_threshold(*collector.thresholds)
    logger.info("garbage collector: thresholds %s", ",".join(map(str, collector.thresholds)))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``wsgauge-operator``."""
    try:
        settings = settings_from(argv)
    except ConfigError as error:
        print(f"wsgauge-operator: {error}", file=sys.stderr)
        return 2
    level = getattr(logging, settings.log_level.upper())
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level > logging.DEBUG:
        logging.getLogger("kopf").setLevel(max(level, logging.WARNING))
    configure_collector(settings.collector)
    try:
        asyncio.run(run(settings))
    except ConfigError as error:
        logging.getLogger("wsgauge_operator").error("%s", error)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
