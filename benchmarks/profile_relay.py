"""What bounds a relay's CPU per message: user vs kernel time and system calls per message.

``python -m benchmarks.profile_relay [--round-trips N] [--strace-round-trips N]`` runs the
``path`` load (closed-loop round trips of 64-byte messages on 32 sockets, echo upstream) through
each proxy in turn (the sidecar with its native relay, the sidecar's Python relay, nginx,
HAProxy when installed) and prints, per relayed message:

* the proxy's CPU split into user and kernel (system) time (``/proc/<pid>/stat``): on
  loopback the kernel charges a segment's TCP receive work to the sender, so a relay's kernel
  time is mostly the TCP stack and is the same for any relay that makes the same calls;
* its system calls by name (``strace -c -f`` attached for a smaller run; strace slows the proxy,
  not the counts).

A relay can only go below another by spending less user time or making fewer system calls per
message; this shows where each stands.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from benchmarks.exceptions import NginxUnavailable
from benchmarks.haproxy import HaproxyProxy, find_haproxy
from benchmarks.nginx import NginxProxy, find_nginx
from benchmarks.procstat import cpu_split
from benchmarks.settings import QUICK
from benchmarks.suite import Proxy, run_round_trips, upstream_for
from benchmarks.targets import SidecarProxy

CONNECTIONS = 32
SYSCALL_LINE = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$")


def parse_strace_summary(text: str) -> dict[str, int]:
    """Calls per system call name from ``strace -c`` output."""
    calls: dict[str, int] = {}
    for line in text.splitlines():
        match = SYSCALL_LINE.match(line)
        if match and match.group(2) != "total":
            calls[match.group(2)] = int(match.group(1))
    return calls


async def _strace_counts(proxy: Proxy, port: int, round_trips: int) -> dict[str, int]:
    strace = shutil.which("strace")
    if strace is None:
        return {}
    with tempfile.NamedTemporaryFile(prefix="wsgauge-strace-", suffix=".txt") as out:
        argv = [strace, "-c", "-f", "-o", out.name]
        for pid in proxy.pids():
            argv += ["-p", str(pid)]
        tracer = await asyncio.to_thread(subprocess.Popen, argv, stderr=subprocess.DEVNULL)
        await asyncio.sleep(1.0)  # attached
        await run_round_trips(port, "path", QUICK, round_trips, CONNECTIONS)
        tracer.send_signal(signal.SIGINT)
        await asyncio.to_thread(tracer.wait, 30)
        text = await asyncio.to_thread(Path(out.name).read_text)
        return parse_strace_summary(text)


async def profile(proxy: Proxy, round_trips: int, strace_round_trips: int) -> str:
    """One proxy's line: CPU split and system calls per relayed message."""
    await proxy.start()
    try:
        await run_round_trips(proxy.port, "path", QUICK, 2_000, 8)
        pids = proxy.pids()
        user_before, system_before = cpu_split(pids)
        await run_round_trips(proxy.port, "path", QUICK, round_trips, CONNECTIONS)
        user_after, system_after = cpu_split(pids)
        messages = 2 * round_trips
        user = (user_after - user_before) * 1e6 / messages
        system = (system_after - system_before) * 1e6 / messages
        calls = await _strace_counts(proxy, proxy.port, strace_round_trips)
    finally:
        proxy.stop()
    traced = 2 * strace_round_trips
    per_message = sorted(
        ((name, count / traced) for name, count in calls.items()), key=lambda item: -item[1]
    )
    shown = ", ".join(f"{name} {value:.2f}" for name, value in per_message if value >= 0.01)
    total = sum(value for _, value in per_message)
    return (
        f"| {proxy.name} | {user + system:.2f} µs | {user:.2f} µs | {system:.2f} µs "
        f"| {total:.2f} | {shown or 'strace not available'} |"
    )


async def run(round_trips: int, strace_round_trips: int) -> list[str]:
    """The table for every proxy that is available."""
    upstream = upstream_for("path")
    await upstream.start()
    proxies: list[Proxy] = [
        SidecarProxy(upstream.port, "path"),
        SidecarProxy(upstream.port, "path", relay="python"),
    ]
    nginx, haproxy = find_nginx(), find_haproxy()
    if nginx is not None:
        proxies.append(NginxProxy(nginx, upstream.port, 1000))
    if haproxy is not None:
        proxies.append(HaproxyProxy(haproxy, upstream.port, 1000))
    lines = [
        "| proxy | CPU / msg | user | kernel | syscalls / msg | by name (per relayed message) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    try:
        for proxy in proxies:
            lines.append(await profile(proxy, round_trips, strace_round_trips))
    except NginxUnavailable as error:
        lines.append(f"(stopped: {error})")
    finally:
        upstream.stop()
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    """Command line (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_relay", description=__doc__)
    parser.add_argument("--round-trips", type=int, default=40_000)
    parser.add_argument("--strace-round-trips", type=int, default=5_000)
    args = parser.parse_args(argv)
    print("\n".join(asyncio.run(run(args.round_trips, args.strace_round_trips))))


if __name__ == "__main__":
    main()
