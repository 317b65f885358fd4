"""Command line of ``wsgauge-sidecar``: flags, their ``WSGAUGE_*`` environment mirrors, validation.

Every flag ``--some-flag`` can also be given as environment variable
``WSGAUGE_SOME_FLAG``; a flag on the command line wins over the environment.
Invalid values (from either source) end the process with exit code 2 and a
message naming the flag or variable, before anything is started.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn

from wsgauge_contract import Address, AddressError

from wsgauge_sidecar import __version__
from wsgauge_sidecar.access import is_loopback_host
from wsgauge_sidecar.exceptions import ConfigError
from wsgauge_sidecar.settings import (
    AdminSettings,
    DrainSettings,
    LimitSettings,
    PodIdentity,
    ProxySettings,
    SidecarSettings,
)
from wsgauge_sidecar.topics import TopicRule, parse_topic_rule

ENV_PREFIX = "WSGAUGE_"
LOG_LEVELS = ("debug", "info", "warning", "error")

DESCRIPTION = """\
wsgauge sidecar: a reverse proxy in front of a WebSocket app that counts its live
WebSocket connections per topic, and serves the counts on a separate admin port
(/metrics, /stats, /stats/watch, /healthz, /readyz). In report mode the app reports
its counts to /report on a loopback-only listener of its own (--report-listen).
State-changing requests (PUT, POST, ...) are accepted only from the pod itself
(a loopback peer), on either port; anyone else gets 403.

Every flag can also be set by environment variable WSGAUGE_<FLAG> (upper case,
dashes as underscores, e.g. WSGAUGE_MAX_CONNECTIONS=5000); the flag wins.
The pod identity comes from POD_NAME, POD_NAMESPACE and NODE_NAME.
"""

EPILOG = """\
topic rules:
  path            the request path is the topic (/ws/stream?x=1 -> /ws/stream)
  path:REGEX      group 1 of REGEX searched in the path (path:^/ws/([^/]+) -> stream)
  query:NAME      the value of query parameter NAME
  header:NAME     the value of request header NAME
  phoenix         Phoenix channels (JSON v1/v2): topics joined with phx_join
  report          the app reports its own counts (PUT/POST /report on
                  --report-listen, 127.0.0.1:9091); the data port is not opened

on SIGTERM: /readyz fails at once; after --drain-grace seconds new upgrades are
refused; the remaining sockets get close code 1001 spread over --drain-spread
seconds; then the process exits 0. Give the app container a preStop wait of at
least drain-grace + drain-spread (+ a few seconds) so it keeps its sockets open.
"""


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose error messages can say where the bad value came from."""

    source_note: str = ""

    def error(self, message: str) -> NoReturn:
        self.print_usage()
        self.exit(2, f"{self.prog}: error: {self.source_note}{message}\n")


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def _listen_address(text: str) -> Address:
    try:
        return Address.parse_listen(text)
    except AddressError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _connect_address(text: str) -> Address:
    try:
        return Address.parse_connect(text)
    except AddressError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _topic_rule(text: str) -> TopicRule:
    try:
        return parse_topic_rule(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _log_level(text: str) -> str:
    level = text.strip().lower()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(LOG_LEVELS)}, got {text!r}")
    return level


@dataclass(frozen=True)
class _Flag:
    name: str
    metavar: str
    convert: Callable[[str], object]
    default: str
    help: str

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper().replace("-", "_")

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")


FLAGS: tuple[_Flag, ...] = (
    _Flag(
        "listen", "HOST:PORT", _listen_address, "0.0.0.0:8080", "data port: the proxy clients use"
    ),
    _Flag("admin-listen", "HOST:PORT", _listen_address, "0.0.0.0:9090", "admin port (must differ)"),
    _Flag(
        "report-listen",
        "HOST:PORT",
        _listen_address,
        "127.0.0.1:9091",
        "report mode: the report API's own listener; must be a loopback address",
    ),
    _Flag("upstream", "HOST:PORT", _connect_address, "127.0.0.1:8081", "the app behind the proxy"),
    _Flag("topic", "RULE", _topic_rule, "path", "topic rule (see below)"),
    _Flag(
        "max-connections",
        "N",
        _non_negative_int,
        "0",
        "new upgrades get HTTP 503 at N sockets (0 = unlimited)",
    ),
    _Flag(
        "ready-below", "N", _non_negative_int, "0", "/readyz fails at or above N sockets (0 = off)"
    ),
    _Flag("max-topics", "N", _non_negative_int, "100", "topics beyond N count under _other"),
    _Flag("drain-grace", "SECONDS", _seconds, "5", "after SIGTERM: not ready, still accepting"),
    _Flag("drain-spread", "SECONDS", _seconds, "10", "then close sockets (1001) spread over this"),
    _Flag(
        "handshake-timeout",
        "SECONDS",
        _seconds,
        "10",
        "time for a client to send a full request head (and the upstream to answer an upgrade)",
    ),
    _Flag(
        "tcp-keepalive",
        "SECONDS",
        _seconds,
        "60",
        "TCP keepalive on client connections: a vanished peer is cut after about 2x this (0 = off)",
    ),
    _Flag("watch-heartbeat", "SECONDS", _seconds, "5", "blank line on /stats/watch when idle"),
    _Flag("watch-min-interval", "SECONDS", _seconds, "0.05", "least time between watch documents"),
    _Flag("max-header-bytes", "N", _non_negative_int, "16384", "largest HTTP message head"),
    _Flag(
        "max-message-bytes",
        "N",
        _non_negative_int,
        "1048576",
        "largest WebSocket message (phoenix mode; 1009 above it)",
    ),
    _Flag(
        "socket-buffer-bytes",
        "N",
        _non_negative_int,
        "262144",
        "per-direction relay buffer; the sending peer is paused above it",
    ),
    _Flag(
        "upstream-check-interval",
        "SECONDS",
        _seconds,
        "2",
        "TCP connect check of the upstream for /readyz",
    ),
    _Flag("log-level", "LEVEL", _log_level, "info", "debug | info | warning | error"),
)


def build_parser() -> _Parser:
    """The ``argparse`` parser of ``wsgauge-sidecar`` (defaults are the documented ones)."""
    parser = _Parser(
        prog="wsgauge-sidecar",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for flag in FLAGS:
        parser.add_argument(
            f"--{flag.name}",
            metavar=flag.metavar,
            type=flag.convert,
            default=flag.convert(flag.default),
            help=f"{flag.help} (default {flag.default}; env {flag.env})",
        )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def _environment_argv(environ: Mapping[str, str]) -> list[str]:
    return [f"--{flag.name}={environ[flag.env]}" for flag in FLAGS if flag.env in environ]


def parse_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> SidecarSettings:
    """Parse flags and environment into settings; on bad input print a message and exit 2."""
    env = os.environ if environ is None else environ
    args = list(argv) if argv is not None else None
    parser = build_parser()
    env_argv = _environment_argv(env)
    parser.source_note = "in the environment: "
    from_env = parser.parse_args(env_argv)
    parser.source_note = ""
    parser.set_defaults(**vars(from_env))
    namespace = parser.parse_args(args)
    try:
        return settings_from_namespace(namespace, PodIdentity.from_environ(env))
    except ConfigError as error:
        parser.error(str(error))


def settings_from_namespace(namespace: argparse.Namespace, pod: PodIdentity) -> SidecarSettings:
    """Build and cross-check settings from parsed flags; :class:`ConfigError` if inconsistent."""
    values = vars(namespace)
    listen: Address = values["listen"]
    admin_listen: Address = values["admin_listen"]
    upstream: Address = values["upstream"]
    if _same_port(listen, admin_listen):
        raise ConfigError(f"--listen {listen} and --admin-listen {admin_listen} must differ")
    topic_rule: TopicRule = values["topic"]
    report_listen: Address = values["report_listen"]
    if not is_loopback_host(report_listen.host):
        raise ConfigError(
            f"--report-listen {report_listen} must be a loopback address (127.0.0.1 or [::1]): "
            "the report API is for the pod itself"
        )
    if topic_rule.kind == "report" and _same_port(admin_listen, report_listen):
        raise ConfigError(
            f"--admin-listen {admin_listen} and --report-listen {report_listen} must differ"
        )
    if topic_rule.kind != "report" and listen == upstream:
        raise ConfigError(f"--upstream {upstream} is the proxy's own --listen address")
    if values["handshake_timeout"] <= 0:
        raise ConfigError("--handshake-timeout must be greater than 0")
    if values["watch_heartbeat"] <= 0:
        raise ConfigError("--watch-heartbeat must be greater than 0")
    if values["upstream_check_interval"] <= 0:
        raise ConfigError("--upstream-check-interval must be greater than 0")
    if values["max_header_bytes"] < 1024:
        raise ConfigError("--max-header-bytes must be at least 1024")
    if values["max_message_bytes"] < 1024:
        raise ConfigError("--max-message-bytes must be at least 1024")
    if values["socket_buffer_bytes"] < 4096:
        raise ConfigError("--socket-buffer-bytes must be at least 4096")
    return SidecarSettings(
        proxy=ProxySettings(
            listen=listen,
            upstream=upstream,
            topic_rule=topic_rule,
            handshake_timeout=values["handshake_timeout"],
            max_header_bytes=values["max_header_bytes"],
            max_message_bytes=values["max_message_bytes"],
            socket_buffer_bytes=values["socket_buffer_bytes"],
            tcp_keepalive=values["tcp_keepalive"],
        ),
        limits=LimitSettings(
            max_connections=values["max_connections"],
            ready_below=values["ready_below"],
            max_topics=values["max_topics"],
        ),
        admin=AdminSettings(
            listen=admin_listen,
            report_listen=report_listen,
            watch_heartbeat=values["watch_heartbeat"],
            watch_min_interval=values["watch_min_interval"],
            upstream_check_interval=values["upstream_check_interval"],
        ),
        drain=DrainSettings(grace=values["drain_grace"], spread=values["drain_spread"]),
        pod=pod,
        log_level=values["log_level"],
    )


def _same_port(first: Address, second: Address) -> bool:
    if first.port != second.port or first.port == 0:
        return False
    wildcard = ("0.0.0.0", "::", "")
    return first.host == second.host or first.host in wildcard or second.host in wildcard
