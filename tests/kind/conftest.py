"""Fixtures of the kind tests: ``kube`` is a kind cluster of one control plane and two workers.

With ``KIND_KUBECONFIG`` naming an existing file (``make kind-e2e`` creates the cluster and
loads the images first) that cluster is used as it is. Otherwise the session creates it
(:mod:`wsgauge_devcluster.kindcluster`, node image built or found cached), loads this
checkout's images into its nodes, and deletes it at the end unless ``KIND_KEEP=1``.
These tests run only when ``WSGAUGE_KIND=1`` (``make kind-e2e`` sets it): a cold node image
takes long to build (README, "kind").
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from wsgauge_devcluster.deploy import ChartInstall
from wsgauge_devcluster.images import image_ref, image_tag, project_version
from wsgauge_devcluster.kindcluster import KindCluster, KindSettings
from wsgauge_devcluster.testing import KubeCluster

E2E = Path(__file__).resolve().parents[1] / "e2e"
if str(E2E) not in sys.path:  # the e2e helpers are reused, not copied
    sys.path.insert(0, str(E2E))

KIND_VERSION = "v1.37.2"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.environ.get("WSGAUGE_KIND") == "1":
        return
    skip = pytest.mark.skip(reason="kind tests run with WSGAUGE_KIND=1 (make kind-e2e)")
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(skip)


def wsgauge_images() -> list[str]:
    """The images the chart and the chat example run."""
    return [image_ref("operator"), image_ref("sidecar")]


@pytest.fixture(scope="session")
def kind_cluster() -> Iterator[KindCluster]:
    cluster = KindCluster(KindSettings(), print)
    given = os.environ.get("KIND_KUBECONFIG")
    if given and Path(given).is_file():
        yield cluster
        return
    cluster.up()
    try:
        cluster.load(wsgauge_images())
        cluster.alias(image_ref("sidecar"), project_version())
        yield cluster
    finally:
        if os.environ.get("KIND_KEEP") != "1":
            cluster.down()


@pytest.fixture(scope="session")
def kube(kind_cluster: KindCluster) -> KubeCluster:
    return KubeCluster(kind_cluster.settings.kubeconfig, kind_cluster.bin_dir, None, KIND_VERSION)


@pytest.fixture(scope="module")
def release(kube: KubeCluster) -> Iterator[ChartInstall]:
    """wsgauge installed by its chart with this checkout's images, for one module."""
    install = ChartInstall(
        kubeconfig=kube.kubeconfig,
        bin_dir=kube.bin_dir,
        image_tag=image_tag(),
        values=("operator.statusInterval=1s",),
    )
    install.install(print)
    try:
        yield install
    finally:
        install.uninstall(print)
