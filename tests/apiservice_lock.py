"""A cross-process lock for tests that register ``custom.metrics.k8s.io`` APIServices.

APIServices are cluster-wide and only one server per group can be registered, so suites that
register the group (the metrics API integration tests, the operator autoscaling tests, the e2e
test), possibly in several pytest processes at once, serialize on this file lock
(``fcntl.flock``), held for the whole test and released when the test ends, also on failure.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_PATH = Path(tempfile.gettempdir()) / "wsgauge-custom-metrics-apiservice.lock"
"""The lock file (shared by every pytest process of this machine)."""


@contextmanager
def custom_metrics_apiservice_lock(timeout: float = 900.0) -> Iterator[None]:
    """Hold the lock (poll every 0.5 s; AssertionError after ``timeout`` seconds)."""
    descriptor = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"{LOCK_PATH} held by another test for {timeout}s"
                    ) from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)
