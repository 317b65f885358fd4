"""Unit tests of the pure sidecar injector: its JSONPatch, overrides, denials, idempotence."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsgauge_operator.injector.plan import (
    FRAME_PROTOCOLS,
    INJECTED_ANNOTATION,
    InjectorSettings,
    plan_injection,
    prestop_seconds,
    review_response,
    settings_from_mapping,
)
from wsgauge_operator.injector.server import parse_command
from wsgauge_operator.model.exceptions import ConfigError
from wsgauge_operator.tls.certificates import make_ca
from wsgauge_sidecar.protocols.registry import PROTOCOLS

GATE = {"conditionType": "wsgauge.dev/connections-ok"}


def make_pod(annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    pod_spec: dict[str, Any] = {
        "containers": [
            {"name": "app", "image": "example/chat:1", "ports": [{"containerPort": 8081}]}
        ],
        "terminationGracePeriodSeconds": 30,
    }
    pod_spec.update(spec)
    metadata: dict[str, Any] = {"generateName": "chat-", "namespace": "prod"}
    if annotations is not None:
        metadata["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}


def injected(pod: dict[str, Any], settings: InjectorSettings | None = None) -> dict[str, Any]:
    plan = plan_injection(pod, settings or InjectorSettings())
    assert not plan.denied, plan.denied
    assert plan.patch, plan.reason
    return jsonpatch.apply_patch(pod, plan.patch)  # type: ignore[no-any-return]


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in pod["spec"]["containers"] if c["name"] == name)


def env_of(sidecar: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in sidecar["env"]}


def test_pod_without_the_annotation_is_untouched() -> None:
    for given_annotations in (None, {}, {"wsgauge.dev/inject": "false"}, {"other": "true"}):
        plan = plan_injection(make_pod(given_annotations), InjectorSettings())
        assert plan.patch == []
        assert not plan.denied
        assert "not opted in" in plan.reason


def test_injected_pod_has_sidecar_ports_probes_env_gate_and_prestop() -> None:
    settings = InjectorSettings(image="reg/sidecar:9", drain_grace=5, drain_spread=10)
    pod = make_pod({"wsgauge.dev/inject": "true"})
    result = injected(pod, settings)
    sidecar = container(result, "wsgauge-sidecar")
    assert sidecar["image"] == "reg/sidecar:9"
    assert [(p["name"], p["containerPort"]) for p in sidecar["ports"]] == [
        ("wsgauge-http", 8080),
        ("wsgauge-admin", 9090),
    ]
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "wsgauge-admin"}
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "wsgauge-admin"}
    env = env_of(sidecar)
    assert env["POD_NAME"] == {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["NODE_NAME"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["WSGAUGE_UPSTREAM"] == "127.0.0.1:8081"
    assert env["WSGAUGE_LISTEN"] == "0.0.0.0:8080"
    assert env["WSGAUGE_ADMIN_LISTEN"] == "0.0.0.0:9090"
    assert env["WSGAUGE_DRAIN_GRACE"] == "5"
    assert env["WSGAUGE_DRAIN_SPREAD"] == "10"
    assert sidecar["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert sidecar["securityContext"]["runAsNonRoot"] is True
    assert result["spec"]["readinessGates"] == [GATE]
    app = container(result, "app")
    assert app["lifecycle"]["preStop"] == {"sleep": {"seconds": 17}}
    assert prestop_seconds(settings) == 17
    assert result["spec"]["terminationGracePeriodSeconds"] == 30  # 30 >= 17 + 10: kept
    assert result["metadata"]["annotations"][INJECTED_ANNOTATION] == "reg/sidecar:9"
    # the app container itself is otherwise unchanged, and the input was not modified
    assert app["ports"] == [{"containerPort": 8081}]
    assert len(pod["spec"]["containers"]) == 1


def test_injection_is_idempotent() -> None:
    result = injected(make_pod({"wsgauge.dev/inject": "true"}))
    again = plan_injection(result, InjectorSettings())
    assert again.patch == []
    assert again.reason == "already injected"


def test_annotations_override_the_sidecar_settings() -> None:
    pod = make_pod(
        {
            "wsgauge.dev/inject": "true",
            "wsgauge.dev/topic": "path:^/ws/([^/]+)",
            "wsgauge.dev/max-connections": "5000",
            "wsgauge.dev/ready-below": "4000",
            "wsgauge.dev/max-topics": "20",
            "wsgauge.dev/max-topic-connections": "lobby=50, a=b=0",
            "wsgauge.dev/max-upgrades-per-second": "12.5",
            "wsgauge.dev/drain-grace": "2.5",
            "wsgauge.dev/drain-spread": "30s",
            "wsgauge.dev/drain-close-code": "1012",
            "wsgauge.dev/drain-mode": "batches",
            "wsgauge.dev/drain-batches": "6",
            "wsgauge.dev/upstream": "3000",
            "wsgauge.dev/port": "8000",
            "wsgauge.dev/admin-port": "9191",
        },
        containers=[{"name": "app", "image": "x"}],
    )
    result = injected(pod)
    sidecar = container(result, "wsgauge-sidecar")
    env = env_of(sidecar)
    assert env["WSGAUGE_TOPIC"] == "path:^/ws/([^/]+)"
    assert env["WSGAUGE_MAX_CONNECTIONS"] == "5000"
    assert env["WSGAUGE_READY_BELOW"] == "4000"
    assert env["WSGAUGE_MAX_TOPICS"] == "20"
    assert env["WSGAUGE_MAX_TOPIC_CONNECTIONS"] == "lobby=50,a=b=0"
    assert env["WSGAUGE_MAX_UPGRADES_PER_SECOND"] == "12.5"
    assert env["WSGAUGE_DRAIN_GRACE"] == "2.5"
    assert env["WSGAUGE_DRAIN_SPREAD"] == "30"
    assert env["WSGAUGE_DRAIN_CLOSE_CODE"] == "1012"
    assert env["WSGAUGE_DRAIN_MODE"] == "batches"
    assert env["WSGAUGE_DRAIN_BATCHES"] == "6"
    assert env["WSGAUGE_UPSTREAM"] == "127.0.0.1:3000"
    assert env["WSGAUGE_LISTEN"] == "0.0.0.0:8000"
    assert [p["containerPort"] for p in sidecar["ports"]] == [8000, 9191]
    # preStop covers grace + spread (32.5 -> 33) + margin 2; grace period raised above it
    assert container(result, "app")["lifecycle"]["preStop"]["sleep"]["seconds"] == 35
    assert result["spec"]["terminationGracePeriodSeconds"] == 45


@pytest.mark.parametrize(
    ("annotation", "value"),
    [
        ("wsgauge.dev/max-connections", "-1"),
        ("wsgauge.dev/max-connections", "lots"),
        ("wsgauge.dev/max-topic-connections", "lobby"),
        ("wsgauge.dev/max-topic-connections", "lobby=-1"),
        ("wsgauge.dev/max-topic-connections", "lobby=1,lobby=2"),
        ("wsgauge.dev/max-upgrades-per-second", "fast"),
        ("wsgauge.dev/max-upgrades-per-second", "inf"),
        ("wsgauge.dev/topic", "cookie:x"),
        ("wsgauge.dev/topic", "path:(unclosed"),
        ("wsgauge.dev/topic", "auto:path:(unclosed"),
        ("wsgauge.dev/topic", "auto:report"),
        ("wsgauge.dev/topic", "auto:auto"),
        ("wsgauge.dev/topic", "socket.io"),
        ("wsgauge.dev/drain-grace", "soon"),
        ("wsgauge.dev/drain-spread", "99999"),
        ("wsgauge.dev/drain-close-code", "1000"),
        ("wsgauge.dev/drain-close-code", "restart"),
        ("wsgauge.dev/drain-mode", "burst"),
        ("wsgauge.dev/drain-batches", "0"),
        ("wsgauge.dev/port", "70000"),
        ("wsgauge.dev/upstream", "app:http"),
    ],
)
def test_invalid_override_denies_the_pod_naming_the_annotation(annotation: str, value: str) -> None:
    plan = plan_injection(
        make_pod({"wsgauge.dev/inject": "true", annotation: value}), InjectorSettings()
    )
    assert plan.patch == []
    assert annotation in plan.denied


def test_defaults_set_no_topic_limits_and_no_rate() -> None:
    env = env_of(container(injected(make_pod({"wsgauge.dev/inject": "true"})), "wsgauge-sidecar"))
    assert "WSGAUGE_MAX_TOPIC_CONNECTIONS" not in env
    assert env["WSGAUGE_MAX_UPGRADES_PER_SECOND"] == "0"
    assert env["WSGAUGE_DRAIN_CLOSE_CODE"] == "1001"
    assert env["WSGAUGE_DRAIN_MODE"] == "spread"


@pytest.mark.parametrize(
    ("topic", "limit", "denied"),
    [
        ("phoenix", {"wsgauge.dev/max-topic-connections": "room:1=5"}, "need a topic rule"),
        ("report", {"wsgauge.dev/max-topic-connections": "a=5"}, "need a topic rule"),
        ("report", {"wsgauge.dev/max-upgrades-per-second": "5"}, "report mode"),
    ],
)
def test_limits_the_topic_rule_cannot_serve_are_denied(
    topic: str, limit: dict[str, str], denied: str
) -> None:
    annotations = {"wsgauge.dev/inject": "true", "wsgauge.dev/topic": topic, **limit}
    plan = plan_injection(make_pod(annotations), InjectorSettings())
    assert plan.patch == []
    assert denied in plan.denied


@pytest.mark.parametrize(
    "rule", ["socketio", "actioncable", "centrifugo", "auto", "auto:query:room", "auto:phoenix"]
)
def test_frame_protocol_and_auto_rules_are_accepted(rule: str) -> None:
    plan = plan_injection(
        make_pod({"wsgauge.dev/inject": "true", "wsgauge.dev/topic": rule}), InjectorSettings()
    )
    assert not plan.denied
    assert plan.patch


def test_every_sidecar_frame_protocol_is_known_to_the_injector() -> None:
    assert set(PROTOCOLS) <= set(FRAME_PROTOCOLS)


def test_app_port_clashing_with_the_sidecar_is_denied() -> None:
    pod = make_pod(
        {"wsgauge.dev/inject": "true"},
        containers=[{"name": "app", "image": "x", "ports": [{"containerPort": 8080}]}],
    )
    plan = plan_injection(pod, InjectorSettings())
    assert "8080" in plan.denied
    assert "'app'" in plan.denied
    # ...and moving the sidecar's data port resolves it
    pod["metadata"]["annotations"]["wsgauge.dev/port"] = "8088"
    assert plan_injection(pod, InjectorSettings()).patch


def test_same_data_and_admin_port_is_denied() -> None:
    plan = plan_injection(
        make_pod({"wsgauge.dev/inject": "true", "wsgauge.dev/admin-port": "8080"}),
        InjectorSettings(),
    )
    assert "must differ" in plan.denied


def test_report_mode_has_no_data_port() -> None:
    result = injected(make_pod({"wsgauge.dev/inject": "true", "wsgauge.dev/topic": "report"}))
    sidecar = container(result, "wsgauge-sidecar")
    assert [p["name"] for p in sidecar["ports"]] == ["wsgauge-admin"]


def test_report_mode_listens_for_reports_on_loopback_and_tells_the_app_where() -> None:
    pod = make_pod(
        {"wsgauge.dev/inject": "true", "wsgauge.dev/topic": "report"},
        containers=[
            {"name": "app", "image": "x"},
            {"name": "worker", "image": "y", "env": [{"name": "A", "value": "1"}]},
            {
                "name": "own",
                "image": "z",
                "env": [{"name": "WSGAUGE_REPORT_URL", "value": "http://127.0.0.1:7/r"}],
            },
        ],
    )
    result = injected(pod)
    assert env_of(container(result, "wsgauge-sidecar"))["WSGAUGE_REPORT_LISTEN"] == (
        "127.0.0.1:9091"
    )
    assert env_of(container(result, "app")) == {
        "WSGAUGE_REPORT_URL": "http://127.0.0.1:9091/report"
    }
    assert env_of(container(result, "worker")) == {
        "A": "1",
        "WSGAUGE_REPORT_URL": "http://127.0.0.1:9091/report",
    }
    assert env_of(container(result, "own")) == {"WSGAUGE_REPORT_URL": "http://127.0.0.1:7/r"}
    # the report listener is not a container port: nothing outside the pod reaches it
    assert [p["name"] for p in container(result, "wsgauge-sidecar")["ports"]] == ["wsgauge-admin"]


def test_report_port_annotation_and_conflicts() -> None:
    annotations = {
        "wsgauge.dev/inject": "true",
        "wsgauge.dev/topic": "report",
        "wsgauge.dev/report-port": "7777",
    }
    result = injected(make_pod(annotations))
    assert env_of(container(result, "wsgauge-sidecar"))["WSGAUGE_REPORT_LISTEN"] == (
        "127.0.0.1:7777"
    )
    assert env_of(container(result, "app"))["WSGAUGE_REPORT_URL"] == (
        "http://127.0.0.1:7777/report"
    )
    clash = plan_injection(
        make_pod({**annotations, "wsgauge.dev/report-port": "9090"}), InjectorSettings()
    )
    assert "report port and admin port must differ" in clash.denied
    taken = plan_injection(
        make_pod(
            {"wsgauge.dev/inject": "true", "wsgauge.dev/topic": "report"},
            containers=[{"name": "app", "image": "x", "ports": [{"containerPort": 9091}]}],
        ),
        InjectorSettings(),
    )
    assert "9091" in taken.denied
    assert "wsgauge.dev/report-port" in taken.denied


def test_proxy_mode_has_no_report_listener_or_url() -> None:
    result = injected(make_pod({"wsgauge.dev/inject": "true"}))
    assert "WSGAUGE_REPORT_LISTEN" not in env_of(container(result, "wsgauge-sidecar"))
    assert "env" not in container(result, "app")


def test_existing_hooks_gates_and_grace_are_respected() -> None:
    own_hook = {"exec": {"command": ["/bin/drain"]}}
    pod = make_pod(
        {"wsgauge.dev/inject": "true", "team": "chat"},
        containers=[
            {"name": "app", "image": "x", "lifecycle": {"preStop": own_hook}},
            {
                "name": "worker",
                "image": "y",
                "lifecycle": {"postStart": {"exec": {"command": ["a"]}}},
            },
        ],
        readinessGates=[{"conditionType": "example.com/other"}],
        terminationGracePeriodSeconds=120,
    )
    result = injected(pod)
    assert container(result, "app")["lifecycle"] == {"preStop": own_hook}
    worker = container(result, "worker")
    assert worker["lifecycle"]["preStop"] == {"sleep": {"seconds": 17}}
    assert worker["lifecycle"]["postStart"] == {"exec": {"command": ["a"]}}
    assert result["spec"]["readinessGates"] == [{"conditionType": "example.com/other"}, GATE]
    assert result["spec"]["terminationGracePeriodSeconds"] == 120
    assert result["metadata"]["annotations"]["team"] == "chat"
    assert result["metadata"]["annotations"][INJECTED_ANNOTATION]


def test_gate_already_present_is_not_duplicated_and_can_be_turned_off() -> None:
    pod = make_pod({"wsgauge.dev/inject": "true"}, readinessGates=[GATE])
    assert injected(pod)["spec"]["readinessGates"] == [GATE]
    no_gate = injected(
        make_pod({"wsgauge.dev/inject": "true"}), InjectorSettings(readiness_gate=False)
    )
    assert "readinessGates" not in no_gate["spec"]


def test_exec_prestop_mode() -> None:
    result = injected(
        make_pod({"wsgauge.dev/inject": "true"}), InjectorSettings(prestop_mode="exec")
    )
    assert container(result, "app")["lifecycle"]["preStop"] == {
        "exec": {"command": ["sleep", "17"]}
    }


def review(pod: dict[str, Any], operation: str = "CREATE", kind: str = "Pod") -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "abc-123",
            "kind": {"group": "", "version": "v1", "kind": kind},
            "operation": operation,
            "namespace": "prod",
            "object": pod,
        },
    }


def test_review_response_carries_a_base64_json_patch() -> None:
    pod = make_pod({"wsgauge.dev/inject": "true"})
    answer = review_response(review(pod), InjectorSettings())
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    assert answer["kind"] == "AdmissionReview"
    response = answer["response"]
    assert response["uid"] == "abc-123"
    assert response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    patch = json.loads(base64.b64decode(response["patch"]))
    assert jsonpatch.apply_patch(pod, patch) == injected(pod)


def test_review_response_allows_everything_else_unchanged() -> None:
    pod = make_pod({"wsgauge.dev/inject": "true"})
    for request in (
        review(pod, operation="UPDATE"),
        review(pod, kind="Deployment"),
        review(make_pod()),
    ):
        response = review_response(request, InjectorSettings())["response"]
        assert response == {"uid": "abc-123", "allowed": True}


def test_review_response_denies_with_a_message() -> None:
    pod = make_pod({"wsgauge.dev/inject": "true", "wsgauge.dev/topic": "bogus"})
    response = review_response(review(pod), InjectorSettings())["response"]
    assert response["allowed"] is False
    assert response["status"]["code"] == 400
    assert "wsgauge.dev/topic" in response["status"]["message"]


def test_settings_from_the_chart_config() -> None:
    settings = settings_from_mapping(
        {
            "image": "r/s:1",
            "dataPort": 8000,
            "drainGrace": 3,
            "resources": {"requests": {"cpu": "1"}},
            "extraEnv": {"WSGAUGE_WATCH_HEARTBEAT": "2"},
            "readinessGate": False,
            "prestopMode": "exec",
            "maxTopicConnections": {"lobby": 7},
            "maxUpgradesPerSecond": 20,
            "drainCloseCode": 1012,
            "drainMode": "batches",
            "drainBatches": 4,
        }
    )
    assert settings.image == "r/s:1"
    assert settings.data_port == 8000
    assert settings.drain_grace == 3.0
    assert settings.readiness_gate is False
    assert settings.resources == {"requests": {"cpu": "1"}}
    sidecar = container(
        injected(make_pod({"wsgauge.dev/inject": "true"}), settings), "wsgauge-sidecar"
    )
    assert env_of(sidecar)["WSGAUGE_WATCH_HEARTBEAT"] == "2"
    assert env_of(sidecar)["WSGAUGE_MAX_TOPIC_CONNECTIONS"] == "lobby=7"
    assert env_of(sidecar)["WSGAUGE_MAX_UPGRADES_PER_SECOND"] == "20"
    assert env_of(sidecar)["WSGAUGE_DRAIN_CLOSE_CODE"] == "1012"
    assert env_of(sidecar)["WSGAUGE_DRAIN_MODE"] == "batches"
    assert env_of(sidecar)["WSGAUGE_DRAIN_BATCHES"] == "4"
    assert sidecar["resources"] == {"requests": {"cpu": "1"}}


@pytest.mark.parametrize(
    "data",
    [
        {"imageTag": "x"},
        {"dataPort": "8080"},
        {"readinessGate": 1},
        {"prestopMode": "wait"},
        {"topic": "nope"},
        {"maxConnections": True},
        {"maxTopicConnections": {"lobby": "7"}},
        {"maxTopicConnections": {"a,b": 7}},
        {"drainCloseCode": 1000},
        {"drainMode": "burst"},
        {"drainBatches": 0},
        {"maxTopicConnections": {"lobby": -1}},
        {"maxTopicConnections": {"lobby": 7}, "topic": "phoenix"},
        {"maxUpgradesPerSecond": "5"},
    ],
)
def test_bad_chart_config_is_a_config_error(data: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        settings_from_mapping(data)


container_names = st.sampled_from(["app", "web", "worker", "log-shipper"])
hooks: st.SearchStrategy[dict[str, Any] | None] = st.one_of(
    st.none(),
    st.just({}),
    st.just({"preStop": {"exec": {"command": ["x"]}}}),
    st.just({"postStart": {"exec": {"command": ["y"]}}}),
)
pods = st.builds(
    lambda names, hook_list, annotations, gates, grace: {
        "metadata": {"annotations": {"wsgauge.dev/inject": "true", **annotations}},
        "spec": {
            "containers": [
                {"name": name, "image": "i", **({"lifecycle": hook} if hook is not None else {})}
                for name, hook in zip(names, hook_list, strict=False)
            ],
            **({"readinessGates": gates} if gates is not None else {}),
            **({"terminationGracePeriodSeconds": grace} if grace is not None else {}),
        },
    },
    st.lists(container_names, min_size=1, max_size=4, unique=True),
    st.lists(hooks, min_size=4, max_size=4),
    st.dictionaries(st.sampled_from(["a/b", "x~y", "team"]), st.text(max_size=5), max_size=3),
    st.one_of(st.none(), st.just([]), st.just([GATE]), st.just([{"conditionType": "o"}])),
    st.one_of(st.none(), st.integers(min_value=0, max_value=300)),
)


@settings(max_examples=150, deadline=None)
@given(pods)
def test_any_opted_in_pod_gets_exactly_one_sidecar_and_gate(pod: dict[str, Any]) -> None:
    original = copy.deepcopy(pod)
    result = injected(pod)
    assert pod == original
    names = [c["name"] for c in result["spec"]["containers"]]
    assert names.count("wsgauge-sidecar") == 1
    assert names[:-1] == [c["name"] for c in pod["spec"]["containers"]]
    assert result["spec"]["readinessGates"].count(GATE) == 1
    for before, after in zip(pod["spec"]["containers"], result["spec"]["containers"], strict=False):
        assert "preStop" in after["lifecycle"]
        if before.get("lifecycle", {}).get("preStop"):
            assert after["lifecycle"]["preStop"] == before["lifecycle"]["preStop"]
    assert (
        result["spec"]["terminationGracePeriodSeconds"] >= prestop_seconds(InjectorSettings()) + 10
    )
    for key, value in pod["metadata"]["annotations"].items():
        assert result["metadata"]["annotations"][key] == value
    assert plan_injection(result, InjectorSettings()).patch == []


def test_the_sidecar_gets_the_control_ca_only_when_the_injector_has_one(tmp_path: Path) -> None:
    pod = make_pod({"wsgauge.dev/inject": "true"})
    assert "WSGAUGE_CONTROL_CA" not in env_of(container(injected(pod), "wsgauge-sidecar"))
    pem = make_ca("wsgauge-ca").cert_pem.decode()
    sidecar = container(injected(pod, InjectorSettings(control_ca=pem)), "wsgauge-sidecar")
    assert env_of(sidecar)["WSGAUGE_CONTROL_CA"] == pem
    ca_file = tmp_path / "ca.crt"
    ca_file.write_text(pem)
    command = parse_command(["--control-ca-file", str(ca_file)], {})
    assert command.injector.control_ca == pem
    assert parse_command([], {}).injector.control_ca == ""
    (tmp_path / "bad.crt").write_text("not a certificate")
    for bad in (str(tmp_path / "bad.crt"), str(tmp_path / "missing.crt")):
        with pytest.raises(ConfigError, match="--control-ca-file"):
            parse_command(["--control-ca-file", bad], {})
