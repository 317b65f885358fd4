"""Signing the operator's control orders to sidecars with its certificate's key.

A sidecar closes sockets for a rebalance only on an order the operator signed
(:mod:`wsgauge_contract.control`): the body bytes are signed with the private key of the
operator's certificate, the one the chart's CA (or cert-manager) issued for the metrics API, and
the certificate travels along; the sidecar checks it against the CA the injector gave it. No
new secret: the same certificate pair the operator already serves the metrics API with.

:class:`OrderSigner` is pure (no I/O); :func:`signer_from_files` reads the pair once at start.
"""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from wsgauge_contract.control import (
    CERTIFICATE_HEADER,
    SIGNATURE_HEADER,
    ShedOrder,
    encode_shed_order,
)

from wsgauge_operator.tls.certificates import CertificatePair, read_pair


class OrderSigner:
    """Signs control orders with one certificate pair."""

    def __init__(self, pair: CertificatePair) -> None:
        self._key = pair.private_key
        self._certificate = base64.b64encode(pair.cert_pem).decode("ascii")
        pair.certificate  # noqa: B018 - fail early on a broken certificate

    def sign(self, body: bytes) -> dict[str, str]:
        """The headers that authenticate ``body``."""
        key = self._key
        if isinstance(key, ec.EllipticCurvePrivateKey):
            signature = key.sign(body, ec.ECDSA(hashes.SHA256()))
        else:
            assert isinstance(key, rsa.RSAPrivateKey)
            signature = key.sign(body, padding.PKCS1v15(), hashes.SHA256())
        return {
            CERTIFICATE_HEADER: self._certificate,
            SIGNATURE_HEADER: base64.b64encode(signature).decode("ascii"),
        }

    def shed_request(
        self,
        *,
        namespace: str,
        pod: str,
        count: int,
        close_code: int,
        spread_seconds: float,
        issued_at: float,
    ) -> tuple[bytes, dict[str, str]]:
        """The body and headers of a signed shed order for one pod."""
        order = ShedOrder(
            namespace=namespace,
            pod=pod,
            count=count,
            close_code=close_code,
            spread_seconds=spread_seconds,
            issued_at=issued_at,
            nonce=secrets.token_hex(16),
        )
        body = encode_shed_order(order)
        return body, self.sign(body)


def signer_from_files(cert_path: Path, key_path: Path) -> OrderSigner:
    """An :class:`OrderSigner` from PEM files (OSError, ValueError when they are unusable)."""
    return OrderSigner(read_pair(cert_path, key_path))
