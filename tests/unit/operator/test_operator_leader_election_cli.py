"""Unit tests of the leader-election wiring: flags and environment, identity, Lease namespace,
and the probe answers of a standby and of a starting leader (real aiohttp servers on
loopback)."""

from __future__ import annotations

import asyncio
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from wsgauge_operator.cli import build_parser, settings_from
from wsgauge_operator.control.controller import Controller
from wsgauge_operator.kube.leadership import holder_identity, lease_namespace
from wsgauge_operator.model.exceptions import ConfigError
from wsgauge_operator.model.settings import LeaderElectionSettings, OperatorSettings, ServerSettings
from wsgauge_operator.servers.standby_server import (
    STANDBY,
    STARTING,
    StandbyLiveness,
    liveness_address,
)
from wsgauge_operator.servers.stats_server import StatsServer


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_leader_election_is_off_by_default_on_the_command_line() -> None:
    settings = settings_from([], environ={})
    assert settings.leader_election == LeaderElectionSettings()
    assert settings.leader_election.enabled is False


def test_flags_and_environment_set_leader_election() -> None:
    settings = settings_from(
        ["--leader-elect", "true", "--leader-election-lease-duration", "20s"],
        environ={
            "WSGAUGE_OPERATOR_LEADER_ELECTION_NAMESPACE": "wsgauge-system",
            "WSGAUGE_OPERATOR_LEADER_ELECTION_LEASE_NAME": "rel-wsgauge-operator",
            "WSGAUGE_OPERATOR_LEADER_ELECTION_RENEW_DEADLINE": "12",
            "WSGAUGE_OPERATOR_LEADER_ELECTION_RETRY_PERIOD": "500ms",
            "WSGAUGE_OPERATOR_LEADER_ELECTION_LEASE_DURATION": "99",
        },
    )
    election = settings.leader_election
    assert election.enabled is True
    assert election.namespace == "wsgauge-system"
    assert election.lease_name == "rel-wsgauge-operator"
    assert election.lease_duration == 20.0  # the flag wins
    assert election.renew_deadline == 12.0
    assert election.retry_period == 0.5


@pytest.mark.parametrize(
    "argv",
    [
        ["--leader-elect", "perhaps"],
        ["--leader-elect", "true", "--leader-election-renew-deadline", "15"],
        ["--leader-elect", "true", "--leader-election-retry-period", "9"],
        ["--leader-elect", "true", "--leader-election-lease-duration", "-1"],
        ["--leader-elect", "true", "--leader-election-lease-name", ""],
    ],
)
def test_impossible_leader_election_settings_are_config_errors(argv: list[str]) -> None:
    with pytest.raises(ConfigError):
        settings_from(argv, environ={})


def test_help_lists_the_leader_election_flags() -> None:
    text = build_parser().format_help()
    for flag in (
        "--leader-elect",
        "--leader-election-namespace",
        "--leader-election-lease-name",
        "--leader-election-lease-duration",
        "--leader-election-renew-deadline",
        "--leader-election-retry-period",
    ):
        assert flag in text


def test_identity_is_unique_per_process_unless_given() -> None:
    settings = LeaderElectionSettings(enabled=True)
    first = holder_identity(settings, "wsgauge-operator-7d9f-abc")
    second = holder_identity(settings, "wsgauge-operator-7d9f-abc")
    assert first.startswith("wsgauge-operator-7d9f-abc_")
    assert first != second
    fixed = LeaderElectionSettings(enabled=True, identity="op-a")
    assert holder_identity(fixed, "ignored") == "op-a"


def test_lease_namespace_setting_then_service_account_then_default(tmp_path: Path) -> None:
    account = tmp_path / "namespace"
    assert lease_namespace(LeaderElectionSettings(namespace="x"), account) == "x"
    assert lease_namespace(LeaderElectionSettings(), account) == "default"
    account.write_text("wsgauge-system\n")
    assert lease_namespace(LeaderElectionSettings(), account) == "wsgauge-system"


def test_liveness_urls_are_parsed_or_refused() -> None:
    assert liveness_address("http://0.0.0.0:8091/healthz") == ("0.0.0.0", 8091, "/healthz")
    with pytest.raises(ConfigError, match="no port"):
        liveness_address("http://localhost/healthz")


async def test_a_malformed_stats_address_is_a_config_error() -> None:
    settings = ServerSettings(listen="localhost")
    with pytest.raises(ConfigError, match="stats server address"):
        await StatsServer(Controller(OperatorSettings(), None), settings).open(STANDBY)


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


async def _status_async(url: str) -> int:
    return await asyncio.to_thread(_status, url)


async def test_standby_liveness_answers_and_frees_its_port() -> None:
    liveness_port = free_port()
    endpoint = f"http://127.0.0.1:{liveness_port}/healthz"
    server = StandbyLiveness(endpoint)
    await server.start()
    try:
        assert await _status_async(endpoint) == 200
    finally:
        await server.stop()
    # kopf binds the same address right after
    again = StandbyLiveness(endpoint)
    await again.start()
    await again.stop()


async def test_standby_liveness_refuses_an_address_in_use() -> None:
    busy = f"http://127.0.0.1:{free_port()}/healthz"
    first = StandbyLiveness(busy)
    await first.start()
    try:
        with pytest.raises(ConfigError):
            await StandbyLiveness(busy).start()
    finally:
        await first.stop()


async def test_stats_server_refuses_an_address_in_use() -> None:
    listen = f"127.0.0.1:{free_port()}"
    first = StatsServer(Controller(OperatorSettings(), None), ServerSettings(listen=listen))
    await first.open(STANDBY)
    try:
        second = StatsServer(Controller(OperatorSettings(), None), ServerSettings(listen=listen))
        with pytest.raises(ConfigError):
            await second.open(STANDBY)
    finally:
        await first.stop()


async def test_stats_port_answers_standby_then_starting_then_serves_without_closing() -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = StatsServer(
        Controller(OperatorSettings(), None), ServerSettings(listen=f"127.0.0.1:{port}")
    )
    await server.open(STANDBY)
    refused: list[str] = []
    seen: list[tuple[str, int]] = []
    done = threading.Event()

    def probe() -> None:  # connects again and again across both switches
        while not done.is_set():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5):
                    pass
            except OSError as error:
                refused.append(repr(error))

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        for path in ("/healthz", "/readyz", "/stats", "/metrics"):
            seen.append((path, await _status_async(base + path)))
        server.hold(STARTING)
        seen.append(("/readyz", await _status_async(base + "/readyz")))
        seen.append(("/healthz", await _status_async(base + "/healthz")))
        await server.start()
        seen.append(("/stats", await _status_async(base + "/stats")))
        seen.append(("/nowhere", await _status_async(base + "/nowhere")))
    finally:
        done.set()
        await asyncio.to_thread(prober.join)
        await server.stop()
    assert seen == [
        ("/healthz", 200), ("/readyz", 503), ("/stats", 503), ("/metrics", 503),
        ("/readyz", 503), ("/healthz", 200),
        ("/stats", 200), ("/nowhere", 404),
    ]  # fmt: skip
    assert refused == []
    assert server.holding is None
