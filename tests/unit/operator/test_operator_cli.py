"""Unit tests of the operator's command line and environment settings."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from wsgauge_operator.cli import build_parser, configure_collector, settings_from
from wsgauge_operator.model.exceptions import ConfigError
from wsgauge_operator.model.settings import CollectorSettings, OperatorSettings


def test_defaults() -> None:
    assert settings_from([], environ={}) == OperatorSettings()


def test_flags_and_environment() -> None:
    settings = settings_from(
        [
            *["--kubeconfig", "/tmp/kc", "--status-interval", "500ms", "--namespaces", "a, b"],
            *["--max-followed-pods", "1500"],
        ],
        environ={
            "WSGAUGE_OPERATOR_STATUS_INTERVAL": "9s",
            "WSGAUGE_OPERATOR_READ_TIMEOUT": "7",
            "WSGAUGE_OPERATOR_READINESS": "false",
            "WSGAUGE_OPERATOR_LISTEN": "127.0.0.1:18090",
        },
    )
    assert settings.kube.kubeconfig == "/tmp/kc"
    assert settings.kube.namespaces == ("a", "b")
    assert settings.status.default_interval == 0.5  # the flag wins over the environment
    assert settings.follower.read_timeout == 7.0
    assert settings.follower.max_followed_pods == 1500
    assert settings.readiness.enabled is False
    assert settings.server.listen == "127.0.0.1:18090"


@pytest.mark.parametrize(
    "argv",
    [
        ["--read-timeout", "soon"],
        ["--readiness", "maybe"],
        ["--top-topics", "many"],
        ["--log-level", "loud"],
        ["--gc-thresholds", "1000,10"],
        ["--gc-thresholds", "1000,ten,10"],
        ["--gc-thresholds=-1,10,10"],
    ],
)
def test_bad_values_are_config_errors(argv: list[str]) -> None:
    with pytest.raises(ConfigError):
        settings_from(argv, environ={})


def test_help_lists_every_option_with_its_default() -> None:
    text = build_parser().format_help()
    for flag in ("--kubeconfig", "--listen", "--status-interval", "--read-timeout", "--readiness"):
        assert flag in text
    assert "'0.0.0.0:8090'" in text
    assert "WSGAUGE_OPERATOR_" in text


def test_gc_thresholds_from_flag_and_environment() -> None:
    assert settings_from([], environ={}).collector.thresholds == (100_000, 50, 100)
    from_environment = settings_from([], environ={"WSGAUGE_OPERATOR_GC_THRESHOLDS": "700,10,10"})
    assert from_environment.collector.thresholds == (700, 10, 10)
    from_flag = settings_from(
        ["--gc-thresholds", " 5000, 20 ,30"], environ={"WSGAUGE_OPERATOR_GC_THRESHOLDS": "1,1,1"}
    )
    assert from_flag.collector.thresholds == (5000, 20, 30)
    assert "'100000,50,100'" in build_parser().format_help()


@pytest.fixture
def restore_collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    enabled = gc.isenabled()
    yield
    gc.set_threshold(*thresholds)
    if enabled:
        gc.enable()
    else:
        gc.disable()


@pytest.mark.usefixtures("restore_collector")
def test_configure_collector_sets_the_thresholds() -> None:
    gc.disable()
    configure_collector(CollectorSettings(thresholds=(12345, 6, 7)))
    assert gc.get_threshold() == (12345, 6, 7)
    assert gc.isenabled()


@pytest.mark.usefixtures("restore_collector")
def test_configure_collector_zero_turns_cyclic_collection_off() -> None:
    configure_collector(CollectorSettings(thresholds=(0, 0, 0)))
    assert not gc.isenabled()
