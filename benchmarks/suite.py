"""The measurements: for each topic rule, direct vs sidecar vs nginx under the same load.

For each mode (``path``: :class:`~benchmarks.targets.EchoUpstream`; ``phoenix``:
the demo app's Phoenix endpoint) one upstream serves all three targets. Each
proxy is started fresh and then, in this order:

1. warmed up (a few closed-loop round trips), so imports and first-use
   allocations do not count as per-socket memory;
2. **memory per idle socket**: RSS of the proxy's processes before and after
   opening ``idle_sockets`` sockets (joined to a channel in phoenix mode),
   divided by their number; the sidecar's own count (``/stats``) is read too;
3. **latency**: sequential round trips on one socket, directly to the upstream
   and then through the proxy (back to back, so both see the same machine
   load); the added latency is proxy minus direct, for p50 and for p99;
4. **CPU per relayed message**: ``utime + stime`` of the proxy's processes
   around ``throughput_round_trips`` closed-loop round trips on many sockets,
   divided by the relayed messages (two per round trip: request and reply).

The load comes from worker processes (:mod:`benchmarks.loadgen`) that report
over JSON lines; every wait is bounded by ``step_timeout``.
"""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from benchmarks.exceptions import BenchmarkError, LoadError, NginxUnavailable
from benchmarks.nginx import NginxProxy, ensure_nginx
from benchmarks.procstat import Machine, cpu_seconds, load_average, machine, rss_bytes
from benchmarks.settings import BenchSettings, LoadSizes
from benchmarks.targets import (
    LOOPBACK,
    REPO,
    DemoAppUpstream,
    EchoUpstream,
    ManagedProcess,
    SidecarProxy,
)

Progress = Callable[[str], None]
"""Where progress lines go (``print``)."""


class Proxy(Protocol):
    """What the suite needs of a proxy under test."""

    name: str
    port: int

    async def start(self, timeout: float = 20.0) -> None: ...
    def stop(self, timeout: float = 10.0) -> None: ...
    def pids(self) -> list[int]: ...
    def description(self) -> str: ...
    def output(self) -> str: ...


@dataclass(frozen=True)
class LatencyResult:
    """Sequential round trips on one socket."""

    round_trips: int
    """Timed round trips."""
    p50_us: float
    """Median round-trip time, µs."""
    p99_us: float
    """99th percentile round-trip time, µs."""
    mean_us: float
    """Mean round-trip time, µs."""


@dataclass(frozen=True)
class ThroughputResult:
    """Closed-loop round trips on many sockets, with the proxy's CPU time around them."""

    round_trips: int
    """Round trips done (each relays two messages through a proxy)."""
    connections: int
    """Sockets that did them."""
    seconds: float
    """Wall time."""
    proxy_cpu_seconds: float | None
    """utime + stime of the proxy's processes during the run (None: direct)."""

    @property
    def relayed_messages(self) -> int:
        """Messages through the proxy: one request and one reply per round trip."""
        return 2 * self.round_trips

    @property
    def round_trips_per_second(self) -> float:
        """Throughput of the whole setup (client, proxy and upstream on the same cores)."""
        return self.round_trips / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_us_per_message(self) -> float | None:
        """The proxy's CPU µs per relayed message."""
        if self.proxy_cpu_seconds is None:
            return None
        return self.proxy_cpu_seconds * 1e6 / self.relayed_messages


@dataclass(frozen=True)
class IdleResult:
    """Idle sockets held open through a proxy."""

    sockets: int
    """Sockets opened (and, in phoenix mode, joined)."""
    rss_before: int
    """RSS of the proxy's processes before, bytes."""
    rss_after: int
    """RSS with the sockets open, bytes."""
    open_seconds: float
    """Time to open them all."""
    counted: int | None
    """Sockets the proxy itself counted (sidecar ``/stats``; None for nginx)."""

    @property
    def bytes_per_socket(self) -> float:
        """RSS growth per idle socket."""
        return (self.rss_after - self.rss_before) / self.sockets


@dataclass
class TargetResult:
    """Everything measured for one target (direct, sidecar or nginx) in one mode."""

    name: str
    """``direct``, ``sidecar`` or ``nginx``."""
    description: str
    """What it is, with its version."""
    latency: LatencyResult
    """Round trips through this target."""
    throughput: ThroughputResult
    """The CPU run."""
    baseline_latency: LatencyResult | None = None
    """The direct round trips measured right before this target's (None: direct itself)."""
    idle: IdleResult | None = None
    """The idle socket run (None: direct)."""

    @property
    def added_p50_us(self) -> float | None:
        """Median latency added by the proxy (µs)."""
        if self.baseline_latency is None:
            return None
        return self.latency.p50_us - self.baseline_latency.p50_us

    @property
    def added_p99_us(self) -> float | None:
        """99th percentile latency added by the proxy (µs)."""
        if self.baseline_latency is None:
            return None
        return self.latency.p99_us - self.baseline_latency.p99_us


@dataclass
class ModeResult:
    """One topic rule: the same upstream behind the three targets."""

    mode: str
    """``path`` or ``phoenix``."""
    upstream: str
    """What served the sockets."""
    targets: list[TargetResult] = field(default_factory=list)

    def target(self, name: str) -> TargetResult | None:
        """The result of target ``name``, if it ran."""
        return next((result for result in self.targets if result.name == name), None)


@dataclass
class SuiteResult:
    """One benchmark run."""

    settings: BenchSettings
    machine: Machine
    started_at: datetime
    seconds: float = 0.0
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    modes: list[ModeResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """Things the reader must know (skipped parts, reduced sizes)."""

    def mode(self, name: str) -> ModeResult | None:
        """The result of mode ``name``, if it ran."""
        return next((result for result in self.modes if result.mode == name), None)


# -- load workers ------------------------------------------------------------------------------


class Worker:
    """One ``python -m benchmarks.loadgen`` process, driven over JSON lines."""

    def __init__(self, arguments: list[str], timeout: float) -> None:
        self.arguments = arguments
        self.timeout = timeout
        self.process: asyncio.subprocess.Process | None = None
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in finish())

    async def start(self) -> None:
        """Start the process (it connects at once)."""
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks.loadgen",
            *self.arguments,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=REPO,
        )

    def _stderr_tail(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-1500:]

    async def expect(self, event: str) -> dict[str, Any]:
        """The next JSON line; it must be ``event`` (an ``error`` line raises LoadError)."""
        assert self.process is not None and self.process.stdout is not None
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), self.timeout)
        except TimeoutError:
            raise LoadError(f"load worker: no {event!r} within {self.timeout} s") from None
        if not line:
            await asyncio.wait_for(self.process.wait(), self.timeout)
            raise LoadError(
                f"load worker exited ({self.process.returncode}) before {event!r}: "
                f"{self._stderr_tail()}"
            )
        document: dict[str, Any] = json.loads(line)
        if document.get("event") == "error":
            raise LoadError(f"load worker: {document.get('message')}")
        if document.get("event") != event:
            raise LoadError(f"load worker: expected {event!r}, got {document}")
        return document

    async def send(self, command: str) -> None:
        """Write one command line (``go`` or ``close``)."""
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(command.encode() + b"\n")
        await asyncio.wait_for(self.process.stdin.drain(), self.timeout)

    async def finish(self) -> None:
        """Wait for the process to end (kill it after the timeout)."""
        process = self.process
        if process is not None and process.returncode is None:
            try:
                await asyncio.wait_for(process.wait(), self.timeout)
            except TimeoutError:
                process.kill()
                await process.wait()
        self._stderr.close()

    def kill(self) -> None:
        """End the process now (error paths)."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()


def _worker_arguments(port: int, mode: str, task: str, sizes: LoadSizes, **extra: int) -> list[str]:
    arguments = [
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--mode",
        mode,
        "--task",
        task,
        "--payload",
        str(sizes.payload_bytes),
        "--timeout",
        str(sizes.step_timeout),
    ]
    for name, value in extra.items():
        arguments += [f"--{name.replace('_', '-')}", str(value)]
    return arguments


def _split(total: int, parts: int) -> list[int]:
    share, extra = divmod(total, parts)
    return [share + (1 if number < extra else 0) for number in range(parts)]


async def _start_workers(argument_lists: list[list[str]], timeout: float) -> list[Worker]:
    workers = [Worker(arguments, timeout) for arguments in argument_lists]
    try:
        for worker in workers:
            await worker.start()
        for worker in workers:
            await worker.expect("ready")
    except BaseException:
        for worker in workers:
            worker.kill()
            await worker.finish()
        raise
    return workers


async def _end_workers(workers: list[Worker]) -> None:
    for worker in workers:
        await worker.finish()


# -- measurements ------------------------------------------------------------------------------


async def run_round_trips(
    port: int,
    mode: str,
    sizes: LoadSizes,
    round_trips: int,
    connections: int,
    *,
    pids: list[int] | None = None,
) -> ThroughputResult:
    """Closed-loop round trips through ``port``; the CPU of ``pids`` around them."""
    parts = max(1, min(sizes.workers, connections))
    argument_lists = []
    first = 0
    for worker_connections, worker_trips in zip(
        _split(connections, parts), _split(round_trips, parts), strict=True
    ):
        argument_lists.append(
            _worker_arguments(
                port,
                mode,
                "throughput",
                sizes,
                connections=worker_connections,
                round_trips=worker_trips,
                first_index=first,
            )
        )
        first += worker_connections
    workers = await _start_workers(argument_lists, sizes.step_timeout)
    try:
        cpu_before = cpu_seconds(pids) if pids else None
        started = time.perf_counter()
        for worker in workers:
            await worker.send("go")
        for worker in workers:
            await worker.expect("done")
        seconds = time.perf_counter() - started
        cpu_after = cpu_seconds(pids) if pids else None
    except BaseException:
        for worker in workers:
            worker.kill()
        raise
    finally:
        await _end_workers(workers)
    cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    return ThroughputResult(round_trips, connections, seconds, cpu)


async def measure_latency(port: int, mode: str, sizes: LoadSizes) -> LatencyResult:
    """Sequential round trips on one socket through ``port``."""
    arguments = _worker_arguments(
        port,
        mode,
        "latency",
        sizes,
        round_trips=sizes.latency_round_trips,
        warmup=sizes.latency_warmup,
    )
    workers = await _start_workers([arguments], sizes.step_timeout)
    try:
        await workers[0].send("go")
        done = await workers[0].expect("done")
    except BaseException:
        workers[0].kill()
        raise
    finally:
        await _end_workers(workers)
    return LatencyResult(
        int(done["count"]), float(done["p50_us"]), float(done["p99_us"]), float(done["mean_us"])
    )


async def measure_idle(proxy: Proxy, mode: str, sizes: LoadSizes) -> IdleResult:
    """RSS of the proxy before and with ``idle_sockets`` open idle sockets."""
    pids = proxy.pids()
    rss_before = rss_bytes(pids)
    parts = max(1, min(sizes.workers, sizes.idle_sockets))
    argument_lists = []
    first = 0
    for count in _split(sizes.idle_sockets, parts):
        argument_lists.append(
            _worker_arguments(
                proxy.port,
                mode,
                "idle",
                sizes,
                connections=count,
                first_index=first,
                sources=sizes.source_addresses,
            )
        )
        first += count
    started = time.perf_counter()
    workers = await _start_workers(argument_lists, sizes.step_timeout)
    try:
        open_seconds = time.perf_counter() - started
        await asyncio.sleep(sizes.settle_seconds)
        rss_after = rss_bytes(pids)
        counted = proxy.counted_sockets() if isinstance(proxy, SidecarProxy) else None
        for worker in workers:
            await worker.send("go")
            await worker.expect("done")
            await worker.send("close")
    except BaseException:
        for worker in workers:
            worker.kill()
        raise
    finally:
        await _end_workers(workers)
    return IdleResult(sizes.idle_sockets, rss_before, rss_after, open_seconds, counted)


async def measure_direct(upstream: ManagedProcess, mode: str, sizes: LoadSizes) -> TargetResult:
    """The upstream without a proxy: the baseline latency and the load setup's throughput."""
    await run_round_trips(
        upstream.port, mode, sizes, sizes.warmup_round_trips, min(8, sizes.throughput_connections)
    )
    latency = await measure_latency(upstream.port, mode, sizes)
    throughput = await run_round_trips(
        upstream.port, mode, sizes, sizes.throughput_round_trips, sizes.throughput_connections
    )
    return TargetResult("direct", f"client straight to the {upstream.name}", latency, throughput)


async def measure_proxy(
    proxy: Proxy, upstream: ManagedProcess, mode: str, sizes: LoadSizes
) -> TargetResult:
    """Warm-up, idle memory, latency (with an adjacent direct baseline) and CPU of one proxy."""
    await proxy.start()
    try:
        await run_round_trips(
            proxy.port, mode, sizes, sizes.warmup_round_trips, min(8, sizes.throughput_connections)
        )
        idle = await measure_idle(proxy, mode, sizes)
        baseline = await measure_latency(upstream.port, mode, sizes)
        latency = await measure_latency(proxy.port, mode, sizes)
        throughput = await run_round_trips(
            proxy.port,
            mode,
            sizes,
            sizes.throughput_round_trips,
            sizes.throughput_connections,
            pids=proxy.pids(),
        )
        return TargetResult(proxy.name, proxy.description(), latency, throughput, baseline, idle)
    except BenchmarkError as error:
        raise BenchmarkError(f"{proxy.name} ({mode}): {error}\n{proxy.output()[-1500:]}") from None
    finally:
        proxy.stop()


def _upstream_for(mode: str) -> ManagedProcess:
    if mode == "path":
        return EchoUpstream()
    if mode == "phoenix":
        return DemoAppUpstream()
    raise BenchmarkError(f"unknown mode {mode!r} (path or phoenix)")


async def run_mode(
    mode: str, sizes: LoadSizes, nginx_binary: str | None, progress: Progress | None = None
) -> ModeResult:
    """Direct, sidecar and (when ``nginx_binary``) nginx in one mode, one shared upstream."""
    say = progress or (lambda message: None)
    upstream = _upstream_for(mode)
    await upstream.start()
    try:
        described = (
            "benchmarks/echo_server.py (raw asyncio echo)"
            if mode == "path"
            else ("wsgauge-demo-app /socket/websocket (Phoenix v2 JSON, aiohttp)")
        )
        result = ModeResult(mode, described)
        say(f"[{mode}] direct")
        result.targets.append(await measure_direct(upstream, mode, sizes))
        proxies: list[Proxy] = [SidecarProxy(upstream.port, mode)]
        if nginx_binary is not None:
            proxies.append(NginxProxy(nginx_binary, upstream.port, sizes.idle_sockets))
        for proxy in proxies:
            say(f"[{mode}] {proxy.name}")
            result.targets.append(await measure_proxy(proxy, upstream, mode, sizes))
        return result
    finally:
        upstream.stop()


def raise_file_limit(wanted: int) -> int:
    """Raise RLIMIT_NOFILE of this process (inherited by its children) to ``wanted``; the result."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return wanted


async def run_suite(settings: BenchSettings, progress: Progress | None = None) -> SuiteResult:
    """The whole benchmark run."""
    say = progress or (lambda message: None)
    sizes = settings.sizes
    result = SuiteResult(settings, machine(), datetime.now(UTC), load_before=load_average())
    started = time.perf_counter()
    # the sidecar holds two descriptors per proxied socket
    limit = raise_file_limit(2 * sizes.idle_sockets + 4096)
    if limit < 2 * sizes.idle_sockets + 256:
        idle = max(10, (limit - 256) // 2)
        result.notes.append(
            f"RLIMIT_NOFILE could only be raised to {limit}: "
            f"{idle} idle sockets instead of {sizes.idle_sockets}"
        )
        sizes = replace(sizes, idle_sockets=idle)
        result.settings = replace(settings, sizes=sizes)
    nginx_binary: str | None = None
    if settings.nginx:
        try:
            nginx_binary = ensure_nginx(install=settings.install_nginx)
        except NginxUnavailable as error:
            result.notes.append(f"nginx skipped: {error}")
            say(f"nginx skipped: {error}")
    else:
        result.notes.append("nginx not measured (--no-nginx)")
    for mode in settings.modes:
        result.modes.append(await run_mode(mode, sizes, nginx_binary, say))
    result.seconds = time.perf_counter() - started
    result.load_after = load_average()
    return result
