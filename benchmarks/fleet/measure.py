"""Readings of one fleet run: freshness probes, process cost windows, API server write counts.

* :class:`StatusWatch` follows the ConnectionStats of a namespace with a real watch and keeps,
  per resource, the times at which each ``status.topics.probe`` value was first seen;
* :func:`probe_freshness` makes one sidecar's ``probe`` count go up and times how long until the
  metrics API (polled every ``poll`` seconds) and the status (watch) show it;
* :class:`CostWindow` samples a process's CPU and RSS (``benchmarks.procstat``) and the API
  server's ``apiserver_request_total`` write counters over a window.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from wsgauge_devcluster.exceptions import KubeApiError
from wsgauge_devcluster.kubeapi import KubeApi

from benchmarks import procstat
from benchmarks.exceptions import BenchmarkError
from benchmarks.fleet.operator_run import MetricsApiClient
from benchmarks.fleet.simulator import FleetSimulator, connection_stats_path

WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "DELETE", "DELETECOLLECTION", "APPLY"})
"""Verbs of ``apiserver_request_total`` that write."""
_SAMPLE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (NaN for no values)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[rank]


class StatusWatch:
    """Times of first sight of each ``status.topics.probe`` value, per ConnectionStats."""

    def __init__(self, api: KubeApi, namespace: str) -> None:
        self._api = api
        self._namespace = namespace
        self.seen: dict[str, dict[int, float]] = {}
        """ConnectionStats name -> probe total -> CLOCK_MONOTONIC time first seen."""
        self.events = 0
        """Watch events received."""
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    def _record(self, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        topics = (obj.get("status") or {}).get("topics") or {}
        value = int(topics.get("probe", 0))
        table = self.seen.setdefault(name, {})
        if value not in table:
            table[value] = time.monotonic()
            self._changed.set()

    async def _run(self) -> None:
        path = connection_stats_path(self._namespace)
        while True:
            try:
                listing = await self._api.get(path)
                for item in listing.get("items", []):
                    self._record(item)
                version = listing["metadata"]["resourceVersion"]
                async for event in self._api.watch(path, version):
                    if event.get("type") in ("ADDED", "MODIFIED"):
                        self.events += 1
                        self._record(event["object"])
            except (KubeApiError, aiohttp.ClientError, TimeoutError, OSError):
                await asyncio.sleep(0.2)

    def start(self) -> None:
        """Start following."""
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop following."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait_for(self, name: str, at_least: int, timeout: float) -> float | None:
        """CLOCK_MONOTONIC time the status of ``name`` first showed probe >= at_least."""
        deadline = time.monotonic() + timeout
        while True:
            times = [t for v, t in self.seen.get(name, {}).items() if v >= at_least]
            if times:
                return min(times)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.5))


@dataclass
class ProbeResult:
    """Freshness of one probe, seconds (None: not seen within the timeout)."""

    metrics_api: float | None
    """Change in the sidecar -> value served by the metrics API."""
    status: float | None
    """Change in the sidecar -> status on the ConnectionStats (watch event)."""


async def probe_freshness(
    simulator: FleetSimulator,
    metrics: MetricsApiClient,
    watch: StatusWatch,
    *,
    index: int,
    cs_name: str,
    group_probe_total: int,
    poll: float = 0.01,
    timeout: float = 15.0,
) -> ProbeResult:
    """Raise the probe count of endpoint ``index`` and time its arrival in both places."""
    namespace = simulator.settings.namespace
    pod = simulator.pod_name(index)
    changed_at, value = await simulator.probe(index)

    async def metrics_seen() -> float | None:
        deadline = changed_at + timeout
        while time.monotonic() < deadline:
            served = await metrics.pod_value(namespace, pod, "probe")
            if served is not None and served >= value:
                return time.monotonic()
            await asyncio.sleep(poll)
        return None

    seen_metrics, seen_status = await asyncio.gather(
        metrics_seen(), watch.wait_for(cs_name, group_probe_total, timeout)
    )
    return ProbeResult(
        metrics_api=None if seen_metrics is None else seen_metrics - changed_at,
        status=None if seen_status is None else seen_status - changed_at,
    )


async def apiserver_writes(api: KubeApi, server: str) -> Counter[str]:
    """``apiserver_request_total`` of write verbs, summed per ``resource[/subresource] VERB``."""
    async with api.session.get(
        server + "/metrics", timeout=aiohttp.ClientTimeout(total=30)
    ) as response:
        text = await response.text()
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        labels = dict(_LABEL.findall(match["labels"]))
        if labels.get("verb") not in WRITE_VERBS:
            continue
        resource = labels.get("resource", "")
        if labels.get("subresource"):
            resource += "/" + labels["subresource"]
        counts[f"{resource} {labels['verb']}"] += int(float(match["value"]))
    return counts


@dataclass
class CostWindow:
    """CPU and RSS of some processes, and API server writes, over a window."""

    pids: list[int]
    """The processes measured (e.g. the operator)."""
    api: KubeApi
    """For the API server's /metrics."""
    server: str
    """API server URL."""
    apiserver_pid: int | None = None
    """The API server's pid, if local (its CPU is reported too)."""
    rss_samples: list[int] = field(default_factory=list)
    _start: float = 0.0
    _cpu: float = 0.0
    _apiserver_cpu: float = 0.0
    _writes: Counter[str] = field(default_factory=Counter)
    _sampler: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            try:
                self.rss_samples.append(procstat.rss_bytes(self.pids))
            except BenchmarkError:  # the process ended (a window abandoned by a failed step)
                return
            await asyncio.sleep(0.5)

    async def begin(self) -> None:
        """Start the window."""
        self._writes = await apiserver_writes(self.api, self.server)
        self._start = time.monotonic()
        self._cpu = procstat.cpu_seconds(self.pids)
        if self.apiserver_pid:
            self._apiserver_cpu = procstat.cpu_seconds([self.apiserver_pid])
        self._sampler = asyncio.create_task(self._sample())

    async def end(self) -> dict[str, Any]:
        """End the window: cores, RSS (MiB, mean/max), API writes per second by kind."""
        elapsed = time.monotonic() - self._start
        cpu = procstat.cpu_seconds(self.pids) - self._cpu
        apiserver_cpu = (
            procstat.cpu_seconds([self.apiserver_pid]) - self._apiserver_cpu
            if self.apiserver_pid
            else float("nan")
        )
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        self.rss_samples.append(procstat.rss_bytes(self.pids))
        writes = await apiserver_writes(self.api, self.server)
        delta = {key: writes[key] - self._writes.get(key, 0) for key in writes}
        mib = 1024 * 1024
        return {
            "seconds": round(elapsed, 2),
            "cores": cpu / elapsed,
            "apiserver_cores": apiserver_cpu / elapsed,
            "rss_mib_mean": sum(self.rss_samples) / len(self.rss_samples) / mib,
            "rss_mib_max": max(self.rss_samples) / mib,
            "writes_per_second": {k: v / elapsed for k, v in sorted(delta.items()) if v > 0},
        }


def object_size(obj: dict[str, Any]) -> int:
    """Size in bytes of an API object as compact JSON."""
    return len(json.dumps(obj, separators=(",", ":")).encode())
