"""``wsgauge-operator``: command line, environment, logging, and the kopf run loop.

Every flag can also be set by an environment variable ``WSGAUGE_OPERATOR_<FLAG>``
(upper case, dashes as underscores, e.g. ``WSGAUGE_OPERATOR_STATUS_INTERVAL=1s``);
a flag on the command line wins. Out of cluster, pass ``--kubeconfig``; in a pod,
the service account is used.
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
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import kopf
from aiohttp import web
from kopf._core.engines.peering import Identity  # the NewType kopf.operator() takes

from wsgauge_operator.autoscaling_services import install_autoscaling
from wsgauge_operator.controller import Controller
from wsgauge_operator.exceptions import ConfigError
from wsgauge_operator.handlers import build_registry
from wsgauge_operator.kubeapi import KubeApi
from wsgauge_operator.leader_lease import validate_timing
from wsgauge_operator.leadership import (
    LeaderElector,
    LeaseApi,
    RenewalThread,
    holder_identity,
    lease_namespace,
)
from wsgauge_operator.pod_resync import PodResync
from wsgauge_operator.pod_watch import PodWatch
from wsgauge_operator.settings import (
    AutoscalingSettings,
    CollectorSettings,
    EventSettings,
    FollowerSettings,
    KubeSettings,
    LeaderElectionSettings,
    OperatorSettings,
    ReadinessSettings,
    ServerSettings,
    StatusSettings,
)
from wsgauge_operator.spec import parse_duration
from wsgauge_operator.standby_server import STANDBY, STARTING, StandbyLiveness
from wsgauge_operator.stats_server import StatsServer

ENV_PREFIX = "WSGAUGE_OPERATOR_"


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


# flag -> (settings section, field, parser, help)
OPTIONS: dict[str, tuple[str, str, Callable[[str], Any], str]] = {
    "kubeconfig": (
        "kube",
        "kubeconfig",
        str,
        "kubeconfig file (default: in-cluster or $KUBECONFIG)",
    ),
    "namespaces": (
        "kube",
        "namespaces",
        _namespaces,
        "comma-separated namespaces to watch (default: all)",
    ),
    "instance": ("kube", "instance", str, "reporting instance on Events (default: host name)"),
    "listen": ("server", "listen", str, "HOST:PORT of the stats/metrics server ('' = off)"),
    "watch-heartbeat": ("server", "watch_heartbeat", _seconds, "heartbeat on /stats/watch"),
    "status-interval": (
        "status",
        "default_interval",
        _seconds,
        "status interval when the spec sets none",
    ),
    "min-status-interval": (
        "status",
        "min_interval",
        _seconds,
        "lower bound on spec.statusInterval",
    ),
    "top-topics": ("status", "top_topics", int, "topics listed in a status (rest -> _other)"),
    "busiest-pods": ("status", "busiest_pods", int, "pods listed in status.busiestPods"),
    "max-nodes": ("status", "max_nodes", int, "nodes listed in status.nodes"),
    "connect-timeout": ("follower", "connect_timeout", _seconds, "sidecar connect timeout"),
    "read-timeout": (
        "follower",
        "read_timeout",
        _seconds,
        "silence before a sidecar is unreachable (> its heartbeat)",
    ),
    "backoff-max": ("follower", "backoff_max", _seconds, "longest reconnect delay"),
    "poll-interval": (
        "follower",
        "poll_interval",
        _seconds,
        "polling period for sidecars without /stats/watch",
    ),
    "startup-grace": (
        "follower",
        "startup_grace",
        _seconds,
        "time a new sidecar may take to answer",
    ),
    "max-followed-pods": (
        "follower",
        "max_followed_pods",
        int,
        "most sidecars followed at once (more: Degraded/PodLimitReached)",
    ),
    "readiness": (
        "readiness",
        "enabled",
        _boolean,
        "write the readiness-gate pod condition (true/false)",
    ),
    "condition-type": (
        "readiness",
        "condition_type",
        str,
        "pod condition type for the readiness gate",
    ),
    "events": ("events", "enabled", _boolean, "record Kubernetes Events (true/false)"),
    "event-repeat": (
        "events",
        "repeat_after",
        _seconds,
        "time before the same Event is recorded again",
    ),
    "metrics-api": (
        "autoscaling",
        "metrics_api",
        _boolean,
        "serve the custom metrics API custom.metrics.k8s.io (true/false)",
    ),
    "metrics-api-listen": (
        "autoscaling",
        "metrics_api_listen",
        str,
        "HOST:PORT of the custom metrics API (HTTPS)",
    ),
    "metrics-api-cert-file": (
        "autoscaling",
        "metrics_api_cert_file",
        str,
        "serving certificate of the metrics API, PEM ('' = self-signed)",
    ),
    "metrics-api-key-file": (
        "autoscaling",
        "metrics_api_key_file",
        str,
        "private key of the metrics API certificate, PEM",
    ),
    "keda-listen": (
        "autoscaling",
        "keda_listen",
        str,
        "HOST:PORT of an own KEDA endpoint listener ('' = on the stats server)",
    ),
    "leader-elect": (
        "leader_election",
        "enabled",
        _boolean,
        "elect a leader among replicas through a Lease; only the leader acts (true/false)",
    ),
    "leader-election-namespace": (
        "leader_election",
        "namespace",
        str,
        "namespace of the Lease (default: the pod's namespace in a cluster, else 'default')",
    ),
    "leader-election-lease-name": (
        "leader_election",
        "lease_name",
        str,
        "name of the coordination.k8s.io Lease",
    ),
    "leader-election-identity": (
        "leader_election",
        "identity",
        str,
        "holder identity (default: instance or host name plus a random suffix)",
    ),
    "leader-election-lease-duration": (
        "leader_election",
        "lease_duration",
        _seconds,
        "how long a standby waits on an unchanged Lease before taking it over",
    ),
    "leader-election-renew-deadline": (
        "leader_election",
        "renew_deadline",
        _seconds,
        "how long the leader may fail to renew before it exits (< lease duration)",
    ),
    "leader-election-retry-period": (
        "leader_election",
        "retry_period",
        _seconds,
        "time between renewals and between a standby's looks at the Lease",
    ),
    "gc-thresholds": (
        "collector",
        "thresholds",
        _gc_thresholds,
        "garbage collector thresholds G0,G1,G2 (CPython's own: 700,10,10; 0,0,0 turns the "
        "cyclic collector off)",
    ),
    "log-level": ("", "log_level", str, "debug, info, warning or error"),
    "liveness": (
        "",
        "liveness_endpoint",
        str,
        "kopf liveness endpoint URL, e.g. http://0.0.0.0:8081/healthz",
    ),
}

SECTIONS: dict[str, type[Any]] = {
    "kube": KubeSettings,
    "follower": FollowerSettings,
    "status": StatusSettings,
    "readiness": ReadinessSettings,
    "events": EventSettings,
    "server": ServerSettings,
    "autoscaling": AutoscalingSettings,
    "leader_election": LeaderElectionSettings,
    "collector": CollectorSettings,
}


def _default(section: str, name: str) -> Any:
    owner = SECTIONS[section] if section else OperatorSettings
    return getattr(owner(), name)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (every option defaults to ``None``: unset)."""
    parser = argparse.ArgumentParser(
        prog="wsgauge-operator",
        description="Follows wsgauge sidecars and keeps ConnectionStats resources live. "
        f"Every option can be set by environment variable {ENV_PREFIX}<OPTION> "
        "(upper case, dashes as underscores).",
    )
    for flag, (section, name, _, help_text) in OPTIONS.items():
        default = _default(section, name)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        text = help_text if "(default" in help_text else f"{help_text} (default: {shown!r})"
        parser.add_argument(f"--{flag}", metavar="VALUE", help=text)
    return parser


def settings_from(
    argv: Sequence[str] | None, environ: dict[str, str] | None = None
) -> OperatorSettings:
    """Settings from flags, then environment, then defaults. Raises :class:`ConfigError`."""
    environ = dict(os.environ if environ is None else environ)
    arguments = vars(build_parser().parse_args(argv))
    values: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    top: dict[str, Any] = {}
    for flag, (section, name, parse, _) in OPTIONS.items():
        raw = arguments.get(flag.replace("-", "_"))
        source = f"--{flag}"
        if raw is None:
            env_name = ENV_PREFIX + flag.upper().replace("-", "_")
            raw = environ.get(env_name)
            source = env_name
        if raw is None:
            continue
        try:
            value = parse(raw)
        except ValueError as error:
            raise ConfigError(f"{source}: {error}") from None
        (values[section] if section else top)[name] = value
    settings = OperatorSettings(
        **{section: replace(SECTIONS[section](), **values[section]) for section in SECTIONS},
        **top,
    )
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
    starting (:mod:`.standby_server`) on the listener it keeps.
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
            self.kube.close()


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
        stop_on_signals(stop)
        leading = await wait_for_leadership(settings, elector, stop)
    except BaseException:
        lease_api.close()
        raise
    if not leading:
        logger.info("standby: stopped before leading")
        lease_api.close()
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
        await elector.release()
        elector.close()


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
