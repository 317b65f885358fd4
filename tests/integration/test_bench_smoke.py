"""Smoke test of the sidecar benchmark harness (``make bench``) at a tiny size, without nginx
and HAProxy.

Runs the real harness (echo server, demo app, sidecar, load worker processes)
with 20 round trips and 20 idle sockets per measurement, and checks that the
result objects are complete and sane, that the sidecar counted every idle socket,
and that the report lands between its markers without touching the rest of the
file. No timing is asserted: the figures themselves belong in docs/benchmarks.md.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `benchmarks` lives at the repository root
    sys.path.insert(0, str(REPO))

from benchmarks import haproxy, nginx  # noqa: E402
from benchmarks.exceptions import NginxUnavailable  # noqa: E402
from benchmarks.report import END, START, aims, render, to_json, write_section  # noqa: E402
from benchmarks.settings import BenchSettings, LoadSizes  # noqa: E402
from benchmarks.suite import SuiteResult, TargetResult, run_suite  # noqa: E402

TINY = LoadSizes(
    throughput_round_trips=20,
    throughput_connections=4,
    workers=2,
    latency_round_trips=20,
    latency_warmup=2,
    idle_sockets=20,
    warmup_round_trips=10,
    source_addresses=2,
    settle_seconds=0.1,
    core_iterations=200,
    step_timeout=30.0,
)


def _check_target(target: TargetResult, *, proxied: bool) -> None:
    latency = target.latency
    assert latency.round_trips == TINY.latency_round_trips
    assert 0 < latency.p50_us <= latency.p99_us
    assert latency.mean_us > 0
    throughput = target.throughput
    assert throughput.seconds > 0
    assert throughput.round_trips_per_second > 0
    if not proxied:
        assert throughput.proxy_cpu_seconds is None
        assert target.idle is None
        assert target.added_p50_us is None
        return
    assert throughput.round_trips == TINY.throughput_round_trips
    assert throughput.relayed_messages == 2 * TINY.throughput_round_trips
    assert throughput.proxy_cpu_seconds is not None
    assert throughput.proxy_cpu_seconds >= 0
    assert target.baseline_latency is not None
    assert target.baseline_latency.p50_us > 0
    assert target.added_p50_us is not None
    assert target.added_p99_us is not None
    idle = target.idle
    assert idle is not None
    assert idle.sockets == TINY.idle_sockets
    assert idle.rss_before > 0
    assert idle.rss_after > 0
    assert idle.open_seconds > 0
    assert idle.counted == TINY.idle_sockets  # the sidecar counted every idle socket


async def test_harness_runs_path_and_phoenix_against_the_sidecar(tmp_path: Path) -> None:
    settings = BenchSettings(sizes=TINY, modes=("path", "phoenix"), nginx=False, haproxy=False)
    result = await run_suite(settings)
    assert isinstance(result, SuiteResult)
    assert [mode.mode for mode in result.modes] == ["path", "phoenix"]
    path, phoenix = result.modes
    # every mode: the sidecar as deployed (native relay) and with --relay python
    for mode in (path, phoenix):
        names = [target.name for target in mode.targets]
        assert names == ["direct", "sidecar", "sidecar-python"], (mode.mode, names)
    for mode in result.modes:
        direct, *proxies = mode.targets
        _check_target(direct, proxied=False)
        for proxy in proxies:
            _check_target(proxy, proxied=True)
            assert "wsgauge-sidecar" in proxy.description
    for mode in (path, phoenix):
        assert "native relay" in mode.targets[1].description
        assert "Python relay" in mode.targets[2].description
    assert result.seconds > 0
    assert result.machine.cores >= 1
    assert len(result.core_costs) >= 6
    assert all(cost.us_per_call > 0 for cost in result.core_costs)
    assert any("nginx" in note for note in result.notes)
    assert any("HAProxy" in note for note in result.notes)

    verdicts = {aim.text: aim.verdict for aim in aims(result)}
    assert verdicts["path: CPU per relayed message ≤ 0.8x nginx"].startswith("not judged")
    assert verdicts["path: CPU per relayed message below HAProxy"].startswith("not judged")
    assert verdicts["10,000 idle sockets held by one sidecar"].startswith("not judged")
    body = render(result)
    assert "| path | sidecar |" in body
    assert "| path | sidecar-python |" in body
    assert "xychart-beta" in body  # the bar charts
    assert "| phoenix | sidecar |" in body
    assert "| phoenix | sidecar-python |" in body
    assert to_json(result)["modes"][0]["targets"][1]["bytes_per_idle_socket"] is not None

    document = tmp_path / "benchmarks.md"
    document.write_text("# Benchmarks\n\n## Operator\n\nkept text\n")
    write_section(document, body)
    write_section(document, "second run\n")
    text = document.read_text()
    assert text.startswith("# Benchmarks\n\n## Operator\n\nkept text\n")
    assert text.count(START) == 1
    assert text.count(END) == 1
    assert text.count("## Sidecar") == 1
    assert f"{START}\nsecond run\n{END}" in text


def test_missing_nginx_is_skipped_with_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nginx, "find_nginx", lambda: None)
    with pytest.raises(NginxUnavailable, match="not allowed"):
        nginx.ensure_nginx(install=False)
    real_which = shutil.which
    monkeypatch.setattr(
        shutil, "which", lambda name: None if name == "apt-get" else real_which(name)
    )
    with pytest.raises(NginxUnavailable, match="apt-get is not available"):
        nginx.ensure_nginx(install=True)


def test_missing_haproxy_is_skipped_with_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(haproxy, "find_haproxy", lambda: None)
    with pytest.raises(NginxUnavailable, match="haproxy is not installed"):
        haproxy.ensure_haproxy(install=False)
