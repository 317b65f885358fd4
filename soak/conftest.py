"""Fixtures of ``make soak``: the session cluster (``kube``, ``namespace`` from tests/conftest.py)
and the fault tests' helpers (tests/integration/faults, operator IT, e2e) made importable."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for helper_dir in (
    REPO / "tests" / "integration" / "faults",
    REPO / "tests" / "integration" / "operator",
    REPO / "tests" / "e2e",
):
    if str(helper_dir) not in sys.path:
        sys.path.insert(0, str(helper_dir))

from tests.conftest import kube, namespace, pytest_collection_modifyitems  # noqa: E402

__all__ = ["kube", "namespace", "pytest_collection_modifyitems"]
