"""The one flag/env mechanism: both commands parse a table of inputs as they did before it.

``cli_parse_results.json`` holds, for each input (argv and environment), what the commands'
own hand-written parsers made of it before they moved onto :mod:`wsgauge_contract.flags`: the
settings fields that differ from the defaults (as ``repr``), or how the parse failed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from wsgauge_contract import FlagError
from wsgauge_contract.flags import (
    Flag,
    FlagSet,
    field_docstrings,
    help_from_docstring,
    parse_drain_close_code,
    parse_drain_mode,
)
from wsgauge_operator import cli as operator_cli
from wsgauge_operator.model.exceptions import ConfigError
from wsgauge_operator.model.settings import OperatorSettings
from wsgauge_sidecar import cli as sidecar_cli
from wsgauge_sidecar.settings import SidecarSettings

TABLE: dict[str, list[dict[str, Any]]] = json.loads(
    (Path(__file__).parent / "cli_parse_results.json").read_text()
)


def _flat(settings: Any, prefix: str = "") -> dict[str, str]:
    values: dict[str, str] = {}
    for item in dataclasses.fields(settings):
        value = getattr(settings, item.name)
        if dataclasses.is_dataclass(value) and type(value).__name__.endswith(
            ("Settings", "Identity")
        ):
            values.update(_flat(value, f"{prefix}{item.name}."))
        else:
            values[prefix + item.name] = repr(value)
    return values


def _changes(settings: Any, default: Any) -> dict[str, str]:
    base = _flat(default)
    return {key: value for key, value in _flat(settings).items() if base[key] != value}


def _sidecar(argv: list[str], environ: dict[str, str]) -> dict[str, str] | str:
    quiet = io.StringIO()
    with contextlib.redirect_stderr(quiet), contextlib.redirect_stdout(quiet):
        try:
            return _changes(sidecar_cli.parse_settings(argv, environ), SidecarSettings())
        except SystemExit as exit_info:
            return f"exit {exit_info.code}"


def _operator(argv: list[str], environ: dict[str, str]) -> dict[str, str] | str:
    quiet = io.StringIO()
    with contextlib.redirect_stderr(quiet), contextlib.redirect_stdout(quiet):
        try:
            return _changes(operator_cli.settings_from(argv, environ), OperatorSettings())
        except ConfigError:
            return "error"
        except SystemExit as exit_info:
            return f"exit {exit_info.code}"


@pytest.mark.parametrize(
    "case", TABLE["sidecar"], ids=lambda case: f"{case['argv']}-{sorted(case['environ'])}"
)
def test_sidecar_parses_as_before(case: dict[str, Any]) -> None:
    assert _sidecar(case["argv"], case["environ"]) == case["result"]


@pytest.mark.parametrize(
    "case", TABLE["operator"], ids=lambda case: f"{case['argv']}-{sorted(case['environ'])}"
)
def test_operator_parses_as_before(case: dict[str, Any]) -> None:
    assert _operator(case["argv"], case["environ"]) == case["result"]


def test_the_table_covers_every_flag_from_argv_and_environment() -> None:
    for name, flags in (("sidecar", sidecar_cli.FLAGS), ("operator", operator_cli.FLAGS)):
        given_argv = {arg for case in TABLE[name] for arg in case["argv"]}
        given_env = {key for case in TABLE[name] for key in case["environ"]}
        for flag in flags.flags:
            assert f"--{flag.name}" in given_argv or any(
                arg.startswith(f"--{flag.name}=") for arg in given_argv
            ), flag.name
            assert flags.env(flag) in given_env, flag.name


@pytest.mark.parametrize("flags", [sidecar_cli.FLAGS, operator_cli.FLAGS])
def test_every_flag_has_help_from_its_docstring_and_an_env_name(flags: FlagSet) -> None:
    parser = argparse.ArgumentParser()
    flags.add_arguments(parser)
    text = " ".join(parser.format_help().split())
    for flag in flags.flags:
        help_text = flags.help(flag)
        assert not help_text.startswith("("), f"--{flag.name} has no docstring"
        assert f"env {flags.env(flag)}" in help_text
        assert " ".join(help_text.split()) in text


def test_environment_names_are_unchanged() -> None:
    sidecar = {sidecar_cli.FLAGS.env(flag) for flag in sidecar_cli.FLAGS.flags}
    assert {"WSGAUGE_MAX_CONNECTIONS", "WSGAUGE_ADMIN_LISTEN", "WSGAUGE_TOPIC"} <= sidecar
    operator = {operator_cli.FLAGS.env(flag) for flag in operator_cli.FLAGS.flags}
    assert {"WSGAUGE_OPERATOR_LEADER_ELECT", "WSGAUGE_OPERATOR_GC_THRESHOLDS"} <= operator


@dataclass(frozen=True)
class Inner:
    """A nested section."""

    count: int = 3
    """``--count``: how many ``things``.

    A second paragraph that --help leaves out."""
    ratio: float = 0.5
    """A ratio."""


@dataclass(frozen=True)
class Outer:
    """A settings root."""

    inner: Inner = field(default_factory=Inner)
    """The section."""
    name: str = "x"
    """Name of it."""


EXAMPLE = FlagSet(
    Outer,
    (
        Flag("count", "inner.count", int, "N"),
        Flag("name", "name"),
        Flag("ratio", "inner.ratio", float),
    ),
    "EX_",
)


def _parse(argv: list[str], environ: dict[str, str]) -> Outer:
    parser = argparse.ArgumentParser()
    EXAMPLE.add_arguments(parser)
    result: Outer = EXAMPLE.parse(parser, argv, environ)
    return result


def test_docstrings_become_help() -> None:
    assert field_docstrings(Inner)["ratio"] == "A ratio."
    assert help_from_docstring(field_docstrings(Inner)["count"]) == "how many things"
    assert EXAMPLE.help(EXAMPLE.flags[0]) == "how many things (default 3; env EX_COUNT)"
    assert EXAMPLE.help(EXAMPLE.flags[1]) == "Name of it (default 'x'; env EX_NAME)"


def test_flag_wins_over_environment_and_defaults_fill_the_rest() -> None:
    assert _parse([], {}) == Outer()
    assert _parse(["--count", "5"], {"EX_COUNT": "4", "EX_NAME": "y"}) == Outer(Inner(5), "y")
    assert _parse([], {"EX_RATIO": "2"}) == Outer(Inner(ratio=2.0))


def test_a_bad_value_names_its_source() -> None:
    with pytest.raises(FlagError, match=r"^--count: invalid literal"):
        _parse(["--count", "many"], {})
    with pytest.raises(FlagError, match=r"^environment variable EX_COUNT \(--count\)"):
        _parse([], {"EX_COUNT": "many"})
    with pytest.raises(FlagError, match="EX_COUNT"):  # checked even when the flag is given
        _parse(["--count", "5"], {"EX_COUNT": "many"})


def test_drain_parsers_shared_by_the_sidecar_and_the_injector() -> None:
    assert parse_drain_close_code(" 1012 ") == 1012
    assert parse_drain_close_code("1001") == 1001
    for bad in ("1000", "1012.0", "", "restart", "-1001"):
        with pytest.raises(ValueError, match="1001"):
            parse_drain_close_code(bad)
    assert parse_drain_mode(" Batches ") == "batches"
    with pytest.raises(ValueError, match="spread, batches"):
        parse_drain_mode("burst")
