"""``kubectl wsgauge``'s pure part: documents in, rows and tables out; the flags as kubectl's."""

from __future__ import annotations

import pytest
from wsgauge_operator.kubectl_plugin import (
    build_parser,
    describe_data,
    describe_text,
    render_table,
    top_rows,
    top_table,
    totals_rows,
    totals_table,
)

LIVE = {
    "connectionStats": [
        {
            "namespace": "prod",
            "name": "chat",
            "connections": 8,
            "topics": {"stream": 6, "stats": 2},
            "pods": {"matched": 2, "reporting": 2},
            "currentReplicas": 2,
            "desiredReplicas": 3,
            "podList": [
                {
                    "name": "chat-a",
                    "node": "node-1",
                    "connections": 5,
                    "topics": {"stream": 4, "stats": 1},
                    "ready": True,
                    "draining": False,
                    "overCapacity": True,
                    "sidecar": "reporting",
                },
                {
                    "name": "chat-b",
                    "node": "node-2",
                    "connections": 3,
                    "topics": {"stream": 2, "stats": 1},
                    "ready": False,
                    "draining": True,
                    "overCapacity": False,
                    "sidecar": "reporting",
                },
            ],
        },
        {
            "namespace": "dev",
            "name": "feed",
            "connections": 7,
            "topics": {"news": 7},
            "pods": {"matched": 1, "reporting": 1},
            "currentReplicas": 1,
            "desiredReplicas": None,
            "podList": [{"name": "feed-a", "node": "node-1", "connections": 7, "topics": {}}],
        },
    ]
}


def test_top_rows_per_pod_busiest_first_and_by_namespace() -> None:
    rows = top_rows(LIVE, None)
    assert [row["pod"] for row in rows] == ["feed-a", "chat-a", "chat-b"]
    assert [row["pod"] for row in top_rows(LIVE, "prod")] == ["chat-a", "chat-b"]
    assert top_rows(LIVE, "nope") == []
    table = top_table(top_rows(LIVE, "prod"), all_namespaces=False).splitlines()
    assert table[0].split() == [
        "NAME",
        "CONNECTIONSTATS",
        "NODE",
        "SOCKETS",
        "READY",
        "DRAINING",
        "TOPICS",
    ]
    assert table[1].split() == ["chat-a", "chat", "node-1", "5", "yes", "no", "stats=1,stream=4"]
    assert table[2].split() == ["chat-b", "chat", "node-2", "3", "no", "yes", "stats=1,stream=2"]
    wide = top_table(rows, all_namespaces=True).splitlines()
    assert wide[0].split()[0] == "NAMESPACE"
    assert wide[1].split()[:2] == ["dev", "feed-a"]


def test_totals_rows_and_table() -> None:
    rows = totals_rows(LIVE, None)
    assert [(r["name"], r["connections"], r["desiredReplicas"]) for r in rows] == [
        ("chat", 8, 3),
        ("feed", 7, None),
    ]
    table = totals_table(rows, all_namespaces=True).splitlines()
    assert table[0].split() == [
        "NAMESPACE",
        "NAME",
        "CONNECTIONS",
        "PODS",
        "CURRENT",
        "DESIRED",
        "TOPICS",
    ]
    assert table[2].split() == ["dev", "feed", "7", "1", "1", "<none>", "news=7"]


def test_render_table_pads_columns() -> None:
    assert render_table(["A", "BB"], [["xxx", 1], ["y", 22]]) == "A     BB\nxxx   1\ny     22"


def test_describe_shows_pods_conditions_and_events() -> None:
    resource = {
        "metadata": {"namespace": "prod", "name": "chat"},
        "spec": {"targetRef": {"kind": "Deployment", "name": "chat"}},
        "status": {
            "connections": 8,
            "topics": {"stream": 6, "stats": 2},
            "desiredReplicas": 3,
            "conditions": [{"type": "Ready", "status": "True", "reason": "Reporting"}],
        },
    }
    events = [{"type": "Warning", "reason": "CapacityExceeded", "note": "chat-a over 4"}]
    data = describe_data(resource, LIVE["connectionStats"][0], events)
    assert data["currentReplicas"] == 2
    assert [pod["name"] for pod in data["pods"]] == ["chat-a", "chat-b"]
    text = describe_text(data, live_available=True)
    assert "Target:         Deployment/chat" in text
    assert "Replicas:       2 current, 3 desired" in text
    assert "CapacityExceeded" in text
    assert "chat-a over 4" in text
    assert "Reporting" in text
    assert "could not be read" in describe_text(describe_data(resource, None, []), False)


def test_flags_before_or_after_the_subcommand() -> None:
    parser = build_parser()
    args = parser.parse_args(["top", "-n", "prod", "-o", "json", "--context", "c"])
    assert (args.command, args.namespace, args.output, args.context) == ("top", "prod", "json", "c")
    args = parser.parse_args(["-A", "watch", "--count", "2"])
    assert (args.command, args.all_namespaces, args.count) == ("watch", True, 2)
    args = parser.parse_args(["describe", "chat", "-n", "prod"])
    assert (args.command, args.name, args.namespace) == ("describe", "chat", "prod")
    with pytest.raises(SystemExit):
        parser.parse_args(["top", "-o", "yaml"])
