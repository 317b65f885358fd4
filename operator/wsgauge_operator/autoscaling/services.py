"""Wiring of the autoscaling part into a running operator (used by :mod:`.cli`).

- :class:`MetricsApiService`: a controller service (started and stopped with it) that reads
  the request-header client CA from ``kube-system/extension-apiserver-authentication`` and
  starts the custom metrics API (:func:`~wsgauge_operator.metrics_api.server.start_metrics_api`) on
  ``--metrics-api-listen`` with the serving certificate from ``--metrics-api-cert-file`` /
  ``--metrics-api-key-file`` (self-signed when both are empty), and the KEDA endpoint on its
  own listener when ``--keda-listen`` is set. A metrics API that cannot start (no CA, port
  taken, bad certificate) is logged and reported in the ``AutoscalingActive`` condition; the
  rest of the operator keeps running.
- :func:`install_autoscaling`: builds the :class:`~.autoscaler.Autoscaler`, attaches it and
  the service to the controller, and mounts the KEDA routes on the stats server when
  ``--keda-listen`` is empty.
"""

from __future__ import annotations

import logging
from typing import Protocol

from aiohttp import web
from wsgauge_contract import Address, AddressError

from wsgauge_operator.autoscaling.autoscaler import Autoscaler, AutoscalingKube
from wsgauge_operator.control.controller import Controller
from wsgauge_operator.metrics_api.server import (
    MetricsApiServer,
    MetricsApiSettings,
    add_keda_routes,
    start_metrics_api,
)
from wsgauge_operator.model.exceptions import ConfigError
from wsgauge_operator.model.metrics_source import MetricsSource
from wsgauge_operator.model.settings import AutoscalingSettings
from wsgauge_operator.tls.serving import RequestHeaderAuth, start_site

logger = logging.getLogger(__name__)


class AuthSource(Protocol):
    """Reads the aggregation layer's client CA (implemented by
    :class:`~wsgauge_operator.kube.kubeapi.KubeApi`).
    """

    async def request_header_auth(self) -> RequestHeaderAuth:
        """The request-header client CA and allowed names."""


def split_listen(text: str, what: str) -> tuple[str, int]:
    """A listen address (:meth:`~wsgauge_contract.address.Address.parse_listen`) as (host,
    port); ConfigError naming the flag ``what`` otherwise."""
    try:
        address = Address.parse_listen(text)
    except AddressError as error:
        raise ConfigError(f"{what}: {error}") from None
    return address.host, address.port


class MetricsApiService:
    """The custom metrics API server and the KEDA listener, as a controller service."""

    def __init__(
        self,
        settings: AutoscalingSettings,
        source: MetricsSource,
        auth: AuthSource | None,
        autoscaler: Autoscaler,
    ) -> None:
        self._settings = settings
        self._source = source
        self._auth = auth
        self._autoscaler = autoscaler
        self.server: MetricsApiServer | None = None
        """The running metrics API (None: off or failed)."""
        self._keda_runner: web.AppRunner | None = None
        self.keda_port: int | None = None
        """Bound port of the own KEDA listener."""

    def metrics_api_settings(self, auth: RequestHeaderAuth) -> MetricsApiSettings:
        """Metrics API settings from the operator's settings and the request-header auth."""
        settings = self._settings
        host, port = split_listen(settings.metrics_api_listen, "--metrics-api-listen")
        hosts = ("localhost", "127.0.0.1") + ((host,) if host not in ("0.0.0.0", "::") else ())
        return MetricsApiSettings(
            host=host,
            port=port,
            cert_file=settings.metrics_api_cert_file or None,
            key_file=settings.metrics_api_key_file or None,
            self_signed_hosts=tuple(dict.fromkeys(hosts)),
            client_ca_pem=auth.client_ca_pem,
            allowed_names=auth.allowed_names,
            max_metric_age_seconds=settings.max_metric_age,
        )

    async def start(self) -> None:
        """Start what is configured; failures of the metrics API are reported, not raised."""
        if self._settings.metrics_api:
            try:
                if self._auth is None:
                    raise ConfigError("no Kubernetes API to read the request-header client CA")
                auth = await self._auth.request_header_auth()
                self.server = await start_metrics_api(self.metrics_api_settings(auth), self._source)
                self._autoscaler.metrics_api_error = None
            except (ConfigError, OSError) as error:
                logger.error("custom metrics API not started: %s", error)
                self._autoscaler.metrics_api_error = str(error)
        if self._settings.keda_listen:
            host, port = split_listen(self._settings.keda_listen, "--keda-listen")
            app = web.Application()
            add_keda_routes(app, self._source, max_age_seconds=self._settings.max_metric_age)
            try:
                runner, self.keda_port = await start_site(app, host, port, shutdown_timeout=60.0)
            except OSError as error:
                raise ConfigError(
                    f"cannot listen on {self._settings.keda_listen}: {error}"
                ) from None
            self._keda_runner = runner
            logger.info("KEDA endpoint listening on http://%s:%d/keda/", host, self.keda_port)

    async def stop(self) -> None:
        """Stop both servers."""
        if self.server is not None:
            await self.server.stop()
            self.server = None
        if self._keda_runner is not None:
            await self._keda_runner.cleanup()
            self._keda_runner = None


class KubeForAutoscaling(AutoscalingKube, AuthSource, Protocol):
    """Everything the autoscaling part calls on the Kubernetes API."""


def install_autoscaling(
    controller: Controller,
    kube: KubeForAutoscaling | None,
    settings: AutoscalingSettings,
    stats_app: web.Application | None,
) -> tuple[Autoscaler, MetricsApiService]:
    """Attach the autoscaler and the metrics API service to a controller (before it starts).

    With ``--keda-listen`` empty, the KEDA routes go on ``stats_app`` (the stats server).
    """
    autoscaler = Autoscaler(controller, kube, settings)
    autoscaler.attach()
    service = MetricsApiService(settings, controller.fleet, kube, autoscaler)
    controller.add_service(service.start, service.stop)
    if not settings.keda_listen and stats_app is not None:
        add_keda_routes(stats_app, controller.fleet, max_age_seconds=settings.max_metric_age)
    return autoscaler, service
