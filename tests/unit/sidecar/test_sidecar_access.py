"""Unit tests of who may change a sidecar's state (wsgauge_sidecar.access), ``--report-listen``."""

from __future__ import annotations

import pytest
from wsgauge_contract import Address
from wsgauge_sidecar.access import (
    READ_ONLY_METHODS,
    LogThrottle,
    is_loopback_host,
    peer_host,
    refusal,
)
from wsgauge_sidecar.cli import parse_settings


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "::ffff:127.0.0.1", "localhost", "::1%lo"],
)
def test_loopback_hosts(host: str) -> None:
    assert is_loopback_host(host)


@pytest.mark.parametrize(
    "host",
    [
        "10.244.0.7",
        "192.0.2.2",
        "0.0.0.0",
        "::",
        "",
        "::ffff:10.244.0.7",
        "fe80::1",
        "localhost.evil.example",
        "127.0.0.1.nip.io",
        "2130706433",  # 127.0.0.1 as a number: not an address literal the kernel reports
    ],
)
def test_other_hosts_are_not_loopback(host: str) -> None:
    assert not is_loopback_host(host)


def test_peer_host_of_transport_peernames() -> None:
    assert peer_host(("10.244.0.7", 51234)) == "10.244.0.7"
    assert peer_host(("::1", 51234, 0, 0)) == "::1"
    assert peer_host(None) is None
    assert peer_host("/run/socket") is None
    assert peer_host(()) is None


@pytest.mark.parametrize("method", sorted(READ_ONLY_METHODS))
def test_read_only_methods_are_served_to_anyone(method: str) -> None:
    assert refusal(method, "10.244.0.7") is None
    assert refusal(method, None) is None


@pytest.mark.parametrize("method", ["PUT", "POST", "DELETE", "PATCH", "put", "PROPFIND"])
def test_state_changing_methods_only_from_loopback(method: str) -> None:
    assert refusal(method, "127.0.0.1") is None
    assert refusal(method, "::ffff:127.0.0.1") is None
    reason = refusal(method, "10.244.0.7")
    assert reason is not None
    assert "loopback" in reason
    assert refusal(method, None) is not None  # an unknown peer is not the pod itself


def test_log_throttle_admits_one_line_per_interval_and_counts_the_rest() -> None:
    throttle = LogThrottle(interval=1.0)
    assert throttle.admit(100.0) == 0
    assert throttle.admit(100.1) is None
    assert throttle.admit(100.9) is None
    assert throttle.admit(101.0) == 2
    assert throttle.admit(101.5) is None
    assert throttle.admit(200.0) == 1
    assert throttle.admit(201.0) == 0


def test_report_listen_defaults_to_loopback_9091() -> None:
    settings = parse_settings([], environ={})
    assert settings.admin.report_listen == Address("127.0.0.1", 9091)
    from_env = parse_settings([], environ={"WSGAUGE_REPORT_LISTEN": "[::1]:7000"})
    assert from_env.admin.report_listen == Address("::1", 7000)
    flag_wins = parse_settings(
        ["--report-listen", "127.0.0.1:7001"], environ={"WSGAUGE_REPORT_LISTEN": "[::1]:7000"}
    )
    assert flag_wins.admin.report_listen == Address("127.0.0.1", 7001)


@pytest.mark.parametrize("address", ["0.0.0.0:9091", ":9091", "[::]:9091", "10.244.0.7:9091"])
def test_report_listen_must_be_a_loopback_address(
    address: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        parse_settings(["--topic", "report", "--report-listen", address], environ={})
    assert stopped.value.code == 2
    assert "--report-listen" in capsys.readouterr().err


def test_report_listen_must_differ_from_the_admin_port_in_report_mode(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        parse_settings(["--topic", "report", "--admin-listen", "0.0.0.0:9091"], environ={})
    assert "--report-listen" in capsys.readouterr().err
    # outside report mode the listener is not opened, so no conflict
    parse_settings(["--admin-listen", "0.0.0.0:9091"], environ={})


def test_help_names_the_report_listen_flag_and_its_variable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        parse_settings(["--help"], environ={})
    text = capsys.readouterr().out
    assert "--report-listen" in text
    assert "WSGAUGE_REPORT_LISTEN" in text
