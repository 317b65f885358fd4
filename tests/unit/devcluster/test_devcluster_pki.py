"""The local control plane's certificates: file layout, idempotence, the API server's SANs."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from wsgauge_devcluster.pki import CLIENTS, ensure_pki, make_ca, make_signed
from wsgauge_operator.tls.certificates import ip_addresses_of, read_pair

STEMS = (
    "ca",
    "apiserver",
    *(client.name for client in CLIENTS),
    "kubelet",
    "front-proxy-ca",
    "front-proxy-client",
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    ensure_pki(directory, "10.96.0.1", ("10.200.0.1",), "node-a")
    return directory


def _contents(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def test_layout(pki: Path) -> None:
    expected = {f"{stem}.{ext}" for stem in STEMS for ext in ("crt", "key")} | {"sa.key", "sa.pub"}
    assert {path.name for path in pki.iterdir()} == expected


def test_apiserver_serves_its_addresses_and_names(pki: Path) -> None:
    cert_pem = (pki / "apiserver.crt").read_bytes()
    assert ip_addresses_of(cert_pem) == ("127.0.0.1", "10.96.0.1", "10.200.0.1")
    names = x509.load_pem_x509_certificate(cert_pem).extensions
    dns = names.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "kubernetes.default.svc.cluster.local" in dns.get_values_for_type(x509.DNSName)


def test_client_identities_are_signed_by_the_cluster_ca(pki: Path) -> None:
    ca = read_pair(pki / "ca.crt", pki / "ca.key").certificate
    kubelet = read_pair(pki / "kubelet.crt", pki / "kubelet.key").certificate
    kubelet.verify_directly_issued_by(ca)
    subject = kubelet.subject
    assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:node:node-a"
    assert subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:nodes"
    front_ca = read_pair(pki / "front-proxy-ca.crt", pki / "front-proxy-ca.key").certificate
    front = read_pair(pki / "front-proxy-client.crt", pki / "front-proxy-client.key").certificate
    front.verify_directly_issued_by(front_ca)


def test_service_account_key_pair_matches(pki: Path) -> None:
    private = serialization.load_pem_private_key((pki / "sa.key").read_bytes(), password=None)
    public = serialization.load_pem_public_key((pki / "sa.pub").read_bytes())
    assert private.public_key() == public


def test_ensure_pki_again_keeps_every_file(pki: Path) -> None:
    before = _contents(pki)
    ensure_pki(pki, "10.96.0.1", ("10.200.0.1",), "node-a")
    assert _contents(pki) == before


def test_apiserver_certificate_made_again_when_an_address_is_missing(tmp_path: Path) -> None:
    ensure_pki(tmp_path, "10.96.0.1")
    before = _contents(tmp_path)
    ensure_pki(tmp_path, "10.96.0.1", ("10.200.0.7",))
    after = _contents(tmp_path)
    assert ip_addresses_of(after["apiserver.crt"]) == ("127.0.0.1", "10.96.0.1", "10.200.0.7")
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {"apiserver.crt", "apiserver.key"}


def test_make_signed_server_certificate_for_a_test_server(tmp_path: Path) -> None:
    make_ca(tmp_path, "ca", "test-ca")
    make_signed(
        tmp_path, "server", "ca", "metrics", dns_names=("localhost",), ip_addresses=("127.0.0.1",)
    )
    assert ip_addresses_of((tmp_path / "server.crt").read_bytes()) == ("127.0.0.1",)
