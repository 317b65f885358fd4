"""``HOST:PORT`` (:mod:`wsgauge_contract.address`): what every address flag and annotation of the
sidecar and the operator accepts and refuses, the empty host, IPv6 brackets, and round trips;
and that the operator's and the sidecar's readers agree because they are this one parser."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wsgauge_contract import Address, AddressError
from wsgauge_operator.autoscaling.services import split_listen
from wsgauge_operator.injector.plan import InjectorSettings, effective_settings
from wsgauge_operator.injector.server import parse_command
from wsgauge_operator.model.exceptions import ConfigError
from wsgauge_sidecar.cli import parse_settings


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("0.0.0.0:8080", "0.0.0.0", 8080),
        ("app:8081", "app", 8081),
        ("  10.1.2.3:1  ", "10.1.2.3", 1),
        ("[::]:9090", "::", 9090),
        ("[::1]:0", "::1", 0),
        ("[fe80::1%eth0]:80", "fe80::1%eth0", 80),
        ("localhost:65535", "localhost", 65535),
    ],
)
def test_parse_accepts_host_port_and_bracketed_ipv6(text: str, host: str, port: int) -> None:
    assert Address.parse(text) == Address(host, port)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("8080", "expected HOST:PORT"),
        ("localhost", "expected HOST:PORT"),
        (":8080", "no host"),
        ("::1:8080", "need brackets"),
        ("[::1]8080", "expected \\[IPV6\\]:PORT"),
        ("[10.0.0.1]:80", "IPv6 addresses only"),
        ("[::1:80", "expected \\[IPV6\\]:PORT"),
        ("a b:80", "not a host"),
        ("host:", "port must be"),
        ("host:http", "port must be"),
        ("host:-1", "port must be"),
        ("host:65536", "port must be"),
    ],
)
def test_parse_refuses_the_rest_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(AddressError, match=message):
        Address.parse(text)


def test_an_empty_host_is_every_interface_to_listen_on_and_the_loopback_to_connect_to() -> None:
    assert Address.parse_listen(":8090") == Address("0.0.0.0", 8090)
    assert Address.parse_connect(":8081") == Address("127.0.0.1", 8081)
    assert Address.parse_listen("[::]:0") == Address("::", 0)  # any free port
    with pytest.raises(AddressError, match="from 1 to 65535"):
        Address.parse_connect("app:0")


def test_formatting_brackets_ipv6_only() -> None:
    assert str(Address("::1", 80)) == "[::1]:80"
    assert Address("::1", 80).url_host == "[::1]"
    assert str(Address("10.0.0.1", 80)) == "10.0.0.1:80"
    assert Address("pod.ns.svc", 80).url_host == "pod.ns.svc"


_hosts = st.one_of(
    st.ip_addresses().map(str),
    st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,10}){0,3}", fullmatch=True),
)


@given(host=_hosts, port=st.integers(0, 65535))
def test_format_then_parse_round_trips(host: str, port: int) -> None:
    address = Address(host, port)
    assert Address.parse(str(address)) == address


@pytest.mark.parametrize(
    ("text", "expected"),
    [(":8090", ("0.0.0.0", 8090)), ("[::1]:8090", ("::1", 8090)), ("1.2.3.4:1", ("1.2.3.4", 1))],
)
def test_the_operator_and_the_sidecar_read_listen_addresses_alike(
    text: str, expected: tuple[str, int]
) -> None:
    assert split_listen(text, "--keda-listen") == expected
    injector = parse_command(["--listen", text], environ={})
    assert (injector.server.host, injector.server.port) == expected
    sidecar = parse_settings(["--listen", text], environ={}).proxy.listen
    assert (sidecar.host, sidecar.port) == expected


@pytest.mark.parametrize("text", ["::1:8090", "localhost", "host:99999"])
def test_the_operator_and_the_sidecar_refuse_the_same_addresses(
    text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError, match="--keda-listen"):
        split_listen(text, "--keda-listen")
    with pytest.raises(ConfigError, match="--listen"):
        parse_command(["--listen", text], environ={})
    with pytest.raises(SystemExit):
        parse_settings(["--listen", text], environ={})
    assert "--listen" in capsys.readouterr().err


def test_the_upstream_annotation_is_a_port_or_an_address_to_connect_to() -> None:
    base = InjectorSettings(image="i")
    upstream = "wsgauge.dev/upstream"
    assert effective_settings(base, {upstream: "3000"}).upstream == "127.0.0.1:3000"
    assert effective_settings(base, {upstream: "app:3000"}).upstream == "app:3000"
    assert effective_settings(base, {upstream: "[::1]:3000"}).upstream == "[::1]:3000"
    for bad in ("0", "app:http", "::1:3000"):
        with pytest.raises(ValueError, match=upstream):
            effective_settings(base, {upstream: bad})
