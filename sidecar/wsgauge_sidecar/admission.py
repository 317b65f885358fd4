"""Upgrade admission: which new WebSocket upgrades the sidecar refuses, and when to come back.

Pure and sans-I/O: the clock and the random source are handed in, nothing here reads
time or sockets. :class:`UpgradeAdmission` is asked once per upgrade request, after the
request head is parsed and before anything goes to the app, and answers ``None`` (go
ahead) or a :class:`Refusal` that the exchange turns into ``503 Service Unavailable``:

=================  ===========================================================
``draining``       the drain grace is over (SIGTERM); no ``Retry-After``
``capacity``       ``--max-connections``: open plus in-flight sockets reached it
``topic_capacity`` ``--max-topic-connections TOPIC=N``: the request's topic holds
                   N open plus in-flight sockets (request-based topic rules only:
                   with a frame protocol the topic is not known at the upgrade)
``rate_limited``   ``--max-upgrades-per-second R``: more upgrades than the rate
=================  ===========================================================

The checks run in that order and the rate is charged only for upgrades every other
check lets through, so refused requests never use up the rate.

The rate is a token bucket of ``R`` tokens per second holding at most ``max(1, R)``
(a burst of one second's worth). A refusal for the rate carries a jittered
``Retry-After``: a whole number of seconds drawn uniformly from ``1..W``, where ``W``
is how many seconds the bucket needs to admit every request refused in the last second
(at least 1). A storm of ``S`` reconnects is thus told to come back spread over about
``S / R`` seconds instead of all at once, and the retries arrive near the rate.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from wsgauge_sidecar.exceptions import ConfigError

RefusalReason = str
"""One of ``draining``, ``capacity``, ``topic_capacity``, ``rate_limited``."""

REFUSAL_REASONS = ("draining", "capacity", "topic_capacity", "rate_limited")
"""Every reason a :class:`Refusal` can give (the ``reason`` label in /metrics and /stats)."""


@dataclass(frozen=True)
class Refusal:
    """Why an upgrade gets 503, and the ``Retry-After`` seconds to send (``None``: none)."""

    reason: RefusalReason
    retry_after: int | None = None


class UpgradeRate:
    """Token bucket of ``per_second`` upgrades with a storm-sized, jittered Retry-After."""

    def __init__(
        self,
        per_second: float,
        clock: Callable[[], float],
        rng: random.Random,
    ) -> None:
        if not per_second > 0 or math.isinf(per_second):
            raise ConfigError(f"upgrades per second must be a positive number, not {per_second}")
        self.per_second = per_second
        """Tokens added per second."""
        self.burst = max(1.0, per_second)
        """Most tokens the bucket holds."""
        self._clock = clock
        self._rng = rng
        self._tokens = self.burst
        self._filled_at = clock()
        self._window_start = self._filled_at
        self._refused_in_window = 0

    def take(self) -> int | None:
        """Admit one upgrade (``None``) or return the Retry-After seconds for a refusal."""
        now = self._clock()
        elapsed = max(0.0, now - self._filled_at)
        self._tokens = min(self.burst, self._tokens + elapsed * self.per_second)
        self._filled_at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return None
        if now - self._window_start >= 1.0:
            self._window_start = now
            self._refused_in_window = 0
        self._refused_in_window += 1
        deficit = self._refused_in_window + (1.0 - self._tokens)
        window = max(1, math.ceil(deficit / self.per_second))
        return self._rng.randint(1, window)


class UpgradeAdmission:
    """The admission decision for one sidecar (see the module docstring)."""

    def __init__(
        self,
        *,
        max_connections: int = 0,
        topic_limits: Mapping[str, int] | None = None,
        upgrades_per_second: float = 0.0,
        clock: Callable[[], float],
        rng: random.Random | None = None,
    ) -> None:
        self.max_connections = max_connections
        """Open plus in-flight sockets at which upgrades are refused (0: no limit)."""
        self.topic_limits: dict[str, int] = dict(topic_limits or {})
        """Topic -> open plus in-flight sockets at which its upgrades are refused."""
        self.rate = (
            UpgradeRate(upgrades_per_second, clock, rng or random.Random())
            if upgrades_per_second
            else None
        )
        """The upgrade rate limit (``None``: unlimited)."""
        self._refused: dict[RefusalReason, int] = {}

    def decide(
        self,
        *,
        accepting: bool,
        connections: int,
        topic: str | None,
        topic_connections: int,
    ) -> Refusal | None:
        """Go ahead (``None``) or a :class:`Refusal` for one new upgrade.

        ``accepting``: False once the drain grace is over; ``connections``: open plus
        in-flight sockets; ``topic``: the request's topic (``None``: none, or not known
        at the upgrade); ``topic_connections``: open plus in-flight sockets in it.
        """
        refusal = self._check(accepting, connections, topic, topic_connections)
        if refusal is not None:
            self._refused[refusal.reason] = self._refused.get(refusal.reason, 0) + 1
        return refusal

    def _check(
        self, accepting: bool, connections: int, topic: str | None, topic_connections: int
    ) -> Refusal | None:
        if not accepting:
            return Refusal("draining")
        if self.max_connections and connections >= self.max_connections:
            return Refusal("capacity")
        if topic is not None:
            limit = self.topic_limits.get(topic)
            if limit is not None and topic_connections >= limit:
                return Refusal("topic_capacity")
        if self.rate is not None:
            retry_after = self.rate.take()
            if retry_after is not None:
                return Refusal("rate_limited", retry_after)
        return None

    def refused(self) -> dict[RefusalReason, int]:
        """Upgrades refused since start, by reason (only reasons that happened)."""
        return dict(self._refused)
