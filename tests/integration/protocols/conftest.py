"""Fixtures of the protocol integration tests: the sidecar harness is importable here, and
``js_clients`` makes sure the npm client and server libraries of ``js/`` are installed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
for helper_dir in (HERE, HERE.parent / "sidecar"):
    if str(helper_dir) not in sys.path:
        sys.path.insert(0, str(helper_dir))

JS_DIR = HERE / "js"
INSTALLER = HERE.parents[2] / "hack" / "install-protocol-js.sh"


@pytest.fixture(scope="session")
def js_clients() -> Path:
    """The ``js/`` directory with its npm packages installed (``make protocol-js``)."""
    subprocess.run([str(INSTALLER)], check=True)  # quick when nothing changed
    assert shutil.which("node") is not None
    return JS_DIR
