"""Command line of ``wsgauge-sidecar``: flags, their ``WSGAUGE_*`` environment mirrors, validation.

The flags are a :class:`wsgauge_contract.flags.FlagSet` over
:class:`~wsgauge_sidecar.settings.SidecarSettings`: each flag's default and ``--help`` text are
its settings field's default and docstring. Every flag ``--some-flag`` can also be given as
environment variable ``WSGAUGE_SOME_FLAG``; a flag on the command line wins over the
environment. Invalid values (from either source) end the process with exit code 2 and a
message naming the flag or variable, before anything is started.
"""

from __future__ import annotations

import argparse
import os
import re
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from wsgauge_contract import Address, FlagError
from wsgauge_contract.flags import (
    Flag,
    FlagSet,
    parse_drain_close_code,
    parse_drain_mode,
    parse_topic_limit,
)

from wsgauge_sidecar import __version__
from wsgauge_sidecar.access import is_loopback_host
from wsgauge_sidecar.exceptions import ConfigError
from wsgauge_sidecar.native_relay import RELAY_CHOICES, load_extension
from wsgauge_sidecar.protocols.registry import rules_help
from wsgauge_sidecar.settings import PodIdentity, SidecarSettings
from wsgauge_sidecar.topics import TopicRule, parse_topic_rule

ENV_PREFIX = "WSGAUGE_"
LOG_LEVELS = ("debug", "info", "warning", "error")

DESCRIPTION = """\
wsgauge sidecar: a reverse proxy in front of a WebSocket app that counts its live
WebSocket connections per topic, and serves the counts on a separate admin port
(/metrics, /stats, /stats/watch, /healthz, /readyz; /report in report mode).

Every flag can also be set by environment variable WSGAUGE_<FLAG> (upper case,
dashes as underscores, e.g. WSGAUGE_MAX_CONNECTIONS=5000); the flag wins.
The pod identity comes from POD_NAME, POD_NAMESPACE and NODE_NAME.
"""

EPILOG = f"""\
topic rules:
  path            the request path is the topic (/ws/stream?x=1 -> /ws/stream)
  path:REGEX      group 1 of REGEX searched in the path (path:^/ws/([^/]+) -> stream)
  query:NAME      the value of query parameter NAME
  header:NAME     the value of request header NAME
{rules_help()}
  auto[:RULE]     per socket: the protocol of the subprotocol the app accepted, else
                  of the URL shape (/socket.io/, /connection/websocket, /cable, ...),
                  else RULE (default path); /stats shows it per topic
  report          the app reports its own counts (PUT/POST /report on the admin
                  port); the data port is not opened

limits (HTTP 503 before the app sees the upgrade; open sockets are untouched):
  --max-connections N             all sockets, handshakes in flight included
  --max-topic-connections T=N     per topic (repeatable; request-based rules only)
  --max-upgrades-per-second R     upgrade rate; refusals carry a jittered Retry-After

on SIGTERM (scale-down, rollout, eviction, kubectl drain): /readyz fails at once;
after --drain-grace seconds new upgrades are refused; the remaining sockets get
close code --drain-close-code (1001 Going Away, or 1012 Service Restart), each
exactly once, within --drain-spread seconds: one at a time evenly (--drain-mode
spread) or in --drain-batches batches at jittered moments (--drain-mode batches);
then the process exits 0. Give the app container a preStop wait of at least
drain-grace + drain-spread (+ a few seconds) so it keeps its sockets open.
"""


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise ValueError(f"must not be negative, got {value}")
    return value


def _finite_non_negative(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected {what}, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"must be a finite number >= 0, got {text!r}")
    return value


def _seconds(text: str) -> float:
    return _finite_non_negative(text, "a number of seconds")


def _rate(text: str) -> float:
    return _finite_non_negative(text, "a number per second")


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value < 1:
        raise ValueError(f"must be at least 1, got {value}")
    return value


def _control_ca(text: str) -> str:
    """PEM text, or a file holding it, that holds at least one certificate."""
    pem = text
    if text and "-----BEGIN" not in text:
        try:
            pem = Path(text).read_text()
        except OSError as error:
            raise ValueError(f"cannot read {text}: {error.strerror}") from None
    if pem:
        blocks = _PEM_CERTIFICATE.findall(pem)
        if not blocks:
            raise ValueError("not a PEM CA certificate: no PEM certificate found")
        for block in blocks:
            # the structure only (stdlib); the certificate itself is read where orders are
            # verified (wsgauge_sidecar.order_auth, with the `control` extra)
            try:
                ssl.PEM_cert_to_DER_cert(block)
            except ValueError as error:
                raise ValueError(f"not a PEM CA certificate: {error}") from None
    return pem


_PEM_CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.DOTALL)


def _topic_rule(text: str) -> TopicRule:
    try:
        return parse_topic_rule(text)
    except ConfigError as error:
        raise ValueError(str(error)) from None


def _log_level(text: str) -> str:
    level = text.strip().lower()
    if level not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}, got {text!r}")
    return level


def _relay(text: str) -> str:
    choice = text.strip().lower()
    if choice not in RELAY_CHOICES:
        raise ValueError(f"expected one of {', '.join(RELAY_CHOICES)}, got {text!r}")
    return choice


FLAGS = FlagSet(
    SidecarSettings,
    (
        Flag("listen", "proxy.listen", Address.parse_listen, "HOST:PORT"),
        Flag("admin-listen", "admin.listen", Address.parse_listen, "HOST:PORT"),
        Flag("report-listen", "admin.report_listen", Address.parse_listen, "HOST:PORT"),
        Flag("control-ca", "admin.control_ca", _control_ca, "PEM|FILE"),
        Flag("upstream", "proxy.upstream", Address.parse_connect, "HOST:PORT"),
        Flag("topic", "proxy.topic_rule", _topic_rule, "RULE"),
        Flag("max-connections", "limits.max_connections", _non_negative_int, "N"),
        Flag("ready-below", "limits.ready_below", _non_negative_int, "N"),
        Flag("max-topics", "limits.max_topics", _non_negative_int, "N"),
        Flag(
            "max-topic-connections",
            "limits.max_topic_connections",
            parse_topic_limit,
            "TOPIC=N",
            repeat=True,
        ),
        Flag("max-upgrades-per-second", "limits.max_upgrades_per_second", _rate, "RATE"),
        Flag("drain-grace", "drain.grace", _seconds, "SECONDS"),
        Flag("drain-spread", "drain.spread", _seconds, "SECONDS"),
        Flag("drain-close-code", "drain.close_code", parse_drain_close_code, "1001|1012"),
        Flag("drain-mode", "drain.mode", parse_drain_mode, "spread|batches"),
        Flag("drain-batches", "drain.batches", _positive_int, "N"),
        Flag("handshake-timeout", "proxy.handshake_timeout", _seconds, "SECONDS"),
        Flag("tcp-keepalive", "proxy.tcp_keepalive", _seconds, "SECONDS"),
        Flag("watch-heartbeat", "admin.watch_heartbeat", _seconds, "SECONDS"),
        Flag("watch-min-interval", "admin.watch_min_interval", _seconds, "SECONDS"),
        Flag("max-header-bytes", "proxy.max_header_bytes", _non_negative_int, "N"),
        Flag("max-message-bytes", "proxy.max_message_bytes", _non_negative_int, "N"),
        Flag("socket-buffer-bytes", "proxy.socket_buffer_bytes", _non_negative_int, "N"),
        Flag("upstream-check-interval", "admin.upstream_check_interval", _seconds, "SECONDS"),
        Flag("live-send-timeout", "live.send_timeout", _seconds, "SECONDS"),
        Flag("live-max-clients", "live.max_clients", _non_negative_int, "N"),
        Flag("relay", "proxy.relay", _relay, "auto|native|python"),
        Flag("log-level", "log_level", _log_level, "LEVEL"),
    ),
    ENV_PREFIX,
)
"""The sidecar's flags: defaults and ``--help`` texts come from :mod:`wsgauge_sidecar.settings`."""


def build_parser() -> argparse.ArgumentParser:
    """The ``argparse`` parser of ``wsgauge-sidecar`` (defaults are the settings' defaults)."""
    parser = argparse.ArgumentParser(
        prog="wsgauge-sidecar",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    FLAGS.add_arguments(parser)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def parse_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> SidecarSettings:
    """Parse flags and environment into settings; on bad input print a message and exit 2."""
    env = os.environ if environ is None else environ
    parser = build_parser()
    try:
        settings: SidecarSettings = FLAGS.parse(parser, argv, env)
        settings = replace(settings, pod=PodIdentity.from_environ(env))
        check_settings(settings)
    except (FlagError, ConfigError) as error:
        parser.error(str(error))
    return settings


def check_settings(settings: SidecarSettings) -> None:
    """Cross-check settings that come from several flags; :class:`ConfigError` if inconsistent."""
    proxy, admin = settings.proxy, settings.admin
    if _same_port(proxy.listen, admin.listen):
        raise ConfigError(f"--listen {proxy.listen} and --admin-listen {admin.listen} must differ")
    if not is_loopback_host(admin.report_listen.host):
        raise ConfigError(
            f"--report-listen {admin.report_listen} must be a loopback address (127.0.0.1 or "
            "[::1]): the report API is for the pod itself"
        )
    if settings.report_mode and _same_port(admin.listen, admin.report_listen):
        raise ConfigError(
            f"--admin-listen {admin.listen} and --report-listen {admin.report_listen} must differ"
        )
    if not settings.report_mode and proxy.listen == proxy.upstream:
        raise ConfigError(f"--upstream {proxy.upstream} is the proxy's own --listen address")
    if proxy.handshake_timeout <= 0:
        raise ConfigError("--handshake-timeout must be greater than 0")
    if admin.watch_heartbeat <= 0:
        raise ConfigError("--watch-heartbeat must be greater than 0")
    if admin.upstream_check_interval <= 0:
        raise ConfigError("--upstream-check-interval must be greater than 0")
    if proxy.max_header_bytes < 1024:
        raise ConfigError("--max-header-bytes must be at least 1024")
    if proxy.max_message_bytes < 1024:
        raise ConfigError("--max-message-bytes must be at least 1024")
    if proxy.socket_buffer_bytes < 4096:
        raise ConfigError("--socket-buffer-bytes must be at least 4096")
    limits = settings.limits
    topics = [topic for topic, _ in limits.max_topic_connections]
    repeated = sorted({topic for topic in topics if topics.count(topic) > 1})
    if repeated:
        raise ConfigError(f"--max-topic-connections gives topic {repeated[0]!r} more than once")
    if topics and (settings.report_mode or proxy.topic_rule.needs_frames):
        raise ConfigError(
            f"--max-topic-connections needs a topic rule that reads the upgrade request "
            f"(path, path:REGEX, query:NAME, header:NAME), not {proxy.topic_rule.kind}: "
            "with frame protocols the topic is not known when the upgrade arrives"
        )
    if limits.max_upgrades_per_second and settings.report_mode:
        raise ConfigError("--max-upgrades-per-second has no effect in report mode")
    if proxy.relay == "native":
        extension, why = load_extension()
        if extension is None:
            raise ConfigError(f"--relay native: the native relay is {why}")


def _same_port(first: Address, second: Address) -> bool:
    if first.port != second.port or first.port == 0:
        return False
    wildcard = ("0.0.0.0", "::", "")
    return first.host == second.host or first.host in wildcard or second.host in wildcard
