"""Who may change the sidecar's state, sans-I/O: the loopback rule and a throttle for its log lines.

The counts a sidecar serves drive the HPA and the readiness gate, so only the pod itself may
change them. In a pod, the loopback interface belongs to the pod's network namespace: a peer
address on loopback (``127.0.0.0/8``, ``::1``, or an IPv4-mapped loopback) is a process of the
same pod. Peer addresses come from the kernel (the TCP connection's far end), never from a header.

Rule: a request that may change state (any method but ``GET``, ``HEAD`` and ``OPTIONS``) is
served only for a loopback peer; :func:`refusal` says why it is not. Read-only requests are
served to anyone who can reach the port. The one exception are the operator's control orders
(:data:`SIGNED_PATHS`: ``POST /control/shed``): they come from the operator's pod, so they are
served to any peer, but only with a valid signature of the operator's certificate
(:mod:`.shed`), checked by their handler; from the loopback they need it just the same.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass

from wsgauge_contract.control import SHED_PATH

READ_ONLY_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
"""Methods that never change the sidecar's state; every other method is state-changing."""

SIGNED_PATHS = frozenset({SHED_PATH})
"""State-changing paths served to any peer, but only with the operator's signature."""


def is_loopback_host(host: str) -> bool:
    """True for an IP literal on the loopback (``127.0.0.0/8``, ``::1``, ``::ffff:127.x.y.z``).

    Names are not resolved: ``localhost`` is accepted as the one well-known loopback name;
    anything else that is not an IP address (an empty host, a wildcard) is not loopback.
    """
    if host == "localhost":
        return True
    text = host.strip("[]").split("%", 1)[0]  # brackets of IPv6 literals, zone ids
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def peer_host(peername: object) -> str | None:
    """The host of a transport's ``peername`` extra info (a tuple for TCP), else None."""
    if isinstance(peername, tuple) and peername and isinstance(peername[0], str):
        return peername[0]
    return None


def refusal(method: str, peer: str | None, path: str = "") -> str | None:
    """Why a request must be refused (403), or None to serve it (or, for a path of
    :data:`SIGNED_PATHS`, to let its handler check the signature).

    ``peer`` is the connection's remote host as the kernel reports it (None when unknown,
    which is refused for state-changing methods: unknown is not loopback).
    """
    if method.upper() in READ_ONLY_METHODS or path in SIGNED_PATHS:
        return None
    if peer is not None and is_loopback_host(peer):
        return None
    return "state-changing requests are accepted only from the pod itself (loopback)"


@dataclass
class LogThrottle:
    """At most one log line per ``interval`` seconds; the lines held back are counted.

    A flood of refused requests must not flood the log (or fill the node's disk) in turn.
    """

    interval: float = 1.0
    """Least seconds between two lines."""
    _next: float = -math.inf
    _held_back: int = 0

    def admit(self, now: float) -> int | None:
        """None: stay quiet (counted); else log now, with this many lines held back since."""
        if now < self._next:
            self._held_back += 1
            return None
        held_back, self._held_back = self._held_back, 0
        self._next = now + self.interval
        return held_back
