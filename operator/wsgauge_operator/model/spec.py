"""A ConnectionStats ``spec`` parsed and validated into plain dataclasses.

The API server already validates the schema (see ``crds/``); this module checks
again, because the operator must never crash on an object that slipped past
(an older CRD, a disabled validation), and turns what it finds into a
:class:`~.exceptions.SpecError` that the controller reports as a condition.
The selector becomes the operator's one selector model,
:class:`~.label_selector.LabelSelector`, and the other parts plain
dataclasses that every consumer reads (the controller, the readiness and deletion cost
policies, the owned HPA's manifest in :mod:`wsgauge_operator.autoscaling.hpa`): nothing parses a
ConnectionStats spec again. It also holds the duration and quantity parsers.

From ``spec.autoscaling.behavior`` (passed to the HPA as is) it reads what the operator's own
arithmetic needs: the per-direction tolerances (``scaleUp.tolerance``, ``scaleDown.tolerance``,
Kubernetes quantities such as ``"0.05"`` or ``"50m"``) and the scale-down stabilization window.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from wsgauge_operator.model.exceptions import SpecError
from wsgauge_operator.model.label_selector import STRUCTURED_OPERATORS, LabelSelector, Requirement

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SELECTOR_OPERATORS = tuple(STRUCTURED_OPERATORS)

DEFAULT_TOLERANCE = 0.1
"""The HPA controller's default ``--horizontal-pod-autoscaler-tolerance`` (both directions)."""
DEFAULT_SCALE_DOWN_WINDOW_SECONDS = 300
"""The HPA's default ``behavior.scaleDown.stabilizationWindowSeconds``."""
MAX_STABILIZATION_WINDOW_SECONDS = 3600
"""The largest stabilization window the API server accepts."""


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration (``2s``, ``500ms``, ``1m30s``); raises ``ValueError``."""
    if not isinstance(text, str) or not text:
        raise ValueError("duration must be a non-empty string such as '2s'")
    position = 0
    total = 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if position != len(text):
        raise ValueError(f"invalid duration {text!r} (use e.g. '2s', '500ms', '1m')")
    return total


_QUANTITY_RE = re.compile(r"^([+-]?[0-9.]+)([eE][+-]?[0-9]+|[KMGTPE]i|[numkMGTPE])?$")
_SUFFIX_FACTORS: dict[str, Decimal] = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}


def parse_quantity(text: str) -> Decimal:
    """The value of a Kubernetes quantity string (``1k``, ``1000``, ``1500m``, ``1Ki``, ``1e3``).

    Raises ValueError for anything else.
    """
    match = _QUANTITY_RE.match(text.strip())
    if not match:
        raise ValueError(f"not a quantity: {text!r}")
    number, suffix = match.groups()
    try:
        base = Decimal(number)
    except InvalidOperation as error:
        raise ValueError(f"not a quantity: {text!r}") from error
    if suffix and suffix[0] in "eE":
        return base * (Decimal(10) ** int(suffix[1:]))
    return base * _SUFFIX_FACTORS[suffix or ""]


class OtherWriters(enum.Enum):
    """``spec.autoscaling.deletionCost.otherWriters``: what wsgauge does when something else
    writes ``controller.kubernetes.io/pod-deletion-cost`` on the target's pods."""

    YIELD = "Yield"
    """Write no deletion cost on the target while another writer is seen (the default)."""
    OVERWRITE = "Overwrite"
    """Keep writing (report the other writer all the same)."""


@dataclass(frozen=True)
class DeletionCostSpec:
    """``spec.autoscaling.deletionCost``."""

    other_writers: OtherWriters = OtherWriters.YIELD
    """What to do when another writer of the annotation is seen on the target's pods."""


@dataclass(frozen=True)
class TargetRef:
    """The workload the ConnectionStats describes (and, with autoscaling, scales)."""

    api_version: str
    kind: str
    name: str


@dataclass(frozen=True)
class CapacitySpec:
    """``spec.capacity``."""

    max_connections_per_pod: int | None = None
    """Readiness condition False above this many sockets; ``None``: no limit."""
    min_ready_pods: int = 1
    """Never mark so many pods unready that fewer than this stay ready."""


@dataclass(frozen=True)
class AutoscalingSpec:
    """``spec.autoscaling`` (used by the HPA part of the operator)."""

    min_replicas: int
    max_replicas: int
    target_connections_per_pod: int
    topic: str | None = None
    behavior: Mapping[str, Any] = field(default_factory=dict)
    """Passed to the HPA as is."""
    scale_up_tolerance: float = DEFAULT_TOLERANCE
    """``behavior.scaleUp.tolerance`` (default: the controller's 10 %)."""
    scale_down_tolerance: float = DEFAULT_TOLERANCE
    """``behavior.scaleDown.tolerance`` (default: the controller's 10 %)."""
    scale_down_window_seconds: int = DEFAULT_SCALE_DOWN_WINDOW_SECONDS
    """``behavior.scaleDown.stabilizationWindowSeconds`` (default 300)."""
    deletion_cost: DeletionCostSpec = field(default_factory=DeletionCostSpec)
    """``deletionCost``: cooperation with other writers of the deletion cost."""


SERVICE_RESTART = 1012
"""WebSocket close code "Service Restart": the client should reconnect (the default)."""
GOING_AWAY = 1001
"""WebSocket close code "Going Away"."""
CLOSE_CODES = (SERVICE_RESTART, GOING_AWAY)
"""The close codes a rebalance may use."""


@dataclass(frozen=True)
class RebalanceSpec:
    """``spec.rebalance`` of a ConnectionStats (absent: no rebalance)."""

    enabled: bool = True
    """``enabled: false`` keeps the section but turns the rebalance off."""
    tolerance: float = 0.2
    """How far a pod may be from the average, as a share of it (0.2: within 20 %); at least one
    socket either way."""
    max_shed_per_minute: float = 0.1
    """At most this share of a pod's sockets is shed in any minute (at least one socket)."""
    close_code: int = SERVICE_RESTART
    """Close code of the shed sockets: 1012 (Service Restart) or 1001 (Going Away)."""
    spread: float = 10.0
    """Seconds over which a pod closes one batch (jittered), so clients reconnect in a trickle."""


@dataclass(frozen=True)
class ConnectionStatsSpec:
    """A validated ConnectionStats spec."""

    selector: LabelSelector
    sidecar_port: int | str = 9090
    target_ref: TargetRef | None = None
    capacity: CapacitySpec = field(default_factory=CapacitySpec)
    autoscaling: AutoscalingSpec | None = None
    status_interval: float | None = None
    """Seconds; ``None``: the operator's default."""
    rebalance: RebalanceSpec | None = None
    """``spec.rebalance``; ``None``: no rebalance (the default)."""


def parse_spec(spec: object) -> ConnectionStatsSpec:
    """Validate a ``spec`` mapping; raise :class:`SpecError` naming the first bad field."""
    if not isinstance(spec, Mapping):
        raise SpecError("", "spec must be an object")
    selector = _parse_selector(spec.get("selector"))
    port = _parse_port(spec.get("sidecarPort", 9090))
    target_ref = _parse_target_ref(spec.get("targetRef"))
    capacity = _parse_capacity(spec.get("capacity"))
    autoscaling = _parse_autoscaling(spec.get("autoscaling"))
    _require_target(target_ref, autoscaling)
    interval_raw = spec.get("statusInterval")
    interval: float | None = None
    if interval_raw is not None:
        try:
            interval = parse_duration(interval_raw)
        except ValueError as error:
            raise SpecError("statusInterval", str(error)) from None
        if interval <= 0:
            raise SpecError("statusInterval", "must be greater than zero")
    return ConnectionStatsSpec(
        selector=selector,
        sidecar_port=port,
        target_ref=target_ref,
        capacity=capacity,
        autoscaling=autoscaling,
        status_interval=interval,
        rebalance=_parse_rebalance(spec.get("rebalance")),
    )


def parse_scaling(spec: Mapping[str, Any]) -> tuple[TargetRef | None, AutoscalingSpec | None]:
    """``spec.targetRef`` and ``spec.autoscaling`` alone, validated as :func:`parse_spec` does
    (for a manifest built from an object's ``spec`` without its selector)."""
    target_ref = _parse_target_ref(spec.get("targetRef"))
    autoscaling = _parse_autoscaling(spec.get("autoscaling"))
    _require_target(target_ref, autoscaling)
    return target_ref, autoscaling


def _require_target(target_ref: TargetRef | None, autoscaling: AutoscalingSpec | None) -> None:
    if autoscaling is not None and target_ref is None:
        raise SpecError("targetRef", "is required when autoscaling is set")


def _parse_selector(raw: object) -> LabelSelector:
    if not isinstance(raw, Mapping):
        raise SpecError("selector", "is required (matchLabels and/or matchExpressions)")
    labels_raw = raw.get("matchLabels") or {}
    if not isinstance(labels_raw, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels_raw.items()
    ):
        raise SpecError("selector.matchLabels", "must map label names to strings")
    expressions_raw = raw.get("matchExpressions") or []
    if not isinstance(expressions_raw, list):
        raise SpecError("selector.matchExpressions", "must be a list")
    expressions: list[Requirement] = []
    for index, item in enumerate(expressions_raw):
        where = f"selector.matchExpressions[{index}]"
        if not isinstance(item, Mapping) or not isinstance(item.get("key"), str):
            raise SpecError(where, "needs a string 'key'")
        operator = item.get("operator")
        if operator not in _SELECTOR_OPERATORS:
            raise SpecError(where, f"operator must be one of {', '.join(_SELECTOR_OPERATORS)}")
        values = item.get("values") or []
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise SpecError(where, "values must be a list of strings")
        if operator in ("In", "NotIn") and not values:
            raise SpecError(where, f"operator {operator} needs at least one value")
        if operator in ("Exists", "DoesNotExist") and values:
            raise SpecError(where, f"operator {operator} takes no values")
        requirement = Requirement(item["key"], STRUCTURED_OPERATORS[operator], tuple(values))
        expressions.append(requirement)
    selector = LabelSelector.from_match(dict(labels_raw), expressions)
    if selector.empty:
        raise SpecError("selector", "must not be empty (it would select every pod)")
    return selector


def _parse_port(raw: object) -> int | str:
    if isinstance(raw, bool):
        raise SpecError("sidecarPort", "must be a port number or a port name")
    if isinstance(raw, int):
        if not 1 <= raw <= 65535:
            raise SpecError("sidecarPort", "must be between 1 and 65535")
        return raw
    if isinstance(raw, str):
        if raw.isdigit():
            return _parse_port(int(raw))
        if len(raw) > 15 or not _PORT_NAME.match(raw):
            raise SpecError("sidecarPort", f"{raw!r} is not a valid port name")
        return raw
    raise SpecError("sidecarPort", "must be a port number or a port name")


def _parse_target_ref(raw: object) -> TargetRef | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise SpecError("targetRef", "must be an object")
    values = {key: raw.get(key) for key in ("apiVersion", "kind", "name")}
    for key, value in values.items():
        if not isinstance(value, str) or not value:
            raise SpecError(f"targetRef.{key}", "is required")
    return TargetRef(str(values["apiVersion"]), str(values["kind"]), str(values["name"]))


def _int_field(raw: Mapping[str, Any], key: str, where: str, minimum: int) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{where}.{key}", "must be an integer")
    if value < minimum:
        raise SpecError(f"{where}.{key}", f"must be at least {minimum}")
    return value


def _parse_capacity(raw: object) -> CapacitySpec:
    if raw is None:
        return CapacitySpec()
    if not isinstance(raw, Mapping):
        raise SpecError("capacity", "must be an object")
    max_per_pod = _int_field(raw, "maxConnectionsPerPod", "capacity", 1)
    min_ready = _int_field(raw, "minReadyPods", "capacity", 0)
    return CapacitySpec(
        max_connections_per_pod=max_per_pod,
        min_ready_pods=1 if min_ready is None else min_ready,
    )


def _parse_autoscaling(raw: object) -> AutoscalingSpec | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise SpecError("autoscaling", "must be an object")
    minimum = _int_field(raw, "minReplicas", "autoscaling", 1)
    maximum = _int_field(raw, "maxReplicas", "autoscaling", 1)
    target = _int_field(raw, "targetConnectionsPerPod", "autoscaling", 1)
    if maximum is None:
        raise SpecError("autoscaling.maxReplicas", "is required")
    if target is None:
        raise SpecError("autoscaling.targetConnectionsPerPod", "is required")
    minimum = 1 if minimum is None else minimum
    if minimum > maximum:
        raise SpecError("autoscaling", "minReplicas must not exceed maxReplicas")
    topic = raw.get("topic")
    if topic is not None and (not isinstance(topic, str) or not topic):
        raise SpecError("autoscaling.topic", "must be a non-empty string")
    behavior = raw.get("behavior") or {}
    if not isinstance(behavior, Mapping):
        raise SpecError("autoscaling.behavior", "must be an object")
    up = _direction(behavior, "scaleUp")
    down = _direction(behavior, "scaleDown")
    window = _int_field(down, "stabilizationWindowSeconds", "autoscaling.behavior.scaleDown", 0)
    if window is not None and window > MAX_STABILIZATION_WINDOW_SECONDS:
        raise SpecError(
            "autoscaling.behavior.scaleDown.stabilizationWindowSeconds",
            f"must be at most {MAX_STABILIZATION_WINDOW_SECONDS}",
        )
    return AutoscalingSpec(
        minimum,
        maximum,
        target,
        topic,
        dict(behavior),
        scale_up_tolerance=_tolerance(up, "scaleUp"),
        scale_down_tolerance=_tolerance(down, "scaleDown"),
        scale_down_window_seconds=(DEFAULT_SCALE_DOWN_WINDOW_SECONDS if window is None else window),
        deletion_cost=_parse_deletion_cost(raw.get("deletionCost")),
    )


def _direction(behavior: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    rules = behavior.get(key)
    if rules is None:
        return {}
    if not isinstance(rules, Mapping):
        raise SpecError(f"autoscaling.behavior.{key}", "must be an object")
    return rules


def _tolerance(rules: Mapping[str, Any], direction: str) -> float:
    """A direction's ``tolerance``: a non-negative quantity (string or number)."""
    raw = rules.get("tolerance")
    where = f"autoscaling.behavior.{direction}.tolerance"
    if raw is None:
        return DEFAULT_TOLERANCE
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise SpecError(where, "must be a quantity such as '0.05' or '50m'")
    try:
        value = parse_quantity(str(raw))
    except ValueError:
        raise SpecError(where, "must be a quantity such as '0.05' or '50m'") from None
    if value < 0:
        raise SpecError(where, "must not be negative")
    return float(value)


def _parse_deletion_cost(raw: object) -> DeletionCostSpec:
    if raw is None:
        return DeletionCostSpec()
    if not isinstance(raw, Mapping):
        raise SpecError("autoscaling.deletionCost", "must be an object")
    mode = raw.get("otherWriters", OtherWriters.YIELD.value)
    choices = [item.value for item in OtherWriters]
    if mode not in choices:
        raise SpecError(
            "autoscaling.deletionCost.otherWriters", f"must be one of {', '.join(choices)}"
        )
    return DeletionCostSpec(other_writers=OtherWriters(mode))


def _share(raw: Mapping[str, Any], key: str, default: float, *, minimum_open: bool) -> float:
    value = raw.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(f"rebalance.{key}", "must be a number")
    low_ok = value > 0 if minimum_open else value >= 0
    if not low_ok or value > 1:
        bounds = "greater than 0" if minimum_open else "at least 0"
        raise SpecError(f"rebalance.{key}", f"must be {bounds} and at most 1")
    return float(value)


def _parse_rebalance(raw: object) -> RebalanceSpec | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise SpecError("rebalance", "must be an object")
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise SpecError("rebalance.enabled", "must be true or false")
    tolerance = _share(raw, "tolerance", 0.2, minimum_open=False)
    per_minute = _share(raw, "maxShedPerMinute", 0.1, minimum_open=True)
    code = raw.get("closeCode", SERVICE_RESTART)
    if isinstance(code, bool) or code not in CLOSE_CODES:
        raise SpecError(
            "rebalance.closeCode", "must be 1012 (Service Restart) or 1001 (Going Away)"
        )
    spread_raw = raw.get("spread", "10s")
    try:
        spread = parse_duration(spread_raw)
    except ValueError as error:
        raise SpecError("rebalance.spread", str(error)) from None
    if not 0 < spread <= 600:
        raise SpecError("rebalance.spread", "must be greater than 0 and at most 10m")
    return RebalanceSpec(
        enabled=enabled,
        tolerance=tolerance,
        max_shed_per_minute=per_minute,
        close_code=int(code),
        spread=spread,
    )
