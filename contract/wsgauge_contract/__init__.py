"""The wire contract between the wsgauge sidecar and the operator.

The sidecar publishes a *stats document* (``GET /stats``) and a stream of them
(``GET /stats/watch``); the operator reads both. This package holds the one
definition of that document, its validation, and the pure decoder of the watch
stream, so that both ends agree byte for byte; the one ``HOST:PORT`` type,
:class:`~wsgauge_contract.address.Address`, that both read their addresses with; and the one
flag and environment variable mechanism of both commands, :mod:`wsgauge_contract.flags`; and the
live view's WebSocket messages (``/stats/ws``, :mod:`wsgauge_contract.live`) with the one
session both servers serve them with (:mod:`wsgauge_contract.live_session`).
"""

from wsgauge_contract.address import Address
from wsgauge_contract.exceptions import (
    AddressError,
    ContractError,
    FlagError,
    InvalidStatsDocument,
    WatchStreamError,
)
from wsgauge_contract.live import LIVE_PATH, LiveRequest, LiveRequestError, parse_request
from wsgauge_contract.stats import (
    OTHER_TOPIC,
    Capacity,
    StatsDocument,
    decode_stats_document,
    encode_stats_document,
)
from wsgauge_contract.watchstream import (
    WATCH_CONTENT_TYPE,
    WatchHeartbeat,
    WatchStreamDecoder,
    encode_watch_heartbeat,
    encode_watch_line,
)

__all__ = [
    "LIVE_PATH",
    "OTHER_TOPIC",
    "WATCH_CONTENT_TYPE",
    "Address",
    "AddressError",
    "Capacity",
    "ContractError",
    "FlagError",
    "InvalidStatsDocument",
    "LiveRequest",
    "LiveRequestError",
    "StatsDocument",
    "WatchHeartbeat",
    "WatchStreamDecoder",
    "WatchStreamError",
    "decode_stats_document",
    "encode_stats_document",
    "encode_watch_heartbeat",
    "encode_watch_line",
    "parse_request",
]
