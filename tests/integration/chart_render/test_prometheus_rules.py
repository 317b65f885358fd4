"""The chart's PrometheusRule read by the real promtool (Debian's prometheus package; no cluster).

The rendered PrometheusRule's ``spec`` is written as a rules file; ``promtool check rules`` must
accept it and ``promtool test rules`` runs test series for every alert, firing and not firing,
with the summary and description the alert renders. The test is skipped only when promtool
cannot be installed (``hack/install-prometheus.sh``).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_render_harness import CHART, run_helm
from wsgauge_devcluster.prometheus import PrometheusError, ensure_installed

ALERTS = ("WsgaugePodsUnreachable", "WsgaugeCapacityExceeded", "WsgaugeScalingAtMax")
"""Every alert the chart defines (the test fails when one is added without test series)."""


@pytest.fixture(scope="module")
def promtool() -> Path:
    try:
        return ensure_installed()[1]
    except (PrometheusError, OSError, subprocess.TimeoutExpired) as error:
        pytest.skip(f"promtool cannot be installed (hack/install-prometheus.sh): {error}")


@pytest.fixture(scope="module")
def rules(helm_binary: Path) -> dict[str, Any]:
    """The rules file as docs/prometheus.md makes it: helm template | python -m
    wsgauge_devcluster.prometheus rules."""
    rendered = run_helm(
        helm_binary,
        "template",
        "wsgauge",
        str(CHART),
        "--set",
        "monitoring.prometheusRule.enabled=true",
    )
    assert rendered.returncode == 0, rendered.stderr
    result = subprocess.run(
        [sys.executable, "-m", "wsgauge_devcluster.prometheus", "rules"],
        input=rendered.stdout,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    rules: dict[str, Any] = yaml.safe_load(result.stdout)
    return rules


def test_the_rules_command_refuses_a_chart_without_rules(helm_binary: Path) -> None:
    rendered = run_helm(helm_binary, "template", "wsgauge", str(CHART))
    result = subprocess.run(
        [sys.executable, "-m", "wsgauge_devcluster.prometheus", "rules"],
        input=rendered.stdout,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 2
    assert "no PrometheusRule" in result.stderr


def _rule(rules: dict[str, Any], alert: str) -> dict[str, Any]:
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                return dict(rule)
    raise AssertionError(f"no alert {alert}")


def _annotations(rule: dict[str, Any], labels: dict[str, str], value: str) -> dict[str, str]:
    """The rule's annotations with ``{{ $labels.X }}`` and ``{{ $value }}`` filled in (the only
    template constructs the chart uses; anything else fails here)."""
    rendered = {}
    for key, template in rule["annotations"].items():
        text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], template)
        text = text.replace("{{ $value }}", value)
        assert "{{" not in text, f"{key}: a template construct this test does not know: {text}"
        rendered[key] = text
    return rendered


def _alert(rule: dict[str, Any], labels: dict[str, str], value: str = "1") -> dict[str, Any]:
    return {
        "exp_labels": {**labels, **rule["labels"]},
        "exp_annotations": _annotations(rule, labels, value),
    }


def _series(metric: str, values: str, /, **labels: str) -> dict[str, str]:
    """One promtool input series; ``job`` as the generated scrape config names it."""
    job = "kube-state-metrics" if metric.startswith("kube_") else ""
    if not job:
        job = "wsgauge-operator" if "stats" in metric else "wsgauge-system/wsgauge-sidecars"
    text = ",".join(f'{key}="{value}"' for key, value in {"job": job, **labels}.items())
    return {"series": f"{metric}{{{text}}}", "values": values}


def _tests(rules: dict[str, Any]) -> list[dict[str, Any]]:
    unreachable = _rule(rules, "WsgaugePodsUnreachable")
    capacity = _rule(rules, "WsgaugeCapacityExceeded")
    at_max = _rule(rules, "WsgaugeScalingAtMax")
    assert unreachable["for"] == capacity["for"] == at_max["for"] == "5m"
    pods, conns, limit = (
        "wsgauge_connectionstats_pods",
        "wsgauge_connections",
        "wsgauge_max_connections",
    )
    failures = "wsgauge_handshake_failures_total"
    desired, maximum = (
        "kube_horizontalpodautoscaler_status_desired_replicas",
        "kube_horizontalpodautoscaler_spec_max_replicas",
    )
    hpa = "horizontalpodautoscaler"
    return [
        {
            # prod/chat: one sidecar unreachable from minute 4 on; prod/web: never.
            "name": "sidecars unreachable",
            "interval": "1m",
            "input_series": [
                _series(pods, "0x3 1x16", namespace="prod", name="chat", state="unreachable"),
                _series(pods, "0x19", namespace="prod", name="web", state="unreachable"),
                _series(pods, "3x19", namespace="prod", name="web", state="reporting"),
            ],
            "alert_rule_test": [
                {"eval_time": "3m", "alertname": "WsgaugePodsUnreachable", "exp_alerts": []},
                # pending, not firing, before `for` has passed
                {"eval_time": "8m", "alertname": "WsgaugePodsUnreachable", "exp_alerts": []},
                {
                    "eval_time": "12m",
                    "alertname": "WsgaugePodsUnreachable",
                    "exp_alerts": [_alert(unreachable, {"namespace": "prod", "name": "chat"})],
                },
            ],
        },
        {
            # a: upgrades refused for capacity all along; b: at its --max-connections from
            # minute 5; c: below it; d: unlimited (max 0) with many sockets; e: upgrades
            # refused for another reason.
            "name": "capacity exceeded",
            "interval": "1m",
            "input_series": [
                _series(failures, "0+3x19", namespace="prod", pod="a", reason="capacity"),
                _series(conns, "40x19", namespace="prod", pod="a"),
                _series(limit, "50x19", namespace="prod", pod="a"),
                _series(conns, "10x4 50x15", namespace="prod", pod="b"),
                _series(limit, "50x19", namespace="prod", pod="b"),
                _series(conns, "49x19", namespace="prod", pod="c"),
                _series(limit, "50x19", namespace="prod", pod="c"),
                _series(conns, "900x19", namespace="prod", pod="d"),
                _series(limit, "0x19", namespace="prod", pod="d"),
                _series(failures, "0+5x19", namespace="prod", pod="e", reason="upstream_rejected"),
                _series(conns, "1x19", namespace="prod", pod="e"),
                _series(limit, "50x19", namespace="prod", pod="e"),
            ],
            "alert_rule_test": [
                {"eval_time": "3m", "alertname": "WsgaugeCapacityExceeded", "exp_alerts": []},
                {
                    "eval_time": "7m",
                    "alertname": "WsgaugeCapacityExceeded",
                    "exp_alerts": [_alert(capacity, {"namespace": "prod", "pod": "a"})],
                },
                {
                    "eval_time": "15m",
                    "alertname": "WsgaugeCapacityExceeded",
                    "exp_alerts": [
                        _alert(capacity, {"namespace": "prod", "pod": "a"}),
                        _alert(capacity, {"namespace": "prod", "pod": "b"}),
                    ],
                },
            ],
        },
        {
            # chat: wsgauge's HPA at its max from minute 3; web: wsgauge's, below its max;
            # other: an HPA at its max that no ConnectionStats owns (not wsgauge's business).
            "name": "HPA at maxReplicas",
            "interval": "1m",
            "input_series": [
                _series(
                    "wsgauge_connectionstats_connections", "400x19", namespace="prod", name="chat"
                ),
                _series(
                    "wsgauge_connectionstats_connections", "30x19", namespace="prod", name="web"
                ),
                _series(desired, "4 6 8 10x17", namespace="prod", **{hpa: "chat"}),
                _series(maximum, "10x19", namespace="prod", **{hpa: "chat"}),
                _series(desired, "2x19", namespace="prod", **{hpa: "web"}),
                _series(maximum, "10x19", namespace="prod", **{hpa: "web"}),
                _series(desired, "5x19", namespace="prod", **{hpa: "other"}),
                _series(maximum, "5x19", namespace="prod", **{hpa: "other"}),
            ],
            "alert_rule_test": [
                {"eval_time": "2m", "alertname": "WsgaugeScalingAtMax", "exp_alerts": []},
                {"eval_time": "6m", "alertname": "WsgaugeScalingAtMax", "exp_alerts": []},
                {
                    "eval_time": "10m",
                    "alertname": "WsgaugeScalingAtMax",
                    "exp_alerts": [
                        _alert(
                            at_max,
                            {"job": "kube-state-metrics", "namespace": "prod", hpa: "chat"},
                            value="10",
                        )
                    ],
                },
            ],
        },
    ]


def _promtool(promtool: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(promtool), *args], capture_output=True, text=True, check=False, timeout=120
    )


def test_every_alert_has_test_series(rules: dict[str, Any]) -> None:
    defined = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tested = {case["alertname"] for test in _tests(rules) for case in test["alert_rule_test"]}
    assert defined == tested == set(ALERTS)


def test_promtool_checks_the_rules(promtool: Path, rules: dict[str, Any], tmp_path: Path) -> None:
    rules_file = tmp_path / "wsgauge-rules.yaml"
    rules_file.write_text(yaml.safe_dump(rules, sort_keys=False))
    result = _promtool(promtool, "check", "rules", str(rules_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout + result.stderr


def test_promtool_tests_every_alert_firing_and_not(
    promtool: Path, rules: dict[str, Any], tmp_path: Path
) -> None:
    (tmp_path / "wsgauge-rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
    tests = {
        "rule_files": ["wsgauge-rules.yaml"],
        "evaluation_interval": "1m",
        "tests": _tests(rules),
    }
    test_file = tmp_path / "wsgauge-rules-test.yaml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))
    result = _promtool(promtool, "test", "rules", str(test_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_promtool_catches_a_wrong_expectation(
    promtool: Path, rules: dict[str, Any], tmp_path: Path
) -> None:
    """The firing cases above are checked for real: expecting no alert where one fires fails."""
    (tmp_path / "wsgauge-rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
    wrong = _tests(rules)[0]
    wrong["alert_rule_test"][-1]["exp_alerts"] = []
    test_file = tmp_path / "wrong.yaml"
    test_file.write_text(
        yaml.safe_dump({"rule_files": ["wsgauge-rules.yaml"], "tests": [wrong]}, sort_keys=False)
    )
    result = _promtool(promtool, "test", "rules", str(test_file))
    assert result.returncode != 0
    assert "WsgaugePodsUnreachable" in result.stdout + result.stderr


def test_the_example_of_the_docs_passes(
    promtool: Path, rules: dict[str, Any], tmp_path: Path
) -> None:
    """docs/prometheus.md's wsgauge-rules-test.yaml, as written there."""
    text = (CHART.parents[1] / "docs" / "prometheus.md").read_text()
    example = text.split("```yaml\nrule_files:", 1)[1].split("```", 1)[0]
    (tmp_path / "wsgauge-rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
    test_file = tmp_path / "wsgauge-rules-test.yaml"
    test_file.write_text("rule_files:" + example)
    result = _promtool(promtool, "test", "rules", str(test_file))
    assert result.returncode == 0, result.stdout + result.stderr
