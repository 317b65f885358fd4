"""Client load of ``make demo``: real WebSocket sockets through the chat Service.

Every socket connects to ``ws://<chat ClusterIP>/ws/<topic>``: kube-proxy picks one of the
Service's ready endpoints, exactly as for any client in the cluster; the demo does not choose.
Right after the handshake a client sends ``whoami`` and the demo app answers ``pod:<name>``,
so the demo knows where each socket landed. A socket the server closes with 1001 (a draining
sidecar) reconnects through the Service after a short random delay, like a real client.
:func:`topic_plan` spreads a number of sockets over topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp

TOPIC_WEIGHTS: tuple[tuple[str, int], ...] = (("stream", 6), ("stats", 3), ("chat", 1))
"""Topics the demo clients use and their shares."""
GOING_AWAY = 1001
"""The close code of a draining sidecar."""


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


def parse_whoami(text: str) -> str | None:
    """The pod name in the demo app's answer to ``whoami`` (``pod:<name>``), else None."""
    if not text.startswith("pod:"):
        return None
    name = text.removeprefix("pod:").strip()
    return name or None


def keep_plan(
    counts: Mapping[str, int], oldest_first: Sequence[str], stay: int = 2
) -> dict[str, int]:
    """How many sockets each pod keeps when most clients leave, unevenly.

    The ``stay`` pods that will hold the most are the busiest pods *other than the oldest*
    (they keep up to 14, 10, ...); every other pod keeps a few (3, 0, 2, 1, ... in age order).
    So the pods to remove are not the newest ones, which a ReplicaSet removes first when no
    deletion cost says otherwise."""
    candidates = sorted(oldest_first[1:], key=lambda name: (-counts.get(name, 0), name))
    busy = candidates[:stay]
    keep_busy = [14, 10, 8, 6]
    few = [3, 0, 2, 1]
    plan: dict[str, int] = {}
    others = 0
    for name in oldest_first:
        if name in busy:
            plan[name] = min(counts.get(name, 0), keep_busy[busy.index(name) % len(keep_busy)])
        else:
            plan[name] = min(counts.get(name, 0), few[others % len(few)])
            others += 1
    return plan


@dataclass(eq=False)
class ClientSocket:
    """One client socket (it may land on another pod after a server-side close)."""

    topic: str
    """The topic (URL path /ws/<topic>)."""
    pod: str = ""
    """Pod it is connected to, from ``whoami`` ('' while connecting)."""
    ws: aiohttp.ClientWebSocketResponse | None = None
    """The open socket, None while reconnecting."""
    closing: bool = False
    """Closed on purpose by the demo (no reconnect)."""
    close_codes: list[int | None] = field(default_factory=list)
    """Close codes the server sent, in order."""
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    """Task that reads the socket until it closes."""


class ServiceLoad:
    """The demo's client sockets, all through one Service URL."""

    def __init__(
        self, session: aiohttp.ClientSession, base_url: str, reconnect_delay: float = 1.0
    ) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.reconnect_delay = reconnect_delay
        self.sockets: list[ClientSocket] = []
        self.failures = 0
        self.reconnected = 0
        self.drained: Counter[str] = Counter()
        """Sockets closed with 1001, by the pod that closed them."""

    def per_pod(self) -> Counter[str]:
        """Open sockets per pod, as the clients see them."""
        return Counter(s.pod for s in self.sockets if s.ws is not None and not s.ws.closed)

    def open_count(self) -> int:
        """Sockets currently open."""
        return sum(self.per_pod().values())

    async def _connect(self, client: ClientSocket, attempts: int = 10) -> bool:
        """Connect through the Service and ask which pod answered (bounded retries)."""
        url = f"{self.base_url}/ws/{client.topic}"
        for _ in range(attempts):
            if client.closing:
                return False
            ws: aiohttp.ClientWebSocketResponse | None = None
            try:
                ws = await asyncio.wait_for(self.session.ws_connect(url, heartbeat=None), 10)
                await ws.send_str("whoami")
                reply = await asyncio.wait_for(ws.receive(), 10)
                pod = (
                    parse_whoami(str(reply.data)) if reply.type == aiohttp.WSMsgType.TEXT else None
                )
            except (aiohttp.ClientError, OSError, TimeoutError):
                pod = None
            if pod is None or ws is None:
                self.failures += 1
                if ws is not None:
                    with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                        await ws.close()
                await asyncio.sleep(0.3 + random.random() * 0.4)
                continue
            client.ws, client.pod = ws, pod
            client.task = asyncio.create_task(self._read(client), name=f"client-{pod}")
            return True
        return False

    async def open(self, topics: Sequence[str], parallel: int = 10) -> int:
        """Open one socket per topic through the Service; returns how many opened."""
        gate = asyncio.Semaphore(parallel)

        async def one(topic: str) -> bool:
            async with gate:
                client = ClientSocket(topic=topic)
                if await self._connect(client):
                    self.sockets.append(client)
                    return True
                return False

        return sum(await asyncio.gather(*(one(topic) for topic in topics)))

    async def _read(self, client: ClientSocket) -> None:
        """Hold the socket; when the server closes it, reconnect through the Service."""
        ws = client.ws
        if ws is None:
            return
        with contextlib.suppress(aiohttp.ClientError, OSError):
            async for _message in ws:
                pass
        if client.closing:
            return
        client.close_codes.append(ws.close_code)
        if ws.close_code == GOING_AWAY:
            self.drained[client.pod] += 1
        client.ws = None
        await asyncio.sleep(self.reconnect_delay * (0.5 + random.random()))
        if await self._connect(client):
            self.reconnected += 1
        else:
            client.pod = ""

    async def _close(self, client: ClientSocket) -> None:
        client.closing = True
        if client.ws is not None:
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                await asyncio.wait_for(client.ws.close(), 10)
        if client.task is not None:
            client.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await client.task

    async def close(self, clients: Sequence[ClientSocket]) -> None:
        """Close these sockets (on purpose: no reconnect)."""
        await asyncio.gather(*(self._close(client) for client in clients))
        chosen = set(map(id, clients))
        self.sockets = [s for s in self.sockets if id(s) not in chosen]

    async def reload(self, clients: Sequence[ClientSocket]) -> None:
        """These clients close and connect again through the Service (a page reload)."""
        topics = [client.topic for client in clients]
        await self.close(clients)
        await self.open(topics)

    async def close_to(self, keep: Mapping[str, int]) -> None:
        """Close sockets so that each pod keeps at most ``keep[pod]`` (0 for unlisted pods)."""
        kept: Counter[str] = Counter()
        doomed: list[ClientSocket] = []
        for client in self.sockets:
            if client.ws is not None and kept[client.pod] < keep.get(client.pod, 0):
                kept[client.pod] += 1
            else:
                doomed.append(client)
        await self.close(doomed)

    async def close_all(self) -> None:
        """Close every socket."""
        await self.close(list(self.sockets))
