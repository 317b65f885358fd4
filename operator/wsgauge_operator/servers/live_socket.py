"""``GET /stats/ws`` on aiohttp: the upgrade checks, then the contract's :func:`serve_live`.

The session itself (coalescing, bounds, requests) is :mod:`wsgauge_contract.live_session`; this
is only its aiohttp glue for the operator's stats port (``wsgauge_sidecar.live_socket`` is the
same glue in the other distribution: the contract distribution has no dependencies, so it holds
no aiohttp code). The checks before the upgrade: a browser ``Origin`` that is not the server's
own gets 403 (:func:`~wsgauge_contract.live.origin_allowed`), a server at ``max_clients`` gets
503, a request that is not a WebSocket upgrade gets 400; all with a JSON error body like the
other endpoints.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import WSMsgType, web
from wsgauge_contract.live import MAX_REQUEST_BYTES, origin_allowed
from wsgauge_contract.live_session import LiveClients, LiveSettings, LiveSource, serve_live

log = logging.getLogger("wsgauge.live")


class _AiohttpSocket:
    """:class:`~.live_session.LiveSocket` over an aiohttp ``WebSocketResponse``."""

    def __init__(self, request: web.Request, ws: web.WebSocketResponse) -> None:
        self._request = request
        self._ws = ws

    async def send_text(self, text: str) -> None:
        await self._ws.send_str(text)

    async def close(self, code: int, reason: str) -> None:
        await self._ws.close(code=code, message=reason.encode())

    def abort(self) -> None:
        transport = self._request.transport
        if transport is not None:
            transport.abort()


async def _frames(ws: web.WebSocketResponse) -> AsyncIterator[str | bytes]:
    async for message in ws:
        if message.type is WSMsgType.TEXT:
            yield str(message.data)
        elif message.type is WSMsgType.BINARY:
            yield bytes(message.data)
        else:  # errors (a frame over the size limit is closed with 1009 by aiohttp)
            return


async def handle_live(
    request: web.Request, source: LiveSource, settings: LiveSettings, clients: LiveClients
) -> web.StreamResponse:
    """Answer one ``GET /stats/ws``."""
    if not origin_allowed(request.headers.get("Origin"), request.headers.get("Host")):
        return web.json_response(
            {"error": "cross-origin WebSocket refused: the page must come from this server"},
            status=403,
        )
    ws = web.WebSocketResponse(heartbeat=settings.heartbeat, max_msg_size=MAX_REQUEST_BYTES)
    if not ws.can_prepare(request).ok:
        return web.json_response({"error": "a WebSocket upgrade is expected here"}, status=400)
    if not clients.admit():
        return web.json_response(
            {"error": f"too many live clients (at most {clients.limit})"}, status=503
        )
    try:
        await ws.prepare(request)
        reason = await serve_live(_AiohttpSocket(request, ws), _frames(ws), source, settings)
        log.debug("live client %s: %s", request.remote, reason)
        if not ws.closed:
            await ws.close()
    finally:
        clients.release()
    return ws
