"""Rendering the chart with the real helm binary (no cluster needed): test helpers."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "wsgauge"

Render = Callable[..., list[dict[str, Any]]]


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run helm, capturing its output (bounded in time)."""
    return subprocess.run(
        [str(helm), *args], capture_output=True, text=True, check=False, timeout=120
    )


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    """Objects of a kind (and name)."""
    return [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one object of a kind (and name)."""
    found = find(objects, kind, name)
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]
