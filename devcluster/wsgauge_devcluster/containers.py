"""Pure mapping from a pod's container spec to a local process: which program, its command line and
environment (downward API filled in, listen addresses bound to the pod IP), and its readiness probe.

No I/O here; the pod runner turns a LaunchPlan into a process.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SIDECAR = "wsgauge-sidecar"
"""Program name of the sidecar (console script in the venv)."""
DEMO_APP = "wsgauge-demo-app"
"""Program name of the demo app (console script in the venv)."""

_IMAGE_MARKERS = {
    SIDECAR: ("wsgauge-sidecar", "wsgauge/sidecar"),
    DEMO_APP: ("wsgauge-demo-app", "wsgauge/demo-app"),
}

ADDRESS_FLAGS: dict[str, tuple[tuple[str, str, int], ...]] = {
    SIDECAR: (
        ("--listen", "WSGAUGE_LISTEN", 8080),
        ("--admin-listen", "WSGAUGE_ADMIN_LISTEN", 9090),
        ("--upstream", "WSGAUGE_UPSTREAM", 8081),
    ),
    DEMO_APP: (("--listen", "WSGAUGE_DEMO_LISTEN", 8081),),
}
"""Per program: (flag, env variable, default port) of every address bound to the pod IP."""

_MODULES = {
    "wsgauge_sidecar": SIDECAR,
    "wsgauge_sidecar.demo_app": DEMO_APP,
}
"""``python -m MODULE`` commands that name one of our programs (the sidecar image holds both)."""

LOCAL_HOSTS = frozenset({"", "0.0.0.0", "127.0.0.1", "localhost", "::", "[::]", "*"})
"""Hosts that mean "this pod"; rewritten to the pod IP."""

INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
"""Variables a pod process inherits from the runner; everything else comes from the pod spec."""


def program_for_image(image: str) -> str | None:
    """SIDECAR or DEMO_APP if the image names one of our programs, else None (simulated)."""
    for program, markers in _IMAGE_MARKERS.items():
        if any(marker in image for marker in markers):
            return program
    return None


def _python_module(command: Sequence[str]) -> str | None:
    """MODULE of a ``python -m MODULE ...`` command (its own words follow at index 3)."""
    if len(command) < 3 or not Path(command[0]).name.startswith("python") or command[1] != "-m":
        return None
    return command[2]


def program_for_container(container: Mapping[str, Any]) -> str | None:
    """SIDECAR or DEMO_APP for a container of ours, else None (simulated).

    A ``python -m wsgauge_sidecar.demo_app`` (or ``wsgauge_sidecar``) command decides, whatever the
    image (the demo app runs from the sidecar image); otherwise the image name does.
    """
    module = _python_module([str(c) for c in container.get("command") or []])
    if module is not None:
        return _MODULES.get(module)
    return program_for_image(str(container.get("image") or ""))


@dataclass(frozen=True)
class PodContext:
    """Pod facts the downward API and the address rewriting need."""

    name: str
    """metadata.name"""
    namespace: str
    """metadata.namespace"""
    uid: str = ""
    """metadata.uid"""
    node_name: str = ""
    """spec.nodeName"""
    pod_ip: str = ""
    """status.podIP (the loopback address the runner assigned)"""
    host_ip: str = ""
    """status.hostIP"""
    service_account: str = "default"
    """spec.serviceAccountName"""
    labels: Mapping[str, str] = field(default_factory=dict)
    """metadata.labels"""
    annotations: Mapping[str, str] = field(default_factory=dict)
    """metadata.annotations"""


@dataclass(frozen=True)
class LaunchPlan:
    """How to run one container as a local process."""

    argv: list[str]
    """Full command line (absolute program path first)."""
    env: dict[str, str]
    """Complete environment of the process."""
    skipped_env: list[str] = field(default_factory=list)
    """Env entries that could not be resolved (secret/configmap refs), for the log."""


_FIELD_REF = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def resolve_field_ref(path: str, pod: PodContext) -> str | None:
    """Value of a downward-API fieldRef.fieldPath, or None if unsupported."""
    simple = {
        "metadata.name": pod.name,
        "metadata.namespace": pod.namespace,
        "metadata.uid": pod.uid,
        "spec.nodeName": pod.node_name,
        "spec.serviceAccountName": pod.service_account,
        "status.podIP": pod.pod_ip,
        "status.podIPs": pod.pod_ip,
        "status.hostIP": pod.host_ip,
        "status.hostIPs": pod.host_ip,
    }
    if path in simple:
        return simple[path]
    match = _FIELD_REF.match(path)
    if match:
        source = pod.labels if match.group(1) == "labels" else pod.annotations
        return source.get(match.group(2), "")
    return None


_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand_refs(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes $(VAR) expansion: known variables replaced, $$ escapes, unknown refs kept."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _VAR_REF.sub(replace, value)


def container_env(
    container: Mapping[str, Any], pod: PodContext
) -> tuple[dict[str, str], list[str]]:
    """The container's env list resolved in order; returns (env, names skipped)."""
    env: dict[str, str] = {}
    skipped: list[str] = []
    for entry in container.get("env") or []:
        name = entry["name"]
        if "value" in entry:
            env[name] = expand_refs(str(entry["value"]), env)
            continue
        field_ref = (entry.get("valueFrom") or {}).get("fieldRef")
        resolved = resolve_field_ref(field_ref["fieldPath"], pod) if field_ref else None
        if resolved is None:
            if "valueFrom" not in entry:
                env[name] = ""
            else:
                skipped.append(name)
        else:
            env[name] = resolved
    return env, skipped


def rewrite_host(address: str, pod_ip: str, default_port: int) -> str:
    """Bind HOST:PORT to pod_ip when HOST means "local/any"; other hosts are kept."""
    if ":" not in address:
        return f"{pod_ip}:{address}" if address.isdigit() else f"{pod_ip}:{default_port}"
    host, _, port = address.rpartition(":")
    if host in LOCAL_HOSTS:
        return f"{pod_ip}:{port or default_port}"
    return address


def rewrite_addresses(
    program: str, args: Sequence[str], env: dict[str, str], pod_ip: str
) -> list[str]:
    """Bind the program's listen/upstream addresses to pod_ip in args and env (env is changed in
    place); flags present in neither get added with their default port."""
    result = list(args)
    for flag, env_name, default_port in ADDRESS_FLAGS.get(program, ()):
        found = False
        for index, arg in enumerate(result):
            if arg == flag and index + 1 < len(result):
                result[index + 1] = rewrite_host(result[index + 1], pod_ip, default_port)
                found = True
            elif arg.startswith(flag + "="):
                value = arg[len(flag) + 1 :]
                result[index] = f"{flag}={rewrite_host(value, pod_ip, default_port)}"
                found = True
        if env_name in env:
            env[env_name] = rewrite_host(env[env_name], pod_ip, default_port)
            found = True
        if not found:
            result += [flag, f"{pod_ip}:{default_port}"]
    return result


def launch_plan(
    program: str,
    container: Mapping[str, Any],
    pod: PodContext,
    venv_bin: Path,
    inherited: Mapping[str, str],
) -> LaunchPlan:
    """Command line and environment of a container of ours (SIDECAR or DEMO_APP)."""
    spec_env, skipped = container_env(container, pod)
    command = [str(c) for c in container.get("command") or []]
    args = [str(a) for a in container.get("args") or []]
    # `command` replaces the image entrypoint: its first word names the program itself, or
    # `python -m MODULE` does.
    if _python_module(command) is not None:
        words = [*command[3:], *args]
    else:
        words = [*command[1:], *args] if command else args
    words = [expand_refs(w, spec_env) for w in words]
    env = {k: v for k, v in inherited.items() if k in INHERITED_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(spec_env)
    words = rewrite_addresses(program, words, env, pod.pod_ip)
    return LaunchPlan([str(venv_bin / program), *words], env, skipped)


@dataclass(frozen=True)
class HttpProbe:
    """An httpGet readinessProbe, resolved to a concrete port."""

    path: str = "/"
    """Request path."""
    port: int = 80
    """TCP port on the pod IP."""
    scheme: str = "http"
    """http or https (certificates are not verified, like the kubelet)."""
    initial_delay: float = 0.0
    """initialDelaySeconds"""
    period: float = 10.0
    """periodSeconds"""
    timeout: float = 1.0
    """timeoutSeconds"""
    success_threshold: int = 1
    """successThreshold"""
    failure_threshold: int = 3
    """failureThreshold"""


def http_readiness_probe(container: Mapping[str, Any]) -> HttpProbe | None:
    """The container's httpGet readinessProbe (named ports resolved), None if it has none."""
    probe = container.get("readinessProbe") or {}
    http_get = probe.get("httpGet")
    if not http_get:
        return None
    port = http_get.get("port")
    if isinstance(port, str) and not port.isdigit():
        named = [p for p in container.get("ports") or [] if p.get("name") == port]
        if not named:
            return None
        port = named[0]["containerPort"]
    return HttpProbe(
        path=http_get.get("path") or "/",
        port=int(port),
        scheme=str(http_get.get("scheme") or "HTTP").lower(),
        initial_delay=float(probe.get("initialDelaySeconds") or 0),
        period=float(probe.get("periodSeconds") or 10),
        timeout=float(probe.get("timeoutSeconds") or 1),
        success_threshold=int(probe.get("successThreshold") or 1),
        failure_threshold=int(probe.get("failureThreshold") or 3),
    )


_SLEEP_WORDS = re.compile(r"^(?:sleep\s+)?(\d+(?:\.\d+)?)$")


def prestop_delay(container: Mapping[str, Any]) -> float:
    """Seconds of a preStop `exec: sleep N` (also `sh -c "sleep N"`) or `sleep: {seconds: N}`."""
    pre_stop = ((container.get("lifecycle") or {}).get("preStop")) or {}
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"].get("seconds") or 0)
    command = [str(c) for c in (pre_stop.get("exec") or {}).get("command") or []]
    if not command:
        return 0.0
    if Path(command[0]).name == "sleep" and len(command) == 2:
        text = command[1]
    elif Path(command[0]).name in ("sh", "bash") and len(command) == 3 and command[1] == "-c":
        text = command[2].strip()
    else:
        return 0.0
    match = _SLEEP_WORDS.match(text)
    return float(match.group(1)) if match else 0.0
