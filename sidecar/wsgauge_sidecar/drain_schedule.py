"""When each socket gets its drain close frame, sans-I/O: a socket count in, a schedule out.

The drain (:mod:`wsgauge_sidecar.drain`) closes the sockets that are open when the grace
ends, oldest first, over ``spread`` seconds. This module decides the moments; it does no
I/O, keeps no clock and takes its randomness from the :class:`random.Random` it is given,
so tests can replay any schedule.

Two modes:

``spread`` (default)
    Socket ``i`` of ``n`` at ``i * spread / n``: one close at a time, evenly spaced
    (``n`` batches of one socket, no jitter).

``batches``
    The sockets are cut into ``b = min(batches, n)`` consecutive batches whose sizes
    differ by at most one (the older batches take the extra socket). The window is cut
    into ``b`` equal slots of ``w = spread / b`` seconds; batch ``k`` closes all its
    sockets at one moment drawn uniformly from its slot ``[k * w, (k + 1) * w)``. The
    jitter keeps pods that were told to stop at the same moment (a rollout, a node
    drain) from sending their batches in lockstep, while the slots keep each pod's
    batches in order and the whole drain inside the window.

Guarantees of every schedule (both modes; the unit tests fuzz them):

- every socket index ``0 .. n-1`` is in exactly one batch, so each socket is sent exactly
  one close frame by the schedule;
- batches are in socket order (oldest first) and their times never decrease;
- every time lies in ``[0, spread]`` (``0`` when ``spread`` is 0), measured from the end
  of the grace, so the last close frame leaves no later than ``grace + spread`` after
  SIGTERM;
- in ``batches`` mode there are ``min(batches, n)`` batches, each in its own slot.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from wsgauge_contract.flags import DRAIN_MODES


@dataclass(frozen=True)
class DrainBatch:
    """Sockets ``first .. first + size - 1`` (oldest first) get their close at ``at``."""

    at: float
    """Seconds after the end of the grace."""
    first: int
    """Index of the batch's first socket in the drain's socket list."""
    size: int
    """How many consecutive sockets the batch closes (at least 1)."""

    @property
    def indexes(self) -> range:
        """The socket indexes of this batch."""
        return range(self.first, self.first + self.size)


@dataclass(frozen=True)
class DrainSchedule:
    """The batches of one drain, in order; iterate it to get them."""

    batches: tuple[DrainBatch, ...]
    """Every batch, oldest sockets first, times non-decreasing."""

    def __iter__(self) -> Iterator[DrainBatch]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    @property
    def sockets(self) -> int:
        """How many sockets the schedule closes."""
        return sum(batch.size for batch in self.batches)


def plan_drain(
    sockets: int,
    spread: float,
    mode: str = "spread",
    batches: int = 10,
    rng: random.Random | None = None,
) -> DrainSchedule:
    """The schedule for ``sockets`` sockets over ``spread`` seconds.

    ``batches`` is used in ``batches`` mode only. ``rng`` draws the jitter (a fresh
    :class:`random.Random` when omitted). :class:`ValueError` for a negative count, a
    negative or non-finite ``spread``, an unknown mode or fewer than one batch.
    """
    if sockets < 0:
        raise ValueError(f"socket count must not be negative, got {sockets}")
    if not 0 <= spread < float("inf"):
        raise ValueError(f"spread must be a finite number >= 0, got {spread!r}")
    if mode not in DRAIN_MODES:
        raise ValueError(f"drain mode must be one of {', '.join(DRAIN_MODES)}, got {mode!r}")
    if batches < 1:
        raise ValueError(f"batch count must be at least 1, got {batches}")
    if sockets == 0:
        return DrainSchedule(())
    if mode == "spread":
        return DrainSchedule(
            tuple(DrainBatch(at=i * spread / sockets, first=i, size=1) for i in range(sockets))
        )
    draw = rng if rng is not None else random.Random()
    count = min(batches, sockets)
    slot = spread / count
    base, extra = divmod(sockets, count)
    planned: list[DrainBatch] = []
    first = 0
    for k in range(count):
        size = base + (1 if k < extra else 0)
        start = k * slot
        at = min(start + draw.random() * slot, spread)  # (rounding must not leave the window)
        if planned and at < planned[-1].at:  # (nor reorder two slots' float edges)
            at = planned[-1].at
        planned.append(DrainBatch(at=at, first=first, size=size))
        first += size
    return DrainSchedule(tuple(planned))
