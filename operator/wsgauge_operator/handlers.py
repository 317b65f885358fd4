"""The kopf handlers: thin, they hand every watch event to the
:class:`~wsgauge_operator.control.controller.Controller`.

ConnectionStats events come from kopf (``@kopf.on.event``). Pods are discovered through
one cluster-wide (or per-namespace) pod watch that the operator keeps itself
(:class:`~wsgauge_operator.kube.pod_watch.PodWatch`, a service of the controller, so started and
stopped with it by the startup and cleanup handlers; see its docstring for why not kopf's per-object
workers): every pod event updates the in-memory fleet, and the controller matches pods to
ConnectionStats selectors itself. See ``docs/operator.md`` for why one pod watch rather than
a kopf index or a watch per ConnectionStats. Only event handlers are used, so kopf puts no
finalizers or progress annotations on ConnectionStats.

Errors are translated here, once: a retryable Kubernetes API failure becomes
``kopf.TemporaryError``, any other operator error ``kopf.PermanentError``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import kopf

from wsgauge_operator.control.controller import Controller
from wsgauge_operator.kube.kubeapi import load_client_configuration
from wsgauge_operator.model.exceptions import ConfigError, KubeApiError, OperatorError
from wsgauge_operator.model.settings import API_GROUP, API_VERSION, PLURAL, KubeSettings
from wsgauge_operator.servers.stats_server import StatsServer

logger = logging.getLogger(__name__)


def _translated(what: str, call: Callable[[], None]) -> None:
    try:
        call()
    except KubeApiError as error:
        if error.retryable:
            raise kopf.TemporaryError(f"{what}: {error}", delay=2) from error
        raise kopf.PermanentError(f"{what}: {error}") from error
    except OperatorError as error:
        raise kopf.PermanentError(f"{what}: {error}") from error


def _event_parts(event: Mapping[str, Any]) -> tuple[str | None, Mapping[str, Any]]:
    event_type = event.get("type")
    body = event.get("object") or {}
    return (str(event_type) if event_type else None), body


async def connection_info(settings: KubeSettings) -> kopf.ConnectionInfo:
    """kopf credentials from the same source as :class:`~wsgauge_operator.kube.kubeapi.KubeApi`'s
    client.
    """
    try:
        config = await load_client_configuration(settings)
    except ConfigError as error:
        raise kopf.LoginError(str(error)) from error
    header = await config.get_api_key_with_prefix(
        "BearerToken"
    ) or await config.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme, token = (None, None)
    if len(parts) == 1:
        token = parts[0]
    elif len(parts) == 2:
        scheme, token = parts[0], parts[1]
    return kopf.ConnectionInfo(
        server=config.host,
        ca_path=config.ssl_ca_cert,
        insecure=not config.verify_ssl,
        username=config.username or None,
        password=config.password or None,
        scheme=scheme,
        token=token,
        certificate_path=config.cert_file,
        private_key_path=config.key_file,
    )


def build_registry(kube_settings: KubeSettings) -> kopf.OperatorRegistry:
    """A fresh kopf registry with the operator's handlers."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    async def login(**_: Any) -> kopf.ConnectionInfo:
        # --kubeconfig if given, else in-cluster service account, else $KUBECONFIG.
        return await connection_info(kube_settings)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
        # Events are recorded by the operator itself (events.py); kopf's own posting of
        # handler log lines as Events would flood pods with noise.
        settings.posting.enabled = False
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        controller: Controller = memo.controller
        server: StatsServer = memo.server
        await controller.start()
        await server.start()

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: Any, **_: Any) -> None:
        server: StatsServer = memo.server
        controller: Controller = memo.controller
        await server.stop()
        await controller.stop()

    @kopf.on.event(API_GROUP, API_VERSION, PLURAL, registry=registry)
    async def connectionstats_event(event: Mapping[str, Any], memo: Any, **_: Any) -> None:
        controller: Controller = memo.controller
        event_type, body = _event_parts(event)
        _translated(
            "ConnectionStats event", lambda: controller.connectionstats_event(event_type, body)
        )

    return registry
