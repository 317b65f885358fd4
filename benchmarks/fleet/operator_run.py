"""The operator under test: the real ``wsgauge-operator`` CLI as a subprocess, and its readers.

Started as docs/operator.md and the operator integration tests start it (``--kubeconfig``,
``--namespaces``, stats server and metrics API on loopback). :class:`MetricsApiClient` queries the
operator's ``custom.metrics.k8s.io`` server directly over TLS with the API server's front-proxy
client certificate (the identity the aggregator uses), so no APIService registration is needed
and nothing else on a shared cluster is disturbed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import ssl
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.exceptions import ProcessStartError

METRICS_BASE = "/apis/custom.metrics.k8s.io/v1beta2"
"""Path prefix of the custom metrics API."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on host right now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class OperatorRun:
    """One ``wsgauge-operator`` process watching one namespace; restartable."""

    def __init__(self, kubeconfig: Path, namespace: str, log: Path, *extra: str) -> None:
        self.kubeconfig = kubeconfig
        self.stats_port = free_port()
        self.metrics_port = free_port()
        self.argv = [
            str(Path(sys.executable).parent / "wsgauge-operator"),
            "--kubeconfig", str(kubeconfig),
            "--namespaces", namespace,
            "--listen", f"127.0.0.1:{self.stats_port}",
            "--metrics-api", "true",
            "--metrics-api-listen", f"127.0.0.1:{self.metrics_port}",
            "--log-level", "warning",
            *extra,
        ]  # fmt: skip
        self.log = log
        self.process: asyncio.subprocess.Process | None = None
        self.started_at = 0.0
        """CLOCK_MONOTONIC time of the last start."""

    @property
    def pid(self) -> int:
        """Pid of the running process."""
        if self.process is None:
            raise ProcessStartError("the operator is not running")
        return self.process.pid

    async def start(self) -> None:
        """Start the process (do not wait for anything)."""
        log = self.log.open("ab")
        self.started_at = time.monotonic()
        self.process = await asyncio.create_subprocess_exec(
            *self.argv, stdout=log, stderr=log, env=dict(os.environ)
        )
        log.close()

    async def wait_listening(self, timeout: float = 60.0) -> None:
        """Until the stats server serves (its port opens at once, answering ``ok (starting)``
        on ``/healthz`` until the controller runs)."""
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.stats_port}/healthz"
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.returncode is not None:
                    raise ProcessStartError(f"the operator exited ({self.process.returncode})")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as reply:
                        if reply.status == 200 and b"starting" not in await reply.read():
                            return
                await asyncio.sleep(0.1)
        raise ProcessStartError(f"the operator's stats server did not serve within {timeout}s")

    async def stop(self) -> None:
        """SIGTERM, SIGKILL after 20 s."""
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 20)
        except TimeoutError:
            process.kill()
            await process.wait()

    async def stats(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        """The operator's ``GET /stats`` ({} while it does not answer)."""
        try:
            async with session.get(
                f"http://127.0.0.1:{self.stats_port}/stats",
                timeout=aiohttp.ClientTimeout(total=10),
            ) as response:
                if response.status != 200:
                    return {}
                body: dict[str, Any] = await response.json()
                return body
        except (aiohttp.ClientError, TimeoutError):
            return {}


class MetricsApiClient:
    """Direct TLS client of the operator's metrics API, as the aggregator (front-proxy cert)."""

    def __init__(self, pki_dir: Path, port: int) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the operator's serving cert is self-signed
        context.load_cert_chain(
            str(pki_dir / "front-proxy-client.crt"), str(pki_dir / "front-proxy-client.key")
        )
        self._ssl = context
        self._base = f"https://127.0.0.1:{port}{METRICS_BASE}"
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> MetricsApiClient:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._ssl, limit=8),
            timeout=aiohttp.ClientTimeout(total=10),
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def _get(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any] | None:
        assert self._session is not None
        try:
            async with self._session.get(self._base + path, params=params) as response:
                if response.status != 200:
                    return None
                body: dict[str, Any] = await response.json()
                return body
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def pod_value(self, namespace: str, pod: str, topic: str | None = None) -> int | None:
        """``wsgauge_connections`` of one pod (of one topic), or None if not served."""
        params = {"metricLabelSelector": f"topic={topic}"} if topic else None
        body = await self._get(f"/namespaces/{namespace}/pods/{pod}/wsgauge_connections", params)
        items = (body or {}).get("items") or []
        return _quantity(items[0]["value"]) if items else None

    async def object_value(self, namespace: str, name: str) -> int | None:
        """The ConnectionStats total (object metric), or None if not served."""
        body = await self._get(
            f"/namespaces/{namespace}/connectionstats.wsgauge.dev/{name}/wsgauge_connections"
        )
        items = (body or {}).get("items") or []
        return _quantity(items[0]["value"]) if items else None

    async def pods_values(self, namespace: str, selector: str) -> dict[str, int] | None:
        """Pod name -> ``wsgauge_connections`` for every pod the selector matches."""
        body = await self._get(
            f"/namespaces/{namespace}/pods/*/wsgauge_connections", {"labelSelector": selector}
        )
        if body is None:
            return None
        return {
            item["describedObject"]["name"]: _quantity(item["value"])
            for item in body.get("items") or []
        }


def _quantity(text: str) -> int:
    """A Kubernetes quantity as the metrics API writes counts ("12", "1500m", "2k")."""
    if text.endswith("m"):
        return int(text[:-1]) // 1000
    if text.endswith("k"):
        return int(text[:-1]) * 1000
    return int(text)
