"""Sans-I/O HTTP/1.1 message framing, so the proxy can relay bytes unchanged.

The proxy never re-encodes a plain HTTP exchange: it parses each message *head*
(:func:`parse_request_head`, :func:`parse_response_head`) to learn where it ends,
whether it is a WebSocket upgrade and how the body is framed, and then uses a
:class:`BodyFramer` to learn how many of the following bytes belong to the body
(Content-Length, chunked including trailers, no body, or read-until-close), so
that keep-alive and pipelining keep working. The bytes themselves are relayed
as they came (``head.raw`` is the exact head).

Parsing follows RFC 9112 and is deliberately strict where leniency enables
request smuggling through a proxy: obs-fold, whitespace before the colon, bare
CR, invalid or conflicting Content-Length, Transfer-Encoding together with
Content-Length, ``chunked`` not last in a request, or Transfer-Encoding in an
HTTP/1.0 message are errors. Bare LF line ends are accepted (RFC 9112 2.2), as
are empty lines before a request line.

Only :class:`HttpParseError` escapes: ``status`` 400 (malformed), 413 (head
larger than ``max_bytes``) or 501 (unknown transfer coding). For a malformed
*response* the status says what was wrong; the proxy answers its client with
502 whatever it is.

Interim responses (1xx other than 101) have no body and are followed by the
final response head on the same connection.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from wsgauge_sidecar.exceptions import HttpParseError

Headers = list[tuple[bytes, bytes]]
"""Header fields in order as (name, value); names keep their original case."""

_LEADING_BLANK_LINES = re.compile(rb"(?:\r?\n)*")
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_LINE_END = re.compile(rb"\r?\n")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"[\x21-\x7e\x80-\xff]+")
_FIELD_VALUE_BAD = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_VERSION = re.compile(rb"HTTP/1\.[01]")
_STATUS_LINE = re.compile(rb"(HTTP/1\.[01]) ([0-9]{3})(?: (.*))?")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;.*)?")
_KNOWN_CODINGS = frozenset({b"chunked", b"gzip", b"x-gzip", b"deflate", b"compress", b"x-compress"})

MAX_CHUNK_LINE_BYTES = 4096
"""Longest chunk-size line (with extensions) or trailer line accepted."""

MAX_TRAILER_BYTES = 16384
"""Largest trailer section accepted after the last chunk."""


class _HeadHelpers:
    """Helpers shared by request and response heads."""

    version: str
    headers: Headers
    raw: bytes

    def header(self, name: str | bytes) -> bytes | None:
        """The first value of header ``name`` (case-insensitive), or ``None``."""
        wanted = _lower_name(name)
        for field_name, value in self.headers:
            if field_name.lower() == wanted:
                return value
        return None

    def header_values(self, name: str | bytes) -> list[bytes]:
        """Every value of header ``name`` (case-insensitive), in order."""
        wanted = _lower_name(name)
        return [value for field_name, value in self.headers if field_name.lower() == wanted]

    def header_tokens(self, name: str | bytes) -> list[bytes]:
        """The comma-separated tokens of all ``name`` headers, lower-cased."""
        tokens: list[bytes] = []
        for value in self.header_values(name):
            tokens.extend(part.strip(b" \t").lower() for part in value.split(b","))
        return [token for token in tokens if token]

    @property
    def keep_alive(self) -> bool:
        """Whether the connection may carry another message after this one (per the head)."""
        connection = self.header_tokens("connection")
        if b"close" in connection:
            return False
        if self.version == "HTTP/1.0":
            return b"keep-alive" in connection
        return True

    @property
    def upgrade_protocols(self) -> list[bytes]:
        """The protocol names in ``Upgrade`` (lower-cased, any ``/version`` cut off)."""
        return [token.split(b"/", 1)[0].strip(b" \t") for token in self.header_tokens("upgrade")]

    @property
    def names_websocket(self) -> bool:
        """``Upgrade`` names ``websocket``, whatever the method or ``Connection`` say."""
        return b"websocket" in self.upgrade_protocols

    def _upgrades_to_websocket(self) -> bool:
        return b"websocket" in self.header_tokens("upgrade") and b"upgrade" in self.header_tokens(
            "connection"
        )

    def _serialize(
        self,
        start_line: bytes,
        drop_headers: Collection[str | bytes],
        add_headers: Sequence[tuple[bytes, bytes]],
    ) -> bytes:
        if not drop_headers and not add_headers and self.raw:
            return self.raw
        dropped = {_lower_name(name) for name in drop_headers}
        lines = _LINE_END.split(self.raw)
        raw_lines_match = len(lines) == len(self.headers) + 3  # start, fields, "", ""
        parts = [start_line, b"\r\n"]
        for index, (name, value) in enumerate(self.headers):
            if name.lower() in dropped:
                continue
            parts.append(lines[index + 1] if raw_lines_match else name + b": " + value)
            parts.append(b"\r\n")
        for name, value in add_headers:
            parts += [name, b": ", value, b"\r\n"]
        parts.append(b"\r\n")
        return b"".join(parts)


@dataclass
class RequestHead(_HeadHelpers):
    """A parsed request head; ``raw`` holds its exact bytes (without leading blank lines)."""

    method: str
    """Request method, e.g. ``GET``."""
    target: str
    """Request target as sent (``/ws/x?y=1``); non-ASCII bytes decoded as UTF-8."""
    version: str
    """``HTTP/1.1`` or ``HTTP/1.0``."""
    headers: Headers
    """Header fields in order."""
    raw: bytes = b""
    """The exact bytes of the head, up to and including the empty line."""

    @property
    def is_websocket_upgrade(self) -> bool:
        """A GET with ``Upgrade: websocket`` and ``Connection: upgrade`` (RFC 6455 4.1)."""
        return self.method == "GET" and self._upgrades_to_websocket()

    def serialize(
        self,
        drop_headers: Collection[str | bytes] = (),
        add_headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> bytes:
        """The head as bytes, without the headers named in ``drop_headers``, plus ``add_headers``.

        Lines that are kept are copied byte for byte; with nothing dropped or added
        this is exactly ``raw``.
        """
        start_line = _LINE_END.split(self.raw, maxsplit=1)[0] if self.raw else b""
        if not start_line:
            start_line = f"{self.method} {self.target} {self.version}".encode()
        return self._serialize(start_line, drop_headers, add_headers)


@dataclass
class ResponseHead(_HeadHelpers):
    """A parsed response head; ``raw`` holds its exact bytes."""

    version: str
    """``HTTP/1.1`` or ``HTTP/1.0``."""
    status: int
    """Status code, 100-999."""
    reason: str
    """Reason phrase (may be empty)."""
    headers: Headers
    """Header fields in order."""
    raw: bytes = b""
    """The exact bytes of the head, up to and including the empty line."""

    @property
    def is_websocket_upgrade(self) -> bool:
        """A ``101`` with ``Upgrade: websocket`` and ``Connection: upgrade``."""
        return self.status == 101 and self._upgrades_to_websocket()

    @property
    def is_interim(self) -> bool:
        """A 1xx response other than 101: the final response follows."""
        return 100 <= self.status < 200 and self.status != 101

    def serialize(
        self,
        drop_headers: Collection[str | bytes] = (),
        add_headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> bytes:
        """The head as bytes, without ``drop_headers``, plus ``add_headers`` (see RequestHead)."""
        start_line = _LINE_END.split(self.raw, maxsplit=1)[0] if self.raw else b""
        if not start_line:
            start_line = f"{self.version} {self.status} {self.reason}".encode()
        return self._serialize(start_line, drop_headers, add_headers)


def parse_request_head(buffer: bytes | bytearray, max_bytes: int) -> tuple[RequestHead, int] | None:
    """Parse a request head at the start of ``buffer``.

    Returns ``None`` if more bytes are needed, else the head and the number of
    bytes it used (including skipped empty lines before it).
    """
    found = _split_head(buffer, max_bytes)
    if found is None:
        return None
    lines, raw, consumed = found
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise HttpParseError("malformed request line", 400)
    method, target, version = parts
    if not _TOKEN.fullmatch(method):
        raise HttpParseError("malformed request method", 400)
    if not _TARGET.fullmatch(target):
        raise HttpParseError("malformed request target", 400)
    if not _VERSION.fullmatch(version):
        raise HttpParseError("unsupported HTTP version", 400)
    headers = _parse_fields(lines[1:])
    head = RequestHead(
        method=method.decode("ascii"),
        target=target.decode("utf-8", errors="replace"),
        version=version.decode("ascii"),
        headers=headers,
        raw=raw,
    )
    hosts = head.header_values("host")
    if len(hosts) > 1 or (not hosts and head.version == "HTTP/1.1"):
        raise HttpParseError("a request needs exactly one Host header", 400)
    _check_framing_headers(head, is_request=True)
    return head, consumed


def parse_response_head(
    buffer: bytes | bytearray, max_bytes: int
) -> tuple[ResponseHead, int] | None:
    """Parse a response head at the start of ``buffer`` (``None`` = need more bytes)."""
    found = _split_head(buffer, max_bytes)
    if found is None:
        return None
    lines, raw, consumed = found
    match = _STATUS_LINE.fullmatch(lines[0])
    if match is None or int(match.group(2)) < 100:
        raise HttpParseError("malformed status line", 400)
    reason = match.group(3) or b""
    if _FIELD_VALUE_BAD.search(reason):
        raise HttpParseError("malformed reason phrase", 400)
    head = ResponseHead(
        version=match.group(1).decode("ascii"),
        status=int(match.group(2)),
        reason=reason.decode("latin-1"),
        headers=_parse_fields(lines[1:]),
        raw=raw,
    )
    _check_framing_headers(head, is_request=False)
    return head, consumed


class BodyFramer:
    """Tells which bytes after a head belong to its body.

    Build with :meth:`for_request` or :meth:`for_response`, then :meth:`feed` the
    bytes that follow the head: it returns how many of them are body (the rest
    starts the next message). ``done`` turns true at the end of the body;
    ``until_close`` bodies end only when the connection closes.
    """

    _NONE, _LENGTH, _CHUNKED, _CLOSE = range(4)
    _SIZE, _DATA, _DATA_END, _TRAILER = range(4)

    def __init__(self, mode: int, length: int = 0) -> None:
        self._mode = mode
        self._remaining = length
        self._state = self._SIZE
        self._line = bytearray()
        self._trailer_bytes = 0
        self._done = mode == self._NONE or (mode == self._LENGTH and length == 0)

    @classmethod
    def for_request(cls, head: RequestHead) -> BodyFramer:
        """Framing of a request body: chunked, Content-Length, or none (RFC 9112 6.3)."""
        if head.header_values("transfer-encoding"):
            return cls(cls._CHUNKED)
        length = _content_length(head)
        return cls(cls._LENGTH, length) if length else cls(cls._NONE)

    @classmethod
    def for_response(cls, head: ResponseHead, request_method: str) -> BodyFramer:
        """Framing of a response body to a request of ``request_method`` (RFC 9112 6.3)."""
        if request_method == "HEAD" or head.status < 200 or head.status in (204, 304):
            return cls(cls._NONE)
        if request_method == "CONNECT" and head.status < 300:
            return cls(cls._CLOSE)
        if head.header_values("transfer-encoding"):
            if head.header_tokens("transfer-encoding")[-1:] == [b"chunked"]:
                return cls(cls._CHUNKED)
            return cls(cls._CLOSE)
        length = _content_length(head)
        if length is None:
            return cls(cls._CLOSE)
        return cls(cls._LENGTH, length)

    @property
    def done(self) -> bool:
        """The whole body has been fed."""
        return self._done

    @property
    def until_close(self) -> bool:
        """The body ends when the connection closes (no keep-alive after it)."""
        return self._mode == self._CLOSE

    @property
    def chunked(self) -> bool:
        """The body uses chunked transfer coding."""
        return self._mode == self._CHUNKED

    def feed(self, data: bytes | bytearray | memoryview) -> int:
        """Consume body bytes from ``data``; return how many belong to this body."""
        if self._done:
            return 0
        if self._mode == self._CLOSE:
            return len(data)
        if self._mode == self._LENGTH:
            used = min(self._remaining, len(data))
            self._remaining -= used
            self._done = self._remaining == 0
            return used
        return self._feed_chunked(bytes(data))

    def _feed_chunked(self, data: bytes) -> int:
        position = 0
        size = len(data)
        while position < size and not self._done:
            if self._state == self._DATA:
                used = min(self._remaining, size - position)
                position += used
                self._remaining -= used
                if self._remaining == 0:
                    self._state = self._DATA_END
                continue
            newline = data.find(b"\n", position)
            if newline < 0:
                self._line += data[position:]
                position = size
                self._check_line_length()
                if self._state == self._DATA_END and bytes(self._line) not in (b"", b"\r"):
                    raise HttpParseError("chunk data longer than its size", 400)
                break
            self._line += data[position:newline]
            position = newline + 1
            self._check_line_length()
            line = bytes(self._line)
            self._line.clear()
            if line.endswith(b"\r"):
                line = line[:-1]
            if b"\r" in line:
                raise HttpParseError("bare CR in chunked body framing", 400)
            self._end_of_line(line)
        return position

    def _check_line_length(self) -> None:
        if len(self._line) > MAX_CHUNK_LINE_BYTES:
            raise HttpParseError("chunk size or trailer line too long", 400)

    def _end_of_line(self, line: bytes) -> None:
        if self._state == self._SIZE:
            match = _CHUNK_SIZE.fullmatch(line)
            if match is None:
                raise HttpParseError("malformed chunk size", 400)
            self._remaining = int(match.group(1), 16)
            self._state = self._DATA if self._remaining else self._TRAILER
        elif self._state == self._DATA_END:
            if line:
                raise HttpParseError("chunk data longer than its size", 400)
            self._state = self._SIZE
        else:  # trailer section: field lines until an empty line
            if not line:
                self._done = True
                return
            self._trailer_bytes += len(line)
            if self._trailer_bytes > MAX_TRAILER_BYTES:
                raise HttpParseError("trailer section too large", 400)
            _parse_fields([line])


def _split_head(buffer: bytes | bytearray, max_bytes: int) -> tuple[list[bytes], bytes, int] | None:
    """Find the head at the start of ``buffer``: (lines, raw head, bytes consumed)."""
    leading = _LEADING_BLANK_LINES.match(buffer)
    start = leading.end() if leading else 0
    end = _HEAD_END.search(buffer, start)
    # blank lines before the head count toward the limit: endless CRLFs must not pile up
    if end is None:
        if len(buffer) > max_bytes:
            raise HttpParseError(f"message head larger than {max_bytes} bytes", 413)
        if start < len(buffer) and buffer[start] == 0x0D and len(buffer) - start > 1:
            raise HttpParseError("bare CR before the message head", 400)
        return None
    if end.end() > max_bytes:
        raise HttpParseError(f"message head larger than {max_bytes} bytes", 413)
    raw = bytes(buffer[start : end.end()])
    lines = _LINE_END.split(raw)[:-2]
    if not lines or not lines[0]:
        raise HttpParseError("empty start line", 400)
    for line in lines:
        if b"\r" in line:
            raise HttpParseError("bare CR in the message head", 400)
    return lines, raw, end.end()


def _parse_fields(lines: Sequence[bytes]) -> Headers:
    headers: Headers = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            raise HttpParseError("obsolete line folding is not accepted", 400)
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise HttpParseError("malformed header field", 400)
        value = value.strip(b" \t")
        if _FIELD_VALUE_BAD.search(value):
            raise HttpParseError("control character in a header value", 400)
        headers.append((name, value))
    return headers


def _check_framing_headers(head: RequestHead | ResponseHead, *, is_request: bool) -> None:
    """Reject ambiguous body framing (request smuggling) and unknown codings."""
    has_transfer_encoding = bool(head.header_values("transfer-encoding"))
    if has_transfer_encoding:
        if head.version == "HTTP/1.0":
            raise HttpParseError("Transfer-Encoding in an HTTP/1.0 message", 400)
        if head.header_values("content-length"):
            raise HttpParseError("both Transfer-Encoding and Content-Length", 400)
        codings = head.header_tokens("transfer-encoding")
        for coding in codings:
            if coding not in _KNOWN_CODINGS:
                raise HttpParseError(f"unsupported transfer coding {coding!r}", 501)
        if codings.count(b"chunked") > 1 or (b"chunked" in codings and codings[-1] != b"chunked"):
            raise HttpParseError("'chunked' must be the last transfer coding, once", 400)
        if is_request and codings[-1:] != [b"chunked"]:
            raise HttpParseError("a request body's last transfer coding must be chunked", 400)
    _content_length(head)


def _content_length(head: RequestHead | ResponseHead) -> int | None:
    """The Content-Length (``None`` if absent); 400 unless all values agree and are digits."""
    values = {
        part.strip(b" \t")
        for value in head.header_values("content-length")
        for part in value.split(b",")
    }
    if not values:
        return None
    if len(values) > 1:
        raise HttpParseError("conflicting Content-Length values", 400)
    (value,) = values
    if not value.isdigit() or len(value) > 18:
        raise HttpParseError("malformed Content-Length", 400)
    return int(value)


def _lower_name(name: str | bytes) -> bytes:
    if isinstance(name, str):
        return name.lower().encode("latin-1", errors="replace")
    return name.lower()


def split_target(target: str) -> tuple[str, str]:
    """Split a request target into (raw path, raw query); handles absolute-form targets."""
    if "://" in target and not target.startswith("/"):
        # absolute-form (``http://host:port/path?q``), as sent to proxies
        after_scheme = target.split("://", 1)[1]
        slash = after_scheme.find("/")
        question = after_scheme.find("?")
        if slash < 0 or (0 <= question < slash):
            target = "/" + after_scheme[question:] if question >= 0 else "/"
        else:
            target = after_scheme[slash:]
    target = target.split("#", 1)[0]
    path, _, query = target.partition("?")
    return path, query
