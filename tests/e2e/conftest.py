"""Fixtures of the end-to-end tests: ``release``, wsgauge installed by its chart."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from apiservice_lock import custom_metrics_apiservice_lock
from wsgauge_devcluster.deploy import ChartInstall
from wsgauge_devcluster.images import image_tag
from wsgauge_devcluster.testing import KubeCluster


@pytest.fixture(scope="module")
def release(kube: KubeCluster) -> Iterator[ChartInstall]:
    """wsgauge installed by `helm upgrade --install` with the local images, for one module;
    uninstalled after it. Holds the custom metrics APIService lock meanwhile."""
    install = ChartInstall(
        kubeconfig=kube.kubeconfig,
        bin_dir=kube.bin_dir,
        image_tag=image_tag(),
        values=("operator.statusInterval=1s",),
    )
    with custom_metrics_apiservice_lock():
        install.install(print)
        try:
            yield install
        finally:
            install.uninstall(print)
