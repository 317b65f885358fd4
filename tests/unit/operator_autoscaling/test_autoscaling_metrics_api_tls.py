"""TLS helpers of the metrics API: ConfigMap parsing, self-signed certificates, peer names."""

from __future__ import annotations

import ipaddress

import pytest
from cryptography import x509
from wsgauge_operator.model.exceptions import ConfigError
from wsgauge_operator.tls.certificates import self_signed
from wsgauge_operator.tls.serving import (
    peer_common_name,
    request_header_auth_from_data,
    server_ssl_context,
)

CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"


def test_configmap_data_parsed() -> None:
    auth = request_header_auth_from_data(
        {
            "requestheader-client-ca-file": CA,
            "requestheader-allowed-names": '["front-proxy-client","aggregator"]',
            "client-ca-file": "ignored",
        }
    )
    assert auth.client_ca_pem.strip() == CA
    assert auth.allowed_names == ("front-proxy-client", "aggregator")
    assert request_header_auth_from_data({"requestheader-client-ca-file": CA}).allowed_names == ()


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"requestheader-client-ca-file": "  "},
        {"requestheader-client-ca-file": CA, "requestheader-allowed-names": "not json"},
        {"requestheader-client-ca-file": CA, "requestheader-allowed-names": '{"a": 1}'},
        {"requestheader-client-ca-file": CA, "requestheader-allowed-names": "[1]"},
    ],
)
def test_bad_configmap_data(data: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        request_header_auth_from_data(data)


def test_self_signed_certificate_names() -> None:
    pair = self_signed(["localhost", "127.0.0.1", "wsgauge.svc"], common_name="wsgauge-metrics-api")
    cert = x509.load_pem_x509_certificate(pair.cert_pem)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost", "wsgauge.svc"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert b"PRIVATE KEY" in pair.key_pem
    context = server_ssl_context(pair, None)
    assert context.verify_mode.name == "CERT_NONE"


def test_invalid_client_ca_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        server_ssl_context(self_signed(["localhost"], common_name="wsgauge-metrics-api"), CA)


def test_peer_common_name() -> None:
    peer = {"subject": ((("organizationName", "k8s"),), (("commonName", "front-proxy-client"),))}
    assert peer_common_name(peer) == "front-proxy-client"
    assert peer_common_name({}) is None
    assert peer_common_name(None) is None
