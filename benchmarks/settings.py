"""Settings of the sidecar benchmark: how much load (one dataclass) and what to run (another)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class LoadSizes:
    """How much load each measurement uses."""

    throughput_round_trips: int = 100_000
    """Closed-loop round trips (one message each way) per proxy and mode for the CPU figure."""
    cpu_rounds: int = 4
    """Those round trips are split into this many rounds, alternating between the proxies."""
    throughput_connections: int = 64
    """Sockets that share those round trips (spread over the workers)."""
    workers: int = 2
    """Load generator processes (throughput and idle sockets)."""
    latency_round_trips: int = 10_000
    """Timed sequential round trips on one socket for the latency figures."""
    latency_warmup: int = 500
    """Untimed round trips before the timed ones."""
    idle_sockets: int = 10_000
    """Idle sockets held open through each proxy for the memory figure."""
    warmup_round_trips: int = 2_000
    """Round trips through a freshly started proxy before anything is measured."""
    payload_bytes: int = 64
    """Message body size (path: the whole text message; phoenix: the ``body`` field)."""
    source_addresses: int = 4
    """Loopback source addresses (127.0.0.2 ...) the idle sockets are spread over."""
    settle_seconds: float = 1.0
    """Pause after opening the idle sockets before the memory is read."""
    core_iterations: int = 50_000
    """Calls per step in the pure-core microbenchmark (:mod:`benchmarks.core_costs`)."""
    step_timeout: float = 240.0
    """Upper bound of every single step (opening sockets, a measurement, a shutdown)."""


QUICK = LoadSizes(
    throughput_round_trips=20_000,
    throughput_connections=32,
    cpu_rounds=2,
    latency_round_trips=2_000,
    latency_warmup=200,
    idle_sockets=2_000,
    warmup_round_trips=1_000,
    settle_seconds=0.5,
    core_iterations=20_000,
    step_timeout=90.0,
)
"""``--quick``: the same measurements at a size that runs in well under two minutes."""

FULL = LoadSizes()
"""The default run (under ten minutes)."""


@dataclass(frozen=True)
class BenchSettings:
    """What one benchmark run does."""

    sizes: LoadSizes = field(default_factory=LoadSizes)
    """The load of every measurement."""
    modes: tuple[str, ...] = ("path", "phoenix", "graphql-ws", "mqtt", "stomp", "pusher")
    """Topic rules to measure (``phoenix``: the demo app upstream; the others: the echo
    server)."""
    nginx: bool = True
    """Measure nginx too (skipped with a note when it is missing and cannot be installed)."""
    install_nginx: bool = True
    """Install Debian's nginx (and haproxy) package with apt-get when it is missing."""
    haproxy: bool = True
    """Measure HAProxy too (skipped with a note when it is missing and cannot be installed)."""
    quick: bool = False
    """This is a ``--quick`` run (said so in the report)."""
