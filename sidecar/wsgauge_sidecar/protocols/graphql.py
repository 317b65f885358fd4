"""GraphQL over WebSocket: which subscription operations a socket runs.

Pure and sans-I/O, a :class:`wsgauge_sidecar.protocols.base.ProtocolSession`
for both subprotocols (one session understands both message sets, so the
accepted ``Sec-WebSocket-Protocol`` only has to be recorded):

* ``graphql-transport-ws`` (the ``graphql-ws`` library, PROTOCOL.md of
  enisdenjo/graphql-ws): client ``{"id", "type": "subscribe", "payload":
  {"query", "operationName"?, ...}}`` and ``{"id", "type": "complete"}``;
  server ``next``, ``error`` (ends the operation) and ``complete`` by ``id``.
* ``graphql-ws`` (legacy subscriptions-transport-ws, its PROTOCOL.md): client
  ``start`` (same payload) and ``stop`` by ``id``; server ``data``, ``error``
  (ends the operation) and ``complete``. A ``start`` with the id of a running
  operation replaces it.

Counting rules: only operations of type ``subscription`` count (queries and
mutations sent over the socket never do). A subscription is in its topic from
the client's ``subscribe``/``start`` until the client's ``complete``/``stop``
or the server's ``complete``/``error`` for its id. The topic is the
``operationName`` of the payload, else the name of the operation in the
document, else its first root field (``alias: field`` counts as ``field``;
fragments are followed). A subscription the server refuses (validation
error) is therefore counted from its ``subscribe`` until the ``error`` that
answers it right after. Several subscriptions of one socket to the same topic
count the socket once.

What the wire cannot show: the arguments' meaning (``onMessage(room: "a")`` and
``(room: "b")`` are one topic), and a document this reader cannot parse (the
server refuses such a document too): it is not counted.

Pre-filter: a client message is decoded only if it contains ``subscribe``,
``start``, ``complete``, ``stop`` or ``\\u`` (JSON can spell those words
otherwise only with ``\\u`` escapes); a server message only while an
operation is counted and if it contains ``complete``, ``error`` or ``\\u``.
``next``/``data`` messages without them are relayed undecoded.

Errors: an inspected message that is not a JSON object, or a ``subscribe`` /
``start`` without a string ``id`` or an object ``payload`` (1007); more than
``max_operations`` running subscriptions (1008).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from wsgauge_sidecar.exceptions import ProtocolError, ProtocolLimitError
from wsgauge_sidecar.httpwire import RequestHead, ResponseHead
from wsgauge_sidecar.protocols.base import (
    MAX_TOPICS_PER_SOCKET,
    NO_EVENTS,
    ProtocolEvent,
    ProtocolSpec,
    SubscriptionTable,
    normalize_topic,
)
from wsgauge_sidecar.protocols.prefilter import MessageFilter

SUBPROTOCOLS = ("graphql-transport-ws", "graphql-ws")
"""The subprotocols this reader follows (the modern one first)."""

MAX_ID_LENGTH = 200
"""Longest operation id tracked; a subscription with a longer id closes the socket (1008)."""

_CLIENT_WORDS = re.compile(rb"subscribe|start|complete|stop|\\u")
_SERVER_WORDS = re.compile(rb"complete|error|\\u")

_TOKEN = re.compile(
    r"""
    (?P<skip>[\s,\ufeff]+|\#[^\n\r]*)
    |(?P<block>\"\"\"(?:\\\"\"\"|[^\"]|\"(?!\"\"))*\"\"\")
    |(?P<string>"(?:\\.|[^"\\\n\r])*")
    |(?P<spread>\.\.\.)
    |(?P<name>[_A-Za-z][_0-9A-Za-z]*)
    |(?P<number>-?[0-9][0-9.eE+\-]*)
    |(?P<punct>[!$&()\:=@\[\]{|}])
    """,
    re.VERBOSE,
)


_CLIENT_NEEDLES = (b"subscribe", b"start", b"complete", b"stop", b"\\u")
_SERVER_NEEDLES = (b"complete", b"error", b"\\u")
FILTER = MessageFilter(client_text=_CLIENT_NEEDLES)
"""The pre-filter as data while no subscription runs (server messages cannot matter)."""
FILTER_RUNNING = MessageFilter(client_text=_CLIENT_NEEDLES, server_text=_SERVER_NEEDLES)
"""The pre-filter as data while a subscription runs (the spec's wide filter)."""


class GraphQLDocumentError(ValueError):
    """A GraphQL document this reader cannot follow (internal; never escapes the module)."""


def tokens(document: str) -> list[tuple[str, str]]:
    """The significant tokens of a GraphQL document: ``(kind, text)``, kind ``name``,
    ``punct``, ``spread``, ``string`` or ``number``."""
    result: list[tuple[str, str]] = []
    position, size = 0, len(document)
    while position < size:
        match = _TOKEN.match(document, position)
        if match is None:
            raise GraphQLDocumentError(f"unexpected character at {position}")
        kind = match.lastgroup or "skip"
        if kind == "block":
            kind = "string"
        if kind != "skip":
            result.append((kind, match.group()))
        position = match.end()
    return result


class _Parser:
    """Finds the operations and fragments of a document (top level only)."""

    def __init__(self, document: str) -> None:
        self.tokens = tokens(document)
        self.position = 0
        # (operation type, name or None, index of its selection set's "{")
        self.operations: list[tuple[str, str | None, int]] = []
        self.fragments: dict[str, int] = {}  # name -> index of its selection set's "{"

    def parse(self) -> None:
        items = self.tokens
        while self.position < len(items):
            kind, text = items[self.position]
            if (kind, text) == ("punct", "{"):
                self.operations.append(("query", None, self.position))
                self._skip_block()
                continue
            if kind != "name":
                raise GraphQLDocumentError(f"unexpected {text!r} at the top level")
            if text in ("query", "mutation", "subscription"):
                self.position += 1
                name = None
                if self._peek()[0] == "name":
                    name = items[self.position][1]
                    self.position += 1
                start = self._to_selection_set()
                self.operations.append((text, name, start))
                self._skip_block()
            elif text == "fragment":
                self.position += 1
                fragment = self._peek()[1]
                start = self._to_selection_set()
                self.fragments[fragment] = start
                self._skip_block()
            else:  # a type system definition: skip to its end (not executable)
                self._to_selection_set()
                self._skip_block()

    def _peek(self) -> tuple[str, str]:
        if self.position >= len(self.tokens):
            return ("end", "")
        return self.tokens[self.position]

    def _to_selection_set(self) -> int:
        """Skip variables, directives, type conditions up to the next top-level ``{``."""
        depth = 0
        while self.position < len(self.tokens):
            kind, text = self.tokens[self.position]
            if kind == "punct":
                if text in "([":
                    depth += 1
                elif text in ")]":
                    depth -= 1
                elif text == "{" and depth == 0:
                    return self.position
            self.position += 1
        raise GraphQLDocumentError("definition without a selection set")

    def _skip_block(self) -> None:
        """Skip the balanced ``{...}`` starting at the current position."""
        depth = 0
        while self.position < len(self.tokens):
            kind, text = self.tokens[self.position]
            self.position += 1
            if kind == "punct" and text == "{":
                depth += 1
            elif kind == "punct" and text == "}":
                depth -= 1
                if depth == 0:
                    return
        raise GraphQLDocumentError("unbalanced braces")

    def first_field(self, start: int, seen: frozenset[str] = frozenset()) -> str | None:
        """The first field selected by the selection set at ``start`` (aliases resolved)."""
        items = self.tokens
        position = start + 1
        if position >= len(items):
            return None
        kind, text = items[position]
        if kind == "name":
            after = items[position + 1] if position + 1 < len(items) else ("end", "")
            if after == ("punct", ":") and position + 2 < len(items):
                return items[position + 2][1]
            return text
        if kind == "spread" and position + 1 < len(items):
            kind, text = items[position + 1]
            if kind == "name" and text != "on":
                if text in seen or text not in self.fragments:
                    return None
                return self.first_field(self.fragments[text], seen | {text})
            self.position = position + 1
            return self.first_field(self._to_selection_set(), seen)
        return None


def subscription_topic(document: str, operation_name: str | None) -> str | None:
    """The topic of a ``subscribe``/``start`` payload, or ``None`` if it is no subscription.

    ``None`` too for a document that cannot be parsed or names no such operation.
    """
    try:
        parser = _Parser(document)
        parser.parse()
        if operation_name:
            chosen = [op for op in parser.operations if op[1] == operation_name]
        else:
            chosen = parser.operations if len(parser.operations) == 1 else []
        if not chosen:
            return None
        kind, name, start = chosen[0]
        if kind != "subscription":
            return None
        return normalize_topic(name or parser.first_field(start))
    except (GraphQLDocumentError, RecursionError):
        return None


class GraphQLSession:
    """Follows one GraphQL-over-WebSocket socket and reports its subscriptions' topics."""

    __slots__ = ("_operations", "max_operations", "subprotocol")

    def __init__(
        self, subprotocol: str | None = None, *, max_operations: int = MAX_TOPICS_PER_SOCKET
    ) -> None:
        self.subprotocol = subprotocol
        """The subprotocol the app accepted (``graphql-transport-ws``, ``graphql-ws``, None)."""
        self.max_operations = max_operations
        """Running subscriptions; one more raises ``ProtocolLimitError``."""
        self._operations = SubscriptionTable()  # id -> topic of a running subscription

    @property
    def topics(self) -> frozenset[str]:
        """The topics the socket is subscribed to now."""
        return self._operations.topics

    @property
    def message_filter(self) -> MessageFilter:
        """The pre-filter of the session's state now, as needles (see protocols.base)."""
        return FILTER_RUNNING if self._operations else FILTER

    def client_text(self, payload: bytes) -> Sequence[ProtocolEvent]:
        if _CLIENT_WORDS.search(payload) is None:
            return NO_EVENTS
        return self.client_message(payload)

    def server_text(self, payload: bytes) -> Sequence[ProtocolEvent]:
        if not self._operations or _SERVER_WORDS.search(payload) is None:
            return NO_EVENTS
        return self.server_message(payload)

    def client_binary(self, payload: bytes) -> Sequence[ProtocolEvent]:
        return NO_EVENTS  # neither subprotocol uses binary messages

    server_binary = client_binary

    # ------------------------------------------------------ full decoding

    def client_message(self, payload: bytes) -> Sequence[ProtocolEvent]:
        """A client message, always decoded."""
        message = _decode(payload)
        kind, ident = message.get("type"), message.get("id")
        if kind in ("subscribe", "start"):
            body = message.get("payload")
            if not isinstance(ident, str) or not isinstance(body, dict):
                raise ProtocolError(f"GraphQL {kind} needs a string id and an object payload")
            query, name = body.get("query"), body.get("operationName")
            topic = None
            if isinstance(query, str):
                topic = subscription_topic(query, name if isinstance(name, str) else None)
            events: list[ProtocolEvent] = []
            if ident in self._operations:
                if kind == "subscribe":
                    return NO_EVENTS  # the server closes the socket (4409): keep the first
                self._end(ident, "replaced", events)
            if topic is not None:
                self._start(ident, topic, events)
            return events
        if kind in ("complete", "stop") and isinstance(ident, str):
            events = []
            self._end(ident, kind, events)
            return events
        return NO_EVENTS

    def server_message(self, payload: bytes) -> Sequence[ProtocolEvent]:
        """A server message, always decoded."""
        message = _decode(payload)
        kind, ident = message.get("type"), message.get("id")
        if kind in ("complete", "error") and isinstance(ident, str):
            events: list[ProtocolEvent] = []
            self._end(ident, kind, events)
            return events
        return NO_EVENTS

    def _start(self, ident: str, topic: str, events: list[ProtocolEvent]) -> None:
        if len(ident) > MAX_ID_LENGTH:
            raise ProtocolLimitError(f"GraphQL operation id over {MAX_ID_LENGTH} characters")
        if len(self._operations) >= self.max_operations:
            raise ProtocolLimitError(f"more than {self.max_operations} GraphQL subscriptions")
        self._operations.add(ident, topic, events)

    def _end(self, ident: str, reason: str, events: list[ProtocolEvent]) -> None:
        self._operations.remove(ident, reason, events)


def _decode(payload: bytes) -> dict[str, object]:
    try:
        message = json.loads(payload)
    except (ValueError, RecursionError):
        raise ProtocolError("GraphQL message is not valid JSON") from None
    if not isinstance(message, dict):
        raise ProtocolError("GraphQL message must be a JSON object")
    return message


def _new_session(request: RequestHead, response: ResponseHead) -> GraphQLSession:
    accepted = response.header("sec-websocket-protocol")
    name = accepted.decode("latin-1").strip() if accepted else None
    return GraphQLSession(name)


SPEC = ProtocolSpec(
    name="graphql-ws",
    summary="GraphQL over WebSocket (graphql-transport-ws and legacy graphql-ws):\n"
    "running subscription operations, by operation name else first root field",
    factory=_new_session,
    message_filter=FILTER_RUNNING,
)
"""The ``graphql-ws`` rule."""
