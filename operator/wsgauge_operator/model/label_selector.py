"""Kubernetes label selectors: the operator's one selector model and its string form.

A :class:`LabelSelector` is a list of :class:`Requirement`, all of which must match.
It comes from either of the two forms Kubernetes writes selectors in:

- the structured ``metav1.LabelSelector`` (``matchLabels`` and ``matchExpressions``) of a
  ConnectionStats ``spec.selector``: :mod:`.spec` validates the fields and
  builds the model with :meth:`LabelSelector.from_match`;
- the string syntax of ``k8s.io/apimachinery/pkg/labels`` (``app=chat,tier in (a,b),!canary``)
  in which the custom metrics API receives the HPA's pod and metric selectors and a scale
  subresource reports its pods' selector: :func:`parse_label_selector`.

This pure module matches label sets against a selector and writes it back in either form:
:meth:`LabelSelector.to_query` (the string form, for ``labelSelector=`` in list calls) and
:meth:`LabelSelector.to_label_selector_dict` (the structured form, in the ``metric.selector``
field of v1beta2 answers).

Supported requirements (as in apimachinery): ``k``, ``!k``, ``k=v``, ``k==v``,
``k!=v``, ``k in (v1,v2)``, ``k notin (v1,v2)``, ``k>N``, ``k<N``. Keys and
values are validated like Kubernetes does (qualified names, 63-character values).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from wsgauge_operator.model.exceptions import OperatorError

MAX_SELECTOR_LENGTH = 4096
"""Longest selector string accepted (a query parameter; Kubernetes has no tighter rule)."""


class LabelSelectorError(OperatorError):
    """A label selector string is malformed (answered with HTTP 400 by the metrics API)."""


class Operator(Enum):
    """The operator of one requirement."""

    EXISTS = "exists"
    DOES_NOT_EXIST = "!"
    EQUALS = "="
    NOT_EQUALS = "!="
    IN = "in"
    NOT_IN = "notin"
    GREATER_THAN = "gt"
    LESS_THAN = "lt"


STRUCTURED_OPERATORS: Mapping[str, Operator] = {
    "In": Operator.IN,
    "NotIn": Operator.NOT_IN,
    "Exists": Operator.EXISTS,
    "DoesNotExist": Operator.DOES_NOT_EXIST,
}
"""The ``matchExpressions`` operators and the requirement operator each one means."""


@dataclass(frozen=True)
class Requirement:
    """One comma-separated part of a selector."""

    key: str = ""
    """The label key."""
    operator: Operator = Operator.EXISTS
    """How the key's value is tested."""
    values: tuple[str, ...] = ()
    """Values for ``=``/``!=`` (one), ``in``/``notin`` (one or more), ``>``/``<`` (one integer)."""

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a label set satisfies this requirement (apimachinery semantics)."""
        present = self.key in labels
        value = labels.get(self.key, "")
        if self.operator is Operator.EXISTS:
            return present
        if self.operator is Operator.DOES_NOT_EXIST:
            return not present
        if self.operator in (Operator.EQUALS, Operator.IN):
            return present and value in self.values
        if self.operator in (Operator.NOT_EQUALS, Operator.NOT_IN):
            return not present or value not in self.values
        if not present:
            return False
        try:
            number = int(value)
        except ValueError:
            return False
        bound = int(self.values[0])
        return number > bound if self.operator is Operator.GREATER_THAN else number < bound

    def to_query(self) -> str:
        """This requirement in the string syntax (``k=v``, ``k in (a,b)``, ``!k``, ``k>1``)."""
        op = self.operator
        if op is Operator.EXISTS:
            return self.key
        if op is Operator.DOES_NOT_EXIST:
            return f"!{self.key}"
        if op in (Operator.IN, Operator.NOT_IN):
            return f"{self.key} {op.value} ({','.join(self.values)})"
        symbol = {Operator.EQUALS: "=", Operator.NOT_EQUALS: "!=", Operator.GREATER_THAN: ">"}
        return f"{self.key}{symbol.get(op, '<')}{self.values[0]}"


@dataclass(frozen=True)
class LabelSelector:
    """A parsed selector: all requirements must match. No requirement matches everything."""

    requirements: tuple[Requirement, ...] = ()
    """The requirements, in the order written."""

    @classmethod
    def from_match(
        cls,
        match_labels: Mapping[str, str] | None = None,
        match_expressions: Iterable[Requirement] = (),
    ) -> LabelSelector:
        """The selector of a structured ``metav1.LabelSelector``: one ``k=v`` requirement per
        ``matchLabels`` entry (sorted by key), then the expressions in their order."""
        labels = match_labels or {}
        equalities = tuple(
            Requirement(key, Operator.EQUALS, (labels[key],)) for key in sorted(labels)
        )
        return cls(equalities + tuple(match_expressions))

    @property
    def empty(self) -> bool:
        """True when the selector selects everything."""
        return not self.requirements

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a label set satisfies every requirement."""
        return all(requirement.matches(labels) for requirement in self.requirements)

    def equality_value(self, key: str) -> str | None:
        """The single value ``key`` must have (``k=v``, ``k==v``, ``k in (v)``), else None."""
        for requirement in self.requirements:
            if requirement.key != key:
                continue
            if requirement.operator in (Operator.EQUALS, Operator.IN) and (
                len(requirement.values) == 1
            ):
                return requirement.values[0]
        return None

    def to_query(self) -> str:
        """The selector in ``kubectl -l`` / ``labelSelector=`` syntax."""
        return ",".join(requirement.to_query() for requirement in self.requirements)

    def to_label_selector_dict(self) -> dict[str, Any]:
        """The structured ``metav1.LabelSelector`` form (``>``/``<`` have none and are left out)."""
        match_labels: dict[str, str] = {}
        expressions: list[dict[str, Any]] = []
        for requirement in self.requirements:
            op = requirement.operator
            if op is Operator.EQUALS and requirement.key not in match_labels:
                match_labels[requirement.key] = requirement.values[0]
            elif op in (Operator.EQUALS, Operator.IN):
                expressions.append(_expression(requirement.key, "In", requirement.values))
            elif op in (Operator.NOT_EQUALS, Operator.NOT_IN):
                expressions.append(_expression(requirement.key, "NotIn", requirement.values))
            elif op is Operator.EXISTS:
                expressions.append(_expression(requirement.key, "Exists", ()))
            elif op is Operator.DOES_NOT_EXIST:
                expressions.append(_expression(requirement.key, "DoesNotExist", ()))
        result: dict[str, Any] = {}
        if match_labels:
            result["matchLabels"] = match_labels
        if expressions:
            result["matchExpressions"] = expressions
        return result


def _expression(key: str, operator: str, values: tuple[str, ...]) -> dict[str, Any]:
    expression: dict[str, Any] = {"key": key, "operator": operator}
    if values:
        expression["values"] = list(values)
    return expression


_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
_NAME_RE = re.compile(rf"^{_NAME}$")
_DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_KEY_CHARS = r"[A-Za-z0-9_./-]+"
_SET_RE = re.compile(rf"^({_KEY_CHARS})\s+(in|notin)\s*\((.*)\)$", re.DOTALL)
_BINARY_RE = re.compile(rf"^({_KEY_CHARS})\s*(==|=|!=|>|<)\s*(.*)$", re.DOTALL)
_EXISTS_RE = re.compile(rf"^(!?)\s*({_KEY_CHARS})$")


def validate_label_key(key: str) -> None:
    """Raise :class:`LabelSelectorError` unless ``key`` is a valid label key."""
    prefix, _, name = key.rpartition("/")
    bad_prefix = not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN_RE.match(prefix)
    if "/" in key and bad_prefix:
        raise LabelSelectorError(f"invalid label key prefix in {key!r}")
    if not name or len(name) > 63 or not _NAME_RE.match(name):
        raise LabelSelectorError(f"invalid label key {key!r}")


def validate_label_value(value: str) -> None:
    """Raise :class:`LabelSelectorError` unless ``value`` is a valid label value (may be empty)."""
    if value and (len(value) > 63 or not _NAME_RE.match(value)):
        raise LabelSelectorError(f"invalid label value {value!r}")


def _split_top_level(text: str) -> list[str]:
    """Split at commas that are not inside parentheses."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for char in text:
        if char == "(":
            depth += 1
            if depth > 1:
                raise LabelSelectorError("nested parentheses in label selector")
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise LabelSelectorError("unbalanced ')' in label selector")
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth != 0:
        raise LabelSelectorError("unbalanced '(' in label selector")
    parts.append("".join(current))
    return parts


def _parse_requirement(text: str) -> Requirement:
    part = text.strip()
    if not part:
        raise LabelSelectorError("empty requirement in label selector")
    set_match = _SET_RE.match(part)
    if set_match:
        key, word, inner = set_match.groups()
        validate_label_key(key)
        values = tuple(value.strip() for value in inner.split(","))
        if inner.strip() == "":
            raise LabelSelectorError(f"{word} () needs at least one value for {key!r}")
        for value in values:
            validate_label_value(value)
        operator = Operator.IN if word == "in" else Operator.NOT_IN
        return Requirement(key, operator, tuple(sorted(set(values))))
    binary_match = _BINARY_RE.match(part)
    if binary_match:
        key, symbol, raw_value = binary_match.groups()
        value = raw_value.strip()
        validate_label_key(key)
        if symbol in (">", "<"):
            if not re.fullmatch(r"-?[0-9]+", value):
                raise LabelSelectorError(f"{key}{symbol} needs an integer, got {value!r}")
            operator = Operator.GREATER_THAN if symbol == ">" else Operator.LESS_THAN
            return Requirement(key, operator, (value,))
        validate_label_value(value)
        operator = Operator.NOT_EQUALS if symbol == "!=" else Operator.EQUALS
        return Requirement(key, operator, (value,))
    exists_match = _EXISTS_RE.match(part)
    if exists_match:
        bang, key = exists_match.groups()
        validate_label_key(key)
        return Requirement(key, Operator.DOES_NOT_EXIST if bang else Operator.EXISTS)
    raise LabelSelectorError(f"cannot parse label selector requirement {part!r}")


def parse_label_selector(text: str | None) -> LabelSelector:
    """Parse the string form; ``None`` or blank selects everything.

    Raises :class:`LabelSelectorError` for anything apimachinery would reject.
    """
    if text is None or not text.strip():
        return LabelSelector()
    if len(text) > MAX_SELECTOR_LENGTH:
        raise LabelSelectorError(f"label selector longer than {MAX_SELECTOR_LENGTH} characters")
    return LabelSelector(tuple(_parse_requirement(part) for part in _split_top_level(text)))


def selector_from_match_labels(match_labels: Mapping[str, str]) -> str:
    """The string form of a ``matchLabels`` map (sorted, as apimachinery prints it)."""
    return ",".join(f"{key}={match_labels[key]}" for key in sorted(match_labels))
