"""The kopf handlers: thin, they hand every watch event to the :class:`~.controller.Controller`.

Pods are discovered through one cluster-wide (or per-namespace) pod watch that
kopf keeps (``@kopf.on.event`` on pods): every pod event updates the in-memory
fleet, and the controller matches pods to ConnectionStats selectors itself. See
``docs/operator.md`` for why this rather than a kopf index or a watch per
ConnectionStats. Only event handlers are used, so kopf puts no finalizers or
progress annotations on pods or ConnectionStats.

Errors are translated here, once: a retryable Kubernetes API failure becomes
``kopf.TemporaryError``, any other operator error ``kopf.PermanentError``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import kopf

from wsgauge_operator.controller import Controller
from wsgauge_operator.exceptions import KubeApiError, OperatorError
from wsgauge_operator.settings import API_GROUP, API_VERSION, PLURAL
from wsgauge_operator.stats_server import StatsServer

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


def build_registry() -> kopf.OperatorRegistry:
    """A fresh kopf registry with the operator's handlers."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> Any:
        # The kubernetes client's loader: in-cluster service account, else $KUBECONFIG
        # (which the CLI sets from --kubeconfig).
        return kopf.login_via_client(**kwargs)

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

    @kopf.on.event("", "v1", "pods", registry=registry)
    async def pod_event(event: Mapping[str, Any], memo: Any, **_: Any) -> None:
        controller: Controller = memo.controller
        event_type, body = _event_parts(event)
        _translated("pod event", lambda: controller.pod_event(event_type, body))

    return registry
