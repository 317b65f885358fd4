"""X.509 certificates and keys, made with ``cryptography``: the project's one certificate helper.

Every certificate wsgauge makes comes from here: the operator's self-signed serving
certificates (metrics API, injector webhook), the local control plane's CAs and the
certificates they sign (``wsgauge_devcluster.pki``), and the tests' throwaway CAs and
client certificates. Nothing here touches the network; callers write the
PEM bytes where they need them (:func:`write_pair`, :func:`write_key` and :func:`read_pair`
are the file helpers).

- :func:`make_ca`: a self-signed CA (``basicConstraints`` critical ``CA:TRUE``, ``keyUsage``
  critical ``keyCertSign, cRLSign, digitalSignature``).
- :func:`issue`: a leaf certificate signed by a CA (``CA:FALSE``, ``keyUsage`` critical
  ``digitalSignature`` plus ``keyEncipherment`` for RSA keys). With subject alternative
  names it is a serving and client certificate (extended key usage ``serverAuth,
  clientAuth``), without them a client certificate (``clientAuth``); the subject's
  organization becomes the Kubernetes group of a client certificate.
- :func:`self_signed`: a self-signed serving certificate for a list of hosts.
- :func:`ip_addresses_of` and :func:`dns_names_of`: the subject alternative names of a
  certificate; :func:`public_key_pem`: the public half of a private key (the API server's
  service account key pair).

Keys are P-256 (``"ec"``, the default) or RSA 2048 (``"rsa"``); private keys are
unencrypted PKCS#8 PEM, public keys SubjectPublicKeyInfo PEM.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KeyType = Literal["ec", "rsa"]
"""``"ec"``: a P-256 key; ``"rsa"``: an RSA 2048 key."""

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
"""The private keys this module makes and signs with."""

RSA_KEY_BITS = 2048
"""Size of the RSA keys (``key_type="rsa"``)."""

BACKDATE = timedelta(minutes=5)
"""How far before now a certificate becomes valid (clocks of the peers may lag a little)."""


@dataclass(frozen=True)
class CertificatePair:
    """A PEM certificate and its PEM private key."""

    cert_pem: bytes = b""
    """Certificate (PEM)."""
    key_pem: bytes = b""
    """Unencrypted private key (PEM, PKCS#8)."""

    @property
    def certificate(self) -> x509.Certificate:
        """The parsed certificate."""
        return x509.load_pem_x509_certificate(self.cert_pem)

    @property
    def private_key(self) -> PrivateKey:
        """The parsed private key (ValueError when it is neither an EC nor an RSA key)."""
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise ValueError(f"unsupported private key type {type(key).__name__}")
        return key


def new_private_key(key_type: KeyType = "ec") -> PrivateKey:
    """A fresh private key of ``key_type``."""
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
    return ec.generate_private_key(ec.SECP256R1())


def private_key_pem(key: PrivateKey) -> bytes:
    """``key`` as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_key_pem(key_pem: bytes) -> bytes:
    """The public key of a PEM private key, as SubjectPublicKeyInfo PEM."""
    key = serialization.load_pem_private_key(key_pem, password=None)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _name(common_name: str, organization: str = "") -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def _key_usage(*, cert_sign: bool, key_encipherment: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _alt_names(dns_names: Iterable[str], ip_addresses: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    names.extend(x509.IPAddress(ipaddress.ip_address(address)) for address in ip_addresses)
    return names


def _builder(
    subject: x509.Name, issuer: x509.Name, key: PrivateKey, days: int
) -> x509.CertificateBuilder:
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=days))
    )


def _pair(certificate: x509.Certificate, key: PrivateKey) -> CertificatePair:
    return CertificatePair(
        cert_pem=certificate.public_bytes(serialization.Encoding.PEM), key_pem=private_key_pem(key)
    )


def make_ca(common_name: str, *, days: int = 365, key_type: KeyType = "ec") -> CertificatePair:
    """A self-signed CA valid for ``days`` that may sign certificates and CRLs."""
    key = new_private_key(key_type)
    subject = _name(common_name)
    certificate = (
        _builder(subject, subject, key, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=True, key_encipherment=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _pair(certificate, key)


def issue(
    ca: CertificatePair,
    common_name: str,
    *,
    organization: str = "",
    dns_names: Iterable[str] = (),
    ip_addresses: Iterable[str] = (),
    days: int = 365,
    key_type: KeyType = "ec",
) -> CertificatePair:
    """A certificate for ``common_name`` signed by ``ca``, with a new key of ``key_type``.

    With DNS names or IP addresses it is valid for serving them and as a client certificate;
    without, it is a client certificate only. ValueError when an IP address is not one.
    """
    names = _alt_names(dns_names, ip_addresses)
    key = new_private_key(key_type)
    issuer = ca.certificate
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if names else []
    builder = (
        _builder(_name(common_name, organization), issuer.subject, key, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=False)
        .add_extension(
            _key_usage(cert_sign=False, key_encipherment=key_type == "rsa"), critical=True
        )
        .add_extension(
            x509.ExtendedKeyUsage(usages or [ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.private_key.public_key()),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return _pair(builder.sign(ca.private_key, hashes.SHA256()), key)


def self_signed(
    hosts: Iterable[str], *, common_name: str, days: int = 365, key_type: KeyType = "ec"
) -> CertificatePair:
    """A self-signed serving certificate valid for ``hosts`` (each a DNS name or an IP address)."""
    key = new_private_key(key_type)
    dns_names: list[str] = []
    ip_addresses: list[str] = []
    for host in hosts:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            dns_names.append(host)
        else:
            ip_addresses.append(host)
    names = _alt_names(dns_names, ip_addresses)
    subject = _name(common_name)
    builder = (
        _builder(subject, subject, key, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return _pair(builder.sign(key, hashes.SHA256()), key)


def _alt_name_extension(cert_pem: bytes) -> x509.SubjectAlternativeName | None:
    certificate = x509.load_pem_x509_certificate(cert_pem)
    try:
        return certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None


def ip_addresses_of(cert_pem: bytes) -> tuple[str, ...]:
    """The IP addresses among a certificate's subject alternative names, as text."""
    names = _alt_name_extension(cert_pem)
    if names is None:
        return ()
    return tuple(str(address) for address in names.get_values_for_type(x509.IPAddress))


def dns_names_of(cert_pem: bytes) -> tuple[str, ...]:
    """The DNS names among a certificate's subject alternative names."""
    names = _alt_name_extension(cert_pem)
    return () if names is None else tuple(names.get_values_for_type(x509.DNSName))


def write_key(key_pem: bytes, key_path: Path) -> None:
    """Write a private key readable by its owner only (no moment with wider permissions)."""
    descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as key_file:
        key_file.write(key_pem)
    os.chmod(key_path, 0o600)


def write_pair(pair: CertificatePair, cert_path: Path, key_path: Path) -> None:
    """Write the certificate and its key (the key readable by its owner only)."""
    cert_path.write_bytes(pair.cert_pem)
    write_key(pair.key_pem, key_path)


def read_pair(cert_path: Path, key_path: Path) -> CertificatePair:
    """Read a certificate and its key (OSError when a file cannot be read)."""
    return CertificatePair(cert_pem=cert_path.read_bytes(), key_pem=key_path.read_bytes())
