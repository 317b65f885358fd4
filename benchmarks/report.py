"""The Markdown of a sidecar benchmark run, and its place in ``docs/benchmarks.md``.

:func:`render` turns a :class:`~benchmarks.suite.SuiteResult` into the body of
the ``## Sidecar`` section: the run (date, machine, load), the aims of issue 2
with whether each was reached, the table of figures, and how they were measured.
:func:`write_section` puts that body between the markers
``<!-- sidecar-bench:start -->`` and ``<!-- sidecar-bench:end -->`` and leaves the
rest of the file alone (other benchmarks write their own sections).
:func:`aims` is the verdict on the aims, also used by the command line's summary.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.loadgen import ECHO_PROTOCOL_MODES
from benchmarks.suite import ModeResult, SuiteResult, TargetResult

START = "<!-- sidecar-bench:start -->"
END = "<!-- sidecar-bench:end -->"
HEADING = "## Sidecar"
AIM_IDLE_SOCKETS = 10_000

NEW_FILE = """\
# Benchmarks

Figures measured by `make bench` on a development machine. Each section is
written by its benchmark between its markers; text outside the markers is kept.
"""


@dataclass(frozen=True)
class Aim:
    """One aim of issue 2 and what the run says about it."""

    text: str
    """The aim."""
    sidecar: str
    """The sidecar's figure."""
    reference: str
    """nginx's figure (or the target)."""
    verdict: str
    """``yes``, ``no`` or why it could not be judged."""


def _cpu(result: TargetResult | None) -> float | None:
    return None if result is None else result.throughput.cpu_us_per_message


def _memory(result: TargetResult | None) -> float | None:
    return None if result is None or result.idle is None else result.idle.bytes_per_socket


def _kib(value: float | None) -> str:
    return "—" if value is None else f"{value / 1024:.1f} KiB"


def _us(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} µs"


def _ratio(mine: float, reference: float, name: str) -> str:
    return f"{mine / reference:.2f}x {name}" if reference > 0 else f"{name} figure is 0"


def _compare(
    text: str,
    mine: float | None,
    reference: float | None,
    factor: float,
    unit: str,
    *,
    name: str = "nginx",
    strictly: bool = False,
) -> Aim:
    show = _kib if unit == "KiB" else _us
    if mine is None:
        return Aim(text, "not measured", show(reference), "not judged: sidecar not measured")
    if reference is None:
        return Aim(text, show(mine), "not measured", f"not judged: {name} not measured")
    reached = mine < factor * reference if strictly else mine <= factor * reference
    return Aim(
        text,
        show(mine),
        show(reference),
        f"{'yes' if reached else 'no'} ({_ratio(mine, reference, name)})",
    )


AIM_ADDED_P99_US = 200.0
"""Issue 19: the p99 latency the sidecar adds stays under this."""


def aims(result: SuiteResult) -> list[Aim]:
    """The aims of issue 19 with the verdict of this run."""
    found: list[Aim] = []
    path = result.mode("path")
    if path is not None:
        sidecar = path.target("sidecar")
        found.append(
            _compare(
                "path: CPU per relayed message ≤ 0.8x nginx",
                _cpu(sidecar),
                _cpu(path.target("nginx")),
                0.8,
                "µs",
            )
        )
        found.append(
            _compare(
                "path: CPU per relayed message below HAProxy",
                _cpu(sidecar),
                _cpu(path.target("haproxy")),
                1.0,
                "µs",
                name="HAProxy",
                strictly=True,
            )
        )
        added = None if sidecar is None else sidecar.added_p99_us
        found.append(
            Aim(
                "path: added p99 latency < 200 µs",
                "not measured" if added is None else f"{added:+.0f} µs",
                "200 µs",
                "not judged" if added is None else ("yes" if added < AIM_ADDED_P99_US else "no"),
            )
        )
        found.append(
            _compare(
                "path: memory per idle socket ≤ 0.35x nginx",
                _memory(sidecar),
                _memory(path.target("nginx")),
                0.35,
                "KiB",
            )
        )
    phoenix = result.mode("phoenix")
    if phoenix is not None:
        found.append(
            _compare(
                "phoenix: CPU per relayed message ≤ 1.2x nginx",
                _cpu(phoenix.target("sidecar")),
                _cpu(phoenix.target("nginx")),
                1.2,
                "µs",
            )
        )
    for protocol in ECHO_PROTOCOL_MODES:
        measured = result.mode(protocol)
        if measured is not None:
            found.append(
                _compare(
                    f"{protocol}: CPU per relayed message ≤ 1.2x nginx",
                    _cpu(measured.target("sidecar")),
                    _cpu(measured.target("nginx")),
                    1.2,
                    "µs",
                )
            )
    held = [
        (mode.mode, target.idle)
        for mode in result.modes
        for target in mode.targets
        if target.name == "sidecar" and target.idle is not None
    ]
    if held:
        best_mode, best = max(held, key=lambda item: item[1].sockets)
        figure = f"{best.counted:,} of {best.sockets:,} counted ({best_mode})"
        if best.sockets < AIM_IDLE_SOCKETS and not result.file_limited:
            verdict = f"not judged: this run held only {best.sockets:,} (full run: 10,000)"
        elif best.sockets < AIM_IDLE_SOCKETS:
            verdict = (
                f"not shown: the file limit here allows {best.sockets:,} proxied sockets "
                "per process (see the note)"
            )
            if best.counted == best.sockets:
                verdict += f"; all {best.sockets:,} were held and counted"
        else:
            verdict = "yes" if best.counted == best.sockets else "no"
        found.append(Aim("10,000 idle sockets held by one sidecar", figure, "10,000", verdict))
    return found


def _target_label(mode: ModeResult, target: TargetResult) -> str:
    if target.name == "direct":
        return "direct (no proxy)"
    return target.name


def _cpu_cell(target: TargetResult) -> str:
    figure = _us(target.throughput.cpu_us_per_message)
    rounds = target.throughput.round_cpu_us
    if len(rounds) > 1:
        figure += f" ({min(rounds):.1f}-{max(rounds):.1f})"
    return figure


def _bar_chart(title: str, axis: str, bars: list[tuple[str, float]]) -> list[str]:
    """A Mermaid bar chart (rendered by GitHub and most Markdown viewers)."""
    names = ", ".join(f'"{name}"' for name, _ in bars)
    values = ", ".join(f"{value:.2f}" for _, value in bars)
    top = max((value for _, value in bars), default=1.0) * 1.15 or 1.0
    return [
        "```mermaid",
        "xychart-beta",
        f'    title "{title}"',
        f"    x-axis [{names}]",
        f'    y-axis "{axis}" 0 --> {top:.2f}',
        f"    bar [{values}]",
        "```",
        "",
    ]


def _plots(result: SuiteResult) -> list[str]:
    """Bar charts of the figures that the aims compare, per mode."""
    lines: list[str] = []
    for mode in result.modes:
        proxies = [target for target in mode.targets if target.name != "direct"]
        cpu = [
            (target.name, value)
            for target in proxies
            if (value := target.throughput.cpu_us_per_message) is not None
        ]
        if cpu:
            lines += _bar_chart(f"{mode.mode}: proxy CPU per relayed message", "µs", cpu)
        added = [
            (target.name, value) for target in proxies if (value := target.added_p99_us) is not None
        ]
        if added:
            lines += _bar_chart(f"{mode.mode}: added p99 latency", "µs", added)
        memory = [
            (target.name, value / 1024)
            for target in proxies
            if (value := _memory(target)) is not None
        ]
        if memory:
            lines += _bar_chart(f"{mode.mode}: memory per idle socket", "KiB", memory)
    return lines


def _figures_table(result: SuiteResult) -> list[str]:
    lines = [
        "| mode | target | proxy CPU / relayed msg (range of rounds) | RTT p50 / p99 "
        "| added p50 / p99 | memory / idle socket | idle sockets (sidecar count) | round trips/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for mode in result.modes:
        for target in mode.targets:
            latency = target.latency
            added = "—"
            if target.added_p50_us is not None and target.added_p99_us is not None:
                added = f"{target.added_p50_us:+.0f} / {target.added_p99_us:+.0f} µs"
            idle = "—"
            if target.idle is not None:
                counted = "" if target.idle.counted is None else f" ({target.idle.counted:,})"
                idle = f"{target.idle.sockets:,}{counted}"
            lines.append(
                f"| {mode.mode} | {_target_label(mode, target)} "
                f"| {_cpu_cell(target)} "
                f"| {latency.p50_us:.0f} / {latency.p99_us:.0f} µs | {added} "
                f"| {_kib(_memory(target))} | {idle} "
                f"| {target.throughput.round_trips_per_second:,.0f} |"
            )
    return lines


def _other_share(result: SuiteResult) -> float:
    capacity = result.seconds * result.machine.cores
    return result.other_cpu_seconds / capacity if capacity > 0 else 0.0


def _load_comment(result: SuiteResult) -> str:
    if _other_share(result) < 0.1 and result.load_before[0] < 0.5 * result.machine.cores:
        return " (a quiet machine)."
    return (
        ": the cores were shared with other work (builds and test suites of other "
        "developers). Throughput and latency tails suffer most from that; the CPU per "
        "message, counted for the proxy's own processes, least, but it too moves between "
        "rounds (see the ranges)."
    )


def render(result: SuiteResult) -> str:
    """The body of the ``## Sidecar`` section (between the markers)."""
    sizes = result.settings.sizes
    kind = "`--quick` run" if result.settings.quick else "full run"
    command = "python -m benchmarks.run" + (" --quick" if result.settings.quick else "")
    when = result.started_at.strftime("%Y-%m-%d %H:%M UTC")
    before = result.load_before
    descriptions = sorted(
        {
            f"{target.name}: {target.description}"
            for mode in result.modes
            for target in mode.targets
            if target.name != "direct"
        }
    )
    upstreams = [f"{mode.mode}: {mode.upstream}" for mode in result.modes]
    lines = [
        f"Generated by `make bench` (`{command}`), {kind} of {when}, {result.seconds:.0f} s, "
        f"repository at {result.revision}.",
        "",
        f"- **Machine:** {result.machine.describe()}.",
        f"- **Machine load:** load average {before[0]:.1f} (1 min) / {before[1]:.1f} (5 min) "
        f"before the run; during it, other processes than the benchmark's used "
        f"{result.other_cpu_seconds:.0f} CPU seconds, {_other_share(result):.0%} of the "
        f"machine's {result.machine.cores} CPUs{_load_comment(result)}",
        "- **Proxies:** " + "; ".join(descriptions) + ". All on 127.0.0.1.",
        "- **Upstreams (the same behind every target):** " + "; ".join(upstreams) + ".",
        f"- **Load:** {sizes.throughput_round_trips:,} closed-loop round trips on "
        f"{sizes.throughput_connections} sockets ({sizes.workers} client processes) for the CPU "
        f"figure; {sizes.latency_round_trips:,} sequential round trips on one socket for the "
        f"latency; {sizes.idle_sockets:,} idle sockets for the memory; "
        f"{sizes.payload_bytes}-byte message bodies.",
    ]
    for note in result.notes:
        lines.append(f"- **Note:** {note}")
    lines += [
        "",
        "### Aims of issue 19",
        "",
        "| aim | sidecar | nginx / target | reached |",
        "|---|---:|---:|---|",
    ]
    for aim in aims(result):
        lines.append(f"| {aim.text} | {aim.sidecar} | {aim.reference} | {aim.verdict} |")
    lines += ["", "### Figures", "", *_figures_table(result), "", *_plots(result)]
    if result.core_costs:
        lines += [
            "### The sidecar's protocol work per message (pure cores, no I/O)",
            "",
            "Process CPU per call of the sidecar's sans-I/O objects on the same messages "
            "(`python -m benchmarks.core_costs`). A relayed phoenix round trip runs every "
            "phoenix row once; a path round trip runs the path row once; rows marked - are "
            "for scale. The rest of the "
            "sidecar's CPU per message is relaying: event loop, Python glue, system calls and "
            "the kernel's TCP work.",
            "",
            "| rule | step | CPU per call |",
            "|---|---|---:|",
        ]
        for cost in result.core_costs:
            lines.append(f"| {cost.mode} | `{cost.step}` | {cost.us_per_call:.2f} µs |")
        lines.append("")
    lines += [
        "### How the figures are measured",
        "",
        "- *Proxy CPU per relayed message*: `utime + stime` of the proxy's processes "
        "(`/proc/<pid>/stat`; nginx: master + its one worker) around closed-loop runs (each "
        "socket sends one message and waits for its reply), divided by the relayed messages "
        "(2 per round trip: the request and its reply). The runs are split into rounds that "
        "alternate between the two proxies (both running, fed in turn), so drifting background "
        "load hits both alike; the range of the rounds is in brackets. On loopback the kernel "
        "charges the TCP receive work of a segment to the process that sends it, so most of "
        "either proxy's CPU is kernel time (measured with `perf`: about 90% for nginx, about "
        "two thirds for the sidecar).",
        "- *Latency*: round-trip times of one message at a time, alternating between a socket "
        "through the proxy and one straight to the upstream (so both series share the same "
        "background load); *added* = through the proxy minus direct, for p50 and p99 "
        "separately. On a shared machine the p99 is dominated by scheduling delays and can "
        "even come out negative.",
        "- *Memory per idle socket*: growth of the proxy's resident set size "
        "(`/proc/<pid>/statm`) when the idle sockets are opened (phoenix: each has joined a "
        "channel), divided by their number; after a warm-up so imports and first-use "
        "allocations are not counted. nginx allocates its connection slots "
        "(`worker_connections`) when it starts, so that part of its per-socket memory is not in "
        "its growth; kernel socket buffers are in neither.",
        "- Where the sidecar's time goes: `python -m benchmarks.profile_sidecar --mode phoenix` "
        "(cProfile of a sidecar under the same load), `python -m benchmarks.core_costs`, or "
        "`perf record -g -p <sidecar pid>` during `make bench`. What bounds a relay: "
        "`python -m benchmarks.profile_relay` (each proxy's user and kernel CPU and its system "
        "calls per relayed message, under the path load).",
        "- *sidecar* is the sidecar as deployed (`--relay auto`: the native relay, which in the "
        "protocol modes also pre-filters the messages); *sidecar-python* the same sidecar with "
        "`--relay python` (the asyncio "
        "relay, what runs where the native relay cannot be built).",
        "- The client is the benchmark's own raw asyncio WebSocket client "
        "(`benchmarks/loadgen.py`, uvloop, frames built and masked once, replies only counted), "
        "run as separate processes.",
        "",
    ]
    return "\n".join(lines)


def write_section(path: Path, body: str) -> None:
    """Put ``body`` between the sidecar markers of ``path``; keep everything else."""
    block = f"{START}\n{body.rstrip()}\n{END}"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{NEW_FILE}\n{HEADING}\n\n{block}\n")
        return
    text = path.read_text()
    start, end = text.find(START), text.find(END)
    if start >= 0 and end > start:
        path.write_text(text[:start] + block + text[end + len(END) :])
        return
    separator = "" if text.endswith("\n") else "\n"
    path.write_text(f"{text}{separator}\n{HEADING}\n\n{block}\n")


def to_json(result: SuiteResult) -> dict[str, Any]:
    """The raw figures (for ``--json``), derived values included."""
    document = asdict(result)
    document["started_at"] = result.started_at.isoformat()
    for mode_document, mode in zip(document["modes"], result.modes, strict=True):
        for target_document, target in zip(mode_document["targets"], mode.targets, strict=True):
            target_document["cpu_us_per_message"] = target.throughput.cpu_us_per_message
            target_document["round_trips_per_second"] = target.throughput.round_trips_per_second
            target_document["added_p50_us"] = target.added_p50_us
            target_document["added_p99_us"] = target.added_p99_us
            target_document["bytes_per_idle_socket"] = _memory(target)
    document["aims"] = [asdict(aim) for aim in aims(result)]
    return document
