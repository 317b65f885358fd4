"""Pure helpers of the demo scripts in demo/ (no cluster, no network): they import, parse what
wsgauge-devcluster and kubectl print, and detect the operator's metrics API from --help."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "demo"))

from demo_kube import DemoError, autoscaling_flags, parse_exports, pod_info
from demo_load import topic_plan
from demo_view import json_documents
from wsgauge_operator.cli import build_parser


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


def test_autoscaling_flags_detected_from_the_real_operator_help() -> None:
    help_text = build_parser().format_help()
    assert autoscaling_flags(help_text, 8443) == [
        "--metrics-api=true",
        "--metrics-api-listen=127.0.0.1:8443",
    ]
    assert autoscaling_flags("usage: wsgauge-operator [--kubeconfig VALUE]", 8443) is None


def test_pod_info_ready_deleting_and_cost() -> None:
    pod = {
        "metadata": {
            "name": "chat-1",
            "creationTimestamp": "2026-11-26T10:00:00Z",
            "deletionTimestamp": "2026-11-26T10:05:00Z",
            "annotations": {"controller.kubernetes.io/pod-deletion-cost": "14"},
        },
        "status": {"podIP": "127.101.0.2", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    info = pod_info(pod)
    assert (info.ip, info.ready, info.deleting, info.deletion_cost) == (
        "127.101.0.2",
        True,
        True,
        "14",
    )
    assert not info.serving
    assert pod_info({"metadata": {"name": "x"}, "status": {}}).serving is False


def test_json_documents_splits_a_kubectl_stream_and_lists() -> None:
    text = '{"kind": "A"}\n{"kind": "List", "items": [{"kind": "B"}, {"kind": "C"}]}\n'
    assert [d["kind"] for d in json_documents(text)] == ["A", "B", "C"]
