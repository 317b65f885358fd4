"""Live counts of WebSocket connections per topic: the sidecar's single source of truth.

Two pure objects with the same read interface (``connections``, ``opened``,
``closed``, ``seq``, ``topics()``, ``add_listener``):

* :class:`ConnectionCounter` for the proxy modes: the proxy opens a socket id per
  counted WebSocket, joins/leaves topics on it, and closes it exactly once,
  whatever ends it. Closing uncounts the socket and every topic it is in, and a
  second close of the same id is a harmless no-op returning ``False``, so
  racing end paths (client close, upstream drop, drain) cannot double-count.
* :class:`ReportedCounts` for ``--topic report``: the app reports full
  snapshots or deltas of its own counts.

Cardinality guard (``--max-topics``): at most ``max_topics`` distinct topic names
are tracked; a socket joining a further topic is counted under
:data:`OTHER_TOPIC` (``_other``) for as long as it stays in that topic. A topic
whose count falls to 0 is forgotten, which frees its slot for a new name. The
``named`` topics of a :class:`ConnectionCounter` (those with a
``--max-topic-connections`` cap) are always counted under their own name, outside
that limit. So the number of distinct names held never exceeds
``max_topics + len(named) + 1``, whatever names clients invent.

``_other`` in the counts is only ever the fold: a socket's own topic of that
name is counted as ``__other`` (:func:`escape_topic` gives every name made of
underscores then ``other`` one more leading underscore, which keeps distinct
names distinct). In report mode the app's ``_other`` is its own fold and is
taken as such.

``seq`` grows by one on every change, and every listener is called synchronously
after each change (never for a no-op). Nothing here does I/O; the errors raised
are :class:`CountError` (bad report / unknown socket) and :class:`ConfigError`.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Mapping

from wsgauge_contract.stats import MAX_COUNT, OTHER_TOPIC

from wsgauge_sidecar.exceptions import ConfigError, CountError
from wsgauge_sidecar.topics import normalize_topic

__all__ = ["OTHER_TOPIC", "ConnectionCounter", "ReportedCounts", "escape_topic"]

Listener = Callable[[], None]
"""Called with no arguments after every change of the counts."""

_FOLD_LIKE = re.compile(r"_+other")


def escape_topic(topic: str) -> str:
    """The name a socket's topic is counted under, never :data:`OTHER_TOPIC`.

    ``_other``, ``__other``, ... get one more leading underscore; every other name is
    itself. Distinct topics keep distinct names, and only the fold is ``_other``.
    """
    return "_" + topic if _FOLD_LIKE.fullmatch(topic) else topic


class _TopicTable:
    """Per-topic counts with the ``_other`` fold; names with count 0 are dropped."""

    def __init__(self, max_topics: int, named: frozenset[str] = frozenset()) -> None:
        if isinstance(max_topics, bool) or not isinstance(max_topics, int) or max_topics < 0:
            raise ConfigError(f"max_topics must be a non-negative integer (got {max_topics!r})")
        self.max_topics = max_topics
        self.named = named
        """Names always counted under their own name, outside the fold and its limit."""
        self.counts: dict[str, int] = {}

    def slot_for(self, topic: str) -> str:
        """The name under which a new member of ``topic`` is counted."""
        if topic == OTHER_TOPIC or topic in self.counts or topic in self.named:
            return topic
        tracked = len(self.counts) - (1 if OTHER_TOPIC in self.counts else 0)
        if self.named:
            tracked -= sum(1 for name in self.named if name in self.counts)
        return topic if tracked < self.max_topics else OTHER_TOPIC

    def add(self, name: str, delta: int) -> None:
        value = self.counts.get(name, 0) + delta
        if value > 0:
            self.counts[name] = value
        else:
            self.counts.pop(name, None)

    def snapshot(self) -> dict[str, int]:
        return dict(self.counts)


class _Observable:
    """``seq`` and listeners shared by both counters."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._seq = 0

    @property
    def seq(self) -> int:
        """Grows by one with every change (a reader tells new documents from old)."""
        return self._seq

    def add_listener(self, callback: Listener) -> None:
        """Call ``callback()`` synchronously after every change."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Listener) -> None:
        """Stop calling ``callback``; no-op if it is not registered."""
        if callback in self._listeners:
            self._listeners.remove(callback)

    def _changed(self) -> None:
        self._seq += 1
        for callback in list(self._listeners):
            callback()


class ConnectionCounter(_Observable):
    """Counts of the proxy modes: one entry per live, counted WebSocket."""

    def __init__(self, max_topics: int = 100, named: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self._table = _TopicTable(max_topics, frozenset(escape_topic(n) for n in named))
        # socket id -> {topic as joined: name it is counted under (topic or _other)}
        self._sockets: dict[int, dict[str, str]] = {}
        self._ids = itertools.count(1)
        self._opened = 0
        self._closed = 0
        self._closed_by_reason: dict[str, int] = {}
        # socket id -> the protocol (topic rule) that counts it, for sockets opened with one
        self._protocols: dict[int, str] = {}
        # counted name -> {protocol: sockets of that protocol counted under that name}
        self._slot_protocols: dict[str, dict[str, int]] = {}

    @property
    def max_topics(self) -> int:
        """Distinct topic names tracked before further ones fold into ``_other``."""
        return self._table.max_topics

    @property
    def connections(self) -> int:
        """Open, counted sockets (always ``opened - closed``)."""
        return len(self._sockets)

    @property
    def opened(self) -> int:
        """Sockets counted since start."""
        return self._opened

    @property
    def closed(self) -> int:
        """Sockets uncounted since start."""
        return self._closed

    def topics(self) -> dict[str, int]:
        """Open sockets per topic; only topics with a count above 0 (a fresh dict)."""
        return self._table.snapshot()

    def topic_count(self, topic: str) -> int:
        """Open sockets in ``topic`` (as joined); exact for the ``named`` topics, 0 for a
        topic counted under ``_other``."""
        name = normalize_topic(topic)
        return 0 if name is None else self._table.counts.get(escape_topic(name), 0)

    def topic_protocols(self) -> dict[str, str]:
        """Topic -> the protocol of the sockets counted in it (names sorted and joined with
        ``,`` when sockets of several protocols share a topic); only topics with sockets
        opened with a ``protocol``."""
        return {
            slot: ",".join(sorted(protocols)) for slot, protocols in self._slot_protocols.items()
        }

    def closed_by_reason(self) -> dict[str, int]:
        """How many sockets were closed for each ``reason`` given to :meth:`close_socket`."""
        return dict(self._closed_by_reason)

    def is_open(self, socket_id: int) -> bool:
        """True while ``socket_id`` is counted."""
        return socket_id in self._sockets

    def socket_topics(self, socket_id: int) -> frozenset[str]:
        """The topics (as joined) ``socket_id`` is in; empty if it is unknown or closed."""
        return frozenset(self._sockets.get(socket_id, ()))

    def open_socket(self, protocol: str | None = None) -> int:
        """Count a new socket and return its id (ids are never reused).

        ``protocol``: the topic rule that counts this socket (``--topic auto`` picks one per
        socket); its topics then show it in :meth:`topic_protocols`.
        """
        socket_id = next(self._ids)
        self._sockets[socket_id] = {}
        if protocol is not None:
            self._protocols[socket_id] = protocol
        self._opened += 1
        self._changed()
        return socket_id

    def join(self, socket_id: int, topic: str) -> None:
        """Put the socket in ``topic``; idempotent per (socket, topic).

        It is counted under :func:`escape_topic` of the name, or beyond ``max_topics``
        distinct names under ``_other``.
        Raises :class:`CountError` if ``socket_id`` is not open. An empty topic is ignored.
        """
        memberships = self._membership(socket_id)
        name = normalize_topic(topic)
        if name is None or name in memberships:
            return
        slot = self._table.slot_for(escape_topic(name))
        memberships[name] = slot
        self._table.add(slot, 1)
        self._move_protocol(socket_id, slot, 1)
        self._changed()

    def leave(self, socket_id: int, topic: str) -> None:
        """Take the socket out of ``topic``; no-op if it is not in it (or not open)."""
        memberships = self._sockets.get(socket_id)
        name = normalize_topic(topic)
        if memberships is None or name is None or name not in memberships:
            return
        slot = memberships.pop(name)
        self._table.add(slot, -1)
        self._move_protocol(socket_id, slot, -1)
        self._changed()

    def close_socket(self, socket_id: int, reason: str) -> bool:
        """Uncount the socket and all its topics, exactly once.

        Returns ``False`` (and changes nothing) if the socket is unknown or already closed.
        """
        memberships = self._sockets.pop(socket_id, None)
        if memberships is None:
            return False
        for slot in memberships.values():
            self._table.add(slot, -1)
            self._move_protocol(socket_id, slot, -1)
        self._protocols.pop(socket_id, None)
        self._closed += 1
        self._closed_by_reason[reason] = self._closed_by_reason.get(reason, 0) + 1
        self._changed()
        return True

    def _move_protocol(self, socket_id: int, slot: str, delta: int) -> None:
        protocol = self._protocols.get(socket_id)
        if protocol is None:
            return
        protocols = self._slot_protocols.setdefault(slot, {})
        value = protocols.get(protocol, 0) + delta
        if value > 0:
            protocols[protocol] = value
        else:
            protocols.pop(protocol, None)
            if not protocols:
                del self._slot_protocols[slot]

    def _membership(self, socket_id: int) -> dict[str, str]:
        memberships = self._sockets.get(socket_id)
        if memberships is None:
            raise CountError(f"socket {socket_id} is not open")
        return memberships


class ReportedCounts(_Observable):
    """Counts of ``--topic report`` mode, as reported by the app itself.

    ``apply_snapshot`` replaces everything; ``apply_delta`` adds signed changes.
    ``opened``/``closed`` follow the connection changes (a rise adds to ``opened``,
    a fall to ``closed``) so that ``connections == opened - closed`` holds here too.

    Fold: a name beyond ``max_topics`` is counted under ``_other``. Since names
    folded into ``_other`` are not remembered (memory stays flat), a negative
    delta on a name larger than that name's own tracked count takes the rest
    from ``_other``; only when both together cannot cover it is it a
    :class:`CountError`. Every update is validated whole before it is applied:
    a rejected update changes nothing.
    """

    def __init__(self, max_topics: int = 100) -> None:
        super().__init__()
        self._table = _TopicTable(max_topics)
        self._connections = 0
        self._opened = 0
        self._closed = 0

    @property
    def max_topics(self) -> int:
        """Distinct topic names tracked before further ones fold into ``_other``."""
        return self._table.max_topics

    @property
    def connections(self) -> int:
        """Open sockets, as reported."""
        return self._connections

    @property
    def opened(self) -> int:
        """Sum of all rises of ``connections``."""
        return self._opened

    @property
    def closed(self) -> int:
        """Sum of all falls of ``connections``."""
        return self._closed

    def topics(self) -> dict[str, int]:
        """Open sockets per topic; only topics with a count above 0 (a fresh dict)."""
        return self._table.snapshot()

    def apply_snapshot(self, connections: int, topics: Mapping[str, int]) -> None:
        """Replace the counts with a full snapshot; :class:`CountError` if invalid."""
        total = _check_count(connections, "connections", allow_negative=False)
        wanted = _check_topic_map(topics, allow_negative=False)
        # Keep names already tracked in their slots (no flapping), then new names
        # by descending count; the rest is folded into _other.
        new_counts: dict[str, int] = {}
        other = wanted.pop(OTHER_TOPIC, 0)
        ordered = sorted(
            wanted.items(),
            key=lambda item: (item[0] not in self._table.counts, -item[1], item[0]),
        )
        for name, value in ordered:
            if value == 0:
                continue
            if len(new_counts) < self._table.max_topics:
                new_counts[name] = value
            else:
                other += value
        if other > 0:
            new_counts[OTHER_TOPIC] = other
        if total == self._connections and new_counts == self._table.counts:
            return
        self._move_connections(total - self._connections)
        self._table.counts = new_counts
        self._changed()

    def apply_delta(self, connections: int, topics: Mapping[str, int]) -> None:
        """Add signed changes; :class:`CountError` if a count would become negative."""
        delta = _check_count(connections, "connections", allow_negative=True)
        changes = _check_topic_map(topics, allow_negative=True)
        total = self._connections + delta
        if total < 0:
            raise CountError(f"connections would become negative ({self._connections} {delta:+d})")
        if total > MAX_COUNT:
            raise CountError("connections would become implausibly large")
        trial = _TopicTable(self._table.max_topics)
        trial.counts = dict(self._table.counts)
        # Apply decreases first so that slots they free can be used by increases.
        for name, change in sorted(changes.items(), key=lambda item: item[1]):
            if change < 0:
                own = trial.counts.get(name, 0) if name != OTHER_TOPIC else 0
                from_own = min(own, -change)
                from_other = -change - from_own
                if from_other > trial.counts.get(OTHER_TOPIC, 0):
                    raise CountError(f"topic {name!r} would become negative ({change:+d})")
                trial.add(name, -from_own)
                trial.add(OTHER_TOPIC, -from_other)
            elif change > 0:
                slot = trial.slot_for(name)
                if trial.counts.get(slot, 0) + change > MAX_COUNT:
                    raise CountError(f"topic {name!r} would become implausibly large")
                trial.add(slot, change)
        if delta == 0 and trial.counts == self._table.counts:
            return
        self._move_connections(delta)
        self._table.counts = trial.counts
        self._changed()

    def _move_connections(self, delta: int) -> None:
        self._connections += delta
        if delta > 0:
            self._opened += delta
        else:
            self._closed -= delta


def _check_count(value: object, what: str, *, allow_negative: bool) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CountError(f"{what} must be an integer (got {type(value).__name__})")
    if not allow_negative and value < 0:
        raise CountError(f"{what} must not be negative (got {value})")
    if abs(value) > MAX_COUNT:
        raise CountError(f"{what} is implausibly large ({value})")
    return value


def _check_topic_map(topics: object, *, allow_negative: bool) -> dict[str, int]:
    """Validate a reported topic map; names are normalized, duplicates after that summed."""
    if not isinstance(topics, Mapping):
        raise CountError(f"topics must be an object (got {type(topics).__name__})")
    result: dict[str, int] = {}
    for raw_name, raw_value in topics.items():
        if not isinstance(raw_name, str):
            raise CountError("topic names must be strings")
        name = normalize_topic(raw_name)
        if name is None:
            raise CountError("topic names must not be empty")
        value = _check_count(raw_value, f"topics[{name!r}]", allow_negative=allow_negative)
        result[name] = result.get(name, 0) + value
    return result
