"""Framing of ``GET /stats/watch``: newline-delimited stats documents.

The response is ``Content-Type: application/x-ndjson`` with chunked transfer.
Each line is either one full stats document (compact JSON, see
:mod:`wsgauge_contract.stats`) or an empty line: a *heartbeat* that the sidecar
sends when nothing changed for a while, so that a reader can tell a quiet
sidecar from a frozen one by a read timeout. The first line is sent at once.

:class:`WatchStreamDecoder` is the sans-I/O reader: feed it the bytes as they
arrive and it returns the documents and heartbeats they complete. It raises
only :class:`WatchStreamError` (framing) and :class:`InvalidStatsDocument`
(a line that is not a valid document); after either, the stream should be
dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

from wsgauge_contract.exceptions import WatchStreamError
from wsgauge_contract.stats import (
    MAX_DOCUMENT_BYTES,
    MAX_TOPICS_IN_DOCUMENT,
    StatsDocument,
    decode_stats_document,
    encode_stats_document,
)

WATCH_CONTENT_TYPE = "application/x-ndjson"


@dataclass(frozen=True)
class WatchHeartbeat:
    """An empty line: the sidecar is alive and nothing changed."""


def encode_watch_line(document: StatsDocument) -> bytes:
    """One document as a stream line (with its newline)."""
    return encode_stats_document(document) + b"\n"


def encode_watch_heartbeat() -> bytes:
    """A heartbeat line."""
    return b"\n"


class WatchStreamDecoder:
    """Incremental decoder of a watch stream (bytes in, events out)."""

    def __init__(
        self,
        *,
        max_line_bytes: int = MAX_DOCUMENT_BYTES,
        max_topics: int = MAX_TOPICS_IN_DOCUMENT,
    ) -> None:
        self._buffer = bytearray()
        self._max_line_bytes = max_line_bytes
        self._max_topics = max_topics

    def feed(self, data: bytes) -> list[StatsDocument | WatchHeartbeat]:
        """Add received bytes; return every event completed by them, in order."""
        self._buffer += data
        events: list[StatsDocument | WatchHeartbeat] = []
        while True:
            newline = self._buffer.find(b"\n")
            if newline < 0:
                break
            line = bytes(self._buffer[:newline]).rstrip(b"\r")
            del self._buffer[: newline + 1]
            if len(line) > self._max_line_bytes:
                raise WatchStreamError(
                    f"watch line of {len(line)} bytes exceeds {self._max_line_bytes}"
                )
            if not line.strip():
                events.append(WatchHeartbeat())
            else:
                events.append(
                    decode_stats_document(
                        line, max_bytes=self._max_line_bytes, max_topics=self._max_topics
                    )
                )
        if len(self._buffer) > self._max_line_bytes:
            raise WatchStreamError(
                f"watch line grew past {self._max_line_bytes} bytes without a newline"
            )
        return events
