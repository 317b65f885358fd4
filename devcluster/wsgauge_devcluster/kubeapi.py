"""A small asyncio client for the Kubernetes API (aiohttp), enough for the pod runner: JSON
requests, patches and watch streams, authenticated with the client certificate of a kubeconfig."""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from wsgauge_devcluster.exceptions import DevClusterError, KubeApiError

JsonObject = dict[str, Any]
"""A decoded JSON object from the API."""

MERGE_PATCH = "application/merge-patch+json"
"""JSON merge patch (RFC 7386)."""
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
"""Kubernetes strategic merge patch (lists merged by their merge key)."""


@dataclass(frozen=True)
class KubeConfig:
    """What the client needs from a kubeconfig: server URL and TLS material as files."""

    server: str
    """API server URL."""
    ca_file: Path
    """CA bundle to verify the server."""
    cert_file: Path
    """Client certificate."""
    key_file: Path
    """Client key."""

    @classmethod
    def load(cls, kubeconfig: Path, scratch_dir: Path) -> KubeConfig:
        """Read the current context; embedded *-data fields are written to scratch_dir."""
        doc = yaml.safe_load(kubeconfig.read_text())
        context_name = doc["current-context"]
        context = next(c["context"] for c in doc["contexts"] if c["name"] == context_name)
        cluster = next(c["cluster"] for c in doc["clusters"] if c["name"] == context["cluster"])
        user = next(u["user"] for u in doc["users"] if u["name"] == context["user"])
        scratch_dir.mkdir(parents=True, exist_ok=True)

        def material(section: Mapping[str, Any], key: str, stem: str) -> Path:
            if f"{key}-data" in section:
                path = scratch_dir / stem
                path.write_bytes(base64.b64decode(section[f"{key}-data"]))
                path.chmod(0o600)
                return path
            if key in section:
                return Path(section[key])
            raise DevClusterError(f"kubeconfig {kubeconfig} has no {key} for its current context")

        return cls(
            server=cluster["server"],
            ca_file=material(cluster, "certificate-authority", "runner-ca.crt"),
            cert_file=material(user, "client-certificate", "runner-client.crt"),
            key_file=material(user, "client-key", "runner-client.key"),
        )


class KubeApi:
    """JSON over HTTPS to the API server; one aiohttp session."""

    def __init__(self, config: KubeConfig) -> None:
        self._config = config
        context = ssl.create_default_context(cafile=str(config.ca_file))
        context.load_cert_chain(str(config.cert_file), str(config.key_file))
        self._ssl = context
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> KubeApi:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._ssl, limit=20),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        """The open session (inside `async with`)."""
        if self._session is None:
            raise DevClusterError("KubeApi used outside `async with`")
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
        timeout: float = 15.0,
    ) -> JsonObject:
        """Send one request; return the decoded answer or raise KubeApiError."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = content_type
        async with self.session.request(
            method,
            self._config.server + path,
            data=data,
            headers=headers,
            params=params,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            text = await response.text()
            if response.status >= 400:
                try:
                    message = json.loads(text).get("message", text)
                except ValueError:
                    message = text
                raise KubeApiError(response.status, str(message))
            decoded: JsonObject = json.loads(text) if text else {}
            return decoded

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> JsonObject:
        """GET path."""
        return await self.request("GET", path, params=params)

    async def create(self, path: str, body: JsonObject) -> JsonObject:
        """POST body to a collection path."""
        return await self.request("POST", path, body)

    async def patch(
        self, path: str, body: JsonObject, content_type: str = MERGE_PATCH
    ) -> JsonObject:
        """PATCH path (merge patch unless told otherwise)."""
        return await self.request("PATCH", path, body, content_type=content_type)

    async def delete(self, path: str, body: JsonObject | None = None) -> JsonObject:
        """DELETE path with optional DeleteOptions."""
        return await self.request("DELETE", path, body)

    async def watch(
        self, path: str, resource_version: str, params: Mapping[str, str] | None = None
    ) -> AsyncIterator[JsonObject]:
        """Yield watch events ({type, object}) until the server ends the stream.

        An ERROR event is raised as KubeApiError (410 means: re-list)."""
        query = dict(params or {})
        query.update(
            {
                "watch": "1",
                "resourceVersion": resource_version,
                "allowWatchBookmarks": "true",
                "timeoutSeconds": "240",
            }
        )
        async with self.session.get(
            self._config.server + path,
            params=query,
            timeout=aiohttp.ClientTimeout(total=300, sock_read=300),
        ) as response:
            if response.status >= 400:
                raise KubeApiError(response.status, await response.text())
            buffer = b""
            async for chunk in response.content.iter_any():
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    event: JsonObject = json.loads(line)
                    if event.get("type") == "ERROR":
                        status = event.get("object", {})
                        code = int(status.get("code", 500))
                        raise KubeApiError(code, str(status.get("message")))
                    yield event
