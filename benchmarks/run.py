"""``make bench`` / ``python -m benchmarks.run``: the sidecar benchmark, into docs/benchmarks.md.

``--quick`` runs the same measurements at a smaller size (under two minutes);
the default run takes a few minutes (under ten). ``--no-nginx`` skips nginx,
``--no-install`` only uses an nginx that is already installed, ``--mode`` limits
the run to one topic rule, ``--json PATH`` also saves the raw figures, and
``--output PATH`` / ``--no-write`` choose where (whether) the Markdown goes.
Exit code 0 when every measurement ran (whether the aims were reached or not is
in the report), 1 when a measurement failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from benchmarks.exceptions import BenchmarkError
from benchmarks.loadgen import MODES
from benchmarks.report import aims, render, to_json, write_section
from benchmarks.settings import FULL, QUICK, BenchSettings
from benchmarks.suite import run_suite
from benchmarks.targets import REPO

DEFAULT_OUTPUT = REPO / "docs" / "benchmarks.md"


def _progress(message: str) -> None:
    print(f"bench: {message}", flush=True)


def parse(argv: Sequence[str] | None) -> tuple[BenchSettings, argparse.Namespace]:
    """The settings of this run and the output options."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (< 2 minutes)")
    parser.add_argument(
        "--mode",
        choices=MODES,
        action="append",
        help="topic rule to measure (repeatable; default all)",
    )
    parser.add_argument("--no-nginx", action="store_true", help="do not measure nginx")
    parser.add_argument("--no-haproxy", action="store_true", help="do not measure HAProxy")
    parser.add_argument(
        "--no-install", action="store_true", help="do not apt-get install nginx when it is missing"
    )
    parser.add_argument("--idle-sockets", type=int, help="override the number of idle sockets")
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help="Markdown file to update (default docs/benchmarks.md)",
    )
    parser.add_argument("--no-write", action="store_true", help="print only, write no file")
    parser.add_argument("--json", type=Path, help="also save the raw figures as JSON here")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.idle_sockets:
        sizes = replace(sizes, idle_sockets=args.idle_sockets)
    settings = BenchSettings(
        sizes=sizes,
        modes=tuple(args.mode or MODES),
        nginx=not args.no_nginx,
        haproxy=not args.no_haproxy,
        install_nginx=not args.no_install,
        quick=args.quick,
    )
    return settings, args


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark, print the section, update the Markdown file."""
    settings, args = parse(argv)
    try:
        result = asyncio.run(run_suite(settings, _progress))
    except BenchmarkError as error:
        print(f"bench: FAILED: {error}", file=sys.stderr, flush=True)
        sys.exit(1)
    body = render(result)
    print(body)
    if args.json is not None:
        args.json.write_text(json.dumps(to_json(result), indent=2) + "\n")
    if not args.no_write:
        write_section(args.output, body)
        print(f"bench: wrote the sidecar section of {args.output}")
    for aim in aims(result):
        print(f"bench: aim {aim.text}: {aim.verdict}")


if __name__ == "__main__":
    main()
