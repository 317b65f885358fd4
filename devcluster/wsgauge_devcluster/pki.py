"""Certificates and keys for the local control plane, made once as files.

The certificates come from the operator's helper, :mod:`wsgauge_operator.tls.certificates`
(RSA 2048 keys, valid for ``VALID_DAYS``); this module decides which files exist and when
they are made: a file pair that exists is kept, except the API server's serving
certificate, which is made again when one of its IP addresses is missing.

Layout under <state_dir>/pki/:
  ca.crt/.key                 cluster CA (signs serving + client certificates, client-ca-file)
  apiserver.crt/.key          serving cert: 127.0.0.1, the node IP, localhost,
                              kubernetes.default.svc... (made again when an address is missing)
  admin.crt/.key              client certificate CN=wsgauge-admin, O=system:masters
  controller-manager.crt/.key CN=system:kube-controller-manager
  scheduler.crt/.key          CN=system:kube-scheduler
  kubelet.crt/.key            CN=system:node:<node name>, O=system:nodes (the real node)
  kube-proxy.crt/.key         CN=system:kube-proxy
  apiserver-kubelet-client.crt/.key  what the API server shows the kubelet (logs, exec)
  front-proxy-ca.crt/.key     request-header CA (API aggregation)
  front-proxy-client.crt/.key the aggregator's proxy client certificate, CN=front-proxy-client
  sa.key/sa.pub               service account token signing key pair
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from wsgauge_operator.tls import certificates
from wsgauge_operator.tls.certificates import (
    CertificatePair,
    ip_addresses_of,
    public_key_pem,
    read_pair,
    write_key,
    write_pair,
)

from wsgauge_devcluster.exceptions import PkiError

VALID_DAYS = 3650
"""Lifetime of every certificate (a dev cluster: long enough to never expire in use)."""


@dataclass(frozen=True)
class ClientIdentity:
    """One client certificate to make."""

    name: str
    """File stem under pki/."""
    common_name: str
    """Becomes the Kubernetes user name."""
    organization: str = ""
    """Becomes the Kubernetes group (empty: none)."""


CLIENTS = (
    ClientIdentity("admin", "wsgauge-admin", "system:masters"),
    ClientIdentity("controller-manager", "system:kube-controller-manager"),
    ClientIdentity("scheduler", "system:kube-scheduler"),
    ClientIdentity("kube-proxy", "system:kube-proxy"),
    ClientIdentity("apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters"),
)
"""The client identities the control plane components and the user get."""


def _load(directory: Path, stem: str) -> CertificatePair:
    try:
        return read_pair(directory / f"{stem}.crt", directory / f"{stem}.key")
    except OSError as error:
        raise PkiError(f"cannot read {stem}.crt/.key in {directory}: {error}") from error


def _write(directory: Path, stem: str, pair: CertificatePair) -> None:
    try:
        write_pair(pair, directory / f"{stem}.crt", directory / f"{stem}.key")
    except OSError as error:
        raise PkiError(f"cannot write {stem}.crt/.key in {directory}: {error}") from error


def make_ca(directory: Path, stem: str, common_name: str) -> None:
    """Create a self-signed CA <stem>.crt/.key unless it exists."""
    crt, key = directory / f"{stem}.crt", directory / f"{stem}.key"
    if crt.exists() and key.exists():
        return
    _write(directory, stem, certificates.make_ca(common_name, days=VALID_DAYS, key_type="rsa"))


def make_signed(
    directory: Path,
    stem: str,
    ca_stem: str,
    common_name: str,
    *,
    organization: str = "",
    dns_names: tuple[str, ...] = (),
    ip_addresses: tuple[str, ...] = (),
) -> None:
    """Create <stem>.crt/.key signed by <ca_stem> unless they exist; a serving (and client)
    certificate when SANs are given, else a client certificate."""
    crt, key = directory / f"{stem}.crt", directory / f"{stem}.key"
    if crt.exists() and key.exists():
        return
    try:
        pair = certificates.issue(
            _load(directory, ca_stem),
            common_name,
            organization=organization,
            dns_names=dns_names,
            ip_addresses=ip_addresses,
            days=VALID_DAYS,
            key_type="rsa",
        )
    except ValueError as error:
        raise PkiError(f"cannot make {stem}.crt: {error}") from error
    _write(directory, stem, pair)


def _has_ip_sans(certificate: Path, addresses: tuple[str, ...]) -> bool:
    """Whether the certificate's IP SANs include every one of ``addresses`` (False when the
    file is not a readable certificate)."""
    try:
        present = {ipaddress.ip_address(a) for a in ip_addresses_of(certificate.read_bytes())}
    except (OSError, ValueError):
        return False
    return all(ipaddress.ip_address(address) in present for address in addresses)


def ensure_pki(
    directory: Path,
    service_ip: str,
    node_ips: tuple[str, ...] = (),
    node_name: str = "wsgauge-node",
) -> None:
    """Create every certificate and key the cluster needs (idempotent: existing files are kept,
    but the API server's certificate is made again when one of its addresses is missing).
    ``node_ips`` are the real node's addresses (the API server serves pods there); the kubelet's
    client certificate is made for ``node_name``."""
    directory.mkdir(parents=True, exist_ok=True)
    make_ca(directory, "ca", "wsgauge-devcluster-ca")
    addresses = ("127.0.0.1", service_ip, *node_ips)
    serving = directory / "apiserver.crt"
    if serving.exists() and not _has_ip_sans(serving, addresses):
        serving.unlink()
    make_signed(
        directory, "apiserver", "ca", "kube-apiserver",
        dns_names=(
            "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ),
        ip_addresses=addresses,
    )  # fmt: skip
    for client in CLIENTS:
        make_signed(
            directory, client.name, "ca", client.common_name, organization=client.organization
        )
    make_signed(directory, "kubelet", "ca", f"system:node:{node_name}", organization="system:nodes")
    make_ca(directory, "front-proxy-ca", "wsgauge-front-proxy-ca")
    make_signed(directory, "front-proxy-client", "front-proxy-ca", "front-proxy-client")
    sa_key, sa_pub = directory / "sa.key", directory / "sa.pub"
    if not (sa_key.exists() and sa_pub.exists()):
        key_pem = certificates.private_key_pem(certificates.new_private_key("rsa"))
        try:
            write_key(key_pem, sa_key)
            sa_pub.write_bytes(public_key_pem(key_pem))
        except OSError as error:
            raise PkiError(f"cannot write sa.key/sa.pub in {directory}: {error}") from error
