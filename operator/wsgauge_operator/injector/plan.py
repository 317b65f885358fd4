"""Sidecar injection, sans-I/O: a pod (as the API server sends it) in, a JSONPatch out.

:func:`plan_injection` decides for one pod; :func:`review_response` wraps it into
an ``admission.k8s.io/v1`` AdmissionReview answer (the HTTPS endpoint lives in
:mod:`.server`).

A pod is injected when it is annotated ``wsgauge.dev/inject: "true"`` and has no
container named like the sidecar yet (so a pod is never injected twice). The
patch adds:

- the ``wsgauge-sidecar`` container: data port ``wsgauge-http``, admin port
  ``wsgauge-admin``, ``/readyz`` readiness and ``/healthz`` liveness probes on
  the admin port, its settings as ``WSGAUGE_*`` environment variables, the pod
  identity from the downward API (``POD_NAME``, ``POD_NAMESPACE``, ``NODE_NAME``),
  a locked-down security context;
- the readiness gate ``wsgauge.dev/connections-ok`` (kept by the operator);
- in report mode (``--topic report``): the sidecar's loopback-only report listener
  ``127.0.0.1:<report port>`` (``WSGAUGE_REPORT_LISTEN``), and ``WSGAUGE_REPORT_URL``
  (``http://127.0.0.1:<report port>/report``) in every other container that does not set
  it, so that the app knows where to report; nothing outside the pod can reach that address;
- a preStop wait on every other container that has no preStop hook of its own,
  as long as the drain (``drain-grace + drain-spread`` plus a margin), because
  Kubernetes sends SIGTERM to all containers at once and the app must keep its
  sockets open while the sidecar closes them gently;
- ``terminationGracePeriodSeconds`` raised, if needed, to cover that wait;
- the annotation ``wsgauge.dev/injected`` with the sidecar image.

Per-pod overrides (annotations, all optional): ``wsgauge.dev/topic``,
``wsgauge.dev/max-connections``, ``wsgauge.dev/ready-below``,
``wsgauge.dev/max-topics``, ``wsgauge.dev/drain-grace``,
``wsgauge.dev/drain-spread``, ``wsgauge.dev/drain-close-code`` (``1001`` or ``1012``),
``wsgauge.dev/drain-mode`` (``spread`` or ``batches``), ``wsgauge.dev/drain-batches``,
``wsgauge.dev/upstream`` (``PORT`` or
``HOST:PORT`` of the app), ``wsgauge.dev/port`` (data port),
``wsgauge.dev/admin-port``, ``wsgauge.dev/report-port``. An invalid value denies
the pod with a message that names the annotation: the pod asked for the sidecar,
and a sidecar with a silently different setting would be worse than a clear error.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from wsgauge_contract import Address, AddressError
from wsgauge_contract.flags import (
    DRAIN_CLOSE_CODES,
    DRAIN_MODES,
    parse_drain_close_code,
    parse_drain_mode,
    parse_topic_limit,
)

from wsgauge_operator import __version__
from wsgauge_operator.model.exceptions import ConfigError
from wsgauge_operator.model.settings import CONNECTIONS_OK_CONDITION

ANNOTATION_PREFIX = "wsgauge.dev/"
"""Prefix of every annotation the injector reads or writes."""

INJECT_ANNOTATION = "wsgauge.dev/inject"
"""Opt-in annotation: ``"true"`` asks for the sidecar."""

INJECTED_ANNOTATION = "wsgauge.dev/injected"
"""Written on injected pods (value: the sidecar image)."""

DATA_PORT_NAME = "wsgauge-http"
"""Name of the sidecar's data (proxy) port."""

ADMIN_PORT_NAME = "wsgauge-admin"
"""Name of the sidecar's admin port (use it as ConnectionStats ``sidecarPort``)."""

FRAME_PROTOCOLS = (
    "phoenix", "socketio", "actioncable", "centrifugo", "graphql-ws", "mqtt", "stomp", "pusher",
)  # fmt: skip
"""The sidecar's frame protocol rules (``wsgauge_sidecar.protocols.registry``)."""

_REQUEST_RULE = r"path|path:.+|query:[^\s]+|header:[^\s]+"
TOPIC_RULE = re.compile(
    rf"^({_REQUEST_RULE}|{'|'.join(FRAME_PROTOCOLS)}|report"
    rf"|auto|auto:(?:{_REQUEST_RULE}|{'|'.join(FRAME_PROTOCOLS)}))$"
)
"""Topic rules the sidecar understands (``--topic``)."""

REQUEST_TOPIC_RULE = re.compile(rf"^({_REQUEST_RULE})$")
"""Topic rules that take the topic from the upgrade request (per-topic limits need one)."""

REPORT_URL_ENV = "WSGAUGE_REPORT_URL"
"""Environment variable that tells the app containers of a report-mode pod where to report."""

DOWNWARD_API_ENV = (
    ("POD_NAME", "metadata.name"),
    ("POD_NAMESPACE", "metadata.namespace"),
    ("NODE_NAME", "spec.nodeName"),
)
"""Environment variables the sidecar reads its pod identity from."""


@dataclass(frozen=True)
class InjectorSettings:
    """What the injected sidecar looks like (pod annotations override the sidecar flags)."""

    image: str = f"ghcr.io/wsgauge/sidecar:{__version__}"
    """Sidecar image (default: the operator's own version; the chart sets it)."""
    image_pull_policy: str = "IfNotPresent"
    """Sidecar image pull policy."""
    container_name: str = "wsgauge-sidecar"
    """Name of the injected container (also the "already injected" marker)."""
    data_port: int = 8080
    """Data port the sidecar listens on (clients and Services use it)."""
    admin_port: int = 9090
    """Admin port (stats, metrics, probes; the operator follows it)."""
    report_port: int = 9091
    """Report mode: port of the sidecar's report listener on the pod's loopback (127.0.0.1)."""
    upstream: str = "127.0.0.1:8081"
    """``HOST:PORT`` of the app behind the proxy."""
    topic: str = "path"
    """Topic rule (``--topic``)."""
    max_connections: int = 0
    """Hard limit on sockets per pod (0: unlimited)."""
    ready_below: int = 0
    """``/readyz`` fails at or above this many sockets (0: off)."""
    max_topics: int = 100
    """Topics beyond this count under ``_other``."""
    max_topic_connections: Mapping[str, int] = field(default_factory=dict)
    """Topic -> sockets at which that topic's new upgrades get HTTP 503
    (``--max-topic-connections``; topic rules that read the upgrade request only)."""
    max_upgrades_per_second: float = 0.0
    """Upgrades per second the sidecar admits before answering 503 with Retry-After (0: off)."""
    drain_grace: float = 5.0
    """Seconds after SIGTERM before new upgrades are refused."""
    drain_spread: float = 10.0
    """Seconds over which the remaining sockets are closed."""
    drain_close_code: int = 1001
    """Close code of the drain: 1001 (Going Away) or 1012 (Service Restart)."""
    drain_mode: str = "spread"
    """``spread`` (one socket at a time, evenly) or ``batches`` (jittered batches)."""
    drain_batches: int = 10
    """Batches of the ``batches`` drain mode."""
    prestop_margin: int = 2
    """Seconds added to the drain for the app's preStop wait."""
    termination_margin: int = 10
    """Seconds the pod's termination grace period must exceed the preStop wait by."""
    prestop_mode: str = "sleep"
    """``sleep``: the ``preStop.sleep`` action (no binary needed); ``exec``: run ``sleep N``."""
    log_level: str = "info"
    """Sidecar log level."""
    resources: Mapping[str, Any] = field(
        default_factory=lambda: {
            "requests": {"cpu": "50m", "memory": "64Mi"},
            "limits": {"memory": "256Mi"},
        }
    )
    """Container resources of the sidecar."""
    readiness_gate: bool = True
    """Add the ``wsgauge.dev/connections-ok`` readiness gate."""
    extra_env: Mapping[str, str] = field(default_factory=dict)
    """More environment variables for the sidecar (e.g. ``WSGAUGE_WATCH_HEARTBEAT``)."""
    control_ca: str = ""
    """PEM of wsgauge's CA, given to the sidecar as ``WSGAUGE_CONTROL_CA``: the sidecar takes
    rebalance shed orders signed by a certificate of this CA (the operator's) and no others.
    The stand-alone injector reads it from ``--control-ca-file`` (the chart: its TLS Secret's
    ``ca.crt``); empty: the sidecar takes no shed orders."""


@dataclass(frozen=True)
class InjectionPlan:
    """What to do with one pod: nothing, a patch, or a denial."""

    patch: list[dict[str, Any]] = field(default_factory=list)
    """JSONPatch operations (empty: leave the pod as it is)."""
    denied: str = ""
    """Non-empty: refuse the pod with this message."""
    reason: str = ""
    """Why nothing is done (not opted in, already injected), for logs."""


_CAMEL = re.compile(r"([A-Z])")


def settings_from_mapping(data: Mapping[str, Any]) -> InjectorSettings:
    """Settings from a JSON object with camelCase keys (the chart's config file).

    Unknown keys and wrongly typed values raise :class:`ConfigError`.
    """
    known = {item.name: item for item in fields(InjectorSettings)}
    defaults = InjectorSettings()
    values: dict[str, Any] = {}
    for key, raw in data.items():
        value = raw
        name = _CAMEL.sub(lambda match: "_" + match.group(1).lower(), key)
        if name not in known:
            raise ConfigError(f"injector config: unknown key {key!r}")
        expected = type(getattr(defaults, name))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(getattr(defaults, name), Mapping):
            expected = dict
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(f"injector config: {key} must be a {expected.__name__}")
        values[name] = value
    settings = replace(defaults, **values)
    for topic, limit in settings.max_topic_connections.items():
        if "," in topic or not topic:
            raise ConfigError(
                f"injector config: maxTopicConnections topic {topic!r} is empty or has a comma"
            )
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise ConfigError(
                f"injector config: maxTopicConnections.{topic} must be an integer >= 0"
            )
    try:
        _check_limits_fit_the_topic_rule(settings, "injector config")
    except ValueError as error:
        raise ConfigError(str(error)) from None
    try:
        _check_drain(settings, "injector config")
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if settings.prestop_mode not in ("sleep", "exec"):
        raise ConfigError("injector config: prestopMode must be 'sleep' or 'exec'")
    if not TOPIC_RULE.match(settings.topic):
        raise ConfigError(f"injector config: unknown topic rule {settings.topic!r}")
    return settings


def _escape(segment: str) -> str:
    return segment.replace("~", "~0").replace("/", "~1")


def _parse_port(text: str, annotation: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{annotation}: {text!r} is not a port number (1-65535)")
    return int(text)


def _parse_count(text: str, annotation: str) -> int:
    if not text.isdigit():
        raise ValueError(f"{annotation}: {text!r} is not a non-negative integer")
    return int(text)


def _parse_seconds(text: str, annotation: str) -> float:
    try:
        value = float(text.removesuffix("s"))
    except ValueError:
        raise ValueError(f"{annotation}: {text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0 or value > 3600:
        raise ValueError(f"{annotation}: {text!r} must be between 0 and 3600 seconds")
    return value


def _parse_upstream(text: str, annotation: str) -> str:
    try:  # a bare PORT is the app on the pod's loopback, as ``:PORT``
        address = Address.parse_connect(text if ":" in text else f":{text}")
    except AddressError as error:
        raise ValueError(f"{annotation}: {error}") from None
    return str(address)


def _parse_topic(text: str, annotation: str) -> str:
    if not TOPIC_RULE.match(text):
        raise ValueError(
            f"{annotation}: {text!r} is not a topic rule "
            f"(path, path:REGEX, query:NAME, header:NAME, {', '.join(FRAME_PROTOCOLS)}, "
            "auto, auto:RULE, report)"
        )
    if text.startswith(("path:", "auto:path:")):
        try:
            re.compile(text.split("path:", 1)[1])
        except re.error as error:
            raise ValueError(f"{annotation}: bad regular expression: {error}") from None
    return text


def _parse_topic_limits(text: str, annotation: str) -> dict[str, int]:
    limits: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            topic, limit = parse_topic_limit(item)
        except ValueError as error:
            raise ValueError(f"{annotation}: {error}") from None
        if topic in limits:
            raise ValueError(f"{annotation}: topic {topic!r} is given more than once")
        limits[topic] = limit
    return limits


def _parse_rate(text: str, annotation: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{annotation}: {text!r} is not a number per second") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{annotation}: {text!r} must be a finite number >= 0")
    return value


def _parse_close_code(text: str, annotation: str) -> int:
    try:
        return parse_drain_close_code(text)
    except ValueError as error:
        raise ValueError(f"{annotation}: {error}") from None


def _parse_drain_mode(text: str, annotation: str) -> str:
    try:
        return parse_drain_mode(text)
    except ValueError as error:
        raise ValueError(f"{annotation}: {error}") from None


def _parse_batches(text: str, annotation: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{annotation}: {text!r} is not a whole number >= 1")
    return int(text)


def _check_drain(settings: InjectorSettings, source: str) -> None:
    """The drain settings the sidecar accepts (it exits 2 on others): deny the rest here."""
    if settings.drain_close_code not in DRAIN_CLOSE_CODES:
        raise ValueError(f"{source}: drainCloseCode must be 1001 or 1012")
    if settings.drain_mode not in DRAIN_MODES:
        raise ValueError(f"{source}: drainMode must be one of {', '.join(DRAIN_MODES)}")
    if settings.drain_batches < 1:
        raise ValueError(f"{source}: drainBatches must be at least 1")


def _check_limits_fit_the_topic_rule(settings: InjectorSettings, source: str) -> None:
    """The sidecar refuses these combinations at start: deny them here instead."""
    if settings.max_topic_connections and not REQUEST_TOPIC_RULE.match(settings.topic):
        raise ValueError(
            f"{source}: per-topic limits (max-topic-connections) need a topic rule that reads "
            f"the upgrade request (path, path:REGEX, query:NAME, header:NAME), not {settings.topic}"
        )
    if settings.max_upgrades_per_second and settings.topic == "report":
        raise ValueError(f"{source}: max-upgrades-per-second has no effect in report mode")


_OVERRIDES: dict[str, tuple[str, Any]] = {
    "topic": ("topic", _parse_topic),
    "max-connections": ("max_connections", _parse_count),
    "ready-below": ("ready_below", _parse_count),
    "max-topics": ("max_topics", _parse_count),
    "max-topic-connections": ("max_topic_connections", _parse_topic_limits),
    "max-upgrades-per-second": ("max_upgrades_per_second", _parse_rate),
    "drain-grace": ("drain_grace", _parse_seconds),
    "drain-spread": ("drain_spread", _parse_seconds),
    "drain-close-code": ("drain_close_code", _parse_close_code),
    "drain-mode": ("drain_mode", _parse_drain_mode),
    "drain-batches": ("drain_batches", _parse_batches),
    "upstream": ("upstream", _parse_upstream),
    "port": ("data_port", _parse_port),
    "admin-port": ("admin_port", _parse_port),
    "report-port": ("report_port", _parse_port),
}
"""Annotation suffix -> (settings field, parser)."""

OVERRIDE_ANNOTATIONS = tuple(ANNOTATION_PREFIX + suffix for suffix in _OVERRIDES)
"""Every per-pod override annotation the injector understands."""


def effective_settings(
    settings: InjectorSettings, annotations: Mapping[str, str]
) -> InjectorSettings:
    """The settings with the pod's override annotations applied (ValueError names the bad one)."""
    values: dict[str, Any] = {}
    for suffix, (name, parse) in _OVERRIDES.items():
        annotation = ANNOTATION_PREFIX + suffix
        raw = annotations.get(annotation)
        if raw is not None:
            values[name] = parse(str(raw).strip(), annotation)
    result = replace(settings, **values)
    _check_limits_fit_the_topic_rule(result, "wsgauge.dev annotations")
    if result.data_port == result.admin_port and result.topic != "report":
        raise ValueError("the sidecar's data port and admin port must differ")
    if result.report_port == result.admin_port and result.topic == "report":
        raise ValueError("the sidecar's report port and admin port must differ")
    return result


def report_url(settings: InjectorSettings) -> str:
    """Where the app of a report-mode pod reports (the sidecar's loopback report listener)."""
    return f"http://127.0.0.1:{settings.report_port}/report"


def _format_number(value: float) -> str:
    return str(int(value)) if value == int(value) else str(value)


def prestop_seconds(settings: InjectorSettings) -> int:
    """Seconds the app containers wait in preStop: the whole drain plus a margin."""
    return math.ceil(settings.drain_grace + settings.drain_spread) + settings.prestop_margin


def sidecar_container(settings: InjectorSettings) -> dict[str, Any]:
    """The container added to the pod."""
    env: list[dict[str, Any]] = [
        {"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}}
        for name, path in DOWNWARD_API_ENV
    ]
    flags = {
        "WSGAUGE_LISTEN": f"0.0.0.0:{settings.data_port}",
        "WSGAUGE_ADMIN_LISTEN": f"0.0.0.0:{settings.admin_port}",
        "WSGAUGE_UPSTREAM": settings.upstream,
        "WSGAUGE_TOPIC": settings.topic,
        "WSGAUGE_MAX_CONNECTIONS": str(settings.max_connections),
        "WSGAUGE_READY_BELOW": str(settings.ready_below),
        "WSGAUGE_MAX_TOPICS": str(settings.max_topics),
        "WSGAUGE_MAX_UPGRADES_PER_SECOND": _format_number(settings.max_upgrades_per_second),
        "WSGAUGE_DRAIN_GRACE": _format_number(settings.drain_grace),
        "WSGAUGE_DRAIN_SPREAD": _format_number(settings.drain_spread),
        "WSGAUGE_DRAIN_CLOSE_CODE": str(settings.drain_close_code),
        "WSGAUGE_DRAIN_MODE": settings.drain_mode,
        "WSGAUGE_DRAIN_BATCHES": str(settings.drain_batches),
        "WSGAUGE_LOG_LEVEL": settings.log_level,
    }
    if settings.max_topic_connections:
        flags["WSGAUGE_MAX_TOPIC_CONNECTIONS"] = ",".join(
            f"{topic}={limit}" for topic, limit in settings.max_topic_connections.items()
        )
    if settings.topic == "report":
        flags["WSGAUGE_REPORT_LISTEN"] = f"127.0.0.1:{settings.report_port}"
    if settings.control_ca:
        flags["WSGAUGE_CONTROL_CA"] = settings.control_ca
    flags.update(settings.extra_env)
    env.extend({"name": name, "value": value} for name, value in flags.items())
    ports = [{"name": ADMIN_PORT_NAME, "containerPort": settings.admin_port, "protocol": "TCP"}]
    if settings.topic != "report":
        ports.insert(
            0, {"name": DATA_PORT_NAME, "containerPort": settings.data_port, "protocol": "TCP"}
        )
    return {
        "name": settings.container_name,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "env": env,
        "ports": ports,
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": ADMIN_PORT_NAME},
            "periodSeconds": 2,
            "failureThreshold": 1,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": ADMIN_PORT_NAME},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "resources": json.loads(json.dumps(dict(settings.resources))),
        "securityContext": {
            "runAsNonRoot": True,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }


def _prestop_hook(settings: InjectorSettings) -> dict[str, Any]:
    seconds = prestop_seconds(settings)
    if settings.prestop_mode == "exec":
        return {"exec": {"command": ["sleep", str(seconds)]}}
    return {"sleep": {"seconds": seconds}}


def _report_url_patch(
    index: int, container: Mapping[str, Any], settings: InjectorSettings
) -> list[dict[str, Any]]:
    """Give an app container ``WSGAUGE_REPORT_URL`` unless it sets that variable itself."""
    env = container.get("env")
    variable = {"name": REPORT_URL_ENV, "value": report_url(settings)}
    if not env:
        return [{"op": "add", "path": f"/spec/containers/{index}/env", "value": [variable]}]
    if any(item.get("name") == REPORT_URL_ENV for item in env):
        return []
    return [{"op": "add", "path": f"/spec/containers/{index}/env/-", "value": variable}]


def _port_conflicts(containers: Sequence[Mapping[str, Any]], used: set[int]) -> list[str]:
    problems = []
    for container in containers:
        for port in container.get("ports") or []:
            if port.get("containerPort") in used:
                problems.append(
                    f"container {container.get('name')!r} declares port "
                    f"{port.get('containerPort')}, which the sidecar needs"
                )
    return problems


def plan_injection(pod: Mapping[str, Any], settings: InjectorSettings) -> InjectionPlan:
    """Decide what to do with a pod being created (pure: no I/O, the pod is not modified)."""
    metadata = pod.get("metadata") or {}
    annotations: Mapping[str, str] = metadata.get("annotations") or {}
    spec = pod.get("spec") or {}
    containers: list[Mapping[str, Any]] = list(spec.get("containers") or [])
    if str(annotations.get(INJECT_ANNOTATION, "")).strip().lower() != "true":
        return InjectionPlan(reason=f"not opted in ({INJECT_ANNOTATION} is not 'true')")
    if any(c.get("name") == settings.container_name for c in containers):
        return InjectionPlan(reason="already injected")
    try:
        effective = effective_settings(settings, annotations)
    except ValueError as error:
        return InjectionPlan(denied=f"wsgauge sidecar injection: {error}")
    report_mode = effective.topic == "report"
    used = {effective.admin_port} | ({effective.report_port} if report_mode else set())
    used |= set() if report_mode else {effective.data_port}
    conflicts = _port_conflicts(containers + list(spec.get("initContainers") or []), used)
    if conflicts:
        return InjectionPlan(
            denied="wsgauge sidecar injection: "
            + "; ".join(conflicts)
            + " (set wsgauge.dev/port / wsgauge.dev/admin-port / wsgauge.dev/report-port"
            " or move the app)"
        )
    patch: list[dict[str, Any]] = []
    for index, container in enumerate(containers):
        if report_mode:
            patch.extend(_report_url_patch(index, container, effective))
        lifecycle = container.get("lifecycle")
        hook = _prestop_hook(effective)
        if not lifecycle:
            patch.append(
                {
                    "op": "add",
                    "path": f"/spec/containers/{index}/lifecycle",
                    "value": {"preStop": hook},
                }
            )
        elif "preStop" not in lifecycle:
            patch.append(
                {"op": "add", "path": f"/spec/containers/{index}/lifecycle/preStop", "value": hook}
            )
    patch.append({"op": "add", "path": "/spec/containers/-", "value": sidecar_container(effective)})
    needed_grace = prestop_seconds(effective) + effective.termination_margin
    current_grace = spec.get("terminationGracePeriodSeconds")
    if not isinstance(current_grace, int) or current_grace < needed_grace:
        patch.append(
            {"op": "add", "path": "/spec/terminationGracePeriodSeconds", "value": needed_grace}
        )
    if effective.readiness_gate:
        gates = spec.get("readinessGates")
        gate = {"conditionType": CONNECTIONS_OK_CONDITION}
        if not gates:
            patch.append({"op": "add", "path": "/spec/readinessGates", "value": [gate]})
        elif not any(g.get("conditionType") == CONNECTIONS_OK_CONDITION for g in gates):
            patch.append({"op": "add", "path": "/spec/readinessGates/-", "value": gate})
    if not metadata.get("annotations"):
        patch.append(
            {
                "op": "add",
                "path": "/metadata/annotations",
                "value": {INJECTED_ANNOTATION: settings.image},
            }
        )
    else:
        patch.append(
            {
                "op": "add",
                "path": "/metadata/annotations/" + _escape(INJECTED_ANNOTATION),
                "value": settings.image,
            }
        )
    return InjectionPlan(patch=patch)


def review_response(review: Mapping[str, Any], settings: InjectorSettings) -> dict[str, Any]:
    """The ``AdmissionReview`` answer to an ``AdmissionReview`` request (v1).

    Anything that is not a pod CREATE is allowed unchanged, so a misconfigured
    webhook rule can never block other objects.
    """
    request = review.get("request") or {}
    uid = str(request.get("uid", ""))
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    kind = request.get("kind") or {}
    is_pod = kind.get("group", "") == "" and kind.get("kind") == "Pod"
    if is_pod and request.get("operation") == "CREATE" and not request.get("subResource"):
        pod = request.get("object") or {}
        plan = plan_injection(pod, settings)
        if plan.denied:
            response["allowed"] = False
            response["status"] = {"code": 400, "reason": "BadRequest", "message": plan.denied}
        elif plan.patch:
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(
                json.dumps(plan.patch, separators=(",", ":")).encode()
            ).decode("ascii")
    return {
        "apiVersion": review.get("apiVersion", "admission.k8s.io/v1"),
        "kind": "AdmissionReview",
        "response": response,
    }
