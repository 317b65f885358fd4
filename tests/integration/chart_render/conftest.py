"""Fixtures of the chart rendering tests: the helm binary and a renderer (helm template)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from chart_render_harness import CHART, Render, run_helm
from wsgauge_devcluster.binaries import locate


@pytest.fixture(scope="session")
def helm_binary() -> Path:
    """The helm binary built by hack/build-k8s.sh."""
    path = locate().path("helm")
    if not path.exists():
        pytest.fail("helm is missing: run `make k8s-bins` (hack/build-k8s.sh)", pytrace=False)
    return path


@pytest.fixture(scope="session")
def render(helm_binary: Path) -> Render:
    """render("key=value", ...) -> the rendered objects (helm template, release "rel", ns "wsg")."""

    def _render(*sets: str, namespace: str = "wsg") -> list[dict[str, object]]:
        args = ["template", "rel", str(CHART), "--namespace", namespace]
        for item in sets:
            args += ["--set", item]
        result = run_helm(helm_binary, *args)
        assert result.returncode == 0, result.stderr
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc]

    return _render
