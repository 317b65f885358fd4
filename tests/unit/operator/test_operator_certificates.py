"""The one certificate helper: CA flags, key usage, SANs, and that what it signs verifies."""

from __future__ import annotations

import asyncio
import ssl
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from wsgauge_operator.tls.certificates import (
    CertificatePair,
    dns_names_of,
    ip_addresses_of,
    issue,
    make_ca,
    public_key_pem,
    read_pair,
    self_signed,
    write_pair,
)

T = TypeVar("T", bound=x509.ExtensionType)


def _extension(pair: CertificatePair, kind: type[T]) -> x509.Extension[T]:
    return pair.certificate.extensions.get_extension_for_class(kind)


def test_ca_flags_and_key_usage() -> None:
    ca = make_ca("test-ca")
    constraints = _extension(ca, x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    usage = _extension(ca, x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    assert usage.value.digital_signature
    assert ca.certificate.subject == ca.certificate.issuer
    assert isinstance(ca.private_key, ec.EllipticCurvePrivateKey)


def test_client_certificate_names_and_usage() -> None:
    ca = make_ca("test-ca")
    client = issue(ca, "system:node:n1", organization="system:nodes")
    subject = client.certificate.subject
    assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:node:n1"
    assert subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:nodes"
    assert client.certificate.issuer == ca.certificate.subject
    assert not _extension(client, x509.BasicConstraints).value.ca
    usage = _extension(client, x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert not usage.value.key_cert_sign
    assert not usage.value.key_encipherment  # an EC key does not encipher
    assert list(_extension(client, x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    assert ip_addresses_of(client.cert_pem) == ()
    assert dns_names_of(client.cert_pem) == ()


def test_serving_certificate_sans_and_rsa_usage() -> None:
    ca = make_ca("test-ca", key_type="rsa")
    server = issue(
        ca,
        "kube-apiserver",
        dns_names=("localhost", "kubernetes.default.svc"),
        ip_addresses=("127.0.0.1", "10.0.0.1", "::1"),
        key_type="rsa",
        days=3650,
    )
    assert dns_names_of(server.cert_pem) == ("localhost", "kubernetes.default.svc")
    assert ip_addresses_of(server.cert_pem) == ("127.0.0.1", "10.0.0.1", "::1")
    assert set(_extension(server, x509.ExtendedKeyUsage).value) == {
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    }
    assert _extension(server, x509.KeyUsage).value.key_encipherment
    assert isinstance(server.private_key, rsa.RSAPrivateKey)
    lifetime = server.certificate.not_valid_after_utc - server.certificate.not_valid_before_utc
    assert lifetime.days >= 3650


def test_bad_ip_address_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 address"):
        issue(make_ca("test-ca"), "server", ip_addresses=("not-an-ip",))


def test_self_signed_splits_hosts_into_dns_names_and_addresses() -> None:
    pair = self_signed(["localhost", "127.0.0.1", "wsgauge.svc"], common_name="metrics")
    assert dns_names_of(pair.cert_pem) == ("localhost", "wsgauge.svc")
    assert ip_addresses_of(pair.cert_pem) == ("127.0.0.1",)
    assert _extension(pair, x509.BasicConstraints).critical
    assert not _extension(pair, x509.BasicConstraints).value.ca
    assert list(_extension(pair, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_public_key_matches_the_private_key() -> None:
    pair = make_ca("sa", key_type="rsa")
    public = serialization.load_pem_public_key(public_key_pem(pair.key_pem))
    assert public == pair.private_key.public_key()
    assert public_key_pem(pair.key_pem).startswith(b"-----BEGIN PUBLIC KEY-----")


def test_files_round_trip_with_a_private_key_file(tmp_path: Path) -> None:
    pair = make_ca("files")
    cert, key = tmp_path / "x.crt", tmp_path / "x.key"
    write_pair(pair, cert, key)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert read_pair(cert, key) == pair


def _client_context(ca: CertificatePair, client: CertificatePair, tmp_path: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca.cert_pem.decode())
    cert, key = tmp_path / f"client-{id(client)}.crt", tmp_path / f"client-{id(client)}.key"
    write_pair(client, cert, key)
    context.load_cert_chain(str(cert), str(key))
    return context


@pytest.fixture
async def mutual_tls_server(tmp_path: Path) -> AsyncIterator[tuple[CertificatePair, int]]:
    """A TLS server on loopback whose certificate and client CA are the same test CA."""
    ca = make_ca("test-ca")
    server = issue(ca, "server", dns_names=("localhost",), ip_addresses=("127.0.0.1",))
    write_pair(server, tmp_path / "server.crt", tmp_path / "server.key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cadata=ca.cert_pem.decode())
    context.load_cert_chain(str(tmp_path / "server.crt"), str(tmp_path / "server.key"))
    context.verify_mode = ssl.CERT_REQUIRED

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)
    try:
        yield ca, listener.sockets[0].getsockname()[1]
    finally:
        listener.close()
        await listener.wait_closed()


async def test_client_certificate_verifies_against_its_ca(
    mutual_tls_server: tuple[CertificatePair, int], tmp_path: Path
) -> None:
    ca, port = mutual_tls_server
    context = _client_context(ca, issue(ca, "front-proxy-client"), tmp_path)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    assert await reader.read() == b"ok"
    writer.close()


async def test_client_certificate_of_another_ca_is_refused(
    mutual_tls_server: tuple[CertificatePair, int], tmp_path: Path
) -> None:
    ca, port = mutual_tls_server
    other = make_ca("test-ca")  # the same name: only the signature tells them apart
    context = _client_context(ca, issue(other, "front-proxy-client"), tmp_path)
    # TLS 1.2: the server's verdict on the client certificate ends the handshake itself
    # (TLS 1.3 would report it after the handshake, at the first read)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        await asyncio.open_connection("127.0.0.1", port, ssl=context)


def test_chain_verifies_with_cryptography() -> None:
    ca = make_ca("test-ca")
    client = issue(ca, "someone")
    client.certificate.verify_directly_issued_by(ca.certificate)
    with pytest.raises(InvalidSignature):
        client.certificate.verify_directly_issued_by(make_ca("test-ca").certificate)
