"""Where the sidecar spends its CPU: the benchmark's closed-loop load against a cProfiled sidecar.

``python -m benchmarks.profile_sidecar [--mode path|phoenix] [--round-trips N] [--top N]``
starts the mode's upstream and a sidecar under ``cProfile``, warms it up, runs
the same closed-loop round trips as the CPU measurement, stops the sidecar
(SIGINT: it drains and exits, and cProfile writes its statistics) and prints the
functions with the most own time, then the most cumulative time. cProfile slows
Python-level calls down, so the shares are indicative; C code (uvloop's
transports, the JSON parser) shows up under the Python function that calls it.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import pstats
import tempfile
from collections.abc import Sequence
from pathlib import Path

from benchmarks.loadgen import MODES
from benchmarks.settings import QUICK
from benchmarks.suite import run_round_trips, upstream_for
from benchmarks.targets import SidecarProxy


async def profile(mode: str, round_trips: int, statistics: Path) -> float:
    """Run the load against a profiled sidecar; the sidecar's CPU µs per relayed message."""
    sizes = QUICK
    upstream = upstream_for(mode)
    await upstream.start()
    try:
        sidecar = SidecarProxy(upstream.port, mode, profile_to=statistics)
        await sidecar.start()
        try:
            await run_round_trips(sidecar.port, mode, sizes, sizes.warmup_round_trips, 8)
            result = await run_round_trips(
                sidecar.port,
                mode,
                sizes,
                round_trips,
                sizes.throughput_connections,
                pids=sidecar.pids(),
            )
        finally:
            sidecar.stop(timeout=30.0)
    finally:
        upstream.stop()
    return result.cpu_us_per_message or 0.0


def summary(statistics: Path, top: int) -> str:
    """The top functions by own time and by cumulative time."""
    out = io.StringIO()
    stats = pstats.Stats(str(statistics), stream=out)
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def main(argv: Sequence[str] | None = None) -> None:
    """Command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.profile_sidecar", description=__doc__
    )
    parser.add_argument("--mode", choices=MODES, default="path")
    parser.add_argument("--round-trips", type=int, default=20_000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--output", type=Path, help="keep the cProfile statistics here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="wsgauge-profile-") as directory:
        statistics = args.output or Path(directory) / "sidecar.prof"
        cpu = asyncio.run(profile(args.mode, args.round_trips, statistics.resolve()))
        print(f"sidecar ({args.mode}) under cProfile: {cpu:.1f} CPU µs per relayed message")
        print(summary(statistics, args.top))


if __name__ == "__main__":
    main()
