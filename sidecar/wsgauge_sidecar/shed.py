"""Shedding sockets for a rebalance, pure: who may order it, which orders run, when each close is.

The operator asks a sidecar to close ``count`` of its sockets (``POST /control/shed``, see
:mod:`wsgauge_contract.control`). Three pure parts:

- :class:`OrderVerifier`: the order is the operator's. A control order makes the sidecar close
  sockets, so it must come from the operator and nobody else. The operator signs the body with
  the key of the certificate wsgauge's chart already issues it (the metrics API's, from the
  chart's CA or cert-manager); the sidecar is given that CA's certificate (``--control-ca``, set
  by the injector from the CA of its own TLS Secret) and accepts an order only when the
  certificate in :data:`~wsgauge_contract.control.CERTIFICATE_HEADER` was issued by that CA (its
  signature verifies with the CA's key), is valid now and may authenticate a client (no
  extended key usage, or one with ``clientAuth``), and the signature in
  :data:`~wsgauge_contract.control.SIGNATURE_HEADER` verifies over the exact body bytes with
  that certificate's key (ECDSA/SHA-256 or PKCS#1 v1.5/SHA-256). Only
  :class:`~.exceptions.ControlAuthError` escapes it (a message for the 403 and the log line).

- :func:`jittered_offsets`: the close times, spread over the order's window with jitter: the
  window is cut into ``count`` equal slots and each close falls at a random point of its own
  slot, so closes never bunch up (at most two in any slot-long stretch) and no two sidecars
  close in lockstep.
- :class:`OrderGate`: whether an authenticated order may run: it must name this pod and
  namespace, be fresh (issued at most ``max_skew`` seconds from now, either way), not be a
  replay (its nonce not seen within the freshness window) and find no shed already running.

The asyncio adapter that closes the sockets is :mod:`.shedder`. No I/O here; clocks are passed in.
"""

from __future__ import annotations

import base64
import binascii
import random
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from wsgauge_contract.control import ShedOrder

from wsgauge_sidecar.exceptions import ControlAuthError

MAX_SKEW = 30.0
"""Seconds an order's ``issuedAt`` may differ from the sidecar's clock."""


def jittered_offsets(count: int, spread: float, rng: random.Random) -> list[float]:
    """``count`` close times in ``[0, spread)``, one in each of ``count`` equal slots, ascending."""
    if count <= 0:
        return []
    if spread <= 0:
        return [0.0] * count
    slot = spread / count
    return [min((index + rng.random()) * slot, spread) for index in range(count)]


@dataclass(frozen=True)
class Refusal:
    """Why an order is not run."""

    status: int
    """HTTP status: 403 (not for us, stale, replayed), 409 (a shed is running)."""
    reason: str


@dataclass
class OrderGate:
    """The checks an authenticated order passes before it runs (one per sidecar)."""

    namespace: str
    pod: str
    max_skew: float = MAX_SKEW
    """Seconds an order's issue time may be off the sidecar's clock."""
    _nonces: deque[tuple[float, str]] = field(default_factory=deque)
    _seen: set[str] = field(default_factory=set)

    def check(self, order: ShedOrder, now: float, *, busy: bool) -> Refusal | None:
        """None: run it (its nonce is remembered); else why not. ``now`` is Unix time."""
        while self._nonces and self._nonces[0][0] < now - 2 * self.max_skew:
            self._seen.discard(self._nonces.popleft()[1])
        if order.namespace != self.namespace or order.pod != self.pod:
            return Refusal(403, f"the order is for {order.namespace}/{order.pod}, not this pod")
        if abs(order.issued_at - now) > self.max_skew:
            return Refusal(
                403,
                f"the order was issued {now - order.issued_at:.0f} s from now "
                f"(more than {self.max_skew:.0f} s either way)",
            )
        if order.nonce in self._seen:
            return Refusal(403, "the order was already received (replay)")
        if busy:
            return Refusal(409, "a shed is already running")
        self._seen.add(order.nonce)
        self._nonces.append((now, order.nonce))
        return None


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
