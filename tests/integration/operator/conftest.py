"""Fixtures of the operator integration tests: the CRD from crds/ and the operator subprocess."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from operator_it_cluster_helpers import CRD, OperatorProcess
from wsgauge_devcluster.testing import KubeCluster


@pytest.fixture(scope="session")
def crd(kube: KubeCluster) -> str:
    """The ConnectionStats CRD from crds/, installed and established."""
    kube.kubectl("apply", "-f", str(CRD))
    kube.kubectl(
        "wait", "--for=condition=Established", "crd/connectionstats.wsgauge.dev", "--timeout=60s"
    )
    return "connectionstats.wsgauge.dev"


@pytest.fixture
def operator(
    kube: KubeCluster, crd: str, namespace: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    """The operator, running for one test."""
    process = OperatorProcess(kube, namespace, tmp_path / "operator.log")
    try:
        yield process
    finally:
        process.stop()
        print(process.output()[-6000:])
