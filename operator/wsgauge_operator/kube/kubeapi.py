"""The Kubernetes API calls the operator makes itself (kopf watches ConnectionStats).

Uses the official ``kubernetes`` client in worker threads (``asyncio.to_thread``),
so the event loop never blocks. This is the only module that talks to the API
server directly; every failure leaves it as
:class:`~wsgauge_operator.model.exceptions.KubeApiError`.

Calls:
- list and watch pods (raw JSON, for :mod:`.pod_watch`);
- merge-patch a ConnectionStats ``status`` (status subresource);
- strategic-merge-patch one condition into a pod's ``status.conditions``;
- create an ``events.k8s.io/v1`` Event;
- read, create, replace and delete the HPA a ConnectionStats owns (``autoscaling/v2``);
- read the scale subresource of a ConnectionStats' target;
- merge-patch pod annotations (the pod deletion cost);
- read the request-header client CA for the custom metrics API.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kubernetes
import urllib3

from wsgauge_operator.model.exceptions import ConfigError, KubeApiError
from wsgauge_operator.model.settings import API_GROUP, API_VERSION, PLURAL, KubeSettings
from wsgauge_operator.tls.serving import RequestHeaderAuth, load_request_header_auth

logger = logging.getLogger(__name__)

HPA_GROUP, HPA_VERSION, HPA_PLURAL = "autoscaling", "v2", "horizontalpodautoscalers"
"""Where the owned HPA lives."""

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
PARTIAL_METADATA_LIST = (
    "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io,application/json"
)
"""Accept header of a metadata-only list."""


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


@dataclass(frozen=True)
class ScaleInfo:
    """The scale subresource of a target (what the HPA controller reads)."""

    replicas: int = 0
    """``spec.replicas``: the HPA's current replica count."""
    status_replicas: int = 0
    """``status.replicas``."""
    selector: str = ""
    """``status.selector``: label selector of the target's pods (string form)."""


def scale_plural(kind: str) -> str:
    """Resource plural of a scalable kind (Deployment -> deployments)."""
    return kind.lower() + "s"


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

    async def _write(self, what: str, function: Any, *args: Any, **kwargs: Any) -> None:
        """``_call`` for a write whose answer is not used: the response is not deserialized.

        Deserializing the returned object costs CPU per write (a V1Pod about 0.5 ms or more),
        which adds up over the condition writes of thousands of pods.
        """

        def write(**extra: Any) -> None:
            response = function(*args, _preload_content=False, **kwargs, **extra)
            response.read()
            response.release_conn()

        await self._call(what, write)

    async def _list_pods_json(
        self, namespace: str | None, headers: dict[str, str], timeout: float
    ) -> dict[str, Any]:
        """One pod list of a namespace (``None``: all) read as raw JSON, not deserialized."""

        def read(**extra: Any) -> bytes:
            response: Any  # the raw urllib3 response (``_preload_content=False``)
            if namespace:
                response = self._core.list_namespaced_pod(
                    namespace, _preload_content=False, _headers=headers, **extra
                )
            else:
                response = self._core.list_pod_for_all_namespaces(
                    _preload_content=False, _headers=headers, **extra
                )
            try:
                data: bytes = response.read()
                return data
            finally:
                response.release_conn()

        body = json.loads(
            await self._call(
                f"list pods of {namespace or 'the cluster'}",
                read,
                _request_timeout=max(self._settings.request_timeout, timeout),
            )
        )
        return body if isinstance(body, dict) else {}

    async def list_pod_identities(self, namespace: str | None) -> set[tuple[str, str, str]]:
        """(namespace, name, uid) of every pod of a namespace (``None``: all), metadata only."""
        body = await self._list_pods_json(namespace, {"Accept": PARTIAL_METADATA_LIST}, 60.0)
        identities: set[tuple[str, str, str]] = set()
        for item in body.get("items") or []:
            metadata = item.get("metadata") or {}
            identities.add(
                (
                    str(metadata.get("namespace") or ""),
                    str(metadata.get("name") or ""),
                    str(metadata.get("uid") or ""),
                )
            )
        return identities

    async def list_pods(self, namespace: str | None) -> tuple[list[dict[str, Any]], str]:
        """Every pod of a namespace (``None``: of the cluster) as raw JSON, and the list's
        ``resourceVersion`` (where a watch continues)."""
        body = await self._list_pods_json(namespace, {}, 120.0)
        items = [item for item in body.get("items") or [] if isinstance(item, dict)]
        return items, str((body.get("metadata") or {}).get("resourceVersion") or "")

    def open_pod_watch(
        self,
        namespace: str | None,
        resource_version: str,
        timeout_seconds: int,
        read_timeout: float,
    ) -> Any:
        """Blocking, for a thread: a pod watch from ``resource_version`` with bookmarks; the raw
        urllib3 response (newline-delimited JSON events; ``shutdown()`` interrupts a read)."""
        kwargs: dict[str, Any] = {
            "watch": True,
            "resource_version": resource_version,
            "allow_watch_bookmarks": True,
            "timeout_seconds": timeout_seconds,
            "_preload_content": False,
            "_request_timeout": (self._settings.request_timeout, read_timeout),
        }
        try:
            if namespace:
                return self._core.list_namespaced_pod(namespace, **kwargs)
            return self._core.list_pod_for_all_namespaces(**kwargs)
        except kubernetes.client.exceptions.ApiException as error:
            status = int(error.status or 0)
            raise KubeApiError(f"watch pods: HTTP {status} {error.reason}", status) from None
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise KubeApiError(f"watch pods: {error}", 0) from None

    async def patch_connectionstats_status(
        self, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None:
        """JSON-merge-patch ``status`` (``None`` values delete keys)."""
        await self._write(
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
        await self._write(
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

    async def get_hpa(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The HPA of that name, or None when there is none."""
        try:
            found = await self._call(
                f"get hpa {namespace}/{name}",
                self._custom.get_namespaced_custom_object,
                HPA_GROUP,
                HPA_VERSION,
                namespace,
                HPA_PLURAL,
                name,
            )
        except KubeApiError as error:
            if error.not_found:
                return None
            raise
        return dict(found)

    async def create_hpa(self, namespace: str, body: Mapping[str, Any]) -> None:
        """Create an HPA."""
        await self._call(
            f"create hpa in {namespace}",
            self._custom.create_namespaced_custom_object,
            HPA_GROUP,
            HPA_VERSION,
            namespace,
            HPA_PLURAL,
            dict(body),
            field_manager=self._settings.field_manager,
        )

    async def replace_hpa(self, namespace: str, name: str, body: Mapping[str, Any]) -> None:
        """Replace an HPA (``body`` carries the resourceVersion read before)."""
        await self._call(
            f"replace hpa {namespace}/{name}",
            self._custom.replace_namespaced_custom_object,
            HPA_GROUP,
            HPA_VERSION,
            namespace,
            HPA_PLURAL,
            name,
            dict(body),
            field_manager=self._settings.field_manager,
        )

    async def delete_hpa(self, namespace: str, name: str, uid: str) -> None:
        """Delete an HPA, only if it still has ``uid`` (no error when it is gone)."""
        try:
            await self._call(
                f"delete hpa {namespace}/{name}",
                self._custom.delete_namespaced_custom_object,
                HPA_GROUP,
                HPA_VERSION,
                namespace,
                HPA_PLURAL,
                name,
                body={"preconditions": {"uid": uid}},
            )
        except KubeApiError as error:
            if not error.not_found:
                raise

    async def get_scale(
        self, namespace: str, api_version: str, kind: str, name: str
    ) -> ScaleInfo | None:
        """The target's scale subresource, or None when the target does not exist."""
        group, _, version = api_version.rpartition("/")
        try:
            scale = await self._call(
                f"get scale of {kind} {namespace}/{name}",
                self._custom.get_namespaced_custom_object_scale,
                group,
                version,
                namespace,
                scale_plural(kind),
                name,
            )
        except KubeApiError as error:
            if error.not_found:
                return None
            raise
        spec = scale.get("spec") or {}
        status = scale.get("status") or {}
        return ScaleInfo(
            replicas=int(spec.get("replicas") or 0),
            status_replicas=int(status.get("replicas") or 0),
            selector=str(status.get("selector") or ""),
        )

    async def patch_pod_annotations(
        self, namespace: str, name: str, uid: str, annotations: Mapping[str, str]
    ) -> None:
        """Merge-patch pod annotations; ``uid`` is a precondition (a new pod is not touched)."""
        body = {"metadata": {"uid": uid, "annotations": dict(annotations)}}
        await self._call(
            f"patch annotations of pod {namespace}/{name}",
            self._core.patch_namespaced_pod,
            name,
            namespace,
            body,
            field_manager=self._settings.field_manager,
            _content_type=MERGE_PATCH,
        )

    async def request_header_auth(self) -> RequestHeaderAuth:
        """The aggregation layer's client CA and allowed names (ConfigError when missing)."""
        try:
            return await asyncio.to_thread(load_request_header_auth, self._core)
        except kubernetes.client.exceptions.ApiException as error:
            raise ConfigError(
                "cannot read kube-system/extension-apiserver-authentication: "
                f"HTTP {error.status} {error.reason}"
            ) from None
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise ConfigError(f"cannot read the request-header client CA: {error}") from None
