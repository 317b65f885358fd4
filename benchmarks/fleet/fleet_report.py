"""Tables and plots of the fleet benchmark, from ``docs/benchmarks/fleet.json``.

:func:`render` writes the generated part of the "Fleet scale" section of ``docs/benchmarks.md``
(between ``<!-- fleet-bench:start -->`` and ``<!-- fleet-bench:end -->``; appended at the end when
the markers are missing) and two PNG plots under ``docs/img/`` (matplotlib, Agg backend).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "benchmarks.md"
IMG_DIR = REPO / "docs" / "img"
START = "<!-- fleet-bench:start -->"
END = "<!-- fleet-bench:end -->"

ORDER = ("100x1", "1000x1", "10000x100", "10000x1")
"""Scenario keys in the order they are shown."""


def _num(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _label(key: str, result: dict[str, Any]) -> str:
    pods, groups = result["pods"], result["groups"]
    return f"{pods:,} pods, 1 CS" if groups == 1 else f"{groups} CS x {pods // groups} pods"


def _writes(window: dict[str, Any], *kinds: str) -> float:
    if "writes_per_second" not in window:
        return float("nan")
    rates: dict[str, float] = window["writes_per_second"]
    return sum(v for k, v in rates.items() if k.split(" ")[0] in kinds)


OPERATOR_KINDS = ("connectionstats/status", "pods/status", "pods", "events")
"""Resources the operator writes (``pods`` = annotations such as the deletion cost)."""


def tables(results: dict[str, Any]) -> str:
    """The markdown tables."""
    keys = [k for k in ORDER if k in results] + sorted(set(results) - set(ORDER))
    lines = [
        "| fleet | metrics API p50 / p99 (s) | status p50 / p99 (s) | start: listening / all "
        "reporting / statuses (s) | restart: listening / all reporting (s) | CS object (bytes) "
        "| commit |",
        "|---|---|---|---|---|---|---|",
    ]
    for key in keys:
        r = results[key]
        f = r.get("freshness", {})
        lines.append(
            f"| {_label(key, r)} | {_num(f.get('metrics_api_p50'), 3)} / "
            f"{_num(f.get('metrics_api_p99'), 3)} | {_num(f.get('status_p50'))} / "
            f"{_num(f.get('status_p99'))} | {_num(r.get('start_listening_s'), 1)} / "
            f"{_num(r.get('start_reporting_s'), 1)} / {_num(r.get('start_status_s'), 1)} | "
            f"{_num(r.get('restart_listening_s'), 1)} / {_num(r.get('restart_reporting_s'), 1)} | "
            f"{r.get('cs_bytes_max', '-')} | `{r.get('commit', '?')}` |"
        )
    lines += [
        "",
        "Operator process cost and API server writes caused by it (per second; the simulator "
        "writes nothing to the API in the steady window except its node Lease every 10 s, "
        "which is not counted):",
        "",
        "| fleet | changes/s fed | steady: cores / RSS max (MiB) | pod churn: cores / RSS max "
        "(MiB) | steady writes/s: CS status, pod status, pods, events | restart writes/s | "
        "status writes per CS per 2 s interval | apiserver cores (steady) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key in keys:
        r = results[key]
        s, c, rs = r.get("steady", {}), r.get("pod_churn", {}), r.get("restart", {})
        lines.append(
            f"| {_label(key, r)} | {r.get('churn_rate', 0):.0f} | {_num(s.get('cores'))} / "
            f"{_num(s.get('rss_mib_max'), 0)} | {_num(c.get('cores'))} / "
            f"{_num(c.get('rss_mib_max'), 0)} | "
            + ", ".join(_num(_writes(s, k)) for k in OPERATOR_KINDS)
            + f" | {_num(_writes(rs, *OPERATOR_KINDS))} | "
            f"{_num(_writes(s, 'connectionstats/status') * 2.0 / r['groups'])} | "
            f"{_num(s.get('apiserver_cores'))} |"
        )
    errors = [f"- **{_label(k, results[k])}**: {results[k]['error']}" for k in keys
              if results[k].get("error")]  # fmt: skip
    if errors:
        lines += ["", "Scenarios that did not finish:", "", *errors]
    return "\n".join(lines)


def plots(results: dict[str, Any]) -> list[Path]:
    """The PNG plots; returns their paths."""
    import matplotlib  # noqa: PLC0415 - only the report needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    IMG_DIR.mkdir(parents=True, exist_ok=True)
    single = sorted((r["pods"], r) for r in results.values() if r["groups"] == 1)
    sizes = [p for p, _ in single]
    written: list[Path] = []

    figure, axis = plt.subplots(figsize=(6.4, 4.0))
    for field, label in (
        ("metrics_api_p50", "metrics API p50"),
        ("metrics_api_p99", "metrics API p99"),
        ("status_p50", "status p50"),
        ("status_p99", "status p99"),
    ):
        values = [r.get("freshness", {}).get(field, float("nan")) for _, r in single]
        axis.plot(sizes, values, marker="o", label=label)
    axis.axhline(30, color="grey", linestyle="--", label="scrape/poll anchor 30-60 s")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("pods (one ConnectionStats)")
    axis.set_ylabel("freshness (s)")
    axis.set_title("Connection change -> metrics API / status")
    axis.legend(fontsize=8)
    figure.tight_layout()
    path = IMG_DIR / "fleet-freshness.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    written.append(path)

    figure, (cpu_axis, rss_axis) = plt.subplots(1, 2, figsize=(8.0, 3.6))
    for window, label in (("steady", "steady"), ("pod_churn", "pod churn"), ("restart", "restart")):
        cpu_axis.plot(
            sizes, [r.get(window, {}).get("cores", float("nan")) for _, r in single],
            marker="o", label=label,
        )  # fmt: skip
        rss_axis.plot(
            sizes, [r.get(window, {}).get("rss_mib_max", float("nan")) for _, r in single],
            marker="o", label=label,
        )  # fmt: skip
    for axis, ylabel in ((cpu_axis, "operator CPU (cores)"), (rss_axis, "operator RSS max (MiB)")):
        axis.set_xscale("log")
        axis.set_xlabel("pods (one ConnectionStats)")
        axis.set_ylabel(ylabel)
        axis.legend(fontsize=8)
    figure.tight_layout()
    path = IMG_DIR / "fleet-cost.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    written.append(path)
    return written


def render(results_path: Path, doc: Path = DOC) -> None:
    """Write the plots and the generated block of the Fleet scale section."""
    if not results_path.exists():
        return
    results: dict[str, Any] = json.loads(results_path.read_text())
    if not results:
        return
    images = plots(results)
    links = "\n".join(f"![{p.stem}]({p.relative_to(doc.parent).as_posix()})" for p in images)
    block = f"{START}\n{tables(results)}\n\n{links}\n{END}"
    text = doc.read_text()
    if START in text and END in text:
        head, _, rest = text.partition(START)
        _, _, tail = rest.partition(END)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n## Fleet scale\n\n" + block + "\n"
    doc.write_text(text)
