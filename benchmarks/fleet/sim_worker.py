"""One simulator process: many sidecar admin endpoints, fed with synthetic counts.

Run by :class:`benchmarks.fleet.simulator.FleetSimulator` as
``python -m benchmarks.fleet.sim_worker CONFIG.json``. Every endpoint is a real
:class:`wsgauge_sidecar.state.SidecarState` in report mode served by the sidecar's own
``start_admin_server`` (so ``/stats`` and ``/stats/watch`` behave exactly as in a sidecar) on its
own loopback address. Counts are changed through the sidecar's own ``ReportedCounts``.

Each endpoint has two topics: ``bg`` (background churn) and ``probe`` (freshness probes; only the
parent changes it, and only upwards, so an observer can tell when a probe arrived).

Protocol: JSON lines on stdin, one answer line per command on stdout
(``{"id": ..., "ok": true, "at": <CLOCK_MONOTONIC seconds>, ...}``):

* ``{"op": "set", "items": [[index, bg, probe], ...]}``: replace the counts of endpoints;
* ``{"op": "probe", "index": i}``: one more socket in topic ``probe`` of endpoint i;
* ``{"op": "churn", "rate": R, "seed": S}``: change ``bg`` of random endpoints by +-1,
  R changes per second in this process (0 stops);
* ``{"op": "totals"}``: ``{"bg": sum, "probe": sum, "per_endpoint": [[bg, probe], ...]}``;
* ``{"op": "stop"}``: end the watch streams, close the servers, exit.

The first line written is ``{"ready": true, "count": N}`` once every endpoint listens (or
``{"ready": false, "error": ...}``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from wsgauge_contract.address import Address
from wsgauge_sidecar.admin import start_admin_server
from wsgauge_sidecar.counter import ReportedCounts
from wsgauge_sidecar.settings import (
    AdminSettings,
    PodIdentity,
    ProxySettings,
    SidecarSettings,
)
from wsgauge_sidecar.state import SidecarState
from wsgauge_sidecar.topics import TopicRule

CHURN_TICK_SECONDS = 0.05
"""Background churn is applied in batches this often."""


@dataclass
class Endpoint:
    """One simulated sidecar: its state and its synthetic counts."""

    state: SidecarState
    """The sidecar's own state object (report mode)."""
    bg: int = 0
    """Sockets in topic ``bg``."""
    probe: int = 0
    """Sockets in topic ``probe``."""

    def apply(self) -> None:
        """Publish the counts as a report-mode snapshot (wakes the watch streams)."""
        counter = self.state.counter
        assert isinstance(counter, ReportedCounts)
        topics = {name: value for name, value in (("bg", self.bg), ("probe", self.probe)) if value}
        counter.apply_snapshot(self.bg + self.probe, topics)


def _settings(spec: dict[str, Any], port: int, heartbeat: float) -> SidecarSettings:
    return SidecarSettings(
        proxy=ProxySettings(topic_rule=TopicRule("report")),
        admin=AdminSettings(listen=Address(spec["ip"], port), watch_heartbeat=heartbeat),
        pod=PodIdentity(pod=spec["pod"], namespace=spec["namespace"], node=spec["node"]),
    )


class Worker:
    """The endpoints of this process and the command loop."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.port = int(config["port"])
        self.heartbeat = float(config.get("heartbeat", 5.0))
        self.specs: list[dict[str, Any]] = config["endpoints"]
        self.endpoints: list[Endpoint] = []
        self.runners: list[web.AppRunner] = []
        self._churn: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Create and bind every endpoint (in small concurrent batches)."""
        for spec in self.specs:
            self.endpoints.append(
                Endpoint(SidecarState(_settings(spec, self.port, self.heartbeat)))
            )
        batch = 64
        for first in range(0, len(self.endpoints), batch):
            chunk = self.endpoints[first : first + batch]
            self.runners.extend(await asyncio.gather(*(start_admin_server(e.state) for e in chunk)))

    async def stop(self) -> None:
        """End the watch streams and close every server."""
        await self._set_churn(0.0, 0)
        for endpoint in self.endpoints:
            endpoint.state.stopping.set()
        await asyncio.sleep(0.2)
        for first in range(0, len(self.runners), 128):
            await asyncio.gather(*(r.cleanup() for r in self.runners[first : first + 128]))

    async def _churn_forever(self, rate: float, seed: int) -> None:
        rng = random.Random(seed)
        owed = 0.0
        count = len(self.endpoints)
        while count:
            await asyncio.sleep(CHURN_TICK_SECONDS)
            owed += rate * CHURN_TICK_SECONDS
            while owed >= 1.0:
                owed -= 1.0
                endpoint = self.endpoints[rng.randrange(count)]
                endpoint.bg += 1 if endpoint.bg == 0 or rng.random() < 0.5 else -1
                endpoint.apply()

    async def _set_churn(self, rate: float, seed: int) -> None:
        if self._churn is not None:
            self._churn.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._churn
            self._churn = None
        if rate > 0:
            self._churn = asyncio.create_task(self._churn_forever(rate, seed))

    async def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        """Run one command; the answer (without its id)."""
        op = command.get("op")
        if op == "set":
            for index, bg, probe in command["items"]:
                endpoint = self.endpoints[int(index)]
                endpoint.bg, endpoint.probe = int(bg), int(probe)
                endpoint.apply()
            return {"ok": True, "at": time.monotonic()}
        if op == "probe":
            endpoint = self.endpoints[int(command["index"])]
            endpoint.probe += 1
            endpoint.apply()
            return {"ok": True, "at": time.monotonic(), "probe": endpoint.probe}
        if op == "churn":
            await self._set_churn(float(command["rate"]), int(command.get("seed", 0)))
            return {"ok": True, "at": time.monotonic()}
        if op == "totals":
            return {
                "ok": True,
                "at": time.monotonic(),
                "bg": sum(e.bg for e in self.endpoints),
                "probe": sum(e.probe for e in self.endpoints),
                "per_endpoint": [[e.bg, e.probe] for e in self.endpoints],
            }
        if op == "stop":
            await self.stop()
            return {"ok": True, "at": time.monotonic(), "stopped": True}
        return {"ok": False, "error": f"unknown op {op!r}"}


def _write(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def _main(config_path: Path) -> int:
    worker = Worker(json.loads(await asyncio.to_thread(config_path.read_text)))
    try:
        await worker.start()
    except OSError as error:
        _write({"ready": False, "error": str(error)})
        await worker.stop()
        return 1
    _write({"ready": True, "count": len(worker.endpoints)})
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=64 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:  # the parent went away
            await worker.stop()
            return 0
        command = json.loads(line)
        answer = await worker.handle(command)
        answer["id"] = command.get("id")
        _write(answer)
        if answer.get("stopped"):
            return 0


def main() -> None:
    """Entry point: ``python -m benchmarks.fleet.sim_worker CONFIG.json``."""
    sys.exit(asyncio.run(_main(Path(sys.argv[1]))))


if __name__ == "__main__":
    main()
