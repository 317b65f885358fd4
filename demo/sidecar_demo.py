"""Local sidecar demo (no Kubernetes): the demo app, the sidecar in front of it,
a handful of WebSocket clients on two topics, and the sidecar's live ``/stats``.

Run with ``make demo-sidecar`` (or ``python demo/sidecar_demo.py``). It starts
two local processes on free loopback ports (their output goes to a log file it
names), opens and closes client sockets in a fixed script, prints every stats
document the sidecar streams on ``/stats/watch`` (coalesced: ``seq`` may skip),
shows ``/metrics``, and ends with the sidecar's drain on SIGTERM: the sockets
still open are closed with code 1001. It stops by itself after about 15 seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator
from typing import IO

import aiohttp

BIN_DIR = os.path.dirname(sys.executable)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def executable(name: str) -> str:
    """The console script from this venv (falls back to PATH)."""
    candidate = os.path.join(BIN_DIR, name)
    found = candidate if os.path.exists(candidate) else shutil.which(name)
    if not found:
        raise SystemExit(f"{name} is not installed; run 'make venv' first")
    return found


async def wait_http(url: str, session: aiohttp.ClientSession, attempts: int = 100) -> None:
    """Poll ``url`` until it answers (bounded)."""
    for _ in range(attempts):
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(url) as response:
                if response.status < 500:
                    return
        await asyncio.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


@contextlib.asynccontextmanager
async def process(log: IO[bytes], *argv: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """Run a child process for the duration of the block; stop it with SIGTERM."""
    child = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log
    )
    try:
        yield child
    finally:
        if child.returncode is None:
            child.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(child.wait(), 15)
            except TimeoutError:
                child.kill()
                await child.wait()


async def print_watch(admin: str, session: aiohttp.ClientSession) -> None:
    """Print each stats document from /stats/watch as one compact line."""
    async with session.get(f"{admin}/stats/watch", timeout=aiohttp.ClientTimeout(total=None)) as r:
        async for raw_line in r.content:
            line = raw_line.strip()
            if not line:
                continue
            document = json.loads(line)
            topics = json.dumps(document["topics"], sort_keys=True)
            print(
                f"  /stats/watch  seq={document['seq']:<4} connections={document['connections']:<3}"
                f" topics={topics} ready={document['ready']} draining={document['draining']}",
                flush=True,
            )


async def hold(ws: aiohttp.ClientWebSocketResponse, topic: str) -> None:
    """Read a socket until the server closes it; say with which code."""
    async for _message in ws:
        pass
    print(f"  client on /ws/{topic}: closed by the sidecar with code {ws.close_code}", flush=True)


async def run_demo() -> None:
    """The scripted demo."""
    app_port, data_port, admin_port = free_port(), free_port(), free_port()
    data = f"http://127.0.0.1:{data_port}"
    admin = f"http://127.0.0.1:{admin_port}"
    log_path = os.path.join(tempfile.gettempdir(), "wsgauge-sidecar-demo.log")
    print(f"demo app on 127.0.0.1:{app_port}; sidecar data port {data}, admin port {admin}")
    print(f"(their output: {log_path})")
    log = await asyncio.to_thread(open, log_path, "wb")
    with log:
        async with (
            process(log, executable("wsgauge-demo-app"), "--listen", f"127.0.0.1:{app_port}"),
            process(
                log,
                executable("wsgauge-sidecar"),
                "--listen", f"127.0.0.1:{data_port}",
                "--admin-listen", f"127.0.0.1:{admin_port}",
                "--upstream", f"127.0.0.1:{app_port}",
                "--topic", "path:^/ws/([^/]+)",
                "--drain-grace", "1", "--drain-spread", "2",
            ) as sidecar,
            aiohttp.ClientSession() as session,
        ):  # fmt: skip
            await wait_http(f"http://127.0.0.1:{app_port}/healthz", session)
            await wait_http(f"{admin}/readyz", session)
            watcher = asyncio.create_task(print_watch(admin, session))
            await script(session, data, admin, sidecar)
            await asyncio.sleep(0.5)
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                await watcher
    print("demo finished: every socket counted and uncounted once; the drain closed with 1001.")


async def script(
    session: aiohttp.ClientSession, data: str, admin: str, sidecar: asyncio.subprocess.Process
) -> None:
    """Open, count, close, and drain."""
    sockets: list[tuple[str, aiohttp.ClientWebSocketResponse]] = []
    for topic, count in (("stream", 5), ("stats", 3)):
        print(f"opening {count} sockets on /ws/{topic}", flush=True)
        for _ in range(count):
            sockets.append((topic, await session.ws_connect(f"{data}/ws/{topic}")))
            await asyncio.sleep(0.2)
    await asyncio.sleep(1)
    async with session.get(f"{admin}/stats") as response:
        print("GET /stats ->", json.dumps(await response.json()), flush=True)
    print("closing 4 sockets", flush=True)
    for _topic, ws in sockets[:4]:
        await ws.close()
        await asyncio.sleep(0.2)
    await asyncio.sleep(1)
    async with session.get(f"{admin}/metrics") as response:
        wanted = ("wsgauge_connections ", "wsgauge_topic_connections{")
        for line in (await response.text()).splitlines():
            if line.startswith(wanted):
                print("  /metrics ", line, flush=True)
    print("closing 2 more sockets", flush=True)
    for _topic, ws in sockets[4:6]:
        await ws.close()
    await asyncio.sleep(1)
    print(
        f"SIGTERM to the sidecar with {len(sockets) - 6} sockets open: not ready at once, "
        "upgrades refused after 1 s, sockets closed with 1001 over 2 s",
        flush=True,
    )
    holders = [asyncio.create_task(hold(ws, topic)) for topic, ws in sockets[6:]]
    sidecar.send_signal(signal.SIGTERM)
    await asyncio.wait_for(asyncio.gather(*holders), 15)


def main() -> None:
    """Entry point."""
    asyncio.run(run_demo())


if __name__ == "__main__":
    main()
