"""Shedding sockets for a rebalance, pure: which orders run, and when each close is.

The operator asks a sidecar to close ``count`` of its sockets (``POST /control/shed``, see
:mod:`wsgauge_contract.control`). That the order is the operator's is checked first, by
:mod:`.order_auth` (it needs the ``control`` extra, ``cryptography``); then two pure parts:

- :func:`jittered_offsets`: the close times, spread over the order's window with jitter: the
  window is cut into ``count`` equal slots and each close falls at a random point of its own
  slot, so closes never bunch up (at most two in any slot-long stretch) and no two sidecars
  close in lockstep.
- :class:`OrderGate`: whether an authenticated order may run: it must name this pod and
  namespace, be fresh (issued at most ``max_skew`` seconds from now, either way), not be a
  replay (its nonce not seen within the freshness window) and find no shed already running.

The asyncio adapter that closes the sockets is :mod:`.shedder`. No I/O here; clocks are passed in.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

from wsgauge_contract.control import ShedOrder

MAX_SKEW = 30.0
"""Seconds an order's ``issuedAt`` may differ from the sidecar's clock."""


def jittered_offsets(count: int, spread: float, rng: random.Random) -> list[float]:
    """``count`` close times in ``[0, spread)``, one in each of ``count`` equal slots, ascending."""
    if count <= 0:
        return []
    if spread <= 0:
        return [0.0] * count
    slot = spread / count
    return [min((index + rng.random()) * slot, spread) for index in range(count)]


@dataclass(frozen=True)
class Refusal:
    """Why an order is not run."""

    status: int
    """HTTP status: 403 (not for us, stale, replayed), 409 (a shed is running)."""
    reason: str


@dataclass
class OrderGate:
    """The checks an authenticated order passes before it runs (one per sidecar)."""

    namespace: str
    pod: str
    max_skew: float = MAX_SKEW
    """Seconds an order's issue time may be off the sidecar's clock."""
    _nonces: deque[tuple[float, str]] = field(default_factory=deque)
    _seen: set[str] = field(default_factory=set)

    def check(self, order: ShedOrder, now: float, *, busy: bool) -> Refusal | None:
        """None: run it (its nonce is remembered); else why not. ``now`` is Unix time."""
        while self._nonces and self._nonces[0][0] < now - 2 * self.max_skew:
            self._seen.discard(self._nonces.popleft()[1])
        if order.namespace != self.namespace or order.pod != self.pod:
            return Refusal(403, f"the order is for {order.namespace}/{order.pod}, not this pod")
        if abs(order.issued_at - now) > self.max_skew:
            return Refusal(
                403,
                f"the order was issued {now - order.issued_at:.0f} s from now "
                f"(more than {self.max_skew:.0f} s either way)",
            )
        if order.nonce in self._seen:
            return Refusal(403, "the order was already received (replay)")
        if busy:
            return Refusal(409, "a shed is already running")
        self._seen.add(order.nonce)
        self._nonces.append((now, order.nonce))
        return None
