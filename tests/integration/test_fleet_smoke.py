"""Small fleet simulation (200 pods) against the real operator on the session cluster.

Keeps the fleet benchmark's machinery working (``benchmarks/fleet``): 200 simulated sidecars
(the sidecar's own admin server code) in two worker processes on loopback addresses
127.240.x.y, 200 pod objects on a simulated node, the real ``wsgauge-operator`` process with its
metrics API. Asserts that the ConnectionStats status and the metrics API (queried directly with the
aggregator's front-proxy certificate) equal the sum of the synthetic counts, follow changes and
background churn, and that the simulator leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from wsgauge_devcluster.exceptions import KubeApiError
from wsgauge_devcluster.kubeapi import KubeApi, KubeConfig
from wsgauge_devcluster.testing import KubeCluster

from benchmarks.fleet.operator_run import MetricsApiClient, OperatorRun
from benchmarks.fleet.simulator import (
    POD_LABEL,
    FleetSimulator,
    SimulatorSettings,
    connection_stats_body,
    connection_stats_path,
    endpoint_ip,
)

REPO = Path(__file__).resolve().parents[2]
SIZE = 200


async def _until(
    read: Callable[[], Any], accept: Callable[[Any], bool], what: str, timeout: float = 45.0
) -> Any:
    """Await read() until accept(value); AssertionError with the last value (bounded)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await read()
        if accept(last):
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def _listening(ip: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((ip, port)) == 0


async def test_fleet_simulator_feeds_the_operator_and_cleans_up(
    kube: KubeCluster, namespace: str, tmp_path: Path
) -> None:
    kube.kubectl("apply", "-f", str(REPO / "crds" / "connectionstats.yaml"))
    kube.kubectl(
        "wait", "--for=condition=Established", "crd/connectionstats.wsgauge.dev", "--timeout=60s"
    )
    port = random.randint(30000, 39999)
    node_name = f"fleet-{namespace}"[:63]
    settings = SimulatorSettings(
        namespace=namespace,
        node_name=node_name,
        ip_base=240,
        port=port,
        per_process=100,
        heartbeat=1.0,
        work_dir=tmp_path / "sim",
    )
    config = KubeConfig.load(Path(kube.kubeconfig), tmp_path / "kube")
    operator = OperatorRun(
        Path(kube.kubeconfig), namespace, tmp_path / "operator.log",
        "--status-interval", "500ms", "--min-status-interval", "200ms",
    )  # fmt: skip
    cs_path = connection_stats_path(namespace, "fleet")
    async with KubeApi(config) as api:
        simulator = FleetSimulator(api, settings)
        try:
            await simulator.start_endpoints(SIZE)
            assert len(simulator.worker_pids()) == 2
            await simulator.start_node()
            await simulator.set_counts({i: (i % 7, 0) for i in range(SIZE)})
            await simulator.create_pods({i: "g0" for i in range(SIZE)})
            await api.create(
                connection_stats_path(namespace),
                connection_stats_body(
                    namespace,
                    "fleet",
                    node_name=node_name,
                    group="g0",
                    port=port,
                    status_interval="500ms",
                ),
            )
            await operator.start()
            await operator.wait_listening()

            async def status() -> dict[str, Any]:
                return dict((await api.get(cs_path)).get("status") or {})

            expected = sum(i % 7 for i in range(SIZE))
            first = await _until(
                status,
                lambda s: (
                    s.get("connections") == expected
                    and (s.get("pods") or {}).get("reporting") == SIZE
                ),
                f"status with {expected} connections from {SIZE} pods",
            )
            assert first["topics"] == {"bg": expected}
            pki = Path(kube.kubeconfig).parent / "pki"
            async with MetricsApiClient(pki, operator.metrics_port) as metrics:
                assert await metrics.object_value(namespace, "fleet") == expected
                per_pod = await metrics.pods_values(namespace, f"{POD_LABEL}={node_name}")
                assert per_pod is not None
                assert len(per_pod) == SIZE
                assert per_pod[simulator.pod_name(13)] == 13 % 7
                assert sum(per_pod.values()) == expected

                # counts change: +3 bg and one probe socket on every tenth pod
                changed = {i: (i % 7 + 3, 1) for i in range(0, SIZE, 10)}
                await simulator.set_counts(changed)
                expected += len(changed) * 4
                second = await _until(
                    status,
                    lambda s: s.get("connections") == expected,
                    f"status following the change to {expected}",
                )
                assert second["topics"]["probe"] == len(changed)
                await _until(
                    lambda: metrics.pod_value(namespace, simulator.pod_name(10), "probe"),
                    lambda v: v == 1,
                    "metrics API per-topic value of the probed pod",
                )
                assert await metrics.object_value(namespace, "fleet") == expected

                # bounded background churn, then compare with the simulator's own totals
                await simulator.churn(400.0, seed=7)
                await asyncio.sleep(1.5)
                await simulator.churn(0.0)
                now = await simulator.counts()
                moved = [i for i in range(SIZE) if now[i][0] != simulator.bg[i]]
                assert len(moved) > 10, "the background churn changed (almost) nothing"
                bg = sum(b for b, _ in now.values())
                probe = sum(p for _, p in now.values())
                await _until(
                    status,
                    lambda s: s.get("connections") == bg + probe,
                    f"status after churn ({bg + probe})",
                )
                await _until(
                    lambda: metrics.object_value(namespace, "fleet"),
                    lambda v: v == bg + probe,
                    "metrics API after churn",
                )

                # pods removed: the status counts only the remaining ones
                await simulator.delete_pods(list(range(150, SIZE)))
                bg_left, probe_left = await simulator.totals()
                await _until(
                    status,
                    lambda s: (
                        s.get("connections") == bg_left + probe_left
                        and (s.get("pods") or {}).get("reporting") == 150
                    ),
                    "status without the deleted pods",
                )
        finally:
            await operator.stop()
            await simulator.close()

        # the simulator cleans up: pods, node, lease, processes, listening sockets
        left = await api.get(
            f"/api/v1/namespaces/{namespace}/pods", {"labelSelector": f"{POD_LABEL}={node_name}"}
        )
        assert left["items"] == []
        for path in (
            f"/api/v1/nodes/{node_name}",
            f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node_name}",
        ):
            with pytest.raises(KubeApiError) as gone:
                await api.get(path)
            assert gone.value.status == 404, f"{path} still exists after close()"
        assert simulator.workers == []
        assert not _listening(endpoint_ip(240, 0), port)
        assert not _listening(endpoint_ip(240, SIZE - 1), port)
