"""Pure helpers of the demo scripts in demo/ (no cluster, no network): they import, parse what
wsgauge-devcluster, kubectl and the demo app print, plan the uneven scale-down, and take the
same release lock as the tests."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "demo"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from apiservice_lock import LOCK_PATH
from demo_kube import (
    DemoError,
    ReleaseLock,
    endpoint_readiness,
    injected_summary,
    parse_exports,
    pod_info,
)
from demo_load import keep_plan, parse_whoami, topic_plan
from demo_view import Snapshot, json_documents, pod_notes, render


def test_parse_exports_reads_both_lines() -> None:
    text = "export KUBECONFIG=/s/kubeconfig\nexport PATH=/bin/k8s-v1:$PATH\n"
    assert parse_exports(text) == (Path("/s/kubeconfig"), Path("/bin/k8s-v1"))
    with pytest.raises(DemoError):
        parse_exports("cluster ready\n")


def test_topic_plan_follows_the_weights_interleaved() -> None:
    plan = topic_plan(20)
    assert Counter(plan) == {"stream": 12, "stats": 6, "chat": 2}
    assert Counter(topic_plan(10)) == {"stream": 6, "stats": 3, "chat": 1}
    # Interleaved, not in blocks: each topic appears within the first five sockets.
    assert set(plan[:5]) == {"stream", "stats", "chat"}


def test_parse_whoami() -> None:
    assert parse_whoami("pod:chat-5d8f-x2k4q") == "chat-5d8f-x2k4q"
    assert parse_whoami("pod:") is None
    assert parse_whoami("whoami") is None


def test_keep_plan_keeps_the_busiest_but_never_the_oldest_busy() -> None:
    oldest_first = ["a", "b", "c", "d", "e", "f"]
    counts = {"a": 40, "b": 35, "c": 18, "d": 22, "e": 5, "f": 12}
    plan = keep_plan(counts, oldest_first)
    # The oldest pod is not among the kept ones even though it is the busiest.
    assert plan == {"a": 3, "b": 14, "c": 0, "d": 10, "e": 2, "f": 1}
    kept = sorted(plan.values(), reverse=True)[:2]
    assert min(kept) > max(sorted(plan.values(), reverse=True)[2:])
    # Never more than a pod has.
    assert keep_plan({"a": 1, "b": 2, "c": 0}, ["a", "b", "c"]) == {"a": 1, "b": 2, "c": 0}


def test_release_lock_is_the_tests_lock_and_exclusive(tmp_path: Path) -> None:
    assert ReleaseLock().path == LOCK_PATH
    first, second = ReleaseLock(tmp_path / "lock"), ReleaseLock(tmp_path / "lock")
    assert first.try_acquire()
    assert not second.try_acquire()
    first.release()
    assert second.try_acquire()
    second.release()


def test_pod_info_ready_gate_deleting_and_cost() -> None:
    pod = {
        "metadata": {
            "name": "chat-1",
            "creationTimestamp": "2026-11-26T10:00:00Z",
            "deletionTimestamp": "2026-11-26T10:05:00Z",
            "annotations": {"controller.kubernetes.io/pod-deletion-cost": "14"},
        },
        "spec": {"nodeName": "wsgauge-node"},
        "status": {
            "podIP": "10.244.0.7",
            "conditions": [
                {"type": "Ready", "status": "True"},
                {"type": "wsgauge.dev/connections-ok", "status": "False"},
            ],
        },
    }
    info = pod_info(pod)
    assert (info.ip, info.node, info.ready, info.gate, info.deleting, info.deletion_cost) == (
        "10.244.0.7",
        "wsgauge-node",
        True,
        "False",
        True,
        "14",
    )
    assert not info.serving
    bare = pod_info({"metadata": {"name": "x"}, "status": {}})
    assert (bare.serving, bare.gate, bare.node) == (False, "", "")


def test_endpoint_readiness_from_endpoint_slices() -> None:
    slices = {
        "items": [
            {
                "kind": "EndpointSlice",
                "endpoints": [
                    {"targetRef": {"name": "p1"}, "conditions": {"ready": True}},
                    {"targetRef": {"name": "p2"}, "conditions": {"ready": False}},
                    {"addresses": ["10.0.0.1"]},
                ],
            },
            {"kind": "Pod"},
        ]
    }
    assert endpoint_readiness(slices) == {"p1": True, "p2": False}


def test_injected_summary() -> None:
    pod = {
        "spec": {
            "nodeName": "wsgauge-node",
            "containers": [
                {
                    "name": "app",
                    "image": "wsgauge/sidecar:0.1.0",
                    "lifecycle": {"preStop": {"sleep": {"seconds": 20}}},
                },
                {
                    "name": "wsgauge-sidecar",
                    "image": "wsgauge/sidecar:0.1.0",
                    "ports": [{"name": "http", "containerPort": 8080}, {"containerPort": 9090}],
                },
            ],
            "readinessGates": [{"conditionType": "wsgauge.dev/connections-ok"}],
        }
    }
    assert injected_summary(pod) == [
        "container app: wsgauge/sidecar:0.1.0  (preStop sleep 20s)",
        "container wsgauge-sidecar: wsgauge/sidecar:0.1.0  (ports http:8080,9090)",
        "readinessGates: wsgauge.dev/connections-ok",
        "node: wsgauge-node",
    ]


def test_render_marks_gated_pods_and_endpoints() -> None:
    def pod(name: str, gate: str, ready: bool) -> dict[str, object]:
        return {
            "metadata": {"name": name, "creationTimestamp": name},
            "status": {
                "podIP": "10.244.0.9",
                "conditions": [
                    {"type": "Ready", "status": str(ready)},
                    {"type": "wsgauge.dev/connections-ok", "status": gate},
                ],
            },
        }

    full, fine = (
        pod_info(pod("chat-a-full1", "False", False)),
        pod_info(pod("chat-a-ok2", "True", True)),
    )
    assert pod_notes(full, False) == ["gate off", "no traffic"]
    assert pod_notes(fine, True) == []
    snap = Snapshot(
        wss_row="chat chat 2/2 120 60 6 1m",
        replicas=2,
        ready_replicas=1,
        pods=[full, fine],
        endpoints={full.name: False, fine.name: True},
        counts={full.name: 55, fine.name: 65},
    )
    first, second = render(snap, 12.0)
    assert "endpoints ready 1/2" in first
    assert "replicas 1/2" in first
    assert second.endswith("full1=55(gate off,no traffic) ok2=65")


def test_json_documents_splits_a_kubectl_stream_and_lists() -> None:
    text = '{"kind": "A"}\n{"kind": "List", "items": [{"kind": "B"}, {"kind": "C"}]}\n'
    assert [d["kind"] for d in json_documents(text)] == ["A", "B", "C"]
