"""Client load of ``make demo``: real WebSocket sockets held against the pods' sidecars.

There is no Service routing on the local cluster (no kube-proxy; Endpoints reject loopback
addresses), so the demo plays the load balancer: :class:`LoadPool` connects each new socket to
``ws://<podIP>:<data port>/ws/<topic>`` of one of the serving pods (Ready, not being deleted),
round robin starting with the pod that holds the fewest of our sockets. A socket the server closes
(a draining sidecar closes with 1001) reconnects to another serving pod after a short random
delay, like a real client would. :func:`topic_plan` spreads a number of sockets over topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import aiohttp
from demo_kube import DemoError, PodInfo

PodSource = Callable[[], Awaitable[Sequence[PodInfo]]]
"""Returns the current pods (e.g. from kubectl)."""

TOPIC_WEIGHTS: tuple[tuple[str, int], ...] = (("stream", 6), ("stats", 3), ("chat", 1))
"""Topics the demo clients use and their shares."""


def topic_plan(count: int, weights: Sequence[tuple[str, int]] = TOPIC_WEIGHTS) -> list[str]:
    """``count`` topic names interleaved by weight (6:3:1 gives s,s,t,s,c,... in that ratio)."""
    total = sum(weight for _, weight in weights)
    plan: list[str] = []
    credit = dict.fromkeys((name for name, _ in weights), 0.0)
    for _ in range(count):
        for name, weight in weights:
            credit[name] += weight / total
        best = max(credit, key=lambda name: credit[name])
        credit[best] -= 1.0
        plan.append(best)
    return plan


@dataclass(eq=False)
class ClientSocket:
    """One client socket (it may move to another pod after a server-side close)."""

    topic: str
    """The topic (URL path /ws/<topic>)."""
    pod: str = ""
    """Pod it is connected to ('' while connecting)."""
    ws: aiohttp.ClientWebSocketResponse | None = None
    """The open socket, None while reconnecting."""
    closing: bool = False
    """Closed on purpose by the demo (no reconnect)."""
    reconnects: int = 0
    """How often it reconnected after the server closed it."""
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    """Task that reads the socket until it closes."""


class LoadPool:
    """The demo's client sockets, spread over the serving pods."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        pods: PodSource,
        data_port: int = 8080,
        reconnect_delay: float = 1.0,
    ) -> None:
        self.session = session
        self.pods = pods
        self.data_port = data_port
        self.reconnect_delay = reconnect_delay
        self.sockets: list[ClientSocket] = []
        self.failures = 0
        self.reconnected = 0

    def per_pod(self) -> Counter[str]:
        """Open sockets per pod, as the clients see them."""
        return Counter(s.pod for s in self.sockets if s.ws is not None and not s.ws.closed)

    def open_count(self) -> int:
        """Sockets currently open."""
        return sum(self.per_pod().values())

    def _order(self, serving: Sequence[PodInfo]) -> list[PodInfo]:
        """Serving pods, the one with the fewest of our sockets first (ties: oldest first)."""
        load = self.per_pod()
        return sorted(serving, key=lambda pod: load[pod.name])

    async def _connect(self, client: ClientSocket, pod: PodInfo) -> bool:
        url = f"http://{pod.ip}:{self.data_port}/ws/{client.topic}"
        try:
            ws = await self.session.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=5))
        except (aiohttp.ClientError, OSError, TimeoutError):
            self.failures += 1
            return False
        client.ws, client.pod = ws, pod.name
        client.task = asyncio.create_task(self._read(client), name=f"client-{pod.name}")
        return True

    async def open(self, topics: Sequence[str], per_pod_limit: int | None = None) -> int:
        """Open one socket per topic, round robin over the serving pods; returns how many opened.

        With ``per_pod_limit``, a pod that holds that many of our sockets gets no more (the
        rest waits for more pods, as a client would back off from full servers)."""
        serving = self._order([p for p in await self.pods() if p.serving])
        load = self.per_pod()
        opened = 0
        for topic in topics:
            if per_pod_limit is not None:
                serving = [p for p in serving if load[p.name] < per_pod_limit]
            if not serving:
                break
            pod = serving[0]
            client = ClientSocket(topic=topic)
            if await self._connect(client, pod):
                self.sockets.append(client)
                opened += 1
                load[pod.name] += 1
            serving = serving[1:] + serving[:1]
        return opened

    async def _read(self, client: ClientSocket) -> None:
        """Hold the socket; when the server closes it, reconnect elsewhere (unless closing)."""
        ws = client.ws
        if ws is None:
            return
        with contextlib.suppress(aiohttp.ClientError, OSError):
            async for _message in ws:
                pass
        if client.closing:
            return
        client.ws = None
        await self._reconnect(client, gone=client.pod)

    async def _reconnect(self, client: ClientSocket, gone: str) -> None:
        for _attempt in range(10):
            await asyncio.sleep(self.reconnect_delay * (0.5 + random.random()))
            if client.closing:
                return
            try:
                serving = [p for p in await self.pods() if p.serving and p.name != gone]
            except (DemoError, OSError, ValueError):
                continue  # kubectl failed for a moment: try again
            if serving and await self._connect(client, self._order(serving)[0]):
                client.reconnects += 1
                self.reconnected += 1
                return
        client.pod = ""

    async def _close(self, client: ClientSocket) -> None:
        client.closing = True
        if client.ws is not None:
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                await client.ws.close()
        if client.task is not None:
            client.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await client.task

    async def open_on(self, pod: PodInfo, topics: Sequence[str]) -> int:
        """Open one socket per topic on this pod; returns how many opened."""
        opened = 0
        for topic in topics:
            client = ClientSocket(topic=topic)
            if await self._connect(client, pod):
                self.sockets.append(client)
                opened += 1
        return opened

    async def close(self, clients: Sequence[ClientSocket]) -> None:
        """Close these sockets (on purpose: no reconnect)."""
        await asyncio.gather(*(self._close(client) for client in clients))
        chosen = set(map(id, clients))
        self.sockets = [s for s in self.sockets if id(s) not in chosen]

    async def close_to(self, keep: dict[str, int]) -> None:
        """Close sockets so that each pod keeps at most ``keep[pod]`` (0 for unlisted pods)."""
        kept: Counter[str] = Counter()
        doomed: list[ClientSocket] = []
        for client in self.sockets:
            if kept[client.pod] < keep.get(client.pod, 0):
                kept[client.pod] += 1
            else:
                doomed.append(client)
        await self.close(doomed)

    async def close_fraction(self, fraction: float) -> None:
        """Close about ``fraction`` of the sockets, taken from every pod alike."""
        target = {pod: int(count * (1.0 - fraction)) for pod, count in self.per_pod().items()}
        await self.close_to(target)

    async def close_all(self) -> None:
        """Close every socket."""
        await self.close(list(self.sockets))
