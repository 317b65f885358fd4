"""Jittered retry delays: every reconnect and retry of the operator waits through this module.

Many clients that fail together (10,000 followers whose sidecars went away with a node, every
standby of a leader election, the pod watch of several operators after an API server restart)
must not retry together: with the same delays they would come back in lockstep, again and again.
So every delay is *jittered*: drawn uniformly from ``[(1 - spread) * delay, delay]``. The nominal
delay stays the upper bound (a documented "retried within N s" still holds); the spread makes
retries that started together drift apart at once and stay apart.

- :func:`jittered` draws one delay around a nominal one (a fixed retry period, a table entry);
- :class:`Backoff` is the exponential sequence ``initial, 2 * initial, ...`` capped at
  ``maximum``, each step jittered; :meth:`Backoff.reset` starts it over after a success.

Randomness comes from a :class:`random.Random` that tests can seed; by default one module-wide
generator, seeded by the operating system.
"""

from __future__ import annotations

import random

DEFAULT_SPREAD = 0.5
"""Fraction of a nominal delay that jitter may take off (0: none, 1: anything down to 0)."""

_RANDOM = random.Random()  # spreads retries; not for secrets


def jittered(
    delay: float, spread: float = DEFAULT_SPREAD, rng: random.Random | None = None
) -> float:
    """A delay drawn uniformly from ``[(1 - spread) * delay, delay]`` (``delay`` if not > 0)."""
    if delay <= 0:
        return max(delay, 0.0)
    if not 0.0 <= spread <= 1.0:
        raise ValueError(f"jitter spread {spread} is not within [0, 1]")
    return delay - (rng or _RANDOM).random() * spread * delay


class Backoff:
    """Exponential back-off with jitter: ``next()`` is the delay before the next attempt.

    The nominal delays are ``initial``, then ``min(previous * factor, maximum)`` (so a
    ``maximum`` below ``initial`` applies from the second attempt on).
    """

    def __init__(
        self,
        initial: float,
        maximum: float,
        *,
        factor: float = 2.0,
        spread: float = DEFAULT_SPREAD,
        rng: random.Random | None = None,
    ) -> None:
        if initial < 0 or maximum < 0 or factor < 1.0:
            raise ValueError(
                f"back-off needs initial >= 0, maximum >= 0 and factor >= 1, "
                f"got {initial}, {maximum}, {factor}"
            )
        if not 0.0 <= spread <= 1.0:
            raise ValueError(f"jitter spread {spread} is not within [0, 1]")
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.spread = spread
        self._rng = rng
        self._nominal = initial

    @property
    def nominal(self) -> float:
        """The un-jittered delay the next :meth:`next` is drawn from."""
        return self._nominal

    def next(self, cap: float | None = None) -> float:
        """The jittered delay before the next attempt (at most ``cap`` before jitter); grows."""
        nominal = self._nominal if cap is None else min(self._nominal, cap)
        self._nominal = min(self._nominal * self.factor, self.maximum)
        return jittered(nominal, self.spread, self._rng)

    def reset(self) -> None:
        """Start over at ``initial`` (after an attempt that worked)."""
        self._nominal = self.initial
