"""The live view's WebSocket messages (``/stats/ws``), sans-I/O.

The sidecar's admin port and the operator's stats port both serve ``GET /stats/ws``, a
WebSocket that pushes stats as they change and answers a few requests. Every message is one
JSON object in one text frame. This module holds the one definition of those messages, the
parser of the requests, the rule for cross-origin browsers, and :class:`LiveOutbox`, the
per-client queue that coalesces pushes and bounds what a client can pile up. The asyncio
adapters (:mod:`wsgauge_sidecar.admin`, the operator's live server) only move frames.

Server to client (``type`` tells them apart):

- ``{"type": "local", "seq": N, "stats": {...}}``: the sidecar's stats document
  (:mod:`wsgauge_contract.stats`), at once on connect, after every change (coalesced: a slow
  reader gets the latest document, never a backlog), and as the answer to ``{"get": "local"}``;
- ``{"type": "cluster", "seq": N, "cluster": {...}}``: the operator's cluster document
  (per ConnectionStats, per pod, per node, per topic, desired and current replicas, recent
  Events), pushed the same way and the answer to ``{"get": "cluster"}``;
- ``{"type": "connectionstats", "namespace": N, "name": M, "connectionStats": {...}}``: one
  ConnectionStats as the cluster document shows it, the answer to
  ``{"get": "connectionstats", "namespace": N, "name": M}``;
- ``{"type": "error", "error": "..."}``: a request that could not be answered (malformed, an
  unknown ``get``, a ConnectionStats that does not exist). The socket stays open.

An answer repeats the request's ``id`` (a string or an integer, optional) so a client can
match answers to requests. Client to server, nothing else is accepted: binary frames and
requests over :data:`MAX_REQUEST_BYTES` close the socket (1003, 1009); a client that sends
more than ``max_pending_answers`` requests without reading the answers is closed with 1008.
No message changes any state, so the WebSocket follows the read-only rule of the HTTP
endpoints beside it; :func:`origin_allowed` refuses the upgrade from a browser page of
another origin (the HTTP endpoints send no CORS headers, so such a page cannot read them
either).
"""

from __future__ import annotations

import json
import urllib.parse
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from wsgauge_contract.exceptions import ContractError

LIVE_PATH = "/stats/ws"
"""Where the sidecar's admin port and the operator serve the live WebSocket."""

MAX_REQUEST_BYTES = 4096
"""Largest request a server reads; a bigger one closes the socket with 1009."""

GET_LOCAL = "local"
GET_CLUSTER = "cluster"
GET_CONNECTIONSTATS = "connectionstats"
SIDECAR_GETS = frozenset({GET_LOCAL})
"""What a sidecar's ``/stats/ws`` answers."""
OPERATOR_GETS = frozenset({GET_CLUSTER, GET_CONNECTIONSTATS})
"""What the operator's ``/stats/ws`` answers."""

CLOSE_UNSUPPORTED = 1003
"""Close code for a binary frame."""
CLOSE_POLICY = 1008
"""Close code for a client that asks without reading the answers."""
CLOSE_TOO_BIG = 1009
"""Close code for a request over :data:`MAX_REQUEST_BYTES`."""


class LiveRequestError(ContractError):
    """A request on ``/stats/ws`` is malformed or asks for something this server lacks."""

    def __init__(self, message: str, request_id: str | int | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id
        """The request's ``id``, when it could be read (echoed in the error message)."""


@dataclass(frozen=True)
class LiveRequest:
    """One parsed request."""

    get: str
    """``local``, ``cluster`` or ``connectionstats``."""
    namespace: str = ""
    """For ``connectionstats``."""
    name: str = ""
    """For ``connectionstats``."""
    request_id: str | int | None = None
    """The client's ``id``, echoed in the answer."""


def _field(body: Mapping[str, Any], key: str, request_id: str | int | None) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value or len(value) > 253:
        raise LiveRequestError(f"{key!r} must be a non-empty string", request_id)
    return value


def parse_request(text: str, allowed: frozenset[str]) -> LiveRequest:
    """Parse one text frame; raises :class:`LiveRequestError` with a message for the client."""
    if len(text.encode()) > MAX_REQUEST_BYTES:
        raise LiveRequestError(f"request larger than {MAX_REQUEST_BYTES} bytes")
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):
        raise LiveRequestError("request is not JSON") from None
    if not isinstance(body, dict):
        raise LiveRequestError("request must be a JSON object")
    raw_id = body.get("id")
    request_id: str | int | None = None
    valid_string = isinstance(raw_id, str) and len(raw_id) <= 64
    if valid_string or (isinstance(raw_id, int) and not isinstance(raw_id, bool)):
        request_id = raw_id
    elif raw_id is not None:
        raise LiveRequestError("'id' must be a string (at most 64 characters) or an integer")
    get = body.get("get")
    if not isinstance(get, str) or get not in allowed:
        choices = ", ".join(sorted(allowed))
        raise LiveRequestError(f"'get' must be one of: {choices}", request_id)
    known = {"get", "id"} | ({"namespace", "name"} if get == GET_CONNECTIONSTATS else set())
    unknown = set(body) - known
    if unknown:
        raise LiveRequestError(f"unknown keys: {', '.join(sorted(unknown))}", request_id)
    if get == GET_CONNECTIONSTATS:
        return LiveRequest(
            get,
            _field(body, "namespace", request_id),
            _field(body, "name", request_id),
            request_id,
        )
    return LiveRequest(get, request_id=request_id)


def encode_message(message: Mapping[str, Any]) -> str:
    """One message as the text of one frame (compact JSON)."""
    return json.dumps(message, separators=(",", ":"), sort_keys=False)


def _with_id(message: dict[str, Any], request_id: str | int | None) -> dict[str, Any]:
    if request_id is not None:
        message["id"] = request_id
    return message


def local_message(stats: Mapping[str, Any], request_id: str | int | None = None) -> dict[str, Any]:
    """The sidecar's push (and answer to ``{"get": "local"}``)."""
    return _with_id({"type": "local", "seq": stats.get("seq", 0), "stats": stats}, request_id)


def cluster_message(
    cluster: Mapping[str, Any], request_id: str | int | None = None
) -> dict[str, Any]:
    """The operator's push (and answer to ``{"get": "cluster"}``)."""
    return _with_id(
        {"type": "cluster", "seq": cluster.get("seq", 0), "cluster": cluster}, request_id
    )


def connectionstats_message(
    namespace: str, name: str, entry: Mapping[str, Any], request_id: str | int | None = None
) -> dict[str, Any]:
    """The answer to ``{"get": "connectionstats", ...}``."""
    return _with_id(
        {"type": "connectionstats", "namespace": namespace, "name": name, "connectionStats": entry},
        request_id,
    )


def error_message(error: str, request_id: str | int | None = None) -> dict[str, Any]:
    """An answer that says why a request was not answered."""
    return _with_id({"type": "error", "error": error}, request_id)


def origin_allowed(origin: str | None, host: str | None) -> bool:
    """Whether an upgrade may proceed: no ``Origin`` (not a browser), or one naming ``Host``.

    Browsers send the page's origin with every WebSocket upgrade and apply no same-origin
    rule to it; the server must. The page the operator serves has the operator's own origin
    (through ``kubectl port-forward``, an Ingress or the API server's proxy the browser sends
    the ``Host`` it connected to, and the ``Origin`` of that same address).
    """
    if origin is None:
        return True
    if host is None:
        return False
    parsed = urllib.parse.urlsplit(origin)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        return False
    default = "443" if parsed.scheme == "https" else "80"
    return _host_port(parsed.netloc, default) == _host_port(host, default)


def _host_port(netloc: str, default_port: str) -> tuple[str, str]:
    netloc = netloc.lower().rsplit("@", 1)[-1]
    if netloc.startswith("["):
        host, _, rest = netloc.partition("]")
        return host + "]", rest.lstrip(":") or default_port
    host, _, port = netloc.partition(":")
    return host, port or default_port


@dataclass(frozen=True)
class Push:
    """Send the current document (computed when it is sent, so it is always the latest)."""


PUSH = Push()


class LiveOutbox:
    """What one live client is owed, bounded whatever the client does.

    A change only sets a flag (:meth:`note_change`): however many changes come while a send
    waits, the client gets one push, of the latest document. Requests queue their answers,
    at most ``max_pending_answers``; :meth:`add_request` returns False when a client asks more
    while not reading, and the adapter closes that socket (:data:`CLOSE_POLICY`). A client
    that does not read at all is cut by the adapter's send timeout. So one client holds at
    most ``max_pending_answers`` requests, one pending push and what the transport buffers.
    """

    def __init__(self, max_pending_answers: int = 16) -> None:
        self._max = max_pending_answers
        self._answers: deque[LiveRequest | LiveRequestError] = deque()
        self._push_due = True  # the first document goes out at once

    @property
    def push_due(self) -> bool:
        """Whether a push is owed."""
        return self._push_due

    def note_change(self) -> None:
        """The document changed: owe the client one push (coalesced)."""
        self._push_due = True

    def add_request(self, request: LiveRequest | LiveRequestError) -> bool:
        """Queue the answer to a request (or its error); False: the client is over its bound."""
        if len(self._answers) >= self._max:
            return False
        self._answers.append(request)
        return True

    def take(self) -> LiveRequest | LiveRequestError | Push | None:
        """The next thing to send (answers first, then the push), or None."""
        if self._answers:
            return self._answers.popleft()
        if self._push_due:
            self._push_due = False
            return PUSH
        return None

    def __len__(self) -> int:
        return len(self._answers) + int(self._push_due)
