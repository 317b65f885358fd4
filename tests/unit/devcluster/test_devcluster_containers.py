"""Unit tests of the pure container-to-process mapping of the pod runner."""

from __future__ import annotations

from pathlib import Path

from wsgauge_devcluster.containers import (
    DEMO_APP,
    SIDECAR,
    PodContext,
    expand_refs,
    http_readiness_probe,
    launch_plan,
    prestop_delay,
    program_for_container,
    program_for_image,
    rewrite_host,
)
from wsgauge_devcluster.nodes import NodeAgent

POD = PodContext(
    name="web-1",
    namespace="team",
    uid="u-1",
    node_name="wsgauge-node-1",
    pod_ip="127.101.0.7",
    host_ip="127.101.0.1",
    labels={"app": "web"},
)
BIN = Path("/venv/bin")


def test_program_for_image() -> None:
    assert program_for_image("ghcr.io/x/wsgauge-sidecar:0.1") == SIDECAR
    assert program_for_image("wsgauge/sidecar:dev") == SIDECAR
    assert program_for_image("wsgauge/demo-app") == DEMO_APP
    assert program_for_image("localhost/wsgauge-demo-app:1") == DEMO_APP
    assert program_for_image("nginx:1.27") is None


def test_program_for_container_python_module_wins_over_the_image() -> None:
    demo = {
        "image": "wsgauge/sidecar:0.1.0",
        "command": ["python", "-m", "wsgauge_sidecar.demo_app"],
    }
    assert program_for_container(demo) == DEMO_APP
    sidecar = {"image": "registry.example/x:1", "command": ["python3", "-m", "wsgauge_sidecar"]}
    assert program_for_container(sidecar) == SIDECAR
    assert (
        program_for_container(
            {"image": "wsgauge/sidecar:1", "command": ["python", "-m", "http.server"]}
        )
        is None
    )
    assert program_for_container({"image": "wsgauge/sidecar:1"}) == SIDECAR
    assert program_for_container({"image": "nginx:1.27", "command": ["nginx"]}) is None


def test_python_module_command_keeps_its_own_arguments() -> None:
    container = {
        "name": "app",
        "image": "wsgauge/sidecar:0.1.0",
        "command": ["python", "-m", "wsgauge_sidecar.demo_app", "--listen"],
        "args": ["127.0.0.1:8081"],
    }
    plan = launch_plan(DEMO_APP, container, POD, BIN, {})
    assert plan.argv == ["/venv/bin/wsgauge-demo-app", "--listen", "127.101.0.7:8081"]


def test_rewrite_host() -> None:
    ip = "127.101.0.7"
    assert rewrite_host("0.0.0.0:8080", ip, 1) == f"{ip}:8080"
    assert rewrite_host("127.0.0.1:8081", ip, 1) == f"{ip}:8081"
    assert rewrite_host("localhost:9", ip, 1) == f"{ip}:9"
    assert rewrite_host(":7000", ip, 1) == f"{ip}:7000"
    assert rewrite_host("7000", ip, 1) == f"{ip}:7000"
    assert rewrite_host("10.1.2.3:80", ip, 1) == "10.1.2.3:80"


def test_sidecar_plan_binds_pod_ip_and_fills_downward_api() -> None:
    container = {
        "name": "wsgauge",
        "image": "wsgauge/sidecar:dev",
        "args": ["--listen=0.0.0.0:8080", "--topic", "path:^/ws/([^/]+)", "--max-topics=$(TOPICS)"],
        "env": [
            {"name": "TOPICS", "value": "7"},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {
                "name": "POD_NAMESPACE",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
            },
            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "WSGAUGE_ADMIN_LISTEN", "value": "0.0.0.0:9191"},
            {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
        ],
    }
    plan = launch_plan(SIDECAR, container, POD, BIN, {"PATH": "/usr/bin", "WSGAUGE_X": "leak"})
    assert plan.argv == [
        "/venv/bin/wsgauge-sidecar",
        "--listen=127.101.0.7:8080",
        "--topic",
        "path:^/ws/([^/]+)",
        "--max-topics=7",
        "--upstream",
        "127.101.0.7:8081",
    ]
    assert plan.env["POD_NAME"] == "web-1"
    assert plan.env["POD_NAMESPACE"] == "team"
    assert plan.env["NODE_NAME"] == "wsgauge-node-1"
    assert plan.env["POD_IP"] == "127.101.0.7"
    assert plan.env["APP"] == "web"
    assert plan.env["WSGAUGE_ADMIN_LISTEN"] == "127.101.0.7:9191"
    assert plan.env["PATH"] == "/usr/bin"
    assert "WSGAUGE_X" not in plan.env
    assert plan.skipped_env == ["SECRET"]


def test_demo_app_plan_with_command_and_defaults() -> None:
    container = {"name": "app", "image": "wsgauge/demo-app", "command": ["wsgauge-demo-app"]}
    plan = launch_plan(DEMO_APP, container, POD, BIN, {})
    assert plan.argv == ["/venv/bin/wsgauge-demo-app", "--listen", "127.101.0.7:8081"]
    container = {"name": "app", "image": "wsgauge/demo-app", "args": ["--listen", "127.0.0.1:9000"]}
    assert launch_plan(DEMO_APP, container, POD, BIN, {}).argv[1:] == [
        "--listen",
        "127.101.0.7:9000",
    ]


def test_expand_refs() -> None:
    assert expand_refs("a$(X)b$$(X)$(Y)", {"X": "1"}) == "a1b$(X)$(Y)"


def test_http_readiness_probe_named_port() -> None:
    container = {
        "ports": [{"name": "admin", "containerPort": 9090}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "admin"}, "periodSeconds": 2},
    }
    probe = http_readiness_probe(container)
    assert probe is not None
    assert (probe.port, probe.path, probe.period, probe.failure_threshold) == (
        9090,
        "/readyz",
        2,
        3,
    )
    assert http_readiness_probe({"readinessProbe": {"exec": {"command": ["true"]}}}) is None


def test_prestop_delay() -> None:
    def hook(command: list[str]) -> dict[str, object]:
        return {"lifecycle": {"preStop": {"exec": {"command": command}}}}

    assert prestop_delay(hook(["sleep", "5"])) == 5
    assert prestop_delay(hook(["/bin/sh", "-c", "sleep 3"])) == 3
    assert prestop_delay({"lifecycle": {"preStop": {"sleep": {"seconds": 4}}}}) == 4
    assert prestop_delay(hook(["/bin/sh", "-c", "curl x"])) == 0
    assert prestop_delay({}) == 0


def test_node_ip_pool_distinct_reuse_and_release() -> None:
    node = NodeAgent(name="n", node_ip="127.101.0.1")
    first = node.allocate("a")
    second = node.allocate("b")
    assert first == "127.101.0.2"
    assert second == "127.101.0.3"
    assert node.allocate("a") == first
    node.release("a")
    assert node.allocate("c") == first
    # a pod that had an IP before a runner restart keeps it, if it is in this node's pool
    assert node.allocate("d", previous="127.101.3.4") == "127.101.3.4"
    assert node.allocate("e", previous="127.102.0.2") not in ("127.102.0.2", "127.101.0.1")
    assert node.allocate("f", previous="127.101.3.4") != "127.101.3.4"
