"""The Kubernetes API calls the operator makes itself (kopf watches ConnectionStats).

Uses the asyncio twin of the official ``kubernetes`` client (``kubernetes.aio``, on aiohttp):
every call is a coroutine on the operator's event loop, and up to :data:`CONNECTION_POOL_SIZE`
requests are in flight at once (no worker threads between the callers and the API server).
Answers are read as raw JSON (``*_without_preload_content``), never deserialized into model
objects. This is the only module that talks to the API server directly, besides the Lease calls
of :mod:`.leadership` through the same client; every failure leaves it as
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
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes.aio import client as kube_client
from kubernetes.aio import config as kube_config

from wsgauge_operator.model.exceptions import ConfigError, KubeApiError
from wsgauge_operator.model.settings import API_GROUP, API_VERSION, PLURAL, KubeSettings
from wsgauge_operator.tls.serving import (
    AUTH_CONFIGMAP_NAME,
    AUTH_CONFIGMAP_NAMESPACE,
    RequestHeaderAuth,
    request_header_auth_from_data,
)

logger = logging.getLogger(__name__)

HPA_GROUP, HPA_VERSION, HPA_PLURAL = "autoscaling", "v2", "horizontalpodautoscalers"
"""Where the owned HPA lives."""

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
PARTIAL_METADATA_LIST = (
    "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io,application/json"
)
"""Accept header of a metadata-only list."""

CONNECTION_POOL_SIZE = 32
"""Requests in flight at once per client (aiohttp's connection limit), watches included.

Above every limit of the callers: 8 condition writes per ConnectionStats, the deletion-cost
writes, Events and one watch per watched namespace."""


async def load_client_configuration(settings: KubeSettings) -> kube_client.Configuration:
    """Kubernetes client configuration: the given kubeconfig, in-cluster, or ``$KUBECONFIG``."""
    configuration = kube_client.Configuration()
    try:
        if settings.kubeconfig:
            await kube_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=settings.kubeconfig, client_configuration=configuration
            )
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            kube_config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
        else:
            await kube_config.load_kube_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
    except (kube_config.ConfigException, OSError) as error:
        raise ConfigError(f"cannot load Kubernetes credentials: {error}") from None
    configuration.connection_pool_maxsize = CONNECTION_POOL_SIZE
    return configuration


def api_error(what: str, error: BaseException) -> KubeApiError:
    """The one translation of a client failure (HTTP status, connection, timeout)."""
    if isinstance(error, kube_client.ApiException):
        status = int(error.status or 0)
        return KubeApiError(f"{what}: HTTP {status} {error.reason}", status)
    if isinstance(error, TimeoutError):
        return KubeApiError(f"{what}: timed out", 0)
    return KubeApiError(f"{what}: {error}", 0)


CLIENT_ERRORS = (kube_client.ApiException, aiohttp.ClientError, OSError, TimeoutError)
"""What a call of the client raises when the request fails (translated by :func:`api_error`)."""


async def checked(response: aiohttp.ClientResponse, what: str) -> bytes:
    """The body of a raw answer; a non-2xx answer raises :class:`KubeApiError` with its status."""
    try:
        body = await response.read()
    finally:
        response.release()
    if not 200 <= response.status < 300:
        raise KubeApiError(f"{what}: HTTP {response.status} {response.reason}", response.status)
    return body


async def json_call(what: str, request: Callable[[], Awaitable[aiohttp.ClientResponse]]) -> Any:
    """Make one raw request and decode its JSON answer; every failure as :class:`KubeApiError`."""
    try:
        body = await checked(await request(), what)
    except CLIENT_ERRORS as error:
        raise api_error(what, error) from None
    try:
        return json.loads(body) if body else None
    except ValueError:
        raise KubeApiError(f"{what}: the answer is not JSON", 0) from None


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
    """The few API calls the operator makes, as coroutines on one client.

    The client is made by :meth:`open` (called by the first call when nobody did), on the event
    loop that uses it; :meth:`close` releases its connections.
    """

    def __init__(
        self, settings: KubeSettings, *, trace_configs: Sequence[aiohttp.TraceConfig] = ()
    ) -> None:
        self._settings = settings
        self._trace_configs = list(trace_configs)
        """aiohttp request tracing on the client's session (for tests and diagnostics)."""
        self._client: kube_client.ApiClient | None = None
        self._opening = asyncio.Lock()

    async def open(self) -> None:
        """Load the credentials and make the client (ConfigError when they cannot be loaded)."""
        async with self._opening:
            if self._client is None:
                configuration = await load_client_configuration(self._settings)
                if self._trace_configs:
                    configuration.trace_configs = self._trace_configs
                self._client = kube_client.ApiClient(configuration)

    async def close(self) -> None:
        """Release the connection pool."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()  # type: ignore[no-untyped-call]

    async def _apis(self) -> tuple[Any, Any]:
        """(CoreV1Api, CustomObjectsApi) on the client, opened on first use."""
        if self._client is None:
            await self.open()
        assert self._client is not None
        return kube_client.CoreV1Api(self._client), kube_client.CustomObjectsApi(self._client)

    async def _custom(self) -> Any:
        return (await self._apis())[1]

    async def _core(self) -> Any:
        return (await self._apis())[0]

    def _timeout(self, at_least: float = 0.0) -> float:
        return max(self._settings.request_timeout, at_least)

    async def _list_pods_json(
        self, namespace: str | None, headers: dict[str, str], timeout: float
    ) -> dict[str, Any]:
        """One pod list of a namespace (``None``: all) read as raw JSON, not deserialized.

        Raises ValueError when the answer is not JSON."""
        core = await self._core()
        what = f"list pods of {namespace or 'the cluster'}"
        kwargs: dict[str, Any] = {"_headers": headers, "_request_timeout": self._timeout(timeout)}
        try:
            if namespace:
                response = await core.list_namespaced_pod_without_preload_content(
                    namespace, **kwargs
                )
            else:
                response = await core.list_pod_for_all_namespaces_without_preload_content(**kwargs)
            data = await checked(response, what)
        except CLIENT_ERRORS as error:
            raise api_error(what, error) from None
        body = json.loads(data)
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

    @contextlib.asynccontextmanager
    async def watch_pods(
        self,
        namespace: str | None,
        resource_version: str,
        timeout_seconds: int,
        read_timeout: float,
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """A pod watch from ``resource_version`` with bookmarks: its body, chunk by chunk.

        Opening raises :class:`KubeApiError` (with the HTTP status: 410 when the version is
        gone); reading raises ``TimeoutError`` after ``read_timeout`` seconds without a byte and
        ``aiohttp.ClientError`` or ``OSError`` when the stream breaks. The request ends by
        itself after ``timeout_seconds`` (the server's timeout)."""
        core = await self._core()
        what = f"watch pods of {namespace or 'the cluster'}"
        kwargs: dict[str, Any] = {
            "watch": True,
            "resource_version": resource_version,
            "allow_watch_bookmarks": True,
            "timeout_seconds": timeout_seconds,
            "_request_timeout": timeout_seconds + read_timeout,
        }
        try:
            if namespace:
                response = await core.list_namespaced_pod_without_preload_content(
                    namespace, **kwargs
                )
            else:
                response = await core.list_pod_for_all_namespaces_without_preload_content(**kwargs)
        except CLIENT_ERRORS as error:
            raise api_error(what, error) from None
        try:
            if not 200 <= response.status < 300:
                raise KubeApiError(
                    f"{what}: HTTP {response.status} {response.reason}", response.status
                )
            yield _chunks(response.content, read_timeout)
        finally:
            response.release()

    async def _write(
        self, what: str, request: Callable[[], Awaitable[aiohttp.ClientResponse]]
    ) -> None:
        """A write whose answer is not used: read (to reuse the connection) and dropped."""
        try:
            await checked(await request(), what)
        except CLIENT_ERRORS as error:
            raise api_error(what, error) from None

    async def patch_connectionstats_status(
        self, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None:
        """JSON-merge-patch ``status`` (``None`` values delete keys)."""
        custom = await self._custom()
        await self._write(
            f"patch status of {PLURAL}/{namespace}/{name}",
            lambda: custom.patch_namespaced_custom_object_status_without_preload_content(
                API_GROUP,
                API_VERSION,
                namespace,
                PLURAL,
                name,
                {"status": dict(status)},
                field_manager=self._settings.field_manager,
                _content_type=MERGE_PATCH,
                _request_timeout=self._timeout(),
            ),
        )

    async def patch_pod_condition(
        self, namespace: str, name: str, uid: str, condition: Mapping[str, Any]
    ) -> None:
        """Set one pod condition (merged by ``type``; the others are untouched).

        The pod's ``uid`` is a precondition: a new pod of the same name is not touched.
        """
        core = await self._core()
        body = {"metadata": {"uid": uid}, "status": {"conditions": [dict(condition)]}}
        await self._write(
            f"patch condition of pod {namespace}/{name}",
            lambda: core.patch_namespaced_pod_status_without_preload_content(
                name,
                namespace,
                body,
                field_manager=self._settings.field_manager,
                _content_type=STRATEGIC_MERGE_PATCH,
                _request_timeout=self._timeout(),
            ),
        )

    async def create_event(self, namespace: str, event: Mapping[str, Any]) -> None:
        """Create an ``events.k8s.io/v1`` Event in a namespace."""
        custom = await self._custom()
        await self._write(
            f"create event in {namespace}",
            lambda: custom.create_namespaced_custom_object_without_preload_content(
                "events.k8s.io",
                "v1",
                namespace,
                "events",
                dict(event),
                field_manager=self._settings.field_manager,
                _request_timeout=self._timeout(),
            ),
        )

    async def get_hpa(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The HPA of that name, or None when there is none."""
        custom = await self._custom()
        try:
            found = await json_call(
                f"get hpa {namespace}/{name}",
                lambda: custom.get_namespaced_custom_object_without_preload_content(
                    HPA_GROUP,
                    HPA_VERSION,
                    namespace,
                    HPA_PLURAL,
                    name,
                    _request_timeout=self._timeout(),
                ),
            )
        except KubeApiError as error:
            if error.not_found:
                return None
            raise
        return dict(found or {})

    async def create_hpa(self, namespace: str, body: Mapping[str, Any]) -> None:
        """Create an HPA."""
        custom = await self._custom()
        await self._write(
            f"create hpa in {namespace}",
            lambda: custom.create_namespaced_custom_object_without_preload_content(
                HPA_GROUP,
                HPA_VERSION,
                namespace,
                HPA_PLURAL,
                dict(body),
                field_manager=self._settings.field_manager,
                _request_timeout=self._timeout(),
            ),
        )

    async def replace_hpa(self, namespace: str, name: str, body: Mapping[str, Any]) -> None:
        """Replace an HPA (``body`` carries the resourceVersion read before)."""
        custom = await self._custom()
        await self._write(
            f"replace hpa {namespace}/{name}",
            lambda: custom.replace_namespaced_custom_object_without_preload_content(
                HPA_GROUP,
                HPA_VERSION,
                namespace,
                HPA_PLURAL,
                name,
                dict(body),
                field_manager=self._settings.field_manager,
                _request_timeout=self._timeout(),
            ),
        )

    async def delete_hpa(self, namespace: str, name: str, uid: str) -> None:
        """Delete an HPA, only if it still has ``uid`` (no error when it is gone)."""
        custom = await self._custom()
        try:
            await self._write(
                f"delete hpa {namespace}/{name}",
                lambda: custom.delete_namespaced_custom_object_without_preload_content(
                    HPA_GROUP,
                    HPA_VERSION,
                    namespace,
                    HPA_PLURAL,
                    name,
                    body={"preconditions": {"uid": uid}},
                    _request_timeout=self._timeout(),
                ),
            )
        except KubeApiError as error:
            if not error.not_found:
                raise

    async def get_scale(
        self, namespace: str, api_version: str, kind: str, name: str
    ) -> ScaleInfo | None:
        """The target's scale subresource, or None when the target does not exist."""
        group, _, version = api_version.rpartition("/")
        custom = await self._custom()
        try:
            scale = await json_call(
                f"get scale of {kind} {namespace}/{name}",
                lambda: custom.get_namespaced_custom_object_scale_without_preload_content(
                    group,
                    version,
                    namespace,
                    scale_plural(kind),
                    name,
                    _request_timeout=self._timeout(),
                ),
            )
        except KubeApiError as error:
            if error.not_found:
                return None
            raise
        scale = scale if isinstance(scale, dict) else {}
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
        core = await self._core()
        body = {"metadata": {"uid": uid, "annotations": dict(annotations)}}
        await self._write(
            f"patch annotations of pod {namespace}/{name}",
            lambda: core.patch_namespaced_pod_without_preload_content(
                name,
                namespace,
                body,
                field_manager=self._settings.field_manager,
                _content_type=MERGE_PATCH,
                _request_timeout=self._timeout(),
            ),
        )

    async def request_header_auth(self) -> RequestHeaderAuth:
        """The aggregation layer's client CA and allowed names (ConfigError when missing)."""
        core = await self._core()
        namespace, name = AUTH_CONFIGMAP_NAMESPACE, AUTH_CONFIGMAP_NAME
        try:
            config_map = await json_call(
                f"read {namespace}/{name}",
                lambda: core.read_namespaced_config_map_without_preload_content(
                    name, namespace, _request_timeout=self._timeout()
                ),
            )
        except KubeApiError as error:
            raise ConfigError(f"cannot read the request-header client CA: {error}") from None
        data = (config_map or {}).get("data") if isinstance(config_map, dict) else None
        return request_header_auth_from_data({str(k): str(v) for k, v in (data or {}).items()})


async def _chunks(content: aiohttp.StreamReader, read_timeout: float) -> AsyncIterator[bytes]:
    """The chunks of a streamed body as they come; ``TimeoutError`` after ``read_timeout``
    seconds without one."""
    while True:
        async with asyncio.timeout(read_timeout):
            chunk = await content.readany()
        if not chunk:
            return
        yield chunk
