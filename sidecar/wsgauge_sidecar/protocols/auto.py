"""``--topic auto``: the topic rule of each socket, chosen from its handshake.

Pure: :func:`choose_rule` looks at the upgrade request and the app's 101 answer
and names the rule that counts that socket:

1. the subprotocol the app accepted (``Sec-WebSocket-Protocol`` of the 101),
   when it names a frame protocol (:data:`SUBPROTOCOLS`);
2. else the shape of the request URL (:data:`URL_SHAPES`, first match);
3. else the fallback rule (``auto:RULE``; ``path`` by default).

Only rules the sidecar knows are chosen (a protocol missing from the registry is
skipped). :func:`candidate_protocols` tells, from the request alone, which frame
protocols the rule chosen later may be: those its offered subprotocols name and
the one its URL shape suggests (the app can only accept a subprotocol the client
offered, so the choice cannot surprise it). When one of them, or the fallback,
reads messages, the proxy removes ``Sec-WebSocket-Extensions`` from that request;
permessage-deflate is left alone for every other socket.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from urllib.parse import parse_qsl

from wsgauge_sidecar.httpwire import RequestHead, ResponseHead, split_target

SUBPROTOCOLS: dict[str, str] = {
    "actioncable-v1-json": "actioncable",
    "actioncable-v1-ext-json": "actioncable",
    "graphql-transport-ws": "graphql-ws",
    "graphql-ws": "graphql-ws",
    "mqtt": "mqtt",
    "mqttv3.1": "mqtt",
    "v10.stomp": "stomp",
    "v11.stomp": "stomp",
    "v12.stomp": "stomp",
}
"""Accepted subprotocol (lower case) -> the frame protocol it is spoken with."""

URL_SHAPES: tuple[tuple[re.Pattern[str], str | None, str], ...] = (
    (re.compile(r"/socket\.io/"), None, "socketio"),
    (re.compile(r"^/"), "EIO", "socketio"),
    (re.compile(r"/connection/websocket$"), None, "centrifugo"),
    (re.compile(r"/[0-9]{3}/[^/]+/websocket$"), None, "stomp"),
    (re.compile(r"/websocket$"), "vsn", "phoenix"),
    (re.compile(r"/cable$"), None, "actioncable"),
    (re.compile(r"^/app/[^/]+$"), "protocol", "pusher"),
)
"""(path pattern, query parameter that must be present or ``None``, protocol), in order:
Socket.IO's ``/socket.io/?EIO=4``, Centrifugo's ``/connection/websocket``, SockJS's
``/PREFIX/SERVER/SESSION/websocket`` (STOMP over SockJS), Phoenix's and
Supabase's ``.../websocket?vsn=2.0.0``, Action Cable's ``/cable``, Pusher's
``/app/KEY?protocol=7``."""


def protocol_from_subprotocol(response: ResponseHead, known: Collection[str]) -> str | None:
    """The frame protocol named by the subprotocol the app accepted, if any (and known)."""
    accepted = response.header(b"sec-websocket-protocol")
    if accepted is None:
        return None
    name = SUBPROTOCOLS.get(accepted.decode("latin-1").strip().lower())
    return name if name in known else None


def protocol_from_url(target: str, known: Collection[str]) -> str | None:
    """The frame protocol the request URL's shape suggests, if any (and known)."""
    path, query = split_target(target)
    names = {name for name, _ in parse_qsl(query, keep_blank_values=True)}
    for pattern, parameter, protocol in URL_SHAPES:
        if protocol in known and pattern.search(path) and (parameter is None or parameter in names):
            return protocol
    return None


def offered_protocols(request: RequestHead, known: Collection[str]) -> set[str]:
    """The frame protocols the subprotocols offered by the client name."""
    offered: set[str] = set()
    for token in request.header_tokens(b"sec-websocket-protocol"):
        name = SUBPROTOCOLS.get(token.decode("latin-1").lower())
        if name is not None and name in known:
            offered.add(name)
    return offered


def choose_rule(
    request: RequestHead, response: ResponseHead, fallback: str, known: Collection[str]
) -> str:
    """The rule of one socket: a frame protocol's name, or ``fallback`` (a rule spec)."""
    return (
        protocol_from_subprotocol(response, known)
        or protocol_from_url(request.target, known)
        or fallback
    )


def candidate_protocols(request: RequestHead, known: Collection[str]) -> set[str]:
    """The frame protocols :func:`choose_rule` may pick for this request's socket, before the
    app answers: those its offered subprotocols name and the one its URL shape suggests (the
    app can only accept a subprotocol the client offered). The fallback is not included."""
    candidates = offered_protocols(request, known)
    by_url = protocol_from_url(request.target, known)
    if by_url is not None:
        candidates.add(by_url)
    return candidates
