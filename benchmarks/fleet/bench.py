"""The fleet benchmark (issue #7): the real operator against N simulated sidecars and pods.

``python -m benchmarks.fleet.bench [--sizes 100,1000,10000] [--multi]`` (``make bench-fleet``).
Per scenario (N pods in one ConnectionStats, or 100 ConnectionStats of 100 pods):

1. N simulated sidecars (+10 % spare for the pod churn) and N pods on a simulated node;
2. the operator is started; *start* = until its ``/stats`` shows N pods reporting, and until
   every status shows its pods reporting;
3. *steady*: background count changes at ``--rate`` per pod per second (capped), operator CPU/RSS
   and API server writes over a window in which the simulator writes nothing to the API;
4. *freshness*: probes, one after the other, each raising one sidecar's ``probe`` topic, timed to
   the metrics API (polled directly with the front-proxy certificate) and to the status (watch);
5. *pod churn*: 10 % of the pods deleted and 10 % new ones created at once; operator cost
   and time until it follows exactly the N pods again;
6. ConnectionStats object size; 7. *restart*: the operator is stopped and started again on the
   existing fleet, time until all N pods report again, and its API writes meanwhile.

Runs on its own cluster (``wsgauge-devcluster up`` with a state dir under /tmp and its own ports,
``down --purge`` at the end) unless ``--kubeconfig`` is given. Results are merged into
``docs/benchmarks/fleet.json``; :mod:`benchmarks.fleet.fleet_report` renders them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from wsgauge_devcluster.exceptions import KubeApiError
from wsgauge_devcluster.kubeapi import KubeApi, KubeConfig

from benchmarks import procstat
from benchmarks.exceptions import BenchmarkError
from benchmarks.fleet import fleet_report
from benchmarks.fleet.measure import (
    CostWindow,
    ProbeResult,
    StatusWatch,
    object_size,
    percentile,
    probe_freshness,
)
from benchmarks.fleet.operator_run import MetricsApiClient, OperatorRun
from benchmarks.fleet.simulator import (
    FleetSimulator,
    SimulatorSettings,
    connection_stats_body,
    connection_stats_path,
)

LOG = logging.getLogger("wsgauge.bench.fleet")
REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "docs" / "benchmarks" / "fleet.json"


@dataclass(frozen=True)
class FleetBenchSettings:
    """What to run and how long to measure."""

    sizes: tuple[int, ...] = (100, 1000, 10000)
    """Fleet sizes with one ConnectionStats."""
    multi: bool = True
    """Also 100 ConnectionStats x 100 pods."""
    rate_per_pod: float = 0.1
    """Background count changes per pod per second."""
    max_rate: float = 1000.0
    """Cap of the background changes per second over the fleet."""
    probes: int = 25
    """Freshness probes per scenario."""
    steady_seconds: float = 20.0
    """Steady-state cost window."""
    status_interval: str = "2s"
    """``spec.statusInterval`` of the ConnectionStats."""
    kubeconfig: Path | None = None
    """Use this cluster instead of starting one."""
    cluster_dir: Path = Path("/tmp/wsgauge-fleet-bench")
    """State dir of the benchmark's own cluster."""
    apiserver_port: int = 16443
    """Its API server port."""
    etcd_port: int = 22379
    """Its etcd client port."""
    keep_cluster: bool = False
    """Leave the own cluster running at the end."""
    results: Path = RESULTS
    """The JSON results file (merged per scenario)."""
    log_dir: Path = Path("/tmp/wsgauge-fleet-bench-logs")
    """Operator and simulator logs."""


@dataclass
class Context:
    """The cluster the scenarios run on."""

    api: KubeApi
    server: str
    kubeconfig: Path
    pki: Path
    apiserver_pid: int | None


def _group(index: int, groups: int) -> str:
    return f"g{index % groups:03d}"


async def _ensure_crd(api: KubeApi) -> None:
    crd = yaml.safe_load((REPO / "crds" / "connectionstats.yaml").read_text())
    with contextlib.suppress(KubeApiError):
        await api.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
    path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd['metadata']['name']}"
    for _ in range(300):
        conditions = ((await api.get(path)).get("status") or {}).get("conditions") or []
        if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
            return
        await asyncio.sleep(0.2)
    raise BenchmarkError("the ConnectionStats CRD was not established")


async def _fresh_namespace(api: KubeApi, name: str) -> None:
    with contextlib.suppress(KubeApiError):
        await api.create("/api/v1/namespaces", {"metadata": {"name": name}})
    for _ in range(600):
        with contextlib.suppress(KubeApiError):
            await api.get(f"/api/v1/namespaces/{name}/serviceaccounts/default")
            return
        await asyncio.sleep(0.1)
    raise BenchmarkError(f"namespace {name} has no default ServiceAccount")


async def _until_reporting(
    operator: OperatorRun, session: aiohttp.ClientSession, pods: int, timeout: float
) -> float:
    """Seconds from the operator's start until its /stats follows exactly ``pods``, reporting.

    ``/stats`` walks every followed pod (tens of ms at 10,000): polled every 0.25 s up to 1,000
    pods, every second beyond, so that the measurement does not load the operator measured."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    interval = 0.25 if pods <= 1000 else 1.0
    while time.monotonic() < deadline:
        last = (await operator.stats(session)).get("pods") or {}
        if last.get("reporting") == pods and last.get("followed") == pods:
            return time.monotonic() - operator.started_at
        await asyncio.sleep(interval)
    raise BenchmarkError(f"operator not converged on {pods} pods in {timeout:.0f}s: {last}")


async def _until_statuses(api: KubeApi, namespace: str, pods: int, timeout: float) -> None:
    """Until every status shows all its matched pods reporting, ``pods`` reporting in all."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = (await api.get(connection_stats_path(namespace)))["items"]
        counts = [((i.get("status") or {}).get("pods") or {}) for i in items]
        if (
            counts
            and all(c.get("reporting") == c.get("matched") for c in counts)
            and sum(int(c.get("reporting") or 0) for c in counts) == pods
        ):
            return
        await asyncio.sleep(0.5)
    raise BenchmarkError(f"statuses in {namespace} did not show {pods} reporting pods")


def _freshness(results: list[ProbeResult]) -> dict[str, Any]:
    metrics = [r.metrics_api for r in results if r.metrics_api is not None]
    status = [r.status for r in results if r.status is not None]
    return {
        "probes": len(results),
        "metrics_api_p50": percentile(metrics, 0.5),
        "metrics_api_p99": percentile(metrics, 0.99),
        "metrics_api_max": max(metrics, default=float("nan")),
        "metrics_api_missed": len(results) - len(metrics),
        "status_p50": percentile(status, 0.5),
        "status_p99": percentile(status, 0.99),
        "status_max": max(status, default=float("nan")),
        "status_missed": len(results) - len(status),
    }


LABEL_GROUPS = 100
"""Pods carry one of this many group labels (``i % 100``); a layout of 100 CS uses them."""


async def run_fleet(
    ctx: Context, pods: int, layouts: list[int], settings: FleetBenchSettings
) -> dict[str, dict[str, Any]]:
    """One simulated fleet of ``pods`` pods, measured once per layout (ConnectionStats count).

    The pods are created once; per layout the ConnectionStats are created, a fresh operator is
    measured, then stopped and the ConnectionStats deleted."""
    api = ctx.api
    namespace = f"fleet-{pods}"
    spare = max(1, pods // 10)
    results: dict[str, dict[str, Any]] = {}
    rng = random.Random(7)
    await _fresh_namespace(api, namespace)
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    sim_settings = SimulatorSettings(
        namespace=namespace,
        node_name=f"fleet-sim-{pods}",
        work_dir=settings.log_dir / f"sim-{pods}",
        create_concurrency=48,
    )
    config = KubeConfig.load(ctx.kubeconfig, settings.log_dir / "kube")
    async with contextlib.AsyncExitStack() as stack:
        extra = [await stack.enter_async_context(KubeApi(config)) for _ in range(2)]
        sim = await stack.enter_async_context(FleetSimulator(api, sim_settings, extra))
        fleet: dict[str, Any] = {"pods": pods}
        try:
            LOG.warning("fleet %d: simulator endpoints", pods)
            started = time.monotonic()
            await sim.start_endpoints(pods + spare)
            fleet["endpoints_start_s"] = time.monotonic() - started
            await sim.start_node()
            await sim.set_counts({i: (rng.randint(0, 20), 0) for i in range(pods + spare)})
            LOG.warning("fleet %d: pod creation", pods)
            started = time.monotonic()
            await sim.create_pods({i: _group(i, LABEL_GROUPS) for i in range(pods)})
            fleet["pods_create_s"] = time.monotonic() - started
        except (BenchmarkError, KubeApiError, aiohttp.ClientError, OSError) as error:
            for groups in layouts:
                results[f"{pods}x{groups}"] = {
                    **fleet,
                    "groups": groups,
                    "error": f"setting up the fleet: {error}",
                }
            return results
        for groups in layouts:
            key = f"{pods}x{groups}"
            LOG.warning("fleet scenario %s ...", key)
            result = {**fleet, "groups": groups, "load_average_before": procstat.load_average()}
            result["commit"] = _commit()  # the operator's code as it is started
            result.update(await run_layout(ctx, sim, groups, settings, rng))
            result["load_average_after"] = procstat.load_average()
            results[key] = result
            LOG.warning("fleet scenario %s: %s", key, _summary(result))
            _merge(settings.results, {key: result})
    with contextlib.suppress(KubeApiError):
        await api.delete(f"/api/v1/namespaces/{namespace}")
    return results


def _cs_of(index: int, groups: int) -> str:
    return "cs-all" if groups == 1 else f"cs-{_group(index, LABEL_GROUPS)}"


async def run_layout(
    ctx: Context,
    sim: FleetSimulator,
    groups: int,
    settings: FleetBenchSettings,
    rng: random.Random,
) -> dict[str, Any]:
    """Measure one layout (1 CS over all pods, or one CS per group label) on a running fleet."""
    api, namespace = ctx.api, sim.settings.namespace
    pods = len(sim.pods)
    spare = max(1, pods // 10)
    rate = min(settings.max_rate, settings.rate_per_pod * pods)
    timeout = 120.0 + pods * 0.06
    result: dict[str, Any] = {"churn_rate": rate}
    operator = OperatorRun(
        ctx.kubeconfig, namespace, settings.log_dir / f"operator-{pods}x{groups}.log"
    )
    watch = StatusWatch(api, namespace)
    step = "ConnectionStats"
    async with (
        aiohttp.ClientSession() as session,
        MetricsApiClient(ctx.pki, operator.metrics_port) as metrics,
    ):
        try:
            names = (
                ["cs-all"] if groups == 1 else [f"cs-{_group(g, groups)}" for g in range(groups)]
            )
            for name in names:
                body = connection_stats_body(
                    namespace, name, node_name=sim.settings.node_name,
                    group=None if groups == 1 else name.removeprefix("cs-"),
                    port=sim.settings.port, status_interval=settings.status_interval,
                )  # fmt: skip
                await api.create(connection_stats_path(namespace), body)

            step = "operator start"
            LOG.warning("%dx%d: %s", pods, groups, step)
            await operator.start()
            await operator.wait_listening(timeout)
            result["start_listening_s"] = time.monotonic() - operator.started_at
            result["start_reporting_s"] = await _until_reporting(operator, session, pods, timeout)
            await _until_statuses(api, namespace, pods, timeout)
            result["start_status_s"] = time.monotonic() - operator.started_at

            step = "steady state"
            LOG.warning("%dx%d: %s", pods, groups, step)
            await sim.churn(rate)
            await asyncio.sleep(5.0)
            window = CostWindow([operator.pid], api, ctx.server, ctx.apiserver_pid)
            await window.begin()
            await asyncio.sleep(settings.steady_seconds)
            result["steady"] = await window.end()

            step = "freshness"
            LOG.warning("%dx%d: %s", pods, groups, step)
            watch.start()
            await asyncio.sleep(1.0)
            probes: list[ProbeResult] = []
            live = sorted(sim.pods)
            for _ in range(settings.probes):
                index = rng.choice(live)
                name = _cs_of(index, groups)
                expected = 1 + sum(
                    sim.probe_counts.get(i, 0) for i in sim.pods if _cs_of(i, groups) == name
                )
                probes.append(
                    await probe_freshness(
                        sim, metrics, watch, index=index, cs_name=name,
                        group_probe_total=expected,
                    )
                )  # fmt: skip
                await asyncio.sleep(rng.uniform(0.05, 0.3))
            result["freshness"] = _freshness(probes)
            result["freshness_samples"] = [[p.metrics_api, p.status] for p in probes]
            result["status_watch_events"] = watch.events

            step = "pod churn"
            LOG.warning("%dx%d: %s", pods, groups, step)
            window = CostWindow([operator.pid], api, ctx.server, ctx.apiserver_pid)
            await window.begin()
            removed = rng.sample(sorted(sim.pods), spare)
            added = [i for i in range(pods + spare) if i not in sim.pods][:spare]
            started = time.monotonic()
            await asyncio.gather(
                sim.delete_pods(removed),
                sim.create_pods({i: _group(i, LABEL_GROUPS) for i in added}),
            )
            result["pod_churn_api_s"] = time.monotonic() - started
            await _until_reporting(operator, session, pods, timeout)
            result["pod_churn_converged_s"] = time.monotonic() - started
            result["pod_churn"] = await window.end()

            step = "object size"
            items = (await api.get(connection_stats_path(namespace)))["items"]
            result["cs_bytes_max"] = max(object_size(i) for i in items)
            result["cs_status_bytes_max"] = max(object_size(i.get("status") or {}) for i in items)

            step = "restart"
            LOG.warning("%dx%d: %s", pods, groups, step)
            await operator.stop()
            await operator.start()
            window = CostWindow([operator.pid], api, ctx.server, ctx.apiserver_pid)
            await window.begin()
            await operator.wait_listening(timeout)
            result["restart_listening_s"] = time.monotonic() - operator.started_at
            result["restart_reporting_s"] = await _until_reporting(operator, session, pods, timeout)
            await asyncio.sleep(5.0)
            result["restart"] = await window.end()
        except (BenchmarkError, KubeApiError, aiohttp.ClientError, OSError, TimeoutError) as error:
            result["error"] = f"{step}: {error}"
            LOG.error("layout %dx%d failed at %s: %s", pods, groups, step, error)
        finally:
            await watch.stop()
            with contextlib.suppress(BenchmarkError, OSError):
                await sim.churn(0.0)
            await operator.stop()
            with contextlib.suppress(KubeApiError):
                await api.request("DELETE", connection_stats_path(namespace))
    return result


def _cluster_env(settings: FleetBenchSettings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        WSGAUGE_CLUSTER_DIR=str(settings.cluster_dir),
        WSGAUGE_APISERVER_PORT=str(settings.apiserver_port),
        WSGAUGE_ETCD_PORT=str(settings.etcd_port),
        WSGAUGE_POD_IP_BASE="180",
        WSGAUGE_NODES="1",
        WSGAUGE_NODE_KIND="pod-runner",  # simulated pods only; no root, no second kubelet
    )
    env.pop("KUBECONFIG", None)
    return env


def _devcluster(settings: FleetBenchSettings, *args: str) -> str:
    command = [str(Path(sys.executable).parent / "wsgauge-devcluster"), *args]
    done = subprocess.run(
        command, env=_cluster_env(settings), capture_output=True, text=True, check=False,
        timeout=300,
    )  # fmt: skip
    if done.returncode != 0:
        raise BenchmarkError(f"wsgauge-devcluster {' '.join(args)} failed: {done.stderr[-2000:]}")
    return done.stdout


async def run(settings: FleetBenchSettings) -> dict[str, Any]:
    """Run every scenario; merge the results into the results file; return them."""
    own = settings.kubeconfig is None
    if own:
        _devcluster(settings, "up")
        kubeconfig = settings.cluster_dir / "kubeconfig"
    else:
        assert settings.kubeconfig is not None
        kubeconfig = settings.kubeconfig
    pid_file = kubeconfig.parent / "run" / "kube-apiserver.pid"
    apiserver_pid = int(pid_file.read_text().strip()) if pid_file.exists() else None
    config = KubeConfig.load(kubeconfig, settings.log_dir / "kube")
    fleets: dict[int, list[int]] = {size: [1] for size in settings.sizes}
    if settings.multi:
        fleets.setdefault(10000, []).insert(0, 100)
    results: dict[str, Any] = {}
    try:
        async with KubeApi(config) as api:
            ctx = Context(api, config.server, kubeconfig, kubeconfig.parent / "pki", apiserver_pid)
            await _ensure_crd(api)
            for pods in sorted(fleets):
                results.update(await run_fleet(ctx, pods, fleets[pods], settings))
    finally:
        if own and not settings.keep_cluster:
            _devcluster(settings, "down", "--purge")
    return results


def _summary(result: dict[str, Any]) -> str:
    fresh = result.get("freshness", {})
    steady = result.get("steady", {})
    return (
        f"start {result.get('start_reporting_s', float('nan')):.1f}s, metrics API p50/p99 "
        f"{fresh.get('metrics_api_p50', float('nan')):.3f}/"
        f"{fresh.get('metrics_api_p99', float('nan')):.3f}s, status p50/p99 "
        f"{fresh.get('status_p50', float('nan')):.2f}/"
        f"{fresh.get('status_p99', float('nan')):.2f}s, "
        f"{steady.get('cores', float('nan')):.2f} cores, "
        f"{steady.get('rss_mib_max', float('nan')):.0f} MiB, error={result.get('error')}"
    )


def _commit() -> str:
    """HEAD, with ``+dirty`` when the operator's sources differ from it (work in progress)."""
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "operator/"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    return f"{head}+dirty" if dirty else head


def _merge(path: Path, new: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    merged: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    merged.update(new)
    path.write_text(json.dumps(merged, indent=1, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> None:
    """Command line: run the scenarios, then render the report (tables and plots)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default="100,1000,10000", help="fleet sizes, one CS each")
    parser.add_argument("--multi", action=argparse.BooleanOptionalAction, default=True,
                        help="also 100 ConnectionStats x 100 pods")  # fmt: skip
    parser.add_argument("--rate", type=float, default=0.1, help="changes per pod per second")
    parser.add_argument("--probes", type=int, default=25)
    parser.add_argument("--steady-seconds", type=float, default=20.0)
    parser.add_argument("--kubeconfig", type=Path, default=None, help="use this cluster")
    parser.add_argument("--keep-cluster", action="store_true")
    parser.add_argument("--report-only", action="store_true", help="only render the report")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    settings = FleetBenchSettings(
        sizes=tuple(int(s) for s in args.sizes.split(",") if s.strip()),
        multi=args.multi,
        rate_per_pod=args.rate,
        probes=args.probes,
        steady_seconds=args.steady_seconds,
        kubeconfig=args.kubeconfig,
        keep_cluster=args.keep_cluster,
    )
    if not args.report_only:
        asyncio.run(run(settings))
    fleet_report.render(settings.results)


if __name__ == "__main__":
    main()
