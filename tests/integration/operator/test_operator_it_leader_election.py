"""Two real operator processes (``wsgauge-operator --leader-elect true``) on the real control
plane, one ConnectionStats over real chat pods and real WebSocket clients: only the Lease holder
acts, a SIGKILLed leader is replaced once its Lease expires, a SIGTERMed leader hands over at
once (it releases the Lease) with its probe port open throughout, and a leader that loses its
Lease exits (status 3).

Short durations keep the test quick: lease 6 s, renew deadline 4 s, retry 0.5 s. Every wait is
bounded; nothing asserts how fast something happened.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_it_cluster_helpers import (
    OperatorProcess,
    chat_deployment,
    connection_stats,
    ready_pods,
    wait_status,
)
from operator_it_harness import Clients
from wsgauge_devcluster.testing import KubeCluster, eventually

DATA_PORT = 8080
LEASE = "wsgauge-operator"
LEASE_DURATION = 6.0
ELECTION_FLAGS = (
    "--leader-elect", "true",
    "--leader-election-lease-duration", f"{LEASE_DURATION:g}",
    "--leader-election-renew-deadline", "4",
    "--leader-election-retry-period", "500ms",
)  # fmt: skip
TAKEOVER_BOUND = LEASE_DURATION + 30.0
"""Generous bound on a takeover after a kill (lease duration plus a loaded machine's slack)."""


class Replicas:
    """Operator processes of one test, each named by its --instance (its Lease identity prefix)."""

    def __init__(self, kube: KubeCluster, namespace: str, tmp_path: Path) -> None:
        self.kube = kube
        self.namespace = namespace
        self.tmp_path = tmp_path
        self.running: dict[str, OperatorProcess] = {}
        self.logs: dict[str, Path] = {}

    def start(self, instance: str) -> OperatorProcess:
        log = self.tmp_path / f"{instance}-{len(self.logs)}.log"
        self.logs[f"{instance}-{len(self.logs)}"] = log
        process = OperatorProcess(
            self.kube,
            self.namespace,
            log,
            "--instance", instance,
            "--leader-election-namespace", self.namespace,
            *ELECTION_FLAGS,
        )  # fmt: skip
        self.running[instance] = process
        return process

    def stop_all(self) -> None:
        for process in self.running.values():
            process.stop()
        self.running.clear()
        for name, log in self.logs.items():
            print(f"--- {name}\n{log.read_text(errors='replace')[-4000:]}")


@pytest.fixture
def replicas(kube: KubeCluster, crd: str, namespace: str, tmp_path: Path) -> Iterator[Replicas]:
    handle = Replicas(kube, namespace, tmp_path)
    try:
        yield handle
    finally:
        handle.stop_all()


def lease_spec(kube: KubeCluster, namespace: str) -> dict[str, Any]:
    result = kube.kubectl("get", "lease", LEASE, "-n", namespace, "-o", "json", check=False)
    if result.returncode != 0:
        return {}
    return dict(json.loads(result.stdout).get("spec") or {})


def holder(kube: KubeCluster, namespace: str) -> str:
    return str(lease_spec(kube, namespace).get("holderIdentity") or "")


def wait_holder(kube: KubeCluster, namespace: str, instance: str, timeout: float) -> str:
    def held() -> str | None:
        h = holder(kube, namespace)
        return h if h.startswith(f"{instance}_") else None

    return eventually(
        held,
        timeout=timeout,
        interval=0.2,
        what=f"lease held by {instance}",
    )


def http_status(process: OperatorProcess, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{process.port}{path}", timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except urllib.error.URLError:
        return 0  # refused or timed out


def status_writes(process: OperatorProcess) -> float:
    return process.metric("wsgauge_operator_status_writes_total", result="ok")


def ip_of(pod: dict[str, Any]) -> str:
    return str(pod["status"]["podIP"])


async def test_only_the_leader_acts_and_a_standby_takes_over_after_kill_and_term(
    kube: KubeCluster, namespace: str, replicas: Replicas
) -> None:
    first = replicas.start("op-a")
    leader_a = wait_holder(kube, namespace, "op-a", timeout=30)
    second = replicas.start("op-b")
    eventually(
        lambda: f"waiting for lease {namespace}/{LEASE}, held by {leader_a}" in second.output(),
        timeout=30, what="op-b waits for op-a's lease",
    )  # fmt: skip
    # the standby is alive but not ready (Services route to the leader only) and runs nothing
    assert http_status(second, "/healthz") == 200
    assert http_status(second, "/readyz") == 503
    assert http_status(second, "/metrics") == 503
    assert http_status(first, "/readyz") == 200

    kube.apply(chat_deployment(namespace, replicas=2))
    kube.apply(connection_stats(namespace))
    one, two = ready_pods(kube, namespace, 2)  # gates opened by the leader
    clients = Clients()
    try:
        await clients.open(ip_of(one), DATA_PORT, "stream", 2)
        await clients.open(ip_of(two), DATA_PORT, "stream", 1)
        wait_status(kube, namespace, lambda s: s["connections"] == 3, "3 sockets (op-a)")
        assert status_writes(first) >= 1
        assert holder(kube, namespace) == leader_a
        assert "stats server listening" not in second.output()  # the controller never started
        assert "acquired lease" not in second.output()

        # SIGKILL the leader: nothing is released, op-b takes over once the lease expires
        assert first.process is not None
        first.process.kill()
        first.process = None
        assert holder(kube, namespace) == leader_a
        leader_b = wait_holder(kube, namespace, "op-b", timeout=TAKEOVER_BOUND)
        eventually(lambda: http_status(second, "/readyz") == 200, timeout=30, what="op-b ready")
        await clients.open(ip_of(two), DATA_PORT, "lobby", 2)
        wait_status(
            kube, namespace,
            lambda s: s["connections"] == 5 and s["topics"] == {"stream": 3, "lobby": 2},
            "5 sockets (op-b)",
        )  # fmt: skip
        assert status_writes(second) >= 1
        assert lease_spec(kube, namespace)["leaseTransitions"] >= 1

        # op-a comes back as a standby; SIGTERM op-b: it releases the lease on its way out
        third = replicas.start("op-a")
        eventually(lambda: f"held by {leader_b}" in third.output(), timeout=30, what="op-a standby")
        assert http_status(third, "/readyz") == 503
        second.stop()
        replicas.running.pop("op-b")
        assert "released lease" in second.output()
        # released, not expired: right after op-b exited, the lease no longer names it
        assert holder(kube, namespace) != leader_b
        wait_holder(kube, namespace, "op-a", timeout=TAKEOVER_BOUND)
        await clients.close(ip_of(one), DATA_PORT, "stream", 1)
        wait_status(kube, namespace, lambda s: s["connections"] == 4, "4 sockets (op-a again)")
        assert status_writes(third) >= 1
    finally:
        await clients.aclose()


def test_a_leader_that_loses_its_lease_exits(
    kube: KubeCluster, namespace: str, replicas: Replicas
) -> None:
    process = replicas.start("op-a")
    wait_holder(kube, namespace, "op-a", timeout=30)
    # someone else writes the Lease (as a newer leader would): the next renewal gets 409, the
    # re-read shows another holder, and the process stops at once
    kube.kubectl(
        "patch", "lease", LEASE, "-n", namespace, "--type=merge",
        "-p", json.dumps({"spec": {"holderIdentity": "intruder"}}),
    )  # fmt: skip
    assert process.process is not None
    returncode = process.process.popen.wait(timeout=30)
    assert returncode == 3
    assert "leadership lost" in process.output()
    assert "released lease" not in process.output()
    assert holder(kube, namespace) == "intruder"


def test_a_frozen_leader_is_replaced_and_exits_when_it_thaws(
    kube: KubeCluster, namespace: str, replicas: Replicas
) -> None:
    first = replicas.start("op-a")
    wait_holder(kube, namespace, "op-a", timeout=30)
    second = replicas.start("op-b")
    eventually(lambda: "held by op-a_" in second.output(), timeout=30, what="op-b standby")
    assert first.process is not None
    popen = first.process.popen
    popen.send_signal(signal.SIGSTOP)
    try:
        wait_holder(kube, namespace, "op-b", timeout=TAKEOVER_BOUND)
    finally:
        popen.send_signal(signal.SIGCONT)
    # its renewal deadline passed while frozen: it must stop rather than act beside op-b
    assert popen.wait(timeout=30) == 3
    assert "leadership lost" in first.output()
    assert holder(kube, namespace).startswith("op-b_")


def test_term_right_after_winning_still_releases_the_lease(
    kube: KubeCluster, namespace: str, replicas: Replicas
) -> None:
    process = replicas.start("op-a")
    wait_holder(kube, namespace, "op-a", timeout=30)
    # kopf is still starting: the signal must stop it gracefully, not kill the process
    assert process.process is not None
    process.process.popen.send_signal(signal.SIGTERM)
    assert process.process.popen.wait(timeout=60) == 0
    assert "released lease" in process.output()
    assert holder(kube, namespace) == ""


def test_a_deleted_lease_is_taken_back_by_its_leader(
    kube: KubeCluster, namespace: str, replicas: Replicas
) -> None:
    process = replicas.start("op-a")
    identity = wait_holder(kube, namespace, "op-a", timeout=30)
    eventually(lambda: http_status(process, "/readyz") == 200, timeout=30, what="op-a ready")
    kube.kubectl("delete", "lease", LEASE, "-n", namespace)
    # the next renewal re-creates it (the API server answers 201, not 200)
    eventually(lambda: holder(kube, namespace) == identity, timeout=30, what="lease re-created")
    assert process.process is not None
    assert process.process.popen.poll() is None
    assert "renewal loop failed" not in process.output()
    assert http_status(process, "/readyz") == 200


class PortProbe:
    """Connects to a port and GETs ``/readyz`` again and again in a thread, noting each answer."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.answers: list[tuple[float, int | str]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _once(self) -> int | str:
        try:
            connection = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        except OSError as error:
            return f"connect: {error!r}"
        with connection:
            connection.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            head = connection.recv(64)
        parts = head.split(b" ", 2)
        return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else f"answer {head!r}"

    def _run(self) -> None:
        while not self._done.is_set():
            self.answers.append((time.monotonic(), self._once()))
            time.sleep(0.02)

    def __enter__(self) -> PortProbe:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join(timeout=10)

    def last(self) -> int | str | None:
        return self.answers[-1][1] if self.answers else None


def test_the_probe_port_stays_open_across_a_hand_over(
    kube: KubeCluster, namespace: str, replicas: Replicas
) -> None:
    first = replicas.start("op-a")
    wait_holder(kube, namespace, "op-a", timeout=30)
    second = replicas.start("op-b")
    eventually(lambda: "held by op-a_" in second.output(), timeout=30, what="op-b standby")
    with PortProbe(second.port) as probe:
        eventually(lambda: probe.last() == 503, timeout=10, what="op-b answers as a standby")
        first.stop()  # releases the Lease: op-b takes over at its next look
        replicas.running.pop("op-a")
        wait_holder(kube, namespace, "op-b", timeout=TAKEOVER_BOUND)
        eventually(lambda: probe.last() == 200, timeout=60, what="op-b ready")
    answers = [answer for _, answer in probe.answers]
    # connected and answered every time: 503 (standby, then starting) until 200 (serving)
    assert not [a for a in answers if not isinstance(a, int)], answers
    first_ready = answers.index(200)
    assert set(answers[:first_ready]) == {503}
    assert set(answers[first_ready:]) == {200}
