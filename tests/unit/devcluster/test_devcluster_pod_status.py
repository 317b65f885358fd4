"""Unit tests of the pod status the runner publishes: owned conditions only, readiness gates
read from the pod, phase from the containers."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import aiohttp
from wsgauge_devcluster.podrunner import OWNED_CONDITIONS, PodRunner, PodWorker
from wsgauge_devcluster.settings import RunnerSettings
from wsgauge_devcluster.supervisor import ContainerRuntime


def _pod(conditions: list[dict[str, str]], gates: list[str]) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "n", "uid": "u1"},
        "spec": {
            "nodeName": "wsgauge-node-1",
            "readinessGates": [{"conditionType": g} for g in gates],
            "containers": [{"name": "c", "image": "nginx"}],
        },
        "status": {"conditions": conditions},
    }


async def _worker(tmp_path: Path, pod: dict[str, Any]) -> PodWorker:
    settings = RunnerSettings(state_dir=tmp_path, node_count=2, ip_second_octet_base=100)
    runner = PodRunner(settings, tmp_path / "kubeconfig", "v1.37.2")
    node = runner.nodes["wsgauge-node-1"]
    worker = PodWorker(runner, pod, node, node.allocate("u1"))
    async with aiohttp.ClientSession() as session:
        container = ContainerRuntime(
            name="c",
            image="nginx",
            plan=None,
            probe=None,
            pod_ip=worker.pod_ip,
            pod_dir=tmp_path,
            restart_policy="Always",
            notify=lambda: None,
            probe_session=session,
            backoff_max=1.0,
            logger=logging.getLogger("test"),
        )
        container.start()
        worker.containers.append(container)
    return worker


def _by_type(status: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in status["conditions"]}


async def test_ready_waits_for_readiness_gates_and_never_writes_them(tmp_path: Path) -> None:
    worker = await _worker(tmp_path, _pod([], ["wsgauge.dev/steer"]))
    status = worker.desired_status()
    conditions = _by_type(status)
    assert set(conditions) == set(OWNED_CONDITIONS)
    assert conditions["ContainersReady"] == "True"
    assert conditions["Ready"] == "False"
    assert status["phase"] == "Running"
    assert status["podIP"] == "127.101.0.2" == status["podIPs"][0]["ip"]
    assert status["hostIP"] == "127.101.0.1"
    assert status["containerStatuses"][0]["state"]["running"] is not None
    assert status["containerStatuses"][0]["state"]["waiting"] is None  # replaces old state

    worker.update(_pod([{"type": "wsgauge.dev/steer", "status": "True"}], ["wsgauge.dev/steer"]))
    conditions = _by_type(worker.desired_status())
    assert conditions["Ready"] == "True"
    assert "wsgauge.dev/steer" not in conditions


async def test_transition_time_kept_while_status_unchanged(tmp_path: Path) -> None:
    earlier = "2020-01-01T00:00:00Z"
    pod = _pod([{"type": "Ready", "status": "True", "lastTransitionTime": earlier}], [])
    worker = await _worker(tmp_path, pod)
    ready = next(c for c in worker.desired_status()["conditions"] if c["type"] == "Ready")
    assert ready["lastTransitionTime"] == earlier
    worker.containers[0].ready = False
    ready = next(c for c in worker.desired_status()["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False"
    assert ready["lastTransitionTime"] != earlier
