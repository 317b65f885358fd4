"""The real operator on the real control plane: its metrics API admits only the aggregator,
and its debug log never contains a credential.

One operator process runs with ``--log-level debug`` and ``--metrics-api true``: it logs in
to the API server (client certificate *and* a bearer token in its kubeconfig), reads the
request-header CA from ``kube-system/extension-apiserver-authentication``, serves the
metrics API over TLS, and writes a ConnectionStats status. Direct TLS clients then try the
metrics API the ways an attacker inside the cluster could:

* no client certificate (and forged ``X-Remote-User`` headers): 401;
* the cluster admin's certificate (signed by the cluster CA, which the API server trusts
  for users but the metrics API must not): refused at the TLS handshake, or 401/403;
* a certificate from the request-header CA with a name not in ``requestheader-allowed-names``:
  403;
* the aggregator's own front-proxy client certificate: 200 (the check is not vacuous).

Finally the whole operator log is searched for the token, PEM blocks, private keys and the
base64 of the kubeconfig's certificate and key.
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from operator_it_cluster_helpers import OperatorProcess, condition_of, connection_stats, wait_status
from operator_it_harness import free_port, wait_for_port
from wsgauge_devcluster.testing import KubeCluster
from wsgauge_operator.tls.certificates import issue, read_pair, write_pair

TOKEN = "wsgauge-test-bearer-token-0123456789abcdef"  # bogus: the certificate authenticates
BASE = "/apis/custom.metrics.k8s.io/v1beta2"


def kubeconfig_with_token(kube: KubeCluster, directory: Path) -> tuple[Path, dict[str, Any]]:
    """The cluster's kubeconfig plus a bearer token on its user (written to ``directory``)."""
    config = yaml.safe_load(Path(kube.kubeconfig).read_text())
    user = config["users"][0]["user"]
    user["token"] = TOKEN
    path = directory / "kubeconfig-with-token"
    path.write_text(yaml.safe_dump(config))
    return path, user


def issue_client(
    ca_cert: Path, ca_key: Path, common_name: str, directory: Path
) -> tuple[Path, Path]:
    """A client certificate for ``common_name`` signed by the given CA files."""
    cert_path, key_path = directory / f"{common_name}.crt", directory / f"{common_name}.key"
    write_pair(issue(read_pair(ca_cert, ca_key), common_name, days=1), cert_path, key_path)
    return cert_path, key_path


def client_context(cert: tuple[Path, Path] | None) -> ssl.SSLContext:
    # the serving certificate is the operator's self-signed one; what is under test is
    # whether the *server* accepts the client
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    return context


async def status_of_request(
    url: str, context: ssl.SSLContext, headers: dict[str, str] | None = None
) -> int | str:
    """The HTTP status, or the name of the TLS/connection error that refused the client."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.get(url, ssl=context, headers=headers) as response,
        ):
            await response.read()
            return response.status
    except aiohttp.ClientError as error:
        return type(error).__name__


async def test_metrics_api_admits_only_the_aggregator_and_the_log_holds_no_secret(
    kube: KubeCluster, crd: str, namespace: str, tmp_path: Path
) -> None:
    kubeconfig, user = kubeconfig_with_token(kube, tmp_path)
    port = free_port()
    operator = OperatorProcess(
        kube, namespace, tmp_path / "operator.log",
        "--kubeconfig", str(kubeconfig),
        "--metrics-api", "true",
        "--metrics-api-listen", f"127.0.0.1:{port}",
        "--log-level", "debug",
    )  # fmt: skip
    try:
        await asyncio.to_thread(wait_for_port, "127.0.0.1", port, 30)
        # the operator works with this login: it writes a status
        kube.apply(connection_stats(namespace, "nothing", selector={"matchLabels": {"a": "b"}}))
        status = await asyncio.to_thread(
            wait_status,
            kube,
            namespace,
            lambda s: condition_of(s, "Ready") is not None,
            "a status",
            30.0,
            "nothing",
        )
        assert condition_of(status, "Ready") == ("False", "NoPodsMatched")

        pki = Path(kube.kubeconfig).parent / "pki"
        url = f"https://127.0.0.1:{port}{BASE}"
        aggregator = (pki / "front-proxy-client.crt", pki / "front-proxy-client.key")
        assert await status_of_request(url, client_context(aggregator)) == 200

        anonymous = client_context(None)
        assert await status_of_request(url, anonymous) == 401
        forged = {"X-Remote-User": "system:admin", "X-Remote-Group": "system:masters"}
        assert await status_of_request(url, anonymous, forged) == 401

        admin = client_context((pki / "admin.crt", pki / "admin.key"))
        refused = await status_of_request(url, admin, forged)
        assert refused in (401, 403) or isinstance(refused, str), refused

        mallory = issue_client(
            pki / "front-proxy-ca.crt", pki / "front-proxy-ca.key", "mallory", tmp_path
        )
        assert await status_of_request(url, client_context(mallory), forged) == 403
        # the aggregator still gets through after all that
        assert await status_of_request(url, client_context(aggregator)) == 200
    finally:
        operator.stop()

    log = operator.output()
    assert "DEBUG" in log or "debug" in log.lower(), "the operator did not log at debug level"
    assert len(log) > 2000, "suspiciously short log"
    secrets = {
        "the bearer token": TOKEN,
        "a PEM block": "-----BEGIN",
        "a private key": "PRIVATE KEY",
        "the kubeconfig's certificate": user["client-certificate-data"][:48],
        "the kubeconfig's key": user["client-key-data"][:48],
        "the admin key (decoded)": base64.b64decode(user["client-key-data"]).decode()[40:100],
    }
    for what, needle in secrets.items():
        assert needle not in log, f"{what} appears in the operator log"
    # the word "Bearer" with anything after it (a token printed by a client library)
    assert "Bearer " not in log, "a bearer header in the log"
    assert not re.search(r"authorization['\"]?\s*[:=]", log, re.IGNORECASE), (
        "auth header in the log"
    )
