"""Who may order a shed: the operator's signature on a control order, checked against its CA.

A control order (``POST /control/shed``, :mod:`wsgauge_contract.control`) makes the sidecar close
sockets, so it must come from the operator and nobody else. The operator signs the body with the
key of the certificate wsgauge's chart already issues it (the metrics API's, from the chart's CA
or cert-manager); the sidecar is given that CA's certificate (``--control-ca``, set by the
injector from the CA of its own TLS Secret). :class:`OrderVerifier` accepts an order only when
the certificate in :data:`~wsgauge_contract.control.CERTIFICATE_HEADER` was issued by that CA
(its signature verifies with the CA's key), is valid now and may authenticate a client (no
extended key usage, or one with ``clientAuth``), and the signature in
:data:`~wsgauge_contract.control.SIGNATURE_HEADER` verifies over the exact body bytes with that
certificate's key (ECDSA/SHA-256 or PKCS#1 v1.5/SHA-256). Only
:class:`~.exceptions.ControlAuthError` escapes it (a message for the 403 and the log line).

This module needs ``cryptography``, the ``control`` extra of wsgauge-sidecar
(``pip install './sidecar[control]'``; the sidecar image has it). Without it the sidecar runs and
counts as usual and refuses every control order (:mod:`.admin` says why). Pure: no I/O, the
clock is passed in.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from wsgauge_sidecar.exceptions import ControlAuthError


def load_ca_bundle(text: str) -> tuple[x509.Certificate, ...]:
    """The certificates of a PEM bundle; ``ValueError`` when there is none or one is broken."""
    certificates = tuple(x509.load_pem_x509_certificates(text.encode()))
    if not certificates:
        raise ValueError("no PEM certificate found")
    return certificates


def _b64(value: str | None, what: str) -> bytes:
    if not value:
        raise ControlAuthError(f"no {what}")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ControlAuthError(f"the {what} is not base64") from None


class OrderVerifier:
    """Checks the certificate and signature of a control request against the operator's CA."""

    def __init__(self, authorities: tuple[x509.Certificate, ...]) -> None:
        self.authorities = authorities

    def verify(
        self, body: bytes, certificate: str | None, signature: str | None, now: datetime
    ) -> str:
        """The signer's common name when the request is authentic; else ``ControlAuthError``."""
        try:
            cert = x509.load_pem_x509_certificate(_b64(certificate, "certificate"))
        except ValueError:
            raise ControlAuthError("the certificate is not a PEM certificate") from None
        self._check_issuer(cert)
        if not cert.not_valid_before_utc <= now.astimezone(UTC) <= cert.not_valid_after_utc:
            raise ControlAuthError("the certificate is not valid now")
        try:
            usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            usage = None
        if usage is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in usage:
            raise ControlAuthError("the certificate may not authenticate a client")
        raw_signature = _b64(signature, "signature")
        key = cert.public_key()
        try:
            if isinstance(key, ec.EllipticCurvePublicKey):
                key.verify(raw_signature, body, ec.ECDSA(hashes.SHA256()))
            elif isinstance(key, rsa.RSAPublicKey):
                key.verify(raw_signature, body, padding.PKCS1v15(), hashes.SHA256())
            else:
                raise ControlAuthError("the certificate's key is neither EC nor RSA")
        except InvalidSignature:
            raise ControlAuthError("the signature does not match the body") from None
        names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        return str(names[0].value) if names else ""

    def _check_issuer(self, cert: x509.Certificate) -> None:
        for authority in self.authorities:
            try:
                cert.verify_directly_issued_by(authority)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return
        raise ControlAuthError("the certificate was not issued by the operator's CA")
