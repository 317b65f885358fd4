"""In-process micro-benchmark of the operator's internals at fleet scale (no API server, no I/O).

``python -m benchmarks.operator_scale --pods 1000 10000`` builds a real
:class:`~wsgauge_operator.control.controller.Controller` with a recording fake
``KubeWriter`` and followers that do no I/O, then feeds it what kopf and the
sidecars would:

1. *start-up*: the ConnectionStats, then N pod ``ADDED`` events (kopf's initial list);
2. *first documents*: one stats document per pod (``FleetState.report``);
3. *steady state*: documents from 1 % of the pods per batch, many batches;
4. *trickle*: documents at a fixed rate (``--trickle-rate`` per second, 10 % of the pods),
   as the fleet benchmark feeds them: rounds then see a few changed pods each;
5. *churn*: 10 % of the pods ``MODIFIED`` (e.g. Ready flips) and 1 % deleted.

The controller's worker tasks run as they do in production (woken by fleet
changes, debounced), interleaved with the feed in batches of ``--batch`` events.
Per phase it reports the CPU of handing one event to the controller, the process CPU of
the whole phase per event (rounds, condition writes and their echoes included), the number
of reconcile rounds and their mean computing time (``wsgauge_operator_round_seconds``),
plus the status size, status writes, pod condition writes, the cost of one metrics API
``pods(namespace)`` answer and of one pod's answer (``pod_metrics``), and the cost of
decoding one watch-stream document (the follower's per-document work).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
from wsgauge_contract import StatsDocument, WatchStreamDecoder, encode_watch_line
from wsgauge_operator.control.connectionstats_state import Key
from wsgauge_operator.control.controller import Controller
from wsgauge_operator.control.follower_set import Follower
from wsgauge_operator.model.fleet import EndpointKey, FleetState
from wsgauge_operator.model.settings import OperatorSettings

NAMESPACE = "bench"
GATE = "wsgauge.dev/connections-ok"


class RecordingKube:
    """A KubeWriter that counts what it is asked to write.

    A pod condition write comes back as a pod ``MODIFIED`` event, as from a real API
    server's watch (otherwise the controller would write it again and again).
    """

    def __init__(self) -> None:
        self.controller: Controller | None = None
        self.pods: dict[str, dict[str, Any]] = {}
        self.status_writes = 0
        self.status_bytes = 0
        self.condition_writes = 0
        self.events = 0

    async def patch_connectionstats_status(
        self, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None:
        self.status_writes += 1
        self.status_bytes = max(self.status_bytes, len(json.dumps(status)))

    async def patch_pod_condition(
        self, namespace: str, name: str, uid: str, condition: Mapping[str, Any]
    ) -> None:
        self.condition_writes += 1
        body = self.pods.get(name)
        if body is None or self.controller is None:
            return
        conditions = [c for c in body["status"]["conditions"] if c["type"] != condition["type"]]
        body["status"]["conditions"] = [*conditions, dict(condition)]
        asyncio.get_running_loop().call_soon(self.controller.pod_event, "MODIFIED", body)

    async def create_event(self, namespace: str, event: Mapping[str, Any]) -> None:
        self.events += 1


class IdleFollower:
    """A follower without I/O: the benchmark reports documents itself."""

    def __init__(self, key: EndpointKey, fleet: FleetState, session: aiohttp.ClientSession) -> None:
        self.key = key

    def poke(self) -> None:
        """Nothing to retry."""

    async def run(self) -> None:
        """Wait until cancelled."""
        await asyncio.Event().wait()


class CountingController(Controller):
    """A controller that says when a round is running, and how many ran (from its telemetry)."""

    in_round = False

    @property
    def rounds(self) -> int:
        """Rounds computed so far."""
        return int(self._sample("wsgauge_operator_round_seconds_count"))

    @property
    def round_cpu(self) -> float:
        """Computing time of those rounds (aggregation and decisions; writes not included)."""
        return self._sample("wsgauge_operator_round_seconds_sum")

    def _sample(self, name: str) -> float:
        return self.telemetry.registry.get_sample_value(name) or 0.0

    async def reconcile(self, key: Key) -> float | None:
        self.in_round = True
        try:
            return await super().reconcile(key)
        finally:
            self.in_round = False


def idle_follower(key: EndpointKey, fleet: FleetState, session: aiohttp.ClientSession) -> Follower:
    """The follower factory of the benchmark."""
    return IdleFollower(key, fleet, session)


def pod_body(index: int, app: str) -> dict[str, Any]:
    """A running pod with the sidecar's admin port and the readiness gate."""
    name = f"pod-{index:05d}"
    return {
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "uid": f"uid-{index}",
            "labels": {"app": app, "pod-template-hash": "abc"},
        },
        "spec": {
            "nodeName": f"node-{index % 100}",
            "readinessGates": [{"conditionType": GATE}],
            "containers": [
                {"name": "app", "ports": [{"name": "http", "containerPort": 8080}]},
                {"name": "wsgauge", "ports": [{"name": "wsgauge-admin", "containerPort": 9090}]},
            ],
        },
        "status": {
            "phase": "Running",
            "podIP": f"127.{1 + index // 65536}.{(index // 256) % 256}.{index % 256}",
            "conditions": [
                {"type": "ContainersReady", "status": "True"},
                {"type": "Ready", "status": "True"},
            ],
        },
    }


def connectionstats_body(app: str) -> dict[str, Any]:
    """A ConnectionStats selecting ``app``."""
    return {
        "metadata": {"name": app, "namespace": NAMESPACE, "uid": f"uid-{app}", "generation": 1},
        "spec": {
            "selector": {"matchLabels": {"app": app}},
            "sidecarPort": "wsgauge-admin",
            "capacity": {"maxConnectionsPerPod": 5000, "minReadyPods": 1},
            "statusInterval": "2s",
        },
    }


def document(pod: str, seq: int, connections: int) -> StatsDocument:
    """A stats document with five topics."""
    topics = {f"topic-{t}": connections // 5 for t in range(5)}
    return StatsDocument(
        pod=pod, namespace=NAMESPACE, connections=sum(topics.values()), topics=topics, seq=seq
    )


def _not_ready(body: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a pod body whose Ready condition went False (the readiness gate kept)."""
    copy = json.loads(json.dumps(body))
    for item in copy["status"]["conditions"]:
        if item["type"] == "Ready":
            item["status"] = "False"
    return dict(copy)


@dataclass
class Phase:
    """CPU and rounds of one phase."""

    name: str
    events: int
    feed_cpu_seconds: float
    """CPU of handing the events to the controller (no rounds)."""
    cpu_seconds: float
    """Process CPU of the whole phase: the feed, the rounds it caused, condition echoes."""
    rounds: int
    round_cpu_seconds: float

    @property
    def us_per_event(self) -> float:
        """CPU of handing one event to the controller, in µs."""
        return self.feed_cpu_seconds / max(self.events, 1) * 1e6

    @property
    def total_us_per_event(self) -> float:
        """Process CPU of the phase (rounds included) per event, in µs."""
        return self.cpu_seconds / max(self.events, 1) * 1e6

    @property
    def ms_per_round(self) -> float:
        """Mean CPU of one reconcile round, in ms."""
        return self.round_cpu_seconds / max(self.rounds, 1) * 1e3


@dataclass
class ScaleResult:
    """Everything measured at one size."""

    pods: int
    connectionstats: int
    phases: list[Phase] = field(default_factory=list)
    status_writes: int = 0
    condition_writes: int = 0
    status_bytes: int = 0
    metrics_pods_cold_ms: float = 0.0
    """One metrics API ``pods(namespace)`` answer after every pod changed."""
    metrics_pods_ms: float = 0.0
    """The same answer again, nothing changed."""
    metrics_pod_us: float = 0.0
    """One pod's answer (``pod_metrics``, what a request naming one pod reads)."""
    decode_us: float = 0.0


async def _settle(controller: CountingController, seconds: float) -> None:
    """Let the debounced (and paced) workers run until they have nothing left to do."""
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < seconds:
        await asyncio.sleep(0.05)
        if controller.busy() or controller.in_round:
            quiet_since = time.monotonic()


async def _phase(
    controller: CountingController,
    name: str,
    *,
    feed: Sequence[Any],
    batch: int,
    apply: Any,
    settle: float,
    pause: float = 0.0,
) -> Phase:
    rounds_before, round_cpu_before = controller.rounds, controller.round_cpu
    started = time.process_time()
    feed_cpu = 0.0
    for offset in range(0, len(feed), batch):
        feeding = time.process_time()
        for item in feed[offset : offset + batch]:
            apply(item)
        feed_cpu += time.process_time() - feeding
        await asyncio.sleep(pause)
    await _settle(controller, settle)
    return Phase(
        name=name,
        events=len(feed),
        feed_cpu_seconds=feed_cpu,
        cpu_seconds=time.process_time() - started,
        rounds=controller.rounds - rounds_before,
        round_cpu_seconds=controller.round_cpu - round_cpu_before,
    )


def _decode_cost(iterations: int) -> float:
    line = encode_watch_line(document("pod-00001", 7, 1000))
    decoder = WatchStreamDecoder(max_line_bytes=1024 * 1024)
    started = time.process_time()
    for _ in range(iterations):
        decoder.feed(line)
    return (time.process_time() - started) / iterations * 1e6


async def run_scale(
    pods: int, connectionstats: int, batch: int, settle: float, trickle_rate: float = 1000.0
) -> ScaleResult:
    """Measure the phases for ``pods`` pods split over ``connectionstats`` resources."""
    kube = RecordingKube()
    controller = CountingController(OperatorSettings(), kube, follower_factory=idle_follower)
    kube.controller = controller
    await controller.start()
    result = ScaleResult(pods=pods, connectionstats=connectionstats)
    try:
        apps = [f"app-{i}" for i in range(connectionstats)]
        for app in apps:
            controller.connectionstats_event(None, connectionstats_body(app))
        bodies = [pod_body(i, apps[i % connectionstats]) for i in range(pods)]
        kube.pods = {body["metadata"]["name"]: body for body in bodies}
        result.phases.append(
            await _phase(
                controller,
                "start-up: pod ADDED",
                feed=bodies,
                batch=batch,
                apply=lambda body: controller.pod_event("ADDED", body),
                settle=settle,
            )
        )
        keys = sorted(controller.fleet.endpoint_keys(), key=lambda k: k.pod)
        wall = time.time()
        result.phases.append(
            await _phase(
                controller,
                "first document per pod",
                feed=keys,
                batch=batch,
                apply=lambda key: controller.fleet.report(key, document(key.pod, 1, 100), wall),
                settle=settle,
            )
        )
        steady = [keys[(i * 97) % len(keys)] for i in range(len(keys))]
        counter = iter(range(2, 10**9))
        result.phases.append(
            await _phase(
                controller,
                "steady: documents",
                feed=steady,
                batch=max(1, len(keys) // 100),
                apply=lambda key: controller.fleet.report(
                    key, document(key.pod, next(counter), 100 + next(counter) % 50), wall
                ),
                settle=settle,
            )
        )
        trickle = [keys[(i * 89) % len(keys)] for i in range(max(1, len(keys) // 10))]
        per_turn = max(1, round(trickle_rate / 100))
        result.phases.append(
            await _phase(
                controller,
                f"trickle: documents at {trickle_rate:g}/s",
                feed=trickle,
                batch=per_turn,
                apply=lambda key: controller.fleet.report(
                    key, document(key.pod, next(counter), 100 + next(counter) % 50), wall
                ),
                settle=settle,
                pause=per_turn / trickle_rate,
            )
        )
        flips = [_not_ready(bodies[i]) for i in range(0, pods, 10)]
        result.phases.append(
            await _phase(
                controller,
                "churn: pod MODIFIED",
                feed=flips,
                batch=batch,
                apply=lambda body: controller.pod_event("MODIFIED", body),
                settle=settle,
            )
        )
        gone = [pod_body(i, apps[i % connectionstats]) for i in range(0, pods, 100)]
        result.phases.append(
            await _phase(
                controller,
                "churn: pod DELETED",
                feed=gone,
                batch=batch,
                apply=lambda body: controller.pod_event("DELETED", body),
                settle=settle,
            )
        )
        started = time.process_time()
        controller.fleet.pods(NAMESPACE)  # every pod changed since the last answer
        result.metrics_pods_cold_ms = (time.process_time() - started) * 1e3
        started = time.process_time()
        for _ in range(5):
            controller.fleet.pods(NAMESPACE)
        result.metrics_pods_ms = (time.process_time() - started) / 5 * 1e3
        names = [key.pod for key in keys[:1000]]
        started = time.process_time()
        for name in names:
            controller.fleet.pod_metrics(NAMESPACE, name)
        result.metrics_pod_us = (time.process_time() - started) / len(names) * 1e6
        result.decode_us = _decode_cost(20_000)
    finally:
        await controller.stop()
    result.status_writes = kube.status_writes
    result.condition_writes = kube.condition_writes
    result.status_bytes = kube.status_bytes
    return result


def render(results: Sequence[ScaleResult]) -> str:
    """A Markdown table of the results."""
    lines = [
        "| pods | ConnectionStats | phase | events | feed µs/event | all µs/event | rounds "
        "| ms/round (compute) |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        for phase in result.phases:
            lines.append(
                f"| {result.pods} | {result.connectionstats} | {phase.name} | {phase.events} "
                f"| {phase.us_per_event:.1f} | {phase.total_us_per_event:.1f} | {phase.rounds} "
                f"| {phase.ms_per_round:.2f} |"
            )
    lines += [
        "",
        "| pods | ConnectionStats | status writes | condition writes | largest status "
        "(bytes) | metrics API pods() ms, all changed / unchanged | metrics API one pod µs "
        "| document decode µs |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        lines.append(
            f"| {result.pods} | {result.connectionstats} | {result.status_writes} "
            f"| {result.condition_writes} | {result.status_bytes} "
            f"| {result.metrics_pods_cold_ms:.2f} / {result.metrics_pods_ms:.2f} "
            f"| {result.metrics_pod_us:.1f} | {result.decode_us:.1f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sizes given on the command line and print the tables."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.operator_scale")
    parser.add_argument("--pods", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument(
        "--connectionstats", type=int, default=1, help="split the pods over this many"
    )
    parser.add_argument("--batch", type=int, default=200, help="events fed between loop turns")
    parser.add_argument("--settle", type=float, default=0.3, help="quiet seconds that end a phase")
    parser.add_argument(
        "--trickle-rate", type=float, default=1000.0, help="documents per second (trickle phase)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    args = parser.parse_args(argv)
    results = [
        asyncio.run(
            run_scale(pods, args.connectionstats, args.batch, args.settle, args.trickle_rate)
        )
        for pods in args.pods
    ]
    if args.json:
        print(json.dumps([asdict(result) for result in results], indent=2))
    else:
        print(render(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
