"""The operator's control requests to a sidecar (today: shed sockets for a rebalance), pure.

``POST /control/shed`` on the sidecar's admin port asks it to close ``count`` of its sockets
gently, with ``closeCode``, spread over ``spreadSeconds``. The body is a JSON
:class:`ShedOrder`; it names the pod and namespace it is meant for, when it was issued and a
nonce, so that an order can be neither replayed later nor sent to another pod.

The request is authenticated with the certificate mechanism wsgauge already has: the operator
signs the exact body bytes with the private key of its certificate (the one the chart's CA
issued for the metrics API), and sends

- :data:`CERTIFICATE_HEADER`: its certificate, PEM, base64-encoded (one header line);
- :data:`SIGNATURE_HEADER`: the signature of the body, base64-encoded (ECDSA with SHA-256 for an
  EC key, PKCS#1 v1.5 with SHA-256 for an RSA key).

The sidecar accepts it only when the certificate was issued by the CA it was given
(``--control-ca``), is valid now, and the signature, pod, namespace, time and nonce check out.
This module is the wire format only (no cryptography, no I/O): the signing is
``wsgauge_operator.tls.signing``, the verification ``wsgauge_sidecar.shed``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

SHED_PATH = "/control/shed"
"""Where the sidecar takes shed orders (``POST``)."""
CERTIFICATE_HEADER = "X-Wsgauge-Certificate"
"""The signer's certificate: PEM, base64-encoded."""
SIGNATURE_HEADER = "X-Wsgauge-Signature"
"""The signature of the body bytes, base64-encoded."""
CLOSE_CODES = (1012, 1001)
"""Close codes an order may ask for: 1012 (Service Restart), 1001 (Going Away)."""
MAX_SPREAD_SECONDS = 600.0
"""Longest spread an order may ask for."""
MAX_COUNT = 1_000_000
"""Largest count an order may carry."""


@dataclass(frozen=True)
class ShedOrder:
    """Close ``count`` sockets gently."""

    namespace: str
    pod: str
    count: int
    close_code: int
    spread_seconds: float
    issued_at: float
    """Unix time (seconds) when the operator signed it."""
    nonce: str
    """Unique per order (random hex)."""


def encode_shed_order(order: ShedOrder) -> bytes:
    """The body bytes of an order (what is signed)."""
    return json.dumps(
        {
            "namespace": order.namespace,
            "pod": order.pod,
            "count": order.count,
            "closeCode": order.close_code,
            "spreadSeconds": order.spread_seconds,
            "issuedAt": order.issued_at,
            "nonce": order.nonce,
        },
        separators=(",", ":"),
        sort_keys=True,
    ).encode()


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name!r} must be a number")
    return float(value)


def decode_shed_order(body: bytes) -> ShedOrder:
    """Parse and check an order's body; ``ValueError`` with a message for a 400."""
    try:
        raw = json.loads(body)
    except (ValueError, RecursionError) as error:
        raise ValueError(f"not JSON: {error}") from None
    if not isinstance(raw, dict):
        raise ValueError("the body must be a JSON object")
    wanted = {"namespace", "pod", "count", "closeCode", "spreadSeconds", "issuedAt", "nonce"}
    if set(raw) != wanted:
        missing, unknown = wanted - set(raw), set(raw) - wanted
        raise ValueError(
            f"keys must be {', '.join(sorted(wanted))}"
            f" (missing: {', '.join(sorted(missing)) or '-'}; unknown: "
            f"{', '.join(sorted(unknown)) or '-'})"
        )
    for key in ("namespace", "pod", "nonce"):
        if not isinstance(raw[key], str) or not raw[key]:
            raise ValueError(f"{key!r} must be a non-empty string")
    count = raw["count"]
    if isinstance(count, bool) or not isinstance(count, int) or not 0 < count <= MAX_COUNT:
        raise ValueError(f"'count' must be an integer from 1 to {MAX_COUNT}")
    code = raw["closeCode"]
    if isinstance(code, bool) or code not in CLOSE_CODES:
        raise ValueError("'closeCode' must be 1012 or 1001")
    spread = _number(raw["spreadSeconds"], "spreadSeconds")
    if not 0 <= spread <= MAX_SPREAD_SECONDS:
        raise ValueError(f"'spreadSeconds' must be from 0 to {MAX_SPREAD_SECONDS:.0f}")
    issued_at = _number(raw["issuedAt"], "issuedAt")
    return ShedOrder(
        namespace=raw["namespace"],
        pod=raw["pod"],
        count=count,
        close_code=int(code),
        spread_seconds=spread,
        issued_at=issued_at,
        nonce=raw["nonce"],
    )
