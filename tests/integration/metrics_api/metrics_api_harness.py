"""Helpers for the metrics API over real TLS on loopback: a test CA, client certs, a server."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from wsgauge_operator.metrics_api import MetricsApiServer, MetricsApiSettings, start_metrics_api
from wsgauge_operator.metrics_source import (
    ConnectionStatsMetrics,
    PodMetrics,
    StaticMetricsSource,
)

ALLOWED_NAME = "front-proxy-client"


@dataclass
class TestCa:
    """A throwaway CA that signs client certificates."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()


def make_ca(name: str) -> TestCa:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return TestCa(key, cert)


def issue_client_cert(ca: TestCa, common_name: str, directory: Path) -> tuple[Path, Path]:
    """A client certificate signed by ``ca``, written as PEM files (cert, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    cert_path = directory / f"{common_name}-{id(ca)}.crt"
    key_path = directory / f"{common_name}-{id(ca)}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
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
    ca = make_ca("test-requestheader-ca")
    other_ca = make_ca("some-other-ca")
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
        client_ca_pem=ca.pem,
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
