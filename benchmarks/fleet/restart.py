"""Restart experiment: the operator stopped and started again on an existing fleet of any shape.

``python -m benchmarks.fleet.restart --shape 30x100 --kubeconfig KUBECONFIG [--pod-churn]``

A lean companion of :mod:`benchmarks.fleet.bench` for finding what makes a restart slow: C
ConnectionStats of P pods each (C*P simulated sidecars and pods in one namespace), the operator
started and waited for until it follows and reports every pod (with ``--pod-churn`` then 10 %
of the pods replaced at once, timed until it follows exactly the new set), then SIGTERM and a
new process; the followed/reporting counts of the new process are printed every second until
it converges (or the timeout), with the time and the operator's pid, so that py-spy can be
attached meanwhile (``--hold`` keeps the operator running afterwards). Nothing is written to
the results file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import aiohttp
from wsgauge_devcluster.exceptions import KubeApiError
from wsgauge_devcluster.kubeapi import KubeApi, KubeConfig

from benchmarks.exceptions import BenchmarkError
from benchmarks.fleet.bench import _ensure_crd, _fresh_namespace, _group
from benchmarks.fleet.operator_run import OperatorRun
from benchmarks.fleet.simulator import (
    FleetSimulator,
    SimulatorSettings,
    connection_stats_body,
    connection_stats_path,
)

LOG = logging.getLogger("wsgauge.bench.fleet.restart")


def parse_shape(text: str) -> tuple[int, int]:
    """``"30x100"`` -> (30 ConnectionStats, 100 pods each)."""
    groups, _, per_group = text.lower().partition("x")
    try:
        shape = (int(groups), int(per_group))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"shape must be CxP, e.g. 30x100: {text!r}") from error
    if shape[0] < 1 or shape[1] < 1:
        raise argparse.ArgumentTypeError(f"shape must be positive: {text!r}")
    return shape


async def _until_all_reporting(
    operator: OperatorRun,
    session: aiohttp.ClientSession,
    pods: int,
    timeout: float,
    *,
    since: float,
    label: str,
) -> float | None:
    """Print progress every second; seconds from ``since`` until exactly ``pods`` are followed
    and reporting (``None``: not within ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = (await operator.stats(session)).get("pods") or {}
        print(
            f"{label} t={time.monotonic() - since:6.1f}s followed={counts.get('followed')} "
            f"reporting={counts.get('reporting')}",
            flush=True,
        )
        if counts.get("reporting") == pods and counts.get("followed") == pods:
            return time.monotonic() - since
        await asyncio.sleep(1.0)
    return None


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Set up the fleet, start, restart; return the measured times."""
    groups, per_group = args.shape
    pods = groups * per_group
    namespace = f"restart-{groups}x{per_group}"
    log_dir = Path(args.log_dir)
    await asyncio.to_thread(log_dir.mkdir, parents=True, exist_ok=True)
    config = KubeConfig.load(args.kubeconfig, log_dir / "kube")
    result: dict[str, Any] = {"shape": f"{groups}x{per_group}", "pods": pods}
    rng = random.Random(7)
    async with contextlib.AsyncExitStack() as stack:
        api = await stack.enter_async_context(KubeApi(config))
        extra = [await stack.enter_async_context(KubeApi(config)) for _ in range(2)]
        await _ensure_crd(api)
        await _fresh_namespace(api, namespace)
        sim_settings = SimulatorSettings(
            namespace=namespace,
            node_name=f"restart-sim-{groups}x{per_group}",
            ip_base=args.ip_base,
            work_dir=log_dir / f"sim-{namespace}",
            create_concurrency=48,
        )
        sim = await stack.enter_async_context(FleetSimulator(api, sim_settings, extra))
        spare = max(1, pods // 10) if args.pod_churn else 0
        await sim.start_endpoints(pods + spare)
        await sim.start_node()
        await sim.set_counts({i: (rng.randint(0, 20), 0) for i in range(pods + spare)})
        started = time.monotonic()
        await sim.create_pods({i: _group(i, groups) for i in range(pods)})
        result["pods_create_s"] = round(time.monotonic() - started, 1)
        for group in range(groups):
            body = connection_stats_body(
                namespace, f"cs-{_group(group, groups)}", node_name=sim_settings.node_name,
                group=_group(group, groups), port=sim_settings.port,
            )  # fmt: skip
            await api.create(connection_stats_path(namespace), body)
        operator = OperatorRun(args.kubeconfig, namespace, log_dir / f"operator-{namespace}.log")
        async with aiohttp.ClientSession() as session:
            try:
                await operator.start()
                print(f"operator pid {operator.pid}", flush=True)
                await operator.wait_listening(60)
                result["start_s"] = await _until_all_reporting(
                    operator, session, pods, args.timeout, since=operator.started_at, label="start"
                )
                await sim.churn(min(1000.0, args.rate * pods))
                await asyncio.sleep(args.settle)
                if spare:  # 10 % of the pods replaced at once, as in the fleet benchmark
                    removed = rng.sample(sorted(sim.pods), spare)
                    started = time.monotonic()
                    await asyncio.gather(
                        sim.delete_pods(removed),
                        sim.create_pods({i: _group(i, groups) for i in range(pods, pods + spare)}),
                    )
                    result["pod_churn_api_s"] = round(time.monotonic() - started, 1)
                    result["pod_churn_s"] = await _until_all_reporting(
                        operator, session, pods, args.timeout, since=started, label="churn"
                    )
                await operator.stop()
                await operator.start()
                print(f"operator pid {operator.pid} (restart)", flush=True)
                await operator.wait_listening(60)
                result["restart_s"] = await _until_all_reporting(
                    operator,
                    session,
                    pods,
                    args.timeout,
                    since=operator.started_at,
                    label="restart",
                )
                if args.hold:
                    await asyncio.sleep(args.hold)
            finally:
                with contextlib.suppress(BenchmarkError, OSError):
                    await sim.churn(0.0)
                await operator.stop()
                with contextlib.suppress(KubeApiError):
                    await api.request("DELETE", connection_stats_path(namespace))
        with contextlib.suppress(KubeApiError):
            await api.delete(f"/api/v1/namespaces/{namespace}")
    return result


def main(argv: list[str] | None = None) -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--shape", type=parse_shape, default=(30, 100), help="CxP, e.g. 30x100")
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--ip-base", type=int, default=210, help="second octet of the endpoints")
    parser.add_argument("--rate", type=float, default=0.1, help="changes per pod per second")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds before the restart")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument(
        "--pod-churn", action="store_true", help="replace 10 %% of the pods before the restart"
    )
    parser.add_argument("--hold", type=float, default=0.0, help="keep running after the restart")
    parser.add_argument("--log-dir", default="/tmp/wsgauge-fleet-restart-logs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    print(json.dumps(asyncio.run(run(args))), flush=True)


if __name__ == "__main__":
    main()
