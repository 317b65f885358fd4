"""The sidecar injector's HTTPS endpoint: ``POST /mutate`` answers AdmissionReview v1.

The decisions are made by the pure :mod:`.plan`; this module only serves
them with aiohttp over TLS (the API server calls admission webhooks over HTTPS
only). Also ``GET /healthz`` (plain liveness) on the same port.

Two ways to run it:

- inside another process (the operator): ``handle = await start_injector(server_settings,
  injector_settings)``, later ``await handle.stop()``;
- on its own (what the Helm chart does, in its own Deployment with no API access):
  ``python -m wsgauge_operator.injector.server --cert-file ... --key-file ... --config ...``;
  every flag can also be set as ``WSGAUGE_INJECTOR_<FLAG>``.

The serving certificate and key are re-read when their files change (cert-manager
renews them in place), checked every ``reload_interval`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import ssl
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from aiohttp import web
from wsgauge_contract import Address, AddressError

from wsgauge_operator.injector.plan import InjectorSettings, review_response, settings_from_mapping
from wsgauge_operator.model.exceptions import ConfigError
from wsgauge_operator.tls.serving import (
    server_ssl_context,
    serving_certificate_pair,
    start_site,
)

logger = logging.getLogger(__name__)

ENV_PREFIX = "WSGAUGE_INJECTOR_"
"""Prefix of the environment variables that set the command-line flags."""


@dataclass(frozen=True)
class InjectorServerSettings:
    """Where and how the injector endpoint listens."""

    host: str = "0.0.0.0"
    """Address to bind."""
    port: int = 9443
    """HTTPS port (0: any free port; the handle says which)."""
    cert_file: str | None = None
    """Serving certificate (PEM); None with ``key_file`` None: self-signed (tests only)."""
    key_file: str | None = None
    """Private key of ``cert_file`` (PEM)."""
    self_signed_hosts: tuple[str, ...] = ("localhost", "127.0.0.1")
    """Names in a generated self-signed certificate."""
    max_body_bytes: int = 4 * 1024 * 1024
    """Largest AdmissionReview accepted (the API server caps objects at 3 MiB)."""
    reload_interval: float = 60.0
    """Seconds between checks of the certificate files for changes (0: never)."""
    shutdown_timeout: float = 5.0
    """Seconds given to open requests when stopping."""


@dataclass
class InjectorServer:
    """Handle of a running injector endpoint."""

    port: int
    """Bound HTTPS port."""
    serving_cert_pem: bytes
    """The serving certificate (PEM), e.g. for a webhook ``caBundle`` in tests."""
    _runner: web.AppRunner | None = None
    _reloader: asyncio.Task[None] | None = None

    async def stop(self) -> None:
        """Stop accepting and close open connections."""
        if self._reloader is not None:
            self._reloader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reloader
            self._reloader = None
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


def build_injector_app(settings: InjectorSettings, max_body_bytes: int) -> web.Application:
    """The aiohttp application (``POST /mutate``, ``GET /healthz``)."""
    app = web.Application(client_max_size=max_body_bytes)

    async def mutate(request: web.Request) -> web.Response:
        try:
            review = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            return web.json_response({"error": "body is not JSON"}, status=400)
        if not isinstance(review, dict) or not isinstance(review.get("request"), dict):
            return web.json_response({"error": "not an AdmissionReview request"}, status=400)
        answer = review_response(review, settings)
        inner = review["request"]
        response = answer["response"]
        logger.info(
            "pod %s/%s: %s",
            inner.get("namespace", ""),
            (inner.get("object") or {}).get("metadata", {}).get("generateName")
            or inner.get("name", ""),
            "denied: " + response["status"]["message"]
            if not response["allowed"]
            else ("injected" if "patch" in response else "unchanged"),
        )
        return web.json_response(answer)

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app.router.add_post("/mutate", mutate)
    app.router.add_get("/healthz", healthz)
    return app


def _files_stamp(settings: InjectorServerSettings) -> tuple[float, float]:
    try:
        return (
            os.stat(settings.cert_file or "").st_mtime,
            os.stat(settings.key_file or "").st_mtime,
        )
    except OSError:
        return (0.0, 0.0)


async def _reload_certificates(settings: InjectorServerSettings, context: ssl.SSLContext) -> None:
    stamp = _files_stamp(settings)
    while True:
        await asyncio.sleep(settings.reload_interval)
        current = _files_stamp(settings)
        if current == stamp:
            continue
        try:
            context.load_cert_chain(settings.cert_file or "", settings.key_file or "")
        except (OSError, ssl.SSLError) as error:
            logger.warning("serving certificate changed but cannot be loaded: %s", error)
            continue
        stamp = current
        logger.info("serving certificate reloaded")


async def start_injector(
    server_settings: InjectorServerSettings, settings: InjectorSettings
) -> InjectorServer:
    """Start the HTTPS endpoint. ConfigError for unusable TLS files, OSError if it cannot bind."""
    pair = serving_certificate_pair(
        server_settings.cert_file,
        server_settings.key_file,
        server_settings.self_signed_hosts,
        common_name="wsgauge-injector",
    )
    context = server_ssl_context(pair, None)
    app = build_injector_app(settings, server_settings.max_body_bytes)
    runner, port = await start_site(
        app,
        server_settings.host,
        server_settings.port,
        server_settings.shutdown_timeout,
        context,
    )
    reloader = None
    if server_settings.cert_file and server_settings.reload_interval > 0:
        reloader = asyncio.create_task(_reload_certificates(server_settings, context))
    logger.info("sidecar injector listening on https://%s:%d", server_settings.host, port)
    return InjectorServer(
        port=port, serving_cert_pem=pair.cert_pem, _runner=runner, _reloader=reloader
    )


def load_injector_config(path: str | None) -> InjectorSettings:
    """Injector settings from a JSON file (camelCase keys); defaults without a file."""
    if not path:
        return InjectorSettings()
    try:
        with open(path, encoding="utf-8") as config_file:
            data = json.load(config_file)
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read injector config {path}: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"injector config {path}: not a JSON object")
    return settings_from_mapping(data)


@dataclass(frozen=True)
class InjectorCommand:
    """Everything the stand-alone command needs."""

    server: InjectorServerSettings = field(default_factory=InjectorServerSettings)
    """Listener and TLS."""
    injector: InjectorSettings = field(default_factory=InjectorSettings)
    """The sidecar to inject."""
    log_level: str = "info"
    """Log level."""


def parse_command(argv: Sequence[str] | None, environ: dict[str, str]) -> InjectorCommand:
    """Flags, then ``WSGAUGE_INJECTOR_*`` environment variables, then defaults."""
    parser = argparse.ArgumentParser(
        prog="python -m wsgauge_operator.injector.server",
        description="wsgauge sidecar injector: a mutating admission webhook (AdmissionReview v1) "
        f"on POST /mutate. Every flag can also be set as {ENV_PREFIX}<FLAG>.",
    )
    parser.add_argument("--listen", help="HOST:PORT to serve HTTPS on (default 0.0.0.0:9443)")
    parser.add_argument("--cert-file", help="serving certificate (PEM)")
    parser.add_argument("--key-file", help="serving key (PEM)")
    parser.add_argument("--config", help="injector settings, JSON with camelCase keys")
    parser.add_argument(
        "--control-ca-file",
        help="wsgauge's CA certificate (PEM): injected sidecars take rebalance orders signed by "
        "the operator's certificate of this CA (the chart: the ca.crt of the TLS Secret)",
    )
    parser.add_argument("--log-level", help="debug, info, warning or error (default info)")
    arguments = vars(parser.parse_args(argv))

    def value(name: str) -> str | None:
        given = arguments.get(name)
        if given is None:
            given = environ.get(ENV_PREFIX + name.upper())
        return str(given) if given is not None else None

    listen = value("listen") or "0.0.0.0:9443"
    try:
        address = Address.parse_listen(listen)
    except AddressError as error:
        raise ConfigError(f"--listen: {error}") from None
    server = InjectorServerSettings(
        host=address.host,
        port=address.port,
        cert_file=value("cert_file"),
        key_file=value("key_file"),
    )
    log_level = (value("log_level") or "info").upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"--log-level: unknown level {log_level.lower()!r}")
    injector = load_injector_config(value("config"))
    ca_file = value("control_ca_file")
    if ca_file:
        try:
            with open(ca_file, encoding="ascii") as ca:
                injector = replace(injector, control_ca=ca.read())
        except (OSError, ValueError) as error:
            raise ConfigError(f"--control-ca-file: cannot read {ca_file}: {error}") from error
        if "-----BEGIN CERTIFICATE-----" not in injector.control_ca:
            raise ConfigError(f"--control-ca-file: {ca_file} holds no PEM certificate")
    return InjectorCommand(server=server, injector=injector, log_level=log_level)


async def serve(command: InjectorCommand) -> None:
    """Run until SIGINT/SIGTERM."""
    handle = await start_injector(command.server, command.injector)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await handle.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m wsgauge_operator.injector.server``."""
    try:
        command = parse_command(argv, dict(os.environ))
    except ConfigError as error:
        print(f"wsgauge-injector: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, command.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        asyncio.run(serve(command))
    except ConfigError as error:
        logger.error("%s", error)
        return 2
    except OSError as error:
        logger.error("cannot serve: %s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
