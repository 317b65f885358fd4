"""Command-line flags and their environment variables, driven by settings dataclasses.

Both commands, ``wsgauge-sidecar`` and ``wsgauge-operator``, configure themselves with one
mechanism: a :class:`FlagSet` lists each flag once, as a :class:`Flag` naming the field of the
command's settings dataclass it sets (a dotted path into nested frozen dataclasses, such as
``proxy.listen``) and how its text is converted. Everything else follows from the dataclass:

- the default is the field's default (what ``Settings()`` holds), so it is written once;
- the ``--help`` text is the field's docstring (its first paragraph, reStructuredText quotes
  removed, a leading ``--flag:`` dropped), followed by the default and the variable's name;
- the environment variable is the prefix plus the flag in upper case with dashes as
  underscores (``--max-connections`` -> ``WSGAUGE_MAX_CONNECTIONS``).

:meth:`FlagSet.parse` reads the environment, then the command line: a flag given on the
command line wins over its variable, and every value given, from either source, must convert
(:class:`~wsgauge_contract.exceptions.FlagError` names the flag or the variable). What a
command checks across several fields, it checks on the settings :meth:`FlagSet.parse` returns.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import re
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from wsgauge_contract.exceptions import FlagError

_LEADING_FLAG = re.compile(r"^``--[a-z0-9-]+``:\s*")
_LITERAL = re.compile(r"``([^`]*)``")
_ROLE = re.compile(r":[a-z]+:`~?([^`]*)`")


@dataclass(frozen=True)
class Flag:
    """One command-line flag and the settings field it sets."""

    name: str
    """The flag without its dashes (``max-connections``)."""
    field: str
    """Dotted path of the field in the command's settings dataclass (``limits.max_connections``)."""
    convert: Callable[[str], Any] = str
    """Turns the text into the field's value; raises ValueError with a message for bad text."""
    metavar: str = "VALUE"
    """Placeholder of the value in ``--help``."""
    repeat: bool = False
    """Given any number of times (its environment variable: comma-separated values); the
    field holds the tuple of converted values, and the command line's replace the env's."""

    @property
    def dest(self) -> str:
        """The attribute of the ``argparse`` namespace that holds the flag's text."""
        return self.name.replace("-", "_")


def parse_topic_limit(text: str) -> tuple[str, int]:
    """``TOPIC=N``: one value of the sidecar's ``--max-topic-connections`` (and of the
    injector's ``wsgauge.dev/max-topic-connections`` annotation, comma-separated). The topic
    may contain ``=`` (the last one separates N); N is a whole number >= 0."""
    topic, separator, count = text.rpartition("=")
    if not separator or not topic:
        raise ValueError(f"expected TOPIC=N, got {text!r}")
    if not re.fullmatch(r"[0-9]+", count.strip()):
        raise ValueError(f"expected TOPIC=N with a whole number N >= 0, got {text!r}")
    return topic, int(count)


DRAIN_CLOSE_CODES: Mapping[int, str] = {1001: "going away", 1012: "service restart"}
"""The close codes the sidecar's drain can send, with their RFC 6455 / IANA meaning."""

DRAIN_MODES = ("spread", "batches")
"""How the sidecar's drain spaces its closes (``--drain-mode``)."""


def parse_drain_close_code(text: str) -> int:
    """The sidecar's ``--drain-close-code`` (and the injector's ``wsgauge.dev/drain-close-code``):
    1001 or 1012."""
    code = int(text) if re.fullmatch(r"\s*[0-9]+\s*", text) else 0
    if code not in DRAIN_CLOSE_CODES:
        choices = ", ".join(f"{c} ({meaning})" for c, meaning in DRAIN_CLOSE_CODES.items())
        raise ValueError(f"expected {choices}, got {text!r}")
    return code


def parse_drain_mode(text: str) -> str:
    """The sidecar's ``--drain-mode`` (and the injector's ``wsgauge.dev/drain-mode``)."""
    mode = text.strip().lower()
    if mode not in DRAIN_MODES:
        raise ValueError(f"expected one of {', '.join(DRAIN_MODES)}, got {text!r}")
    return mode


_DOCSTRINGS: dict[type, Mapping[str, str]] = {}


def field_docstrings(cls: type) -> Mapping[str, str]:
    """The docstrings written under the fields of a dataclass (``{}`` without its source)."""
    if cls not in _DOCSTRINGS:
        _DOCSTRINGS[cls] = _read_field_docstrings(cls)
    return _DOCSTRINGS[cls]


def _read_field_docstrings(cls: type) -> Mapping[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        previous: str | None = None
        for statement in node.body:
            if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
                previous = statement.target.id
                continue
            if (
                previous is not None
                and isinstance(statement, ast.Expr)
                and isinstance(statement.value, ast.Constant)
                and isinstance(statement.value.value, str)
            ):
                docs[previous] = inspect.cleandoc(statement.value.value)
            previous = None
    return docs


def help_from_docstring(docstring: str) -> str:
    """A docstring's first paragraph as plain ``--help`` text."""
    paragraph = docstring.split("\n\n", 1)[0]
    text = " ".join(paragraph.split())
    text = _LEADING_FLAG.sub("", text)
    return _ROLE.sub(r"\1", _LITERAL.sub(r"\1", text)).rstrip(".")


def show_default(value: object) -> str | None:
    """How a default appears in ``--help`` (None: it is not shown)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return f"{value:g}" if isinstance(value, float) else str(value)
    if isinstance(value, tuple):
        return repr(",".join(map(str, value)))
    return repr(str(value))


@dataclass(frozen=True)
class FlagSet:
    """The flags of one command, over its settings dataclass."""

    settings: type[Any]
    """The command's settings dataclass (every field defaulted)."""
    flags: tuple[Flag, ...]
    """The flags, in ``--help`` order."""
    env_prefix: str
    """Prefix of the environment variables (``WSGAUGE_``, ``WSGAUGE_OPERATOR_``)."""

    def env(self, flag: Flag) -> str:
        """The environment variable of a flag."""
        return self.env_prefix + flag.name.upper().replace("-", "_")

    def _owner(self, flag: Flag) -> tuple[type[Any], str]:
        """The dataclass that declares the flag's field, and the field's name."""
        owner: type[Any] = self.settings
        *sections, name = flag.field.split(".")
        for section in sections:
            owner = type(getattr(owner(), section))
        return owner, name

    def default(self, flag: Flag) -> Any:
        """The flag's default: the field's value in a default settings object."""
        value: Any = self.settings()
        for part in flag.field.split("."):
            value = getattr(value, part)
        return value

    def help(self, flag: Flag) -> str:
        """The flag's ``--help`` text: field docstring, default, environment variable."""
        owner, name = self._owner(flag)
        text = help_from_docstring(field_docstrings(owner).get(name, ""))
        shown = show_default(self.default(flag))
        where = (
            f"env {self.env(flag)}" if shown is None else f"default {shown}; env {self.env(flag)}"
        )
        return f"{text} ({where})" if text else f"({where})"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add every flag to ``parser`` (its text is kept; :meth:`values` converts it)."""
        for flag in self.flags:
            parser.add_argument(
                f"--{flag.name}",
                dest=flag.dest,
                metavar=flag.metavar,
                default=None,
                action="append" if flag.repeat else "store",
                help=self.help(flag).replace("%", "%%"),
            )

    def values(self, namespace: argparse.Namespace, environ: Mapping[str, str]) -> dict[str, Any]:
        """The converted value of every flag given, by field path (the command line wins).

        Raises :class:`FlagError` for the first value, from either source, that does not convert.
        """
        values: dict[str, Any] = {}
        for flag in self.flags:
            env_name = self.env(flag)
            if env_name in environ:
                source = f"environment variable {env_name} (--{flag.name})"
                text = environ[env_name]
                if flag.repeat:
                    items = [item.strip() for item in text.split(",") if item.strip()]
                    values[flag.field] = tuple(_convert(flag, item, source) for item in items)
                else:
                    values[flag.field] = _convert(flag, text, source)
        for flag in self.flags:
            given = getattr(namespace, flag.dest, None)
            if given is None:
                continue
            if flag.repeat:
                values[flag.field] = tuple(_convert(flag, t, f"--{flag.name}") for t in given)
            else:
                values[flag.field] = _convert(flag, given, f"--{flag.name}")
        return values

    def build(self, values: Mapping[str, Any]) -> Any:
        """A settings object: the defaults with ``values`` (by field path) put in."""
        return _replace(
            self.settings(), [(path.split("."), value) for path, value in values.items()]
        )

    def parse(
        self,
        parser: argparse.ArgumentParser,
        argv: Sequence[str] | None,
        environ: Mapping[str, str],
    ) -> Any:
        """Settings from ``argv`` (``parser`` must hold :meth:`add_arguments`), the environment
        and the defaults. ``parser`` handles ``--help`` and unknown flags as it always does;
        :class:`FlagError` for a value that does not convert."""
        namespace = parser.parse_args(None if argv is None else list(argv))
        return self.build(self.values(namespace, environ))


def _convert(flag: Flag, text: str, source: str) -> Any:
    try:
        return flag.convert(text)
    except ValueError as error:
        raise FlagError(source, str(error)) from None


def _replace(settings: Any, changes: list[tuple[list[str], Any]]) -> Any:
    direct: dict[str, Any] = {}
    nested: dict[str, list[tuple[list[str], Any]]] = {}
    for path, value in changes:
        if len(path) == 1:
            direct[path[0]] = value
        else:
            nested.setdefault(path[0], []).append((path[1:], value))
    for section, inner in nested.items():
        direct[section] = _replace(getattr(settings, section), inner)
    return dataclasses.replace(settings, **direct) if direct else settings
