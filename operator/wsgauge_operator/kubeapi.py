"""The Kubernetes API calls the operator makes itself (kopf does the watching).

Uses the official ``kubernetes`` client in worker threads (``asyncio.to_thread``),
so the event loop never blocks. This is the only module that talks to the API
server directly; every failure leaves it as :class:`~.exceptions.KubeApiError`.

Calls:
- merge-patch a ConnectionStats ``status`` (status subresource);
- strategic-merge-patch one condition into a pod's ``status.conditions``;
- create an ``events.k8s.io/v1`` Event.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from typing import Any

import kubernetes
import urllib3

from wsgauge_operator.exceptions import ConfigError, KubeApiError
from wsgauge_operator.settings import API_GROUP, API_VERSION, PLURAL, KubeSettings

logger = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


def load_client_configuration(settings: KubeSettings) -> kubernetes.client.Configuration:
    """Kubernetes client configuration: the given kubeconfig, in-cluster, or ``$KUBECONFIG``."""
    configuration = kubernetes.client.Configuration()
    try:
        if settings.kubeconfig:
            kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=settings.kubeconfig, client_configuration=configuration
            )
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            kubernetes.config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
        else:
            kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
    except (kubernetes.config.ConfigException, OSError) as error:
        raise ConfigError(f"cannot load Kubernetes credentials: {error}") from None
    return configuration


class KubeApi:
    """Asynchronous wrapper of the few API calls the operator makes."""

    def __init__(self, settings: KubeSettings) -> None:
        self._settings = settings
        self._client = kubernetes.client.ApiClient(load_client_configuration(settings))
        self._core = kubernetes.client.CoreV1Api(self._client)
        self._custom = kubernetes.client.CustomObjectsApi(self._client)

    def close(self) -> None:
        """Release the connection pool."""
        self._client.close()  # type: ignore[no-untyped-call]

    async def _call(self, what: str, function: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("_request_timeout", self._settings.request_timeout)
        try:
            return await asyncio.to_thread(function, *args, **kwargs)
        except kubernetes.client.exceptions.ApiException as error:
            status = int(error.status or 0)
            raise KubeApiError(f"{what}: HTTP {status} {error.reason}", status) from None
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise KubeApiError(f"{what}: {error}", 0) from None

    async def patch_connectionstats_status(
        self, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None:
        """JSON-merge-patch ``status`` (``None`` values delete keys)."""
        await self._call(
            f"patch status of {PLURAL}/{namespace}/{name}",
            self._custom.patch_namespaced_custom_object_status,
            API_GROUP,
            API_VERSION,
            namespace,
            PLURAL,
            name,
            {"status": dict(status)},
            field_manager=self._settings.field_manager,
            _content_type=MERGE_PATCH,
        )

    async def patch_pod_condition(
        self, namespace: str, name: str, uid: str, condition: Mapping[str, Any]
    ) -> None:
        """Set one pod condition (merged by ``type``; the others are untouched).

        The pod's ``uid`` is a precondition: a new pod of the same name is not touched.
        """
        body = {"metadata": {"uid": uid}, "status": {"conditions": [dict(condition)]}}
        await self._call(
            f"patch condition of pod {namespace}/{name}",
            self._core.patch_namespaced_pod_status,
            name,
            namespace,
            body,
            field_manager=self._settings.field_manager,
            _content_type=STRATEGIC_MERGE_PATCH,
        )

    async def create_event(self, namespace: str, event: Mapping[str, Any]) -> None:
        """Create an ``events.k8s.io/v1`` Event in a namespace."""
        await self._call(
            f"create event in {namespace}",
            self._custom.create_namespaced_custom_object,
            "events.k8s.io",
            "v1",
            namespace,
            "events",
            dict(event),
            field_manager=self._settings.field_manager,
        )
