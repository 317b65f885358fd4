"""kube-apiserver restarted, and etcd restarted, while clients come and go.

These run on a DEDICATED devcluster (own state dir under tmp, own ports, own pod IP base; taken
down with ``--purge`` at the end), never on the shared session cluster: they stop control-plane
components. A component is stopped through the devcluster's own ``ControlPlane.process(name)``
(SIGTERM, SIGKILL after 10 s) and brought back with ``ControlPlane.up`` (which starts only what
is not running).

While the component is down, sockets open and close through the sidecars (pods are reached by
IP, not through the API): the operator's memory, the custom metrics API and the KEDA endpoint
keep answering, fresh (the sidecar streams do not go through the API server; the etcd outage
outlasts the 30 s staleness bound), and equal to what the clients hold. After the restart the
operator's watches reconnect: the status catches up, and a new pod is followed and gated Ready
(which needs the pod watch).
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fault_harness import assert_counts_agree, fault_rig
from operator_it_cluster_helpers import ready_pods
from operator_it_harness import free_port
from wsgauge_devcluster.binaries import locate
from wsgauge_devcluster.controlplane import ControlPlane
from wsgauge_devcluster.settings import ControlPlaneSettings, NodeSettings, RunnerSettings
from wsgauge_devcluster.testing import KubeCluster, eventually

DEVCLUSTER = [sys.executable, "-m", "wsgauge_devcluster.cli"]
OUTAGE_SECONDS = {"kube-apiserver": 5.0, "etcd": 35.0}
"""How long the component stays down while clients come and go. The etcd outage is longer than
the metrics API's staleness bound (``max_metric_age``, 30 s): the values stay fresh because the
sidecars' streams, not the API server, confirm them."""


@dataclass(frozen=True)
class OwnCluster:
    """A devcluster of this module only."""

    kube: KubeCluster
    plane: ControlPlane


def _free_port_pair() -> int:
    """A port p with p and p+1 free (etcd client and peer)."""
    for _ in range(50):
        port = free_port()
        if port < 65535 and free_port_is(port + 1):
            return port
    raise AssertionError("no free port pair for etcd")


def free_port_is(port: int) -> bool:
    """Whether 127.0.0.1:port can be bound right now."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def own_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnCluster]:
    """Start a separate devcluster; ``down --purge`` it afterwards."""
    binaries = locate()
    if binaries.missing():
        pytest.fail("Kubernetes binaries missing: run `make k8s-bins`", pytrace=False)
    state = tmp_path_factory.mktemp("own-cluster")
    apiserver_port, etcd_port = free_port(), _free_port_pair()
    ip_base = 200 + os.getpid() % 50  # pod IPs 127.<base+1|2>.x.y, apart from the shared cluster
    env = dict(os.environ)
    env.update(
        WSGAUGE_CLUSTER_DIR=str(state),
        WSGAUGE_APISERVER_PORT=str(apiserver_port),
        WSGAUGE_ETCD_PORT=str(etcd_port),
        WSGAUGE_POD_IP_BASE=str(ip_base),
        WSGAUGE_NODE_KIND="pod-runner",  # one real node per machine: the shared cluster has it
    )
    env.pop("KUBECONFIG", None)
    try:
        result = subprocess.run(
            [*DEVCLUSTER, "up"], capture_output=True, text=True, env=env, timeout=180, check=False
        )
        if result.returncode != 0:
            pytest.fail(f"own devcluster up failed:\n{result.stderr}", pytrace=False)
        kubeconfig = Path(re.findall(r"^export KUBECONFIG=(.*)$", result.stdout, re.M)[0])
        plane = ControlPlane(
            ControlPlaneSettings(
                state_dir=state, apiserver_port=apiserver_port, etcd_client_port=etcd_port
            ),
            binaries,
            RunnerSettings(state_dir=state, ip_second_octet_base=ip_base),
            NodeSettings(kind="pod-runner"),  # as WSGAUGE_NODE_KIND above
        )
        yield OwnCluster(
            KubeCluster(kubeconfig, binaries.bin_dir, state, binaries.kubernetes_version), plane
        )
    finally:
        subprocess.run(
            [*DEVCLUSTER, "down", "--purge"], capture_output=True, env=env, timeout=180, check=False
        )


def _namespace(kube: KubeCluster) -> str:
    name = f"t-cp-{uuid.uuid4().hex[:6]}"
    kube.kubectl("create", "namespace", name)
    eventually(
        lambda: kube.kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0,
        timeout=60,
        what=f"default ServiceAccount in {name}",
    )
    return name


def _log(message: str) -> None:
    print(f"[own cluster] {message}")


@pytest.mark.timeout(240)
@pytest.mark.parametrize("component", ["kube-apiserver", "etcd"])
async def test_restart_while_clients_come_and_go(
    own_cluster: OwnCluster, component: str, tmp_path: Path
) -> None:
    kube, plane = own_cluster.kube, own_cluster.plane
    namespace = await asyncio.to_thread(_namespace, kube)
    async with fault_rig(kube, namespace, tmp_path, replicas=2) as rig:
        await rig.connect(20)
        await assert_counts_agree(rig, what="before the restart")

        await asyncio.to_thread(plane.process(component).stop, 10.0)
        assert plane.process(component).pid() is None
        try:
            await rig.connect(6)
            await rig.close_some(4)
            during = await assert_counts_agree(
                rig, api_down=True, timeout=20, what=f"{component} down"
            )
            assert during.total == 22
            code, keda = await rig.keda()
            assert code == 200
            assert keda["stale"] is False
            await asyncio.sleep(OUTAGE_SECONDS[component])
            await rig.close_some(2)
            during = await assert_counts_agree(
                rig, api_down=True, timeout=20, what=f"{component} still down"
            )
            assert during.total == 20
        finally:
            await asyncio.to_thread(plane.up, _log)

        after = await assert_counts_agree(rig, timeout=90, what=f"after the {component} restart")
        assert after.total == 20
        # The pod watch is back: a new pod is followed and gated Ready by the operator.
        await rig.kubectl("scale", "deployment/chat", "--replicas=3")
        pods = await asyncio.to_thread(ready_pods, kube, namespace, 3, 90.0)
        newest = max(pods, key=lambda p: p["metadata"]["creationTimestamp"])["metadata"]["name"]
        await rig.refresh_pool()
        await rig.connect(3, pod=newest)
        final = await assert_counts_agree(rig, what=f"new pod after the {component} restart")
        assert final.total == 23
        assert final.held[newest] == 3
