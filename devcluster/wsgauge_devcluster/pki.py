"""Certificates and keys for the local control plane, made once with the openssl command line.

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

import subprocess
from dataclasses import dataclass
from pathlib import Path

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


def _openssl(*args: str, stdin: str | None = None) -> None:
    result = subprocess.run(
        ["openssl", *args], input=stdin, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise PkiError(f"openssl {' '.join(args[:2])} failed: {result.stderr.strip()}")


def _subject(common_name: str, organization: str) -> str:
    return f"/CN={common_name}" + (f"/O={organization}" if organization else "")


def make_ca(directory: Path, stem: str, common_name: str) -> None:
    """Create a self-signed CA <stem>.crt/.key unless it exists."""
    crt, key = directory / f"{stem}.crt", directory / f"{stem}.key"
    if crt.exists() and key.exists():
        return
    _openssl("genrsa", "-out", str(key), "2048")
    _openssl(
        "req", "-x509", "-new", "-key", str(key), "-sha256", "-days", str(VALID_DAYS),
        "-subj", f"/CN={common_name}", "-out", str(crt),
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
    )  # fmt: skip


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
    """Create <stem>.crt/.key signed by <ca_stem>; a server certificate when SANs are given."""
    crt, key = directory / f"{stem}.crt", directory / f"{stem}.key"
    if crt.exists() and key.exists():
        return
    csr = directory / f"{stem}.csr"
    ext = directory / f"{stem}.ext"
    sans = [f"DNS:{d}" for d in dns_names] + [f"IP:{i}" for i in ip_addresses]
    usage = "serverAuth,clientAuth" if sans else "clientAuth"
    lines = [
        "basicConstraints=CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        f"extendedKeyUsage={usage}",
    ]
    if sans:
        lines.append("subjectAltName=" + ",".join(sans))
    ext.write_text("\n".join(lines) + "\n")
    _openssl("genrsa", "-out", str(key), "2048")
    _openssl(
        "req", "-new", "-key", str(key), "-subj", _subject(common_name, organization),
        "-out", str(csr),
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(directory / f"{ca_stem}.crt"),
        "-CAkey", str(directory / f"{ca_stem}.key"), "-CAcreateserial", "-sha256",
        "-days", str(VALID_DAYS), "-extfile", str(ext), "-out", str(crt),
    )  # fmt: skip
    csr.unlink(missing_ok=True)
    ext.unlink(missing_ok=True)


def _has_ip_sans(certificate: Path, addresses: tuple[str, ...]) -> bool:
    result = subprocess.run(
        ["openssl", "x509", "-in", str(certificate), "-noout", "-ext", "subjectAltName"],
        capture_output=True,
        text=True,
        check=False,
    )
    return all(f"IP Address:{address}" in result.stdout for address in addresses)


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
        _openssl("genrsa", "-out", str(sa_key), "2048")
        _openssl("rsa", "-in", str(sa_key), "-pubout", "-out", str(sa_pub))
