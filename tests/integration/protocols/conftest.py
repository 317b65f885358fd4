"""Fixtures of the protocol integration tests: the sidecar IT harness is made importable
(reused, not copied), and the npm packages of ``js/`` must be installed (``make protocol-js``)."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for helper_dir in (HERE, HERE.parent / "sidecar"):
    if str(helper_dir) not in sys.path:
        sys.path.insert(0, str(helper_dir))
