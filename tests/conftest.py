"""Shared fixtures: `kube` (a real Kubernetes cluster for the whole session) and `namespace`
(a fresh namespace per test).

`kube` reuses the cluster named by $KUBECONFIG when that is set (our devcluster or any other, e.g.
kind); otherwise it runs `wsgauge-devcluster up` (state in <repo>/.cluster or $WSGAUGE_CLUSTER_DIR),
and, if it had to start the cluster, stops it again at the end of the session (etcd data is kept,
so the next start is warm) unless WSGAUGE_KEEP_CLUSTER=1 or another pytest session still uses it
(sessions register their pid under <state_dir>/sessions/).
Tests that use `kube` automatically get the `cluster` marker (deselect with -m "not cluster").

On our devcluster, a wsgauge release that `make demo` or `make deploy` left installed is
uninstalled first (said on the terminal): its cluster-wide operator would act on the test
namespaces beside the operators the tests run themselves.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from wsgauge_devcluster.binaries import locate
from wsgauge_devcluster.processes import pid_alive
from wsgauge_devcluster.testing import KubeCluster, eventually

REPO = Path(__file__).resolve().parents[1]
DEVCLUSTER = [sys.executable, "-m", "wsgauge_devcluster.cli"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "kube" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)


def _exports(output: str) -> dict[str, str]:
    found = dict(re.findall(r"^export (\w+)=(.*)$", output, flags=re.MULTILINE))
    return found


@pytest.fixture(scope="session")
def kube() -> Iterator[KubeCluster]:
    """The cluster for this test session (see the module docstring)."""
    binaries = locate()
    given = os.environ.get("KUBECONFIG")
    if given:
        kubeconfig = Path(given).resolve()
        state_dir = kubeconfig.parent if (kubeconfig.parent / "run").is_dir() else None
        yield KubeCluster(kubeconfig, binaries.bin_dir, state_dir, binaries.kubernetes_version)
        return
    missing = binaries.missing()
    if missing:
        pytest.fail(
            f"Kubernetes binaries missing ({', '.join(missing)}): run `make k8s-bins` "
            "(hack/build-k8s.sh) first",
            pytrace=False,
        )
    status = subprocess.run([*DEVCLUSTER, "status"], capture_output=True, text=True, check=False)
    was_running = status.returncode == 0
    # `up` may first wait WSGAUGE_NODE_WAIT seconds for another checkout's real node to stop
    wait = float(os.environ.get("WSGAUGE_NODE_WAIT") or 0)
    result = subprocess.run(
        [*DEVCLUSTER, "up"], capture_output=True, text=True, check=False, timeout=300 + wait
    )
    if result.returncode != 0:
        pytest.fail(f"wsgauge-devcluster up failed:\n{result.stderr}", pytrace=False)
    kubeconfig = Path(_exports(result.stdout)["KUBECONFIG"])
    cluster = KubeCluster(
        kubeconfig, binaries.bin_dir, kubeconfig.parent, binaries.kubernetes_version
    )
    _uninstall_left_releases(cluster)
    sessions = kubeconfig.parent / "sessions"
    sessions.mkdir(exist_ok=True)
    mine = sessions / str(os.getpid())
    mine.touch()
    try:
        yield cluster
    finally:
        mine.unlink(missing_ok=True)
        others = [p for p in sessions.iterdir() if p.name.isdigit() and pid_alive(int(p.name))]
        if not was_running and not others and os.environ.get("WSGAUGE_KEEP_CLUSTER") != "1":
            subprocess.run([*DEVCLUSTER, "down"], capture_output=True, check=False, timeout=120)


def _uninstall_left_releases(cluster: KubeCluster) -> None:
    """Uninstall every release of the wsgauge chart found on the cluster (see the docstring)."""
    # --all: also releases left pending (an install cut off by a timeout blocks the next one)
    helm = [str(cluster.helm_path), "list", "--all", "--all-namespaces", "--output", "json"]
    listing = subprocess.run(helm, capture_output=True, text=True, env=cluster.env, check=False)
    if listing.returncode != 0:
        pytest.fail(f"helm list failed: {listing.stderr}", pytrace=False)
    for release in json.loads(listing.stdout or "[]"):
        if not str(release.get("chart", "")).startswith("wsgauge-"):
            continue
        name, namespace = release["name"], release["namespace"]
        print(f"\nuninstalling release {name} in {namespace} (left by make demo/deploy)")
        subprocess.run(
            [str(cluster.helm_path), "uninstall", name, "-n", namespace, "--wait"],
            capture_output=True,
            env=cluster.env,
            timeout=180,
            check=False,
        )


@pytest.fixture
def kubectl(kube: KubeCluster) -> Path:
    """Path of kubectl (use with kube.env, or call kube.kubectl(...))."""
    return kube.kubectl_path


@pytest.fixture
def helm(kube: KubeCluster) -> Path:
    """Path of helm (use with kube.env)."""
    return kube.helm_path


@pytest.fixture
def namespace(kube: KubeCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace (with its default ServiceAccount ready), deleted after the test."""
    stem = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"t-{stem}-{uuid.uuid4().hex[:6]}"
    kube.kubectl("create", "namespace", name)
    eventually(
        lambda: (
            kube.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode
            == 0
        ),
        timeout=60,
        what=f"default ServiceAccount in {name}",
    )
    try:
        yield name
    finally:
        kube.kubectl("delete", "namespace", name, "--wait=false", check=False)
