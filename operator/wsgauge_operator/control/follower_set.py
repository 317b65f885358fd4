"""The running sidecar followers of one operator, indexed by endpoint and by pod, with a limit.

The controller decides *which* endpoints should be followed (from the selection
index); :class:`FollowerSet` starts and stops the follower tasks to match, per pod
(O(endpoints of that pod)) or per namespace (O(followers), only for ConnectionStats
changes and start-up). Beyond ``max_followed`` followers further endpoints are held
back (remembered in arrival order) and followed as soon as places free up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Protocol

import aiohttp

from wsgauge_operator.control.telemetry import Telemetry
from wsgauge_operator.model.fleet import EndpointKey, FleetState

logger = logging.getLogger(__name__)

PodKey = tuple[str, str]
"""(namespace, name) of a pod."""


class Follower(Protocol):
    """What is needed of a sidecar follower (see :class:`~.follower.SidecarFollower`)."""

    def poke(self) -> None:
        """Retry now if waiting in a backoff."""

    async def run(self) -> None:
        """Follow until cancelled."""


FollowerFactory = Callable[[EndpointKey, FleetState, aiohttp.ClientSession], Follower]
"""Builds the follower of one endpoint (tests and benchmarks swap it for one without I/O)."""


class FollowerSet:
    """Follower tasks by endpoint and by pod; endpoints held back by the limit."""

    def __init__(
        self,
        fleet: FleetState,
        factory: FollowerFactory,
        telemetry: Telemetry,
        max_followed: int,
    ) -> None:
        self._fleet = fleet
        self._factory = factory
        self._telemetry = telemetry
        self._max_followed = max_followed
        self._followers: dict[EndpointKey, tuple[Follower, asyncio.Task[None]]] = {}
        self._by_pod: dict[PodKey, set[EndpointKey]] = {}
        """Followed and held-back endpoints per pod."""
        self._held_back: dict[EndpointKey, None] = {}

    @property
    def held_back(self) -> dict[EndpointKey, None]:
        """Endpoints not followed because of the limit (read-only use, in arrival order)."""
        return self._held_back

    def __len__(self) -> int:
        return len(self._followers)

    def match_pod(
        self, namespace: str, name: str, desired: set[EndpointKey], session: aiohttp.ClientSession
    ) -> list[EndpointKey]:
        """Follow exactly ``desired`` for one pod; returns held-back endpoints now followed."""
        current = set(self._by_pod.get((namespace, name), ()))
        for key in current - desired:
            self.stop(key)
        for key in desired - current:
            self.start(key, session)
        return self._fill_free_places(session)

    def match_namespace(
        self, namespace: str | None, desired: set[EndpointKey], session: aiohttp.ClientSession
    ) -> list[EndpointKey]:
        """Follow exactly ``desired`` in a namespace (or everywhere); see :meth:`match_pod`."""
        for key in list(self._followers) + list(self._held_back):
            if namespace in (None, key.namespace) and key not in desired:
                self.stop(key)
        for key in sorted(desired, key=_endpoint_order):
            self.start(key, session)
        return self._fill_free_places(session)

    def start(self, key: EndpointKey, session: aiohttp.ClientSession) -> None:
        """Follow an endpoint (or hold it back when the limit is reached)."""
        if key in self._followers or key in self._held_back:
            return
        if len(self._followers) >= self._max_followed:
            if not self._held_back:
                logger.warning(
                    "following %d sidecars (the max_followed_pods limit); further pods are "
                    "not followed",
                    len(self._followers),
                )
            self._held_back[key] = None
            self._by_pod.setdefault((key.namespace, key.pod), set()).add(key)
            self._telemetry.followers_over_limit.set(len(self._held_back))
            return
        self._follow(key, session)

    def _follow(self, key: EndpointKey, session: aiohttp.ClientSession) -> None:
        follower = self._factory(key, self._fleet, session)
        self._fleet.add_endpoint(key)
        task = asyncio.create_task(follower.run(), name=f"follow {key.namespace}/{key.pod}")
        self._followers[key] = (follower, task)
        self._by_pod.setdefault((key.namespace, key.pod), set()).add(key)
        self._telemetry.followers.set(len(self._followers))

    def stop(self, key: EndpointKey) -> None:
        """Stop following (or holding back) an endpoint."""
        keys = self._by_pod.get((key.namespace, key.pod))
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_pod[(key.namespace, key.pod)]
        if key in self._held_back:
            del self._held_back[key]
            self._telemetry.followers_over_limit.set(len(self._held_back))
            return
        entry = self._followers.pop(key, None)
        if entry is None:
            return
        entry[1].cancel()
        self._fleet.remove_endpoint(key)
        self._telemetry.followers.set(len(self._followers))

    def _fill_free_places(self, session: aiohttp.ClientSession) -> list[EndpointKey]:
        started: list[EndpointKey] = []
        while self._held_back and len(self._followers) < self._max_followed:
            key = next(iter(self._held_back))
            del self._held_back[key]
            self._telemetry.followers_over_limit.set(len(self._held_back))
            self._follow(key, session)
            started.append(key)
        return started

    def poke(self, namespace: str, name: str) -> None:
        """Cut the backoff of a pod's followers short (its containers just became ready)."""
        for key in self._by_pod.get((namespace, name), ()):
            entry = self._followers.get(key)
            if entry is not None:
                entry[0].poke()

    def take_tasks(self) -> Iterable[asyncio.Task[None]]:
        """Forget everything; return the follower tasks (for the caller to cancel and await)."""
        tasks = [task for _, task in self._followers.values()]
        self._followers.clear()
        self._by_pod.clear()
        self._held_back.clear()
        return tasks


def _endpoint_order(key: EndpointKey) -> tuple[str, str, int]:
    return (key.namespace, key.pod, key.port)
