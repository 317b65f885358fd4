"""Unit tests of shedding for a rebalance: the jittered schedule, the order gate, the signature
check against the operator's CA (wsgauge_sidecar.shed, wsgauge_contract.control)."""

from __future__ import annotations

import base64
import json
import random
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsgauge_contract.control import (
    CERTIFICATE_HEADER,
    SHED_PATH,
    SIGNATURE_HEADER,
    ShedOrder,
    decode_shed_order,
    encode_shed_order,
)
from wsgauge_operator.tls.certificates import CertificatePair, issue, make_ca, self_signed
from wsgauge_operator.tls.signing import OrderSigner
from wsgauge_sidecar.access import refusal
from wsgauge_sidecar.admin import order_verifier
from wsgauge_sidecar.cli import parse_settings
from wsgauge_sidecar.exceptions import ControlAuthError
from wsgauge_sidecar.order_auth import OrderVerifier, load_ca_bundle
from wsgauge_sidecar.shed import OrderGate, jittered_offsets

NOW = datetime.now(UTC)
"""The gate tests' clock; the signature tests read the clock when they run (their certificates
are issued when their fixture runs, in a long session well after this module is imported)."""
Pair = tuple[CertificatePair, CertificatePair]
ORDER = ShedOrder("prod", "chat-1", 5, 1012, 10.0, NOW.timestamp(), "ab" * 16)


@settings(max_examples=300, deadline=None)
@given(count=st.integers(min_value=0, max_value=500), spread=st.floats(0, 600), seed=st.integers())
def test_offsets_are_spread_one_per_slot(count: int, spread: float, seed: int) -> None:
    offsets = jittered_offsets(count, spread, random.Random(seed))
    assert len(offsets) == count
    assert offsets == sorted(offsets)
    assert all(0 <= t <= spread for t in offsets)
    if count and spread > 0:
        slot = spread / count
        for index, offset in enumerate(offsets):
            assert index * slot <= offset <= (index + 1) * slot + 1e-9
        # never more than two closes within one slot-long stretch: the rate is bounded
        for index in range(count - 2):
            assert offsets[index + 2] - offsets[index] >= slot - 1e-9


def test_offsets_are_jittered() -> None:
    first = jittered_offsets(10, 10.0, random.Random(1))
    second = jittered_offsets(10, 10.0, random.Random(2))
    assert first != second
    assert jittered_offsets(3, 0.0, random.Random(1)) == [0.0, 0.0, 0.0]


def test_order_round_trip_and_bad_orders() -> None:
    assert decode_shed_order(encode_shed_order(ORDER)) == ORDER
    good = json.loads(encode_shed_order(ORDER))
    changes: list[tuple[dict[str, object], str]] = [
        ({"count": 0}, "count"),
        ({"count": True}, "count"),
        ({"closeCode": 1000}, "closeCode"),
        ({"spreadSeconds": -1}, "spreadSeconds"),
        ({"spreadSeconds": "1"}, "spreadSeconds"),
        ({"pod": ""}, "pod"),
        ({"extra": 1}, "unknown: extra"),
    ]
    for change, message in changes:
        with pytest.raises(ValueError, match=message):
            decode_shed_order(json.dumps({**good, **change}).encode())
    with pytest.raises(ValueError, match="not JSON"):
        decode_shed_order(b"{")
    with pytest.raises(ValueError, match="object"):
        decode_shed_order(b"[]")


def test_gate_checks_pod_freshness_replay_and_one_at_a_time() -> None:
    gate = OrderGate("prod", "chat-1")
    now = NOW.timestamp()
    assert gate.check(replace(ORDER, pod="chat-2"), now, busy=False).status == 403  # type: ignore[union-attr]
    assert gate.check(replace(ORDER, namespace="dev"), now, busy=False).status == 403  # type: ignore[union-attr]
    stale = gate.check(replace(ORDER, issued_at=now - 31), now, busy=False)
    assert stale is not None
    assert "issued 31 s" in stale.reason
    busy = gate.check(ORDER, now, busy=True)
    assert busy is not None
    assert busy.status == 409
    assert gate.check(ORDER, now, busy=False) is None
    replay = gate.check(ORDER, now + 1, busy=False)
    assert replay is not None
    assert "replay" in replay.reason
    assert gate.check(replace(ORDER, nonce="cd" * 16), now + 1, busy=False) is None


def test_the_shed_path_skips_the_loopback_rule_only_for_its_signature_check() -> None:
    assert refusal("POST", "10.244.0.7", SHED_PATH) is None
    assert refusal("POST", "10.244.0.7", "/report") is not None


@pytest.fixture(scope="module")
def operator_ca() -> tuple[CertificatePair, CertificatePair]:
    ca = make_ca("wsgauge-ca")
    return ca, issue(ca, "wsgauge-metrics-api", dns_names=["wsgauge.wsgauge.svc"])


def test_a_signed_order_of_the_operators_ca_verifies(operator_ca: Pair) -> None:
    now = datetime.now(UTC)
    ca, pair = operator_ca
    verifier = OrderVerifier(load_ca_bundle(ca.cert_pem.decode()))
    signer = OrderSigner(pair)
    body, headers = signer.shed_request(
        namespace="prod", pod="chat-1", count=3, close_code=1012, spread_seconds=5,
        issued_at=now.timestamp(),
    )  # fmt: skip
    name = verifier.verify(body, headers[CERTIFICATE_HEADER], headers[SIGNATURE_HEADER], now)
    assert name == "wsgauge-metrics-api"
    assert decode_shed_order(body).count == 3


def test_rsa_keys_sign_too() -> None:
    now = datetime.now(UTC)
    ca = make_ca("wsgauge-ca", key_type="rsa")
    pair = issue(ca, "op", dns_names=["op"], key_type="rsa")
    headers = OrderSigner(pair).sign(b"body")
    verifier = OrderVerifier(load_ca_bundle(ca.cert_pem.decode()))
    assert verifier.verify(b"body", headers[CERTIFICATE_HEADER], headers[SIGNATURE_HEADER], now)


def test_forged_orders_are_refused(operator_ca: Pair) -> None:
    now = datetime.now(UTC)
    ca, pair = operator_ca
    verifier = OrderVerifier(load_ca_bundle(ca.cert_pem.decode()))
    headers = OrderSigner(pair).sign(b"original")
    cert, signature = headers[CERTIFICATE_HEADER], headers[SIGNATURE_HEADER]
    other_ca = make_ca("someone-else")
    foreign = OrderSigner(issue(other_ca, "x", dns_names=["x"])).sign(b"original")
    own_ca_self_signed = OrderSigner(self_signed(["x"], common_name="x")).sign(b"original")
    cases = [
        ((b"changed", cert, signature, now), "does not match"),
        ((b"original", None, signature, now), "no certificate"),
        ((b"original", cert, None, now), "no signature"),
        ((b"original", "%%%", signature, now), "not base64"),
        ((b"original", base64.b64encode(b"junk").decode(), signature, now), "not a PEM"),
        ((b"original", foreign[CERTIFICATE_HEADER], foreign[SIGNATURE_HEADER], now), "not issued"),
        (
            (b"original", own_ca_self_signed[CERTIFICATE_HEADER], signature, now),
            "not issued",
        ),
        ((b"original", cert, signature, now + timedelta(days=400)), "not valid now"),
        ((b"original", cert, foreign[SIGNATURE_HEADER], now), "does not match"),
    ]
    for arguments, message in cases:
        with pytest.raises(ControlAuthError, match=message):
            verifier.verify(*arguments)


def test_a_server_only_certificate_may_not_sign() -> None:
    now = datetime.now(UTC)
    server_only = self_signed(["x"], common_name="x")  # serverAuth only
    verifier = OrderVerifier(load_ca_bundle(server_only.cert_pem.decode()))
    headers = OrderSigner(server_only).sign(b"b")
    with pytest.raises(ControlAuthError, match="may not authenticate a client"):
        verifier.verify(b"b", headers[CERTIFICATE_HEADER], headers[SIGNATURE_HEADER], now)


def test_control_ca_flag_takes_pem_text_or_a_file(tmp_path: Path, operator_ca: Pair) -> None:
    ca, _ = operator_ca
    pem = ca.cert_pem.decode()
    assert parse_settings(["--control-ca", pem], environ={}).admin.control_ca == pem
    path = tmp_path / "ca.crt"
    path.write_text(pem)
    assert parse_settings(["--control-ca", str(path)], environ={}).admin.control_ca == pem
    assert parse_settings([], environ={"WSGAUGE_CONTROL_CA": pem}).admin.control_ca == pem
    assert parse_settings([], environ={}).admin.control_ca == ""
    for bad in (
        "/nonexistent/ca.crt",
        "-----BEGIN CERTIFICATE-----\nxx\n-----END CERTIFICATE-----",
    ):
        with pytest.raises(SystemExit) as exited:
            parse_settings(["--control-ca", bad], environ={})
        assert exited.value.code == 2


def test_without_the_control_extra_the_sidecar_runs_and_refuses_orders(operator_ca: Pair) -> None:
    """Every sidecar module but order_auth imports without cryptography (the `control` extra)."""
    ca, _ = operator_ca
    script = (
        "import sys\n"
        "sys.modules['cryptography'] = None  # as if the extra were not installed\n"
        "import pkgutil, importlib, wsgauge_sidecar\n"
        "from wsgauge_sidecar.admin import order_verifier\n"
        "from wsgauge_sidecar.cli import parse_settings\n"
        "walk = pkgutil.walk_packages(wsgauge_sidecar.__path__, 'wsgauge_sidecar.')\n"
        "names = [m.name for m in walk if not m.name.endswith('__main__')]\n"
        "failed = []\n"
        "for name in names:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError:\n"
        "        failed.append(name)\n"
        "print(failed)\n"
        "pem = parse_settings(['--control-ca', sys.argv[1]], environ={}).admin.control_ca\n"
        "verifier, reason = order_verifier(pem)\n"
        "print(verifier, reason)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, ca.cert_pem.decode()],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    failed, refused = done.stdout.splitlines()
    assert failed == "['wsgauge_sidecar.order_auth']"
    assert refused.startswith("None this sidecar cannot verify control orders")
    assert "wsgauge-sidecar[control]" in refused
    assert "every control order is refused" in done.stderr


def test_a_control_ca_that_does_not_load_refuses_orders_and_keeps_running() -> None:
    verifier, reason = order_verifier(
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    )
    assert verifier is None
    assert "does not load" in reason
    no_ca = "this sidecar has no --control-ca: it takes no control orders"
    assert order_verifier("") == (None, no_ca)
