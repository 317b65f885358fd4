"""One loop per object: the task that runs a round whenever an object's inputs change.

The controller runs one per ConnectionStats (aggregation, readiness, Events, status), the
autoscaler two (the owned HPA, the deletion cost). Each is an :class:`ObjectLoop`:

- **wake**: :meth:`ObjectLoop.wake` asks for a round soon (a pod changed, the spec changed);
  wakes that arrive while a round runs cause one more round after it;
- **debounce**: a woken loop first sleeps :attr:`LoopTiming.debounce` seconds (and as long as
  its ``pace`` callback asks, e.g. to cap the CPU a large object's rounds take), so that a
  burst of wakes is handled by one round;
- **repeat on a timer**: without a wake, the next round comes after the delay the round
  returned (at least the debounce), or after :attr:`LoopTiming.period` when it returned
  ``None``;
- **survive errors**: a round that raises is logged (an expected error type as a warning
  without traceback, anything else with it) and the loop carries on; the next round comes
  after a jittered, growing :class:`~wsgauge_operator.model.backoff.Backoff` delay (sooner when
  woken: a wake means new input), and the back-off starts over after a round that worked.

The round is a coroutine function without arguments; it reads the object's current state
itself. The loop runs until it is cancelled (:meth:`ObjectLoop.cancel`, :meth:`ObjectLoop.stop`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from wsgauge_operator.model.backoff import Backoff

logger = logging.getLogger(__name__)

Round = Callable[[], Awaitable[float | None]]
"""One round; returns the seconds until the next round at the latest (``None``: the period)."""


@dataclass(frozen=True)
class LoopTiming:
    """How often and how soon an :class:`ObjectLoop` runs its round."""

    debounce: float = 0.0
    """Seconds a woken loop waits before its round, so that a burst of wakes runs one round;
    also the least time between two rounds."""
    period: float = 10.0
    """Seconds until the next round when the round asked for none (a periodic re-check)."""
    retry_initial: float = 1.0
    """Nominal delay before the round after a failed one (jittered)."""
    retry_max: float = 10.0
    """The nominal retry delay doubles after each failure in a row up to this."""


class ObjectLoop:
    """The rounds of one object, run by one asyncio task."""

    def __init__(
        self,
        label: str,
        round_: Round,
        timing: LoopTiming,
        *,
        expected_errors: tuple[type[Exception], ...] = (),
        pace: Callable[[], float] | None = None,
        backoff: Backoff | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        """``label`` names the object in logs and the task's name; ``pace()`` returns seconds a
        woken loop waits at least (beyond the debounce) before its round; ``backoff`` overrides
        the one built from ``timing`` (e.g. seeded in tests)."""
        self.label = label
        self._round = round_
        self._timing = timing
        self._expected = expected_errors
        self._pace = pace
        self._backoff = backoff or Backoff(timing.retry_initial, timing.retry_max)
        self._logger = log or logger
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.rounds = 0
        """Rounds run so far (including failed ones)."""
        self.failures = 0
        """Failed rounds in a row (0 after a round that worked)."""

    def start(self) -> None:
        """Start the task (idempotent); the first round runs at once, after the debounce."""
        if self._task is None or self._task.done():
            self._wake.set()
            self._task = asyncio.create_task(self.run(), name=self.label)

    def wake(self) -> None:
        """Ask for a round soon."""
        self._wake.set()

    @property
    def woken(self) -> bool:
        """Whether a wake waits for its round."""
        return self._wake.is_set()

    @property
    def running(self) -> bool:
        """Whether the task is started and not finished."""
        return self._task is not None and not self._task.done()

    def cancel(self) -> None:
        """Stop the task without waiting for it."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def stop(self) -> None:
        """Stop the task and wait until it has ended."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run(self) -> None:
        """The loop itself (runs until cancelled)."""
        timing = self._timing
        delay: float | None = 0.0
        while True:
            timeout = timing.period if delay is None else max(delay, timing.debounce)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            pause = max(timing.debounce, self._pace() if self._pace is not None else 0.0)
            if pause > 0:
                await asyncio.sleep(pause)
            self._wake.clear()
            delay = await self._run_round()

    async def _run_round(self) -> float | None:
        self.rounds += 1
        try:
            delay = await self._round()
        except self._expected as error:
            self._logger.warning("%s: %s", self.label, error)
        except Exception:  # the loop is the task's top level: it must survive a bug in a round
            self._logger.exception("%s: round failed", self.label)
        else:
            self.failures = 0
            self._backoff.reset()
            return delay
        self.failures += 1
        return self._backoff.next()
