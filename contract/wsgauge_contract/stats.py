"""The stats document: one sidecar's live counts, as served on ``/stats``.

Shape (JSON, keys exactly as below)::

    {"pod": "chat-7d9f-abc", "namespace": "prod", "node": "node-1",
     "connections": 120, "topics": {"stream": 100, "stats": 20},
     "opened": 1234, "closed": 1114,
     "capacity": {"max": 5000, "readyBelow": 4000,
                  "topics": {"stream": 4000}, "upgradesPerSecond": 50},
     "refused": {"rate_limited": 12},
     "ready": true, "draining": false,
     "startedAt": "2026-11-26T10:00:00Z", "seq": 17}

``capacity.max``, ``capacity.readyBelow`` and ``capacity.upgradesPerSecond`` are
``null`` when no limit is set; ``capacity.topics`` holds the per-topic caps
(``{}``: none). ``refused`` counts the upgrades answered 503 since the start, by
reason (``draining``, ``capacity``, ``topic_capacity``, ``rate_limited``; only
reasons that happened). Readers accept documents without ``capacity.topics``,
``capacity.upgradesPerSecond`` or ``refused`` (earlier sidecars).
A sidecar run with ``--topic auto`` adds ``"topicProtocols": {"/chat": "socketio"}``:
per topic, the protocol (topic rule) its sockets were counted by (several joined
with ``,``, sorted, when sockets of different protocols share a topic). The key is
absent otherwise; readers that do not know it ignore it.
``seq`` grows with every change; a restarted sidecar starts again from 0 with a
new ``startedAt``, which is how a reader tells a restart from an old document.

Decoding is strict and bounded: anything that is not exactly this shape raises
:class:`InvalidStatsDocument` (never another exception), so a hostile or broken
sidecar can cost its reader one error, not a crash.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from wsgauge_contract.exceptions import InvalidStatsDocument

OTHER_TOPIC = "_other"
"""Topic under which sockets beyond the cardinality limit are counted."""

MAX_DOCUMENT_BYTES = 1024 * 1024
"""Default upper bound on one encoded document, enforced when decoding."""

MAX_TOPICS_IN_DOCUMENT = 10_000
"""Default upper bound on the number of topics a decoded document may carry."""

MAX_NAME_LENGTH = 253
"""Longest pod, namespace, node or topic name accepted."""

MAX_COUNT = 2**53
"""Largest count accepted (the largest integer JSON readers agree on)."""


@dataclass(frozen=True)
class Capacity:
    """The sidecar's configured limits (``None`` = no limit)."""

    max: int | None = None
    """``--max-connections``: new upgrades are refused at this many sockets."""
    ready_below: int | None = None
    """``--ready-below``: ``/readyz`` fails at or above this many sockets."""
    topics: Mapping[str, int] = field(default_factory=dict)
    """``--max-topic-connections``: topic -> sockets at which its upgrades are refused."""
    upgrades_per_second: float | None = None
    """``--max-upgrades-per-second``: upgrades beyond this rate are refused."""


@dataclass(frozen=True)
class StatsDocument:
    """One immutable snapshot of a sidecar's counts."""

    pod: str = ""
    """Pod name (downward API ``POD_NAME``; empty outside Kubernetes)."""
    namespace: str = ""
    """Pod namespace (``POD_NAMESPACE``)."""
    node: str = ""
    """Node name (``NODE_NAME``)."""
    connections: int = 0
    """Open WebSocket sockets."""
    topics: Mapping[str, int] = field(default_factory=dict)
    """Open sockets per topic; a socket may be in several topics (Phoenix)."""
    opened: int = 0
    """Sockets counted since the sidecar started."""
    closed: int = 0
    """Sockets uncounted since the sidecar started."""
    capacity: Capacity = field(default_factory=Capacity)
    """Configured limits."""
    refused: Mapping[str, int] = field(default_factory=dict)
    """Upgrades answered 503 since the start, by reason."""
    ready: bool = True
    """What ``/readyz`` answers right now."""
    draining: bool = False
    """True once SIGTERM was received."""
    started_at: str = ""
    """RFC 3339 UTC time the sidecar started (``2026-11-26T10:00:00Z``)."""
    seq: int = 0
    """Grows by at least one with every change."""
    topic_protocols: Mapping[str, str] | None = None
    """``--topic auto``: topic -> the protocol that counted its sockets; ``None`` otherwise
    (the ``topicProtocols`` key is then absent)."""

    def to_json_dict(self) -> dict[str, Any]:
        """The document as the JSON object of the contract."""
        document: dict[str, Any] = {
            "pod": self.pod,
            "namespace": self.namespace,
            "node": self.node,
            "connections": self.connections,
            "topics": dict(self.topics),
            "opened": self.opened,
            "closed": self.closed,
            "capacity": {
                "max": self.capacity.max,
                "readyBelow": self.capacity.ready_below,
                "topics": dict(self.capacity.topics),
                "upgradesPerSecond": self.capacity.upgrades_per_second,
            },
            "refused": dict(self.refused),
            "ready": self.ready,
            "draining": self.draining,
            "startedAt": self.started_at,
            "seq": self.seq,
        }
        if self.topic_protocols is not None:
            document["topicProtocols"] = dict(self.topic_protocols)
        return document

    @classmethod
    def from_json_dict(
        cls, data: object, *, max_topics: int = MAX_TOPICS_IN_DOCUMENT
    ) -> StatsDocument:
        """Validate a parsed JSON value and build a document from it.

        Raises :class:`InvalidStatsDocument` for any deviation from the contract.
        Unknown extra keys are ignored (forward compatibility).
        """
        if not isinstance(data, dict):
            raise InvalidStatsDocument("stats document must be a JSON object")
        topics_raw = data.get("topics", {})
        if not isinstance(topics_raw, dict):
            raise InvalidStatsDocument("'topics' must be an object")
        if len(topics_raw) > max_topics:
            raise InvalidStatsDocument(
                f"'topics' has {len(topics_raw)} entries, limit {max_topics}"
            )
        topics: dict[str, int] = {}
        for name, count in topics_raw.items():
            _check_name(name, "topic name")
            topics[name] = _count(count, f"topics[{name!r}]")
        protocols_raw = data.get("topicProtocols")
        topic_protocols: dict[str, str] | None = None
        if protocols_raw is not None:
            if not isinstance(protocols_raw, dict):
                raise InvalidStatsDocument("'topicProtocols' must be an object")
            if len(protocols_raw) > max_topics:
                raise InvalidStatsDocument(
                    f"'topicProtocols' has {len(protocols_raw)} entries, limit {max_topics}"
                )
            topic_protocols = {
                _check_name(name, "topicProtocols name"): _check_name(
                    protocol, f"topicProtocols[{name!r}]"
                )
                for name, protocol in protocols_raw.items()
            }
        capacity_raw = data.get("capacity", {})
        if capacity_raw is None:
            capacity_raw = {}
        if not isinstance(capacity_raw, dict):
            raise InvalidStatsDocument("'capacity' must be an object")
        return cls(
            pod=_name(data, "pod"),
            namespace=_name(data, "namespace"),
            node=_name(data, "node"),
            connections=_count(data.get("connections", 0), "connections"),
            topics=topics,
            opened=_count(data.get("opened", 0), "opened"),
            closed=_count(data.get("closed", 0), "closed"),
            capacity=Capacity(
                max=_optional_count(capacity_raw.get("max"), "capacity.max"),
                ready_below=_optional_count(capacity_raw.get("readyBelow"), "capacity.readyBelow"),
                topics=_counts(capacity_raw.get("topics", {}), "capacity.topics", max_topics),
                upgrades_per_second=_optional_rate(
                    capacity_raw.get("upgradesPerSecond"), "capacity.upgradesPerSecond"
                ),
            ),
            refused=_counts(data.get("refused", {}), "refused", max_topics),
            ready=_bool(data.get("ready", True), "ready"),
            draining=_bool(data.get("draining", False), "draining"),
            started_at=_name(data, "startedAt", max_length=64),
            seq=_count(data.get("seq", 0), "seq"),
            topic_protocols=topic_protocols,
        )


def encode_stats_document(document: StatsDocument) -> bytes:
    """Compact UTF-8 JSON for a document (no trailing newline)."""
    return json.dumps(document.to_json_dict(), separators=(",", ":"), sort_keys=False).encode()


def decode_stats_document(
    raw: bytes | str,
    *,
    max_bytes: int = MAX_DOCUMENT_BYTES,
    max_topics: int = MAX_TOPICS_IN_DOCUMENT,
) -> StatsDocument:
    """Parse and validate one encoded document. Raises :class:`InvalidStatsDocument`."""
    if len(raw) > max_bytes:
        raise InvalidStatsDocument(f"stats document of {len(raw)} bytes exceeds {max_bytes}")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise InvalidStatsDocument(f"stats document is not valid JSON: {error}") from None
    return StatsDocument.from_json_dict(data, max_topics=max_topics)


def _check_name(value: object, what: str, max_length: int = MAX_NAME_LENGTH) -> str:
    if not isinstance(value, str):
        raise InvalidStatsDocument(f"{what} must be a string")
    if len(value) > max_length:
        raise InvalidStatsDocument(f"{what} longer than {max_length} characters")
    return value


def _name(data: Mapping[str, object], key: str, max_length: int = MAX_NAME_LENGTH) -> str:
    return _check_name(data.get(key, ""), f"'{key}'", max_length)


def _count(value: object, what: str) -> int:
    # bool is an int subclass in Python; JSON true is not a count.
    if isinstance(value, bool):
        raise InvalidStatsDocument(f"{what} must be an integer, not a boolean")
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise InvalidStatsDocument(f"{what} must be an integer")
        value = int(value)
    if not isinstance(value, int):
        raise InvalidStatsDocument(f"{what} must be an integer")
    if value < 0:
        raise InvalidStatsDocument(f"{what} must not be negative (got {value})")
    if value > MAX_COUNT:
        raise InvalidStatsDocument(f"{what} is implausibly large ({value})")
    return value


def _optional_count(value: object, what: str) -> int | None:
    return None if value is None else _count(value, what)


def _counts(value: object, what: str, max_entries: int) -> dict[str, int]:
    """An object of names to counts (``capacity.topics``, ``refused``)."""
    if not isinstance(value, dict):
        raise InvalidStatsDocument(f"'{what}' must be an object")
    if len(value) > max_entries:
        raise InvalidStatsDocument(f"'{what}' has {len(value)} entries, limit {max_entries}")
    return {
        _check_name(name, f"{what} key"): _count(count, f"{what}[{name!r}]")
        for name, count in value.items()
    }


def _optional_rate(value: object, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidStatsDocument(f"{what} must be a number or null")
    if not math.isfinite(value) or value <= 0:
        raise InvalidStatsDocument(f"{what} must be a finite number above 0 (got {value})")
    return float(value)


def _bool(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidStatsDocument(f"{what} must be a boolean")
    return value
