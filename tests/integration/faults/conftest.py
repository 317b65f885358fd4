"""Fixtures of the fault tests: makes the operator IT and e2e helpers importable (they are reused,
not copied) and provides ``rig_factory`` (the chat workload + operator + clients, see
``fault_harness``)."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for helper_dir in (HERE, HERE.parent / "operator", HERE.parents[1] / "e2e"):
    if str(helper_dir) not in sys.path:
        sys.path.insert(0, str(helper_dir))
