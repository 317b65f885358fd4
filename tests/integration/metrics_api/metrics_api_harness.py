"""Helpers for the metrics API over real TLS on loopback: a test CA, client certs, a server."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from wsgauge_operator.metrics_api.server import (
    MetricsApiServer,
    MetricsApiSettings,
    start_metrics_api,
)
from wsgauge_operator.model.metrics_source import (
    ConnectionStatsMetrics,
    PodMetrics,
    StaticMetricsSource,
)
from wsgauge_operator.tls.certificates import CertificatePair, issue, make_ca, write_pair

ALLOWED_NAME = "front-proxy-client"


def issue_client_cert(ca: CertificatePair, common_name: str, directory: Path) -> tuple[Path, Path]:
    """A client certificate signed by ``ca``, written as PEM files (cert, key)."""
    cert_path = directory / f"{common_name}-{id(ca)}.crt"
    key_path = directory / f"{common_name}-{id(ca)}.key"
    write_pair(issue(ca, common_name, days=1), cert_path, key_path)
    return cert_path, key_path


@dataclass
class MetricsApiHarness:
    """A running server plus client TLS contexts for each kind of caller."""

    server: MetricsApiServer
    source: StaticMetricsSource
    now: datetime
    allowed: ssl.SSLContext
    wrong_name: ssl.SSLContext
    wrong_ca: ssl.SSLContext
    anonymous: ssl.SSLContext

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.server.port}{path}"


def client_context(server: MetricsApiServer, cert: tuple[Path, Path] | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=server.serving_cert_pem.decode())
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    return context


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[MetricsApiHarness]:
    ca = make_ca("test-requestheader-ca", days=1)
    other_ca = make_ca("some-other-ca", days=1)
    now = datetime.now(UTC).replace(microsecond=0)
    fresh = now - timedelta(seconds=1)
    chat = {"app": "chat"}
    source = StaticMetricsSource(
        pods=[
            PodMetrics("prod", "chat-a", chat, 12, {"stream": 12}, fresh, True),
            PodMetrics("prod", "chat-b", chat, 30, {"stream": 20, "stats": 10}, fresh, True),
            PodMetrics("prod", "chat-down", chat, 99, {}, fresh, False),
        ],
        connection_stats=[
            ConnectionStatsMetrics("prod", "chat", 42, {"stream": 32, "stats": 10}, fresh, 2, 3)
        ],
    )
    settings = MetricsApiSettings(
        host="127.0.0.1",
        port=0,
        client_ca_pem=ca.cert_pem.decode(),
        allowed_names=(ALLOWED_NAME,),
        keda_host="127.0.0.1",
        keda_port=0,
    )
    server = await start_metrics_api(settings, source, clock=lambda: now)
    try:
        yield MetricsApiHarness(
            server=server,
            source=source,
            now=now,
            allowed=client_context(server, issue_client_cert(ca, ALLOWED_NAME, tmp_path)),
            wrong_name=client_context(server, issue_client_cert(ca, "mallory", tmp_path)),
            wrong_ca=client_context(server, issue_client_cert(other_ca, ALLOWED_NAME, tmp_path)),
            anonymous=client_context(server, None),
        )
    finally:
        await server.stop()
