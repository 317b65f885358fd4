"""``wsgauge-demo-app``: a small aiohttp WebSocket app for demos and the sidecar's tests.

Endpoints (``--listen``, default ``127.0.0.1:8081``, env ``WSGAUGE_DEMO_LISTEN``):

* ``GET /`` hello text; ``GET /healthz``; ``POST /echo`` echoes the body;
  ``GET /slow?seconds=S`` answers after S seconds (long-poll style);
  ``GET /chunked`` a chunked response; ``GET /status/{code}`` answers with that status
  (an upgrade to it is thereby rejected); any other path answers
  ``demo app: METHOD PATH`` with header ``X-Demo-App: 1`` (or, for an upgrade, is an
  echo WebSocket like ``/ws/{topic}`` whose topic is the path).
* WebSocket ``/ws/{topic}``: echo, plus commands in text messages:
  ``broadcast:MSG`` sends MSG to every socket of the topic; ``close:CODE`` makes the
  server close with CODE; ``flood:COUNT:SIZE`` makes the server send COUNT binary
  messages of SIZE bytes; ``drop`` makes the server cut the TCP connection; ``whoami`` is
  answered with ``pod:NAME`` (``$POD_NAME``, else the hostname, which in a pod is its name).
* WebSocket ``/socket/websocket``: the Phoenix channels JSON protocol, v1 objects
  or v2 arrays (``vsn=2.0.0``): ``phx_join`` (topics starting with ``deny:`` are
  refused with status ``error``; a duplicate join closes the old channel with ``phx_close``
  first, as Phoenix does), ``phx_leave`` (reply ok, then ``phx_close``),
  ``heartbeat`` on topic ``phoenix``, event ``crash`` (the channel sends
  ``phx_error``), event ``shout`` (broadcast to the topic, then reply ok), event ``flood``
  (payload ``{count, size}``: that many pushes of ``size`` characters), other events
  reply ok with their payload.
* WebSocket ``/socket.io/?EIO=4&transport=websocket``: a small Socket.IO server (Engine.IO
  4 over the WebSocket transport only): namespaces connect with ``40/ns,`` (those starting
  with ``/deny`` are refused with CONNECT_ERROR ``44``), ``41/ns,`` leaves; the event
  ``broadcast`` goes to every socket of the namespace, other events are echoed (with their
  ack); the server pings every 25 s.
* ``--report-to URL``: report mode; after every change the app PUTs its own counts
  (``{"connections": N, "topics": {...}}``) to URL: the sidecar's loopback report listener,
  ``http://127.0.0.1:9091/report`` (env ``WSGAUGE_DEMO_REPORT_TO``, else ``WSGAUGE_REPORT_URL``,
  which the injector gives the app containers of a pod in report mode).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from wsgauge_contract import Address, AddressError

log = logging.getLogger("wsgauge.demo")

PHOENIX_TOPIC = "phoenix"


@dataclass
class _Channel:
    """One Phoenix channel membership of a socket."""

    topic: str
    join_ref: str | None


@dataclass(eq=False)
class _PhoenixSocket:
    """A Phoenix socket's serializer and joined channels."""

    ws: web.WebSocketResponse
    v2: bool
    channels: dict[str, _Channel] = field(default_factory=dict)

    async def push(
        self, topic: str, event: str, payload: object, ref: str | None, join_ref: str | None
    ) -> None:
        if self.v2:
            await self.ws.send_str(json.dumps([join_ref, ref, topic, event, payload]))
        else:
            # v1 sends exactly these four keys (Phoenix's encode_v1_fields_only)
            message = {"topic": topic, "event": event, "payload": payload, "ref": ref}
            await self.ws.send_str(json.dumps(message))


class DemoApp:
    """State of the demo app: sockets per topic and the optional reporter."""

    def __init__(self, report_to: str | None = None) -> None:
        self.sockets: dict[str, set[web.WebSocketResponse]] = defaultdict(set)
        self.phoenix_members: dict[str, set[_PhoenixSocket]] = defaultdict(set)
        self.socketio_members: dict[str, set[web.WebSocketResponse]] = defaultdict(set)
        self.report_to = report_to
        self._report_dirty = asyncio.Event()
        self._reporter: asyncio.Task[None] | None = None

    # -- plain HTTP ------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.Response:
        return web.Response(text="hello from the wsgauge demo app\n")

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(body=body, content_type=request.content_type)

    async def slow(self, request: web.Request) -> web.Response:
        try:
            seconds = min(60.0, max(0.0, float(request.query.get("seconds", "1"))))
        except ValueError:
            raise web.HTTPBadRequest(text="seconds must be a number") from None
        await asyncio.sleep(seconds)
        return web.Response(text=f"slow answer after {seconds} s\n")

    async def chunked(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_type = "text/plain"
        response.enable_chunked_encoding()
        await response.prepare(request)
        for number in range(int(request.query.get("chunks", "5"))):
            await response.write(f"chunk {number}\n".encode())
            await asyncio.sleep(0.01)
        await response.write_eof()
        return response

    async def status(self, request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        return web.Response(status=code, text=f"status {code}\n")

    async def fallback(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._serve_topic_socket(request, request.path)
        return web.Response(
            text=f"demo app: {request.method} {request.path}\n", headers={"X-Demo-App": "1"}
        )

    # -- WebSocket echo / broadcast --------------------------------------------------------

    async def topic_socket(self, request: web.Request) -> web.StreamResponse:
        return await self._serve_topic_socket(request, request.match_info["topic"])

    async def _serve_topic_socket(self, request: web.Request, topic: str) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=64 * 1024 * 1024, heartbeat=None)
        await ws.prepare(request)
        self.sockets[topic].add(ws)
        self._changed()
        try:
            async for message in ws:
                if message.type == aiohttp.WSMsgType.TEXT:
                    if await self._command(ws, request, topic, message.data):
                        break
                elif message.type == aiohttp.WSMsgType.BINARY:
                    await ws.send_bytes(message.data)
        finally:
            self.sockets[topic].discard(ws)
            if not self.sockets[topic]:
                del self.sockets[topic]
            self._changed()
        return ws

    async def _command(
        self, ws: web.WebSocketResponse, request: web.Request, topic: str, text: str
    ) -> bool:
        """Handle one text message; True when the socket is done."""
        if text.startswith("broadcast:"):
            payload = text.removeprefix("broadcast:")
            for peer in list(self.sockets.get(topic, ())):
                if not peer.closed:
                    await peer.send_str(payload)
        elif text.startswith("close:"):
            await ws.close(code=int(text.removeprefix("close:")), message=b"demo close")
            return True
        elif text.startswith("flood:"):
            _, count, size = text.split(":")
            chunk = b"x" * int(size)
            for _ in range(int(count)):
                await ws.send_bytes(chunk)
            await ws.send_str("flood done")
        elif text == "whoami":
            # which pod a client behind a Service landed on (in a pod, the hostname)
            await ws.send_str(f"pod:{os.environ.get('POD_NAME') or socket.gethostname()}")
        elif text == "drop":
            if request.transport is not None:
                request.transport.abort()
            return True
        else:
            await ws.send_str(text)
        return False

    # -- Phoenix channels ------------------------------------------------------------------

    async def phoenix_socket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        socket = _PhoenixSocket(ws=ws, v2=request.query.get("vsn", "").startswith("2."))
        try:
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    decoded = _decode_phoenix(message.data, socket.v2)
                except ValueError:
                    await ws.close(code=1007, message=b"bad phoenix message")
                    break
                await self._phoenix_message(socket, decoded)
        finally:
            for topic in list(socket.channels):
                self._phoenix_leave(socket, topic)
        return ws

    async def _phoenix_message(self, socket: _PhoenixSocket, message: _Message) -> None:
        join_ref, ref, topic, event, payload = (
            message.join_ref, message.ref, message.topic, message.event, message.payload,
        )  # fmt: skip
        if topic == PHOENIX_TOPIC and event == "heartbeat":
            await socket.push(topic, "phx_reply", _reply("ok"), ref, None)
        elif event == "phx_join":
            if topic.startswith("deny:"):
                reply = _reply("error", {"reason": "denied"})
                await socket.push(topic, "phx_reply", reply, ref, join_ref)
                return
            channel_ref = join_ref  # as in Phoenix: null for v1 clients that send none
            old = socket.channels.get(topic)
            if old is not None:  # like Phoenix: a duplicate join closes the old channel
                await socket.push(topic, "phx_close", {}, old.join_ref, old.join_ref)
            socket.channels[topic] = _Channel(topic, channel_ref)
            self.phoenix_members[topic].add(socket)
            self._changed()
            await socket.push(topic, "phx_reply", _reply("ok"), ref, channel_ref)
        elif topic not in socket.channels:
            await socket.push(topic, "phx_reply", _reply("error", {"reason": "unmatched topic"}),
                              ref, join_ref)  # fmt: skip
        elif event == "phx_leave":
            channel = socket.channels[topic]
            self._phoenix_leave(socket, topic)
            await socket.push(topic, "phx_reply", _reply("ok"), ref, channel.join_ref)
            await socket.push(topic, "phx_close", {}, channel.join_ref, channel.join_ref)
        elif event == "crash":
            channel = socket.channels[topic]
            self._phoenix_leave(socket, topic)
            await socket.push(topic, "phx_error", {}, channel.join_ref, channel.join_ref)
        elif event == "flood" and isinstance(payload, dict):
            channel = socket.channels[topic]
            body = "x" * int(payload.get("size", 1000))
            for _ in range(int(payload.get("count", 1))):
                await socket.push(topic, "flood", {"data": body}, None, channel.join_ref)
            await socket.push(topic, "phx_reply", _reply("ok"), ref, join_ref)
        elif event == "shout":
            for member in list(self.phoenix_members.get(topic, ())):
                member_channel = member.channels.get(topic)
                if member_channel is not None and not member.ws.closed:
                    await member.push(topic, "shout", payload, None, member_channel.join_ref)
            await socket.push(topic, "phx_reply", _reply("ok"), ref, join_ref)
        else:
            await socket.push(topic, "phx_reply", _reply("ok", payload), ref, join_ref)

    def _phoenix_leave(self, socket: _PhoenixSocket, topic: str) -> None:
        if socket.channels.pop(topic, None) is None:
            return
        members = self.phoenix_members.get(topic)
        if members is not None:
            members.discard(socket)
            if not members:
                del self.phoenix_members[topic]
        self._changed()

    # -- Socket.IO -------------------------------------------------------------------------

    async def socketio_socket(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("EIO") != "4" or request.query.get("transport") != "websocket":
            return web.Response(status=400, text="only EIO=4 over the websocket transport\n")
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        sid = secrets.token_urlsafe(12)
        namespaces: set[str] = set()
        handshake = {"sid": sid, "upgrades": [], "pingInterval": 25000, "pingTimeout": 20000,
                     "maxPayload": 1000000}  # fmt: skip
        await ws.send_str("0" + json.dumps(handshake))
        pinger = asyncio.create_task(_ping_forever(ws))
        try:
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                text: str = message.data
                if text == "1":
                    break
                if len(text) >= 2 and text[0] == "4":
                    await self._socketio_packet(ws, sid, namespaces, text[1], text[2:])
        finally:
            pinger.cancel()
            for namespace in list(namespaces):
                self._socketio_leave(ws, namespaces, namespace)
        return ws

    async def _socketio_packet(
        self, ws: web.WebSocketResponse, sid: str, namespaces: set[str], kind: str, body: str
    ) -> None:
        namespace, rest = "/", body
        if body.startswith("/"):
            namespace, _, rest = body.partition(",")
        prefix = "" if namespace == "/" else namespace + ","
        if kind == "0":
            if namespace.startswith("/deny"):
                await ws.send_str(f"44{prefix}" + json.dumps({"message": "not authorized"}))
                return
            namespaces.add(namespace)
            self.socketio_members[namespace].add(ws)
            self._changed()
            await ws.send_str(f"40{prefix}" + json.dumps({"sid": f"{sid}{namespace}"}))
        elif kind == "1":
            self._socketio_leave(ws, namespaces, namespace)
        elif kind == "2" and namespace in namespaces:
            digits = len(rest) - len(rest.lstrip("0123456789"))
            ack = rest[:digits]
            try:
                data = json.loads(rest[digits:] or "[]")
            except ValueError:
                data = None
            if not isinstance(data, list) or not data:
                return
            if data[0] == "broadcast":
                for member in list(self.socketio_members.get(namespace, ())):
                    if not member.closed:
                        await member.send_str(f"42{prefix}" + json.dumps(data))
            else:
                await ws.send_str(f"42{prefix}" + json.dumps(data))
            if ack:
                await ws.send_str(f"43{prefix}{ack}" + json.dumps(data[1:]))

    def _socketio_leave(self, ws: web.WebSocketResponse, namespaces: set[str], name: str) -> None:
        if name not in namespaces:
            return
        namespaces.discard(name)
        members = self.socketio_members.get(name)
        if members is not None:
            members.discard(ws)
            if not members:
                del self.socketio_members[name]
        self._changed()

    # -- report mode -----------------------------------------------------------------------

    def counts(self) -> dict[str, Any]:
        """The app's own counts, in the shape of the sidecar's ``PUT /report`` body."""
        topics = {topic: len(members) for topic, members in self.sockets.items() if members}
        for topic, phoenix_members in self.phoenix_members.items():
            topics[topic] = topics.get(topic, 0) + len(phoenix_members)
        for topic, socketio_members in self.socketio_members.items():
            topics[topic] = topics.get(topic, 0) + len(socketio_members)
        return {"connections": sum(topics.values()), "topics": topics}

    def _changed(self) -> None:
        self._report_dirty.set()

    async def report_forever(self, url: str) -> None:
        """PUT a snapshot to ``url`` after every change (and every 10 s as a refresh)."""
        async with aiohttp.ClientSession() as session:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._report_dirty.wait(), 10.0)
                self._report_dirty.clear()
                try:
                    async with session.put(url, json=self.counts()) as response:
                        if response.status != 200:
                            log.warning("report to %s: HTTP %s", url, response.status)
                except (aiohttp.ClientError, OSError) as error:
                    log.warning("report to %s failed: %s", url, error)
                    await asyncio.sleep(0.5)
                    self._report_dirty.set()

    async def _start_reporter(self, app: web.Application) -> None:
        if self.report_to:
            self._report_dirty.set()
            self._reporter = asyncio.create_task(self.report_forever(self.report_to))

    async def _stop_reporter(self, app: web.Application) -> None:
        if self._reporter is not None:
            self._reporter.cancel()

    def build(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_get("/", self.index)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_post("/echo", self.echo)
        app.router.add_get("/slow", self.slow)
        app.router.add_get("/chunked", self.chunked)
        app.router.add_route("*", "/status/{code:[1-5][0-9][0-9]}", self.status)
        app.router.add_get("/ws/{topic:.+}", self.topic_socket)
        app.router.add_get("/socket/websocket", self.phoenix_socket)
        app.router.add_get("/socket.io/", self.socketio_socket)
        app.router.add_route("*", "/{tail:.*}", self.fallback)
        app.on_startup.append(self._start_reporter)
        app.on_cleanup.append(self._stop_reporter)
        return app


@dataclass(frozen=True)
class _Message:
    """One decoded Phoenix message."""

    join_ref: str | None
    ref: str | None
    topic: str
    event: str
    payload: object


async def _ping_forever(ws: web.WebSocketResponse) -> None:
    """Engine.IO pings (``2``) every 25 s; the client answers ``3``."""
    while not ws.closed:
        await asyncio.sleep(25)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_str("2")


def _decode_phoenix(text: str, v2: bool) -> _Message:
    """A v1 or v2 message; ``ValueError`` if malformed."""
    data = json.loads(text)
    if v2:
        if not isinstance(data, list) or len(data) != 5:
            raise ValueError("a v2 message is a 5-element array")
        join_ref, ref, topic, event, payload = data
    else:
        if not isinstance(data, dict):
            raise ValueError("a v1 message is an object")
        join_ref, ref = data.get("join_ref"), data.get("ref")
        topic, event, payload = data.get("topic"), data.get("event"), data.get("payload")
    if not isinstance(topic, str) or not isinstance(event, str):
        raise ValueError("topic and event must be strings")
    return _Message(join_ref, ref, topic, event, payload)


def _reply(status: str, response: object = None) -> dict[str, object]:
    return {"status": status, "response": response if response is not None else {}}


def main(argv: Sequence[str] | None = None) -> None:
    """Console script ``wsgauge-demo-app``."""
    parser = argparse.ArgumentParser(
        prog="wsgauge-demo-app", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--listen",
        default=os.environ.get("WSGAUGE_DEMO_LISTEN", "127.0.0.1:8081"),
        help="HOST:PORT to listen on (default 127.0.0.1:8081, env WSGAUGE_DEMO_LISTEN)",
    )
    parser.add_argument(
        "--report-to",
        default=os.environ.get("WSGAUGE_DEMO_REPORT_TO") or os.environ.get("WSGAUGE_REPORT_URL"),
        metavar="URL",
        help="report mode: PUT own counts to this URL, the sidecar's loopback report listener "
        "(e.g. http://127.0.0.1:9091/report; env WSGAUGE_DEMO_REPORT_TO, else WSGAUGE_REPORT_URL)",
    )
    args = parser.parse_args(argv)
    try:
        listen = Address.parse_listen(args.listen)
    except AddressError as error:
        parser.error(f"--listen: {error}")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    print(f"wsgauge-demo-app listening on {listen}", file=sys.stderr, flush=True)
    web.run_app(
        DemoApp(report_to=args.report_to).build(),
        host=listen.host,
        port=listen.port,
        access_log=None,
        print=None,
        shutdown_timeout=1.0,
    )


if __name__ == "__main__":
    main()
