"""TLS for the custom metrics API: serving certificate and aggregation-layer client auth.

The kube-apiserver's aggregation layer proxies ``/apis/custom.metrics.k8s.io``
to the operator over HTTPS and presents its *proxy client certificate*, signed
by the request-header client CA. Which CA and which certificate names are
allowed is published in the ConfigMap ``kube-system/extension-apiserver-authentication``
(keys ``requestheader-client-ca-file`` and ``requestheader-allowed-names``).
This module:

- makes a self-signed serving certificate (:func:`.certificates.self_signed`)
  when none is configured (the APIService then needs ``insecureSkipTLSVerify`` or its
  ``caBundle`` set to that certificate);
- builds the server :class:`ssl.SSLContext` that asks for a client
  certificate and verifies it against the request-header CA (a certificate
  from another CA fails the handshake);
- parses that ConfigMap's data (:func:`request_header_auth_from_data`; read by
  :meth:`~wsgauge_operator.kube.kubeapi.KubeApi.request_header_auth`);
- extracts the verified client certificate's common name for the allowed-names check.
"""

from __future__ import annotations

import json
import os
import ssl
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from wsgauge_operator.model.exceptions import ConfigError
from wsgauge_operator.tls.certificates import CertificatePair, read_pair, self_signed

AUTH_CONFIGMAP_NAMESPACE = "kube-system"
"""Namespace of the API server's authentication ConfigMap."""

AUTH_CONFIGMAP_NAME = "extension-apiserver-authentication"
"""Name of the ConfigMap the API server publishes for aggregated API servers."""


@dataclass(frozen=True)
class RequestHeaderAuth:
    """Who may call the metrics API: the aggregation layer's client CA and names."""

    client_ca_pem: str = ""
    """PEM bundle of the request-header client CA(s)."""
    allowed_names: tuple[str, ...] = ()
    """Common names allowed on the client certificate; empty: any name the CA signed."""


def request_header_auth_from_data(data: dict[str, str]) -> RequestHeaderAuth:
    """Parse the ConfigMap's ``data``: the CA (ConfigError when missing) and the allowed names."""
    ca = data.get("requestheader-client-ca-file", "").strip()
    if not ca:
        raise ConfigError(
            f"{AUTH_CONFIGMAP_NAMESPACE}/{AUTH_CONFIGMAP_NAME} has no requestheader-client-ca-file:"
            " the API server's aggregation layer is not configured"
        )
    names_raw = data.get("requestheader-allowed-names", "").strip() or "[]"
    try:
        names = json.loads(names_raw)
    except json.JSONDecodeError as error:
        raise ConfigError(f"requestheader-allowed-names is not JSON: {names_raw!r}") from error
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ConfigError("requestheader-allowed-names must be a JSON list of strings")
    return RequestHeaderAuth(client_ca_pem=ca + "\n", allowed_names=tuple(names))


def server_ssl_context(pair: CertificatePair, client_ca_pem: str | None) -> ssl.SSLContext:
    """Server context: serve ``pair``; ask for a client certificate verified by the CA.

    With a CA, a client certificate is optional at the TLS level (so that a
    request without one gets a proper 401 rather than a handshake error) but,
    when presented, must chain to the CA. Without a CA no client cert is asked for.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory(prefix="wsgauge-tls-") as directory:
        cert_path = os.path.join(directory, "tls.crt")
        key_path = os.path.join(directory, "tls.key")
        with open(cert_path, "wb") as cert_file:
            cert_file.write(pair.cert_pem)
        with open(key_path, "wb") as key_file:
            key_file.write(pair.key_pem)
        os.chmod(key_path, 0o600)
        context.load_cert_chain(cert_path, key_path)
    if client_ca_pem:
        try:
            context.load_verify_locations(cadata=client_ca_pem)
        except ssl.SSLError as error:
            raise ConfigError(f"the request-header client CA is not valid PEM: {error}") from error
        context.verify_mode = ssl.CERT_OPTIONAL
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def read_certificate_pair(cert_file: str, key_file: str) -> CertificatePair:
    """Read a serving certificate and key from files (ConfigError when unreadable)."""
    try:
        return read_pair(Path(cert_file), Path(key_file))
    except OSError as error:
        raise ConfigError(f"cannot read the serving certificate or key: {error}") from error


def peer_common_name(peercert: object) -> str | None:
    """The subject CN of a verified peer certificate (``SSLSocket.getpeercert()`` form)."""
    if not isinstance(peercert, dict):
        return None
    for rdn in peercert.get("subject", ()):
        for attribute in rdn:
            if len(attribute) == 2 and attribute[0] == "commonName":
                return str(attribute[1])
    return None


def serving_certificate_pair(
    cert_file: str | None,
    key_file: str | None,
    self_signed_hosts: Iterable[str],
    *,
    common_name: str = "wsgauge-metrics-api",
) -> CertificatePair:
    """The serving pair from files, or a self-signed one when neither file is given.

    Raises :class:`ConfigError` when only one of the two files is given or they
    cannot be read.
    """
    if cert_file is None and key_file is None:
        return self_signed(self_signed_hosts, common_name=common_name)
    if cert_file is None or key_file is None:
        raise ConfigError("cert_file and key_file must be given together")
    return read_certificate_pair(cert_file, key_file)


async def start_site(
    app: web.Application,
    host: str,
    port: int,
    shutdown_timeout: float,
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on host:port (HTTPS with ``ssl_context``); return the runner and bound port.

    Raises OSError when the port cannot be bound (the runner is cleaned up).
    """
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    addresses = runner.addresses
    bound = int(addresses[0][1]) if addresses else port
    return runner, bound
