"""Coalescing of ConnectionStats status writes (pure, with an injected clock).

A status is written at most once per ``statusInterval`` and only when it
differs from the last one written (``lastUpdated`` aside). After an operator
restart the coalescer is seeded with the status already on the object, so an
unchanged fleet causes no write at all.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from typing import Any

VOLATILE_FIELDS = ("lastUpdated",)
"""Status fields that change on every write and do not make a status different."""


def comparable(status: Mapping[str, Any]) -> str:
    """A canonical form of a status for change detection.

    A top-level ``None`` (deleted by the merge patch) is the same as an absent field.
    """
    trimmed = {
        key: value
        for key, value in status.items()
        if key not in VOLATILE_FIELDS and value is not None
    }
    return json.dumps(trimmed, sort_keys=True, separators=(",", ":"), default=str)


class StatusCoalescer:
    """Decides when a ConnectionStats status should be written."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._last: str | None = None
        self._last_status: dict[str, Any] = {}
        self._last_at: float | None = None

    def seed(self, status: Mapping[str, Any]) -> None:
        """Start from the status already stored (operator restart); it counts as old."""
        self._last = comparable(status) if status else None
        self._last_status = copy.deepcopy(dict(status))
        self._last_at = None

    @property
    def last_status(self) -> Mapping[str, Any]:
        """The last status written (or seeded)."""
        return self._last_status

    def delay(self, candidate: Mapping[str, Any], interval: float) -> float | None:
        """``None``: nothing to write; otherwise seconds to wait before writing (0: now)."""
        if comparable(candidate) == self._last:
            return None
        if self._last_at is None:
            return 0.0
        return max(0.0, self._last_at + interval - self._clock())

    def written(self, status: Mapping[str, Any]) -> None:
        """Record a successful write of ``status``."""
        self._last = comparable(status)
        self._last_status = copy.deepcopy(dict(status))
        self._last_at = self._clock()

    def reset(self) -> None:
        """Forget what was written (the object was re-created): next status goes out at once."""
        self._last = None
        self._last_status = {}
        self._last_at = None
