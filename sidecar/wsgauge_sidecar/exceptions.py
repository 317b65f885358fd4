"""Exceptions of the sidecar: the only ones its pure cores raise.

Every error carries what the I/O layer needs to end the one affected exchange
cleanly: an HTTP status for a malformed request head, a WebSocket close code for
a malformed frame or protocol message, or for a socket past its protocol's bounds.
None of them should ever end the process.
"""

from __future__ import annotations


class SidecarError(Exception):
    """Base class of every error the sidecar raises on purpose."""


class ConfigError(SidecarError):
    """The sidecar's configuration (flags / environment) is invalid."""


class InvalidTopicRule(ConfigError):
    """A ``--topic`` rule cannot be parsed (unknown kind, missing argument, bad regex)."""


class HttpParseError(SidecarError):
    """An HTTP/1.1 message head or body framing is malformed or unsupported.

    ``status`` is the HTTP status to answer with: 400 (malformed), 413 (head too
    large) or 501 (unsupported transfer-encoding).
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
        """HTTP status code to answer the client with."""


class WebSocketProtocolError(SidecarError):
    """WebSocket frames break RFC 6455; ``close_code`` is the code to close with.

    1002 protocol error, 1007 invalid UTF-8 in a text message, 1009 message too big.
    """

    def __init__(self, message: str, close_code: int = 1002) -> None:
        super().__init__(message)
        self.close_code = close_code
        """WebSocket close code (RFC 6455 section 7.4.1) to end the socket with."""


class ProtocolError(SidecarError):
    """A message breaks the socket's frame protocol (``--topic`` PROTOCOL): that one
    socket is closed with ``close_code``.

    1007 (invalid payload: not of the protocol's shape) by default; 1003 for a message
    type the protocol forbids (a text message on MQTT); 1008 via :class:`ProtocolLimitError`.
    """

    def __init__(self, message: str, close_code: int = 1007) -> None:
        super().__init__(message)
        self.close_code = close_code
        """WebSocket close code to end the socket with (1007 by default)."""


class ProtocolLimitError(ProtocolError):
    """A socket went past a per-socket bound of its frame protocol (topics, pending
    subscriptions, id length): closed with 1008 (policy violation) rather than counted wrong."""

    def __init__(self, message: str) -> None:
        super().__init__(message, close_code=1008)


class PhoenixProtocolError(ProtocolError):
    """A Phoenix channels message is not valid JSON or not of the serializer's shape."""


class PhoenixLimitError(PhoenixProtocolError):
    """A Phoenix socket went past a per-socket bound (unanswered joins, joined topics, ref
    length): closed with 1008 (policy violation) rather than counted wrong."""

    def __init__(self, message: str) -> None:
        super().__init__(message, close_code=1008)


class CountError(SidecarError):
    """A count update is invalid: negative result, wrong type, unknown socket."""


class ControlAuthError(SidecarError):
    """A control request (``/control/...``) is not authenticated: 403, nothing changes."""
