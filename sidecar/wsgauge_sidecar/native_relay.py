"""The native relay's asyncio adapter: hands an upgraded socket pair to C and keeps its count.

A counted WebSocket does not stay in Python after the 101: its two sockets are handed to the
native relay (``wsgauge_sidecar._native_relay``, a C extension built with the
sidecar distribution from ``sidecar/native/native_relay.c``). One native thread with its own
epoll loop relays the bytes both ways without the GIL and without waking Python per chunk. It
follows the app-to-client frame boundaries (the same rules as
:class:`~wsgauge_sidecar.wsframes.FrameBoundaryTracker`), so a drain's 1001 close frame is
injected between two frames, never inside one.

Under a frame protocol rule (``phoenix``, ``graphql-ws``, ..., and ``auto`` for the sockets it
gives one) the native thread also reads both directions as messages, with the checks of
:class:`~wsgauge_sidecar.wsframes.MessageReader` (a malformed frame, invalid UTF-8 or a message
over ``--max-message-bytes`` closes that socket with 1002, 1007 or 1009), and hands Python a
copy of a whole message only when it passes the protocol's message filter
(:class:`~wsgauge_sidecar.protocols.prefilter.MessageFilter`: byte needles or a packet scan per
direction and type, the session's own pre-filter as data). Python feeds it to the socket's
session, applies the Joined/Left events and acknowledges, with the session's filter for its state
now (``relay.update``); until then the thread uses the spec's wide filter, so no message the
session may need is missed. A message the session finds malformed closes that one socket with
the error's close code (``relay.fail``). The bytes themselves are relayed without waiting for
Python.

Python hears from the thread once per batch, through an eventfd the event loop watches:

* ``EV_CLOSED`` with the reason (``normal`` if the app's close frame was seen, else
  ``client_gone`` / ``upstream_gone``, or ``protocol_error`` for a malformed frame from the
  app, after which the client gets a lingering close): :class:`NativeSocket` uncounts it;
* ``EV_CLIENT_EOF``: the client half-closed; the app has ``close_timeout`` seconds to finish;
* ``EV_CLIENT_TEXT`` ... ``EV_SERVER_BINARY`` with the payload: a message for the session.

Python talks to the thread for what is decided in Python: :meth:`NativeSocket.close_gracefully`
(drain), :meth:`NativeSocket.end` (close timeout, shutdown). Counting stays exactly once: a
socket is uncounted either by its ``EV_CLOSED`` event or by :meth:`NativeSocket.end`, whichever
comes first; the other finds it ended.

The hand-off: the 101 is not written by asyncio but given to the native side with the bytes
already read past it; both sockets are duplicated (``os.dup``) and their asyncio transports
closed (the duplicates keep the connections open). A socket whose transport still has bytes
buffered is not handed off (it stays in the Python relay): nothing may be reordered.

``--relay``: ``auto`` (native when the extension loads, else Python, said at start), ``native``
(exit 2 if it does not load), ``python`` (never native).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import time
from types import ModuleType
from typing import TYPE_CHECKING, Any

from wsgauge_sidecar.exceptions import ProtocolError
from wsgauge_sidecar.protocols.base import Joined, Left, ProtocolSession
from wsgauge_sidecar.protocols.prefilter import MessageFilter, MessageTest, Scan
from wsgauge_sidecar.relay import CLOSE_REASONS
from wsgauge_sidecar.topics import AUTO

if TYPE_CHECKING:
    from wsgauge_sidecar.exchange import SwitchProtocols
    from wsgauge_sidecar.proxy import ClientConnection
    from wsgauge_sidecar.relay import UpstreamSide
    from wsgauge_sidecar.state import SidecarState
    from wsgauge_sidecar.topics import TopicRule

log = logging.getLogger("wsgauge.sidecar.native_relay")

RELAY_CHOICES = ("auto", "native", "python")
"""Values of ``--relay``."""

_REASONS = {0: "normal", 1: "client_gone", 2: "upstream_gone", 3: "protocol_error"}
"""The native side's close reasons (``R_*``) by number."""


def load_extension() -> tuple[ModuleType | None, str]:
    """The native extension module, or ``None`` and why it could not be loaded."""
    try:
        return importlib.import_module("wsgauge_sidecar._native_relay"), "loaded"
    except ImportError as error:
        return None, f"not available ({error})"


def native_test(test: MessageTest, extension: ModuleType) -> object:
    """A message test in the form ``Relay.filter`` takes: needles as they are, a scan as
    ``(kind, byte strings)`` (an MQTT scan's one byte string lists its packet types)."""
    if isinstance(test, Scan):
        return (getattr(extension, test.native_kind), test.native_items())
    return test


class NativeSocket:
    """A counted WebSocket relayed by the native thread (what ``ClientConnection.relay`` is
    after the hand-off); the Python relay's interface, with Python's part of the work."""

    __slots__ = (
        "_closing",
        "_gone_first",
        "_timer",
        "client",
        "end_reason",
        "ended",
        "handled",
        "opened_at",
        "owner",
        "session",
        "slot",
        "socket_id",
    )

    def __init__(
        self,
        owner: NativeRelay,
        client: ClientConnection,
        socket_id: int,
        session: ProtocolSession | None = None,
    ) -> None:
        self.owner = owner
        self.client = client
        self.socket_id: int | None = socket_id
        self.session = session
        """The frame protocol session fed the messages that pass the filter (or ``None``)."""
        self.handled = 0
        """Message events handled since the last acknowledgement (``relay.update``)."""
        self.slot = -1
        self.opened_at = time.monotonic()
        self.ended = False
        self.end_reason: str | None = None
        self._closing = False
        self._gone_first: str | None = None
        self._timer: asyncio.TimerHandle | None = None

    # -- what asyncio still reports after the hand-off: nothing to do ---------------------

    def from_client(self, data: bytes) -> None:
        """Never called: the client's bytes go to the native thread."""

    def from_upstream(self, data: bytes) -> None:
        """Never called: the app's bytes go to the native thread."""

    def client_eof(self) -> bool:
        """The closed asyncio transport's end: not this socket's (the native side owns it)."""
        return False

    def upstream_eof(self) -> bool:
        """As :meth:`client_eof`."""
        return False

    def client_lost(self, exc: Exception | None) -> None:
        """The asyncio transport closed at the hand-off: not this socket's end."""

    def upstream_lost(self, exc: Exception | None) -> None:
        """As :meth:`client_lost`."""

    # -- Python's decisions ----------------------------------------------------------------

    def close_gracefully(self, code: int, reason: str) -> bool:
        """Close toward the client with ``code`` at the next frame boundary (drain); False if
        the socket was already ending or closing."""
        if self.ended or self._closing:
            return False
        text = CLOSE_REASONS.get(code, "").encode()
        if not self.owner.relay.close_gracefully(self.slot, self.socket_id, code, text):
            return False
        self._closing = True
        self.end_reason = reason
        self._start_timer()
        return True

    def end(self, reason: str, *, abort: bool, linger: bool = False) -> None:
        """Uncount (exactly once) and close both connections now."""
        if self.ended:
            return
        self.owner.relay.end(self.slot, self.socket_id, abort)
        self._ended(reason)

    # -- the native side's events ----------------------------------------------------------

    def native_message(self, kind: int, payload: bytes) -> None:
        """A message that passed the filter: feed it to the session, apply its events."""
        session = self.session
        self.handled += 1
        if session is None or self.ended:
            return
        handler = (session.client_text, session.client_binary, session.server_text,
                   session.server_binary)[kind - self.owner.ev_message]  # fmt: skip
        try:
            events = handler(payload)
        except ProtocolError as error:
            side = "client" if kind - self.owner.ev_message < 2 else "upstream"
            log.info("socket %s: protocol error from %s: %s (close %s)", self.socket_id, side,
                     error, error.close_code)  # fmt: skip
            reason = CLOSE_REASONS.get(error.close_code, "").encode()
            self.owner.relay.fail(self.slot, self.socket_id, error.close_code, reason)
            self._ended("protocol_error")
            return
        if not events:
            return
        counter = self.client.state.connection_counter
        socket_id = self.socket_id
        assert socket_id is not None
        for event in events:
            if isinstance(event, Joined):
                counter.join(socket_id, event.topic)
            elif isinstance(event, Left):
                counter.leave(socket_id, event.topic)

    def acknowledge(self) -> None:
        """Tell the native side the messages handled so far and the session's filter now."""
        if self.ended or self.session is None or not self.handled:
            return
        narrow = self.owner.filter_id(self.session.message_filter)
        self.owner.relay.update(self.slot, self.socket_id, self.handled, narrow)
        self.handled = 0

    def native_closed(self, reason_code: int) -> None:
        """The native side ended the socket (it closes the sockets itself)."""
        reason = _REASONS.get(reason_code, "client_gone")
        if reason != "protocol_error":
            reason = self.end_reason or self._gone_first or reason
        else:
            log.info("socket %s: malformed frame or message (lingering close)", self.socket_id)
        self._ended(reason)

    def native_client_eof(self, reason_code: int) -> None:
        """The client half-closed: the app has ``close_timeout`` s to finish."""
        if self._gone_first is None:
            self._gone_first = _REASONS.get(reason_code, "client_gone")
        self._start_timer()

    # -- internals -------------------------------------------------------------------------

    def _start_timer(self) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(
                self.client.proxy.close_timeout, self._close_timed_out
            )

    def _close_timed_out(self) -> None:
        self._timer = None
        log.info("socket %s: close not finished in time, cutting it", self.socket_id)
        self.end(self.end_reason or self._gone_first or "close_timeout", abort=True)

    def _ended(self, reason: str) -> None:
        self.ended = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.client.mark_closed()
        self.owner.forget(self)
        socket_id, self.socket_id = self.socket_id, None
        if socket_id is None:
            return
        state = self.client.state
        self.client.proxy.websockets.pop(socket_id, None)
        if state.connection_counter.close_socket(socket_id, reason):
            state.metrics.connection_closed(time.monotonic() - self.opened_at)
            log.debug("socket %s closed (%s)", socket_id, reason)


class NativeRelay:
    """The native relay of one proxy: the C ``Relay`` (its thread), its event reader and the
    sockets it carries by socket id."""

    def __init__(self, state: SidecarState, extension: ModuleType) -> None:
        self.state = state
        drain = state.settings.drain
        self._extension = extension
        self.relay: Any = extension.Relay(close_timeout=drain.close_timeout, linger_seconds=2.0)
        self._ev_closed: int = extension.EV_CLOSED
        self._ev_client_eof: int = extension.EV_CLIENT_EOF
        self.ev_message: int = extension.EV_CLIENT_TEXT
        """The first message event kind (client text, client binary, server text, server
        binary follow in that order)."""
        self.sockets: dict[int, NativeSocket] = {}
        self._filters: dict[MessageFilter, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        state.metrics.relay.native_bytes = self.bytes_relayed

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Watch the relay's eventfd on ``loop``."""
        self._loop = loop
        loop.add_reader(self.relay.fileno(), self._on_events)

    def close(self) -> None:
        """Stop the native thread (cutting what it still relays)."""
        if self._loop is not None:
            self._loop.remove_reader(self.relay.fileno())
            self._loop = None
        self.relay.shutdown()

    def filter_id(self, message_filter: MessageFilter) -> int:
        """The native side's id of ``message_filter`` (interned once)."""
        known = self._filters.get(message_filter)
        if known is None:
            known = self.relay.filter(
                *(native_test(test, self._extension) for test in (
                    message_filter.client_text, message_filter.client_binary,
                    message_filter.server_text, message_filter.server_binary,
                ))
            )  # fmt: skip
            self._filters[message_filter] = known
        return known

    def bytes_relayed(self) -> tuple[int, int]:
        """(to the upstream, to clients) bytes the native thread relayed."""
        to_upstream, to_client, _ = self.relay.stats()
        return int(to_upstream), int(to_client)

    def hand_off(
        self,
        client: ClientConnection,
        upstream: UpstreamSide,
        event: SwitchProtocols,
        topic: str | None,
        rule: TopicRule,
    ) -> NativeSocket | None:
        """Count the socket and give both connections to the native thread; ``None`` (nothing
        done) if they cannot be handed off now (the Python relay takes the socket then)."""
        client_transport, upstream_transport = client.transport, upstream.transport
        if client_transport is None or upstream_transport is None:
            return None
        if client_transport.get_write_buffer_size() or upstream_transport.get_write_buffer_size():
            return None
        client_sock = client_transport.get_extra_info("socket")
        upstream_sock = upstream_transport.get_extra_info("socket")
        if client_sock is None or upstream_sock is None:
            return None
        client_fd = os.dup(client_sock.fileno())
        upstream_fd = os.dup(upstream_sock.fileno())
        counter = self.state.connection_counter
        # under --topic auto, each socket's topics show the rule chosen for it
        chosen = str(rule).split(":", 1)[0] if client.settings.topic_rule.kind == AUTO else None
        socket_id = counter.open_socket(chosen)
        client.proxy.websockets[socket_id] = client
        if topic is not None:
            counter.join(socket_id, topic)
        protocol = rule.protocol
        filters: tuple[int, ...] = ()
        session = None
        if protocol is not None:
            session = protocol.factory(event.request, event.response)
            filters = (
                self.filter_id(protocol.message_filter),
                self.filter_id(session.message_filter),
                client.settings.max_message_bytes,
            )
        native = NativeSocket(self, client, socket_id, session)
        upstream.relay = None
        client.upstream = None  # the UpstreamSide's last callbacks go nowhere
        try:
            native.slot = self.relay.add(
                client_fd, upstream_fd, socket_id, event.response.raw, event.upstream_rest,
                event.client_rest, *filters,
            )  # fmt: skip
        except OSError as error:  # the native side closed both duplicates
            log.warning("socket %s: native hand-off failed: %s", socket_id, error)
            client_transport.abort()
            upstream_transport.abort()
            native._ended("client_gone")
            return native
        self.sockets[socket_id] = native
        client_transport.close()
        upstream_transport.close()
        log.debug("socket %s opened (native): %s topic=%s", socket_id, event.request.target, topic)
        return native

    def forget(self, native: NativeSocket) -> None:
        """``native`` ended: no more events for it."""
        if native.socket_id is not None:
            self.sockets.pop(native.socket_id, None)

    def _on_events(self) -> None:
        sockets = self.sockets
        ev_message = self.ev_message
        fed: dict[int, NativeSocket] = {}
        for token, kind, detail in self.relay.events():
            native = sockets.get(token)
            if native is None:
                continue  # ended by Python meanwhile
            if kind >= ev_message:
                native.native_message(kind, detail)
                fed[token] = native
            elif kind == self._ev_closed:
                native.native_closed(detail)
            elif kind == self._ev_client_eof:
                native.native_client_eof(detail)
        for native in fed.values():
            native.acknowledge()
