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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from benchmarks.core_costs import CoreCost, measure_core_costs
from benchmarks.exceptions import BenchmarkError, LoadError, NginxUnavailable
from benchmarks.haproxy import HaproxyProxy, ensure_haproxy
from benchmarks.loadgen import ECHO_PROTOCOL_MODES, MODES
from benchmarks.nginx import NginxProxy, ensure_nginx
from benchmarks.procstat import (
    Machine,
    cpu_seconds,
    load_average,
    machine,
    machine_busy_seconds,
    own_cpu_seconds,
    rss_bytes,
)
from benchmarks.settings import BenchSettings, LoadSizes
from benchmarks.targets import (
    LOOPBACK,
    REPO,
    DemoAppUpstream,
    EchoUpstream,
    ManagedProcess,
    SidecarProxy,
)

T = TypeVar("T")
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
    round_cpu_us: tuple[float, ...] = ()
    """The proxy's CPU µs per relayed message in each round (their spread shows the noise)."""

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
    core_costs: list[CoreCost] = field(default_factory=list)
    """The sidecar's pure-core work per message (no I/O)."""
    other_cpu_seconds: float = 0.0
    """CPU time the machine spent on other processes than the benchmark's during the run."""
    revision: str = "unknown"
    """``git describe`` of the repository (``-dirty`` when files differ from it)."""
    file_limited: bool = False
    """The idle socket count was lowered to fit the per-process file limit."""

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
        assert self.process is not None
        assert self.process.stdout is not None
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
        assert self.process is not None
        assert self.process.stdin is not None
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
    parts = max(1, min(sizes.workers, connections, round_trips))
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


def _latency(figures: dict[str, float]) -> LatencyResult:
    return LatencyResult(
        int(figures["count"]), figures["p50_us"], figures["p99_us"], figures["mean_us"]
    )


async def measure_latency(
    port: int, baseline_port: int, mode: str, sizes: LoadSizes
) -> tuple[LatencyResult, LatencyResult]:
    """Sequential round trips through ``port`` and straight to ``baseline_port``, alternating.

    The result is (baseline, through the port).
    """
    arguments = _worker_arguments(
        port,
        mode,
        "latency",
        sizes,
        round_trips=sizes.latency_round_trips,
        warmup=sizes.latency_warmup,
        baseline_port=baseline_port,
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
    return _latency(done["baseline"]), _latency(done["target"])


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


def _warmup(port: int, mode: str, sizes: LoadSizes) -> Awaitable[ThroughputResult]:
    return run_round_trips(
        port, mode, sizes, sizes.warmup_round_trips, min(8, sizes.throughput_connections)
    )


async def _annotated(proxy: Proxy, mode: str, step: Awaitable[T]) -> T:
    """Run ``step``; a failure names the proxy and shows the end of its output."""
    try:
        return await step
    except BenchmarkError as error:
        raise BenchmarkError(f"{proxy.name} ({mode}): {error}\n{proxy.output()[-1500:]}") from None


def _combine(parts: list[ThroughputResult]) -> ThroughputResult:
    cpu = [part.proxy_cpu_seconds for part in parts]
    return ThroughputResult(
        round_trips=sum(part.round_trips for part in parts),
        connections=parts[0].connections,
        seconds=sum(part.seconds for part in parts),
        proxy_cpu_seconds=None if None in cpu else sum(value or 0.0 for value in cpu),
        round_cpu_us=tuple(part.cpu_us_per_message or 0.0 for part in parts),
    )


async def measure_cpu(
    proxies: list[Proxy], mode: str, sizes: LoadSizes
) -> dict[str, ThroughputResult]:
    """The closed-loop CPU runs, split into rounds that alternate between the proxies.

    Alternating (A B, B A, A B ...) lets both proxies see the same drift in the
    machine's background load; each proxy's figure is its CPU over all rounds.
    """
    parts: dict[str, list[ThroughputResult]] = {proxy.name: [] for proxy in proxies}
    rounds = max(1, min(sizes.cpu_rounds, sizes.throughput_round_trips))
    for number, trips in enumerate(_split(sizes.throughput_round_trips, rounds)):
        for proxy in proxies if number % 2 == 0 else proxies[::-1]:
            step = run_round_trips(
                proxy.port, mode, sizes, trips, sizes.throughput_connections, pids=proxy.pids()
            )
            parts[proxy.name].append(await _annotated(proxy, mode, step))
    return {name: _combine(runs) for name, runs in parts.items()}


def upstream_for(mode: str) -> ManagedProcess:
    if mode == "path" or mode in ECHO_PROTOCOL_MODES:
        return EchoUpstream()
    if mode == "phoenix":
        return DemoAppUpstream()
    raise BenchmarkError(f"unknown mode {mode!r} (one of {', '.join(MODES)})")


_ECHO = "benchmarks/echo_server.py (raw asyncio echo)"
UPSTREAM_DESCRIPTIONS = {
    "path": _ECHO,
    "phoenix": "wsgauge-demo-app /socket/websocket (Phoenix v2 JSON, aiohttp)",
    "graphql-ws": f"{_ECHO}: graphql-transport-ws `next` messages both ways, 1 subscription",
    "mqtt": f"{_ECHO}: MQTT 3.1.1 PUBLISH packets (binary) both ways, 1 granted filter",
    "stomp": f"{_ECHO}: STOMP SEND frames with content-length both ways, 1 subscription",
    "pusher": f"{_ECHO}: Pusher client events both ways, 1 subscribed channel",
    "socketio": f"{_ECHO}: Socket.IO v4 events in a namespace both ways, 1 namespace",
    "actioncable": f"{_ECHO}: Action Cable `message` commands both ways, 1 subscription",
    "centrifugo": f"{_ECHO}: Centrifugo publication pushes both ways, 1 subscription",
}


async def run_mode(
    mode: str,
    sizes: LoadSizes,
    nginx_binary: str | None,
    progress: Progress | None = None,
    haproxy_binary: str | None = None,
) -> ModeResult:
    """Direct, sidecar, the sidecar's Python relay, and (when given) nginx and HAProxy
    in one mode, one shared upstream.

    The proxies run side by side (fresh processes); memory is measured one proxy
    at a time, latency as direct/proxy pairs, CPU in rounds alternating between them.
    """
    say = progress or (lambda message: None)
    upstream = upstream_for(mode)
    await upstream.start()
    proxies: list[Proxy] = [SidecarProxy(upstream.port, mode)]
    proxies.append(SidecarProxy(upstream.port, mode, relay="python"))
    if nginx_binary is not None:
        proxies.append(NginxProxy(nginx_binary, upstream.port, sizes.idle_sockets))
    if haproxy_binary is not None:
        proxies.append(HaproxyProxy(haproxy_binary, upstream.port, sizes.idle_sockets))
    started: list[Proxy] = []
    try:
        await _warmup(upstream.port, mode, sizes)
        for proxy in proxies:
            await proxy.start()
            started.append(proxy)
            await _annotated(proxy, mode, _warmup(proxy.port, mode, sizes))
        idle: dict[str, IdleResult] = {}
        for proxy in proxies:
            say(f"[{mode}] {proxy.name}: memory with {sizes.idle_sockets:,} idle sockets")
            idle[proxy.name] = await _annotated(proxy, mode, measure_idle(proxy, mode, sizes))
        latency: dict[str, tuple[LatencyResult, LatencyResult]] = {}
        for proxy in proxies:
            say(f"[{mode}] {proxy.name}: latency (alternating direct and through the proxy)")
            latency[proxy.name] = await _annotated(
                proxy, mode, measure_latency(proxy.port, upstream.port, mode, sizes)
            )
        say(f"[{mode}] CPU: {sizes.throughput_round_trips:,} round trips per proxy")
        cpu = await measure_cpu(proxies, mode, sizes)
        say(f"[{mode}] direct throughput")
        direct = await run_round_trips(  # only a rate, for scale: a quarter of the load
            upstream.port,
            mode,
            sizes,
            max(1, sizes.throughput_round_trips // 4),
            sizes.throughput_connections,
        )
        result = ModeResult(mode, UPSTREAM_DESCRIPTIONS[mode])
        first_baseline = latency[proxies[0].name][0]
        result.targets.append(
            TargetResult(
                "direct", f"client straight to the {upstream.name}", first_baseline, direct
            )
        )
        for proxy in proxies:
            baseline, through = latency[proxy.name]
            result.targets.append(
                TargetResult(
                    proxy.name,
                    proxy.description(),
                    through,
                    cpu[proxy.name],
                    baseline,
                    idle[proxy.name],
                )
            )
        return result
    finally:
        for proxy in started:
            proxy.stop()
        upstream.stop()


def repository_revision() -> str:
    """The commit the benchmarked code is at, ``-dirty`` if the sidecar's files differ from it."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=10,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", "sidecar"],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"`{commit}`" + (" with uncommitted sidecar changes" if changed else "")


FILE_RESERVE = 64
"""Descriptors a proxy needs besides its sockets (listeners, event loop, logs)."""


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
    result.revision = repository_revision()
    busy_before, own_before = machine_busy_seconds(), own_cpu_seconds()
    started = time.perf_counter()
    # a proxy holds two descriptors per proxied socket, plus a few of its own
    limit = raise_file_limit(2 * sizes.idle_sockets + 4096)
    if limit < 2 * sizes.idle_sockets + FILE_RESERVE:
        idle = max(10, (limit - FILE_RESERVE) // 2)
        result.notes.append(
            f"this machine's limit on open files per process is {limit:,} and could not be "
            "raised (the hard RLIMIT_NOFILE; raising it needs CAP_SYS_RESOURCE, which this "
            "container lacks); a proxy holds two descriptors per socket, so the idle runs use "
            f"{idle:,} sockets instead of {sizes.idle_sockets:,}."
        )
        sizes = replace(sizes, idle_sockets=idle)
        result.file_limited = True
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
    haproxy_binary: str | None = None
    if settings.haproxy:
        try:
            haproxy_binary = ensure_haproxy(install=settings.install_nginx)
        except NginxUnavailable as error:
            result.notes.append(f"HAProxy skipped: {error}")
            say(f"HAProxy skipped: {error}")
    else:
        result.notes.append("HAProxy not measured (--no-haproxy)")
    for mode in settings.modes:
        result.modes.append(await run_mode(mode, sizes, nginx_binary, say, haproxy_binary))
    say("sidecar pure cores (no I/O)")
    result.core_costs = measure_core_costs(sizes.core_iterations, sizes.payload_bytes)
    result.seconds = time.perf_counter() - started
    result.load_after = load_average()
    own = own_cpu_seconds() - own_before
    result.other_cpu_seconds = max(0.0, machine_busy_seconds() - busy_before - own)
    return result
