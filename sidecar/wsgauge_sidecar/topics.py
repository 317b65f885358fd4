"""Topic rules: how the sidecar decides which topic a WebSocket connection belongs to.

A rule is given once on the command line (``--topic``) and parsed by
:func:`parse_topic_rule`; for the request-based rules the proxy calls
:func:`topic_from_request` with the upgrade request's target and headers.

=================  ==========================================================
``path``           the request path without the query (``/ws/stream``)
``path:REGEX``     group 1 of ``re.search(REGEX, path)``; no match = no topic
``query:NAME``     the first value of query parameter ``NAME``
``header:NAME``    the value of request header ``NAME`` (case-insensitive)
PROTOCOL           a frame protocol (``phoenix``, ...): topics come from the
                   WebSocket messages (:mod:`wsgauge_sidecar.protocols`)
``auto[:RULE]``    per socket, a frame protocol recognised from its handshake,
                   else ``RULE`` (``path``): :meth:`TopicRule.for_socket`
``report``         the app reports its own counts; nothing is proxied
=================  ==========================================================

A result of ``None`` means "counted as a connection, in no topic". Topics taken
from the path or the query are percent-decoded (a query's ``+`` is a space);
header values are taken as sent (decoded as UTF-8, surrounding blanks removed),
since HTTP header values are not percent-encoded. Every topic is cut to
:data:`MAX_TOPIC_LENGTH` characters, and an empty topic is ``None``.

This module is pure: no I/O, and only :class:`InvalidTopicRule` escapes it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote

from wsgauge_sidecar.exceptions import InvalidTopicRule
from wsgauge_sidecar.httpwire import RequestHead, ResponseHead, split_target
from wsgauge_sidecar.protocols.auto import candidate_protocols, choose_rule
from wsgauge_sidecar.protocols.base import MAX_TOPIC_LENGTH, ProtocolSpec, normalize_topic
from wsgauge_sidecar.protocols.registry import PROTOCOLS, protocol_spec

__all__ = [
    "MAX_TOPIC_LENGTH",
    "TopicRule",
    "normalize_topic",
    "parse_topic_rule",
    "split_target",
    "topic_from_request",
]

REQUEST_KINDS = ("path", "path_regex", "query", "header", "report")
"""The rule kinds that are not frame protocols; ``path_regex`` is written ``path:REGEX``."""

_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
"""An HTTP header field name (RFC 9110 ``token``)."""

_RULES_HELP = " | ".join(
    ["path", "path:REGEX", "query:NAME", "header:NAME", *PROTOCOLS, "auto", "auto:RULE", "report"]
)

AUTO = "auto"
"""The rule kind that picks a rule per socket (:mod:`wsgauge_sidecar.protocols.auto`)."""


@dataclass(frozen=True)
class TopicRule:
    """A parsed ``--topic`` rule."""

    kind: str
    """Which rule: one of :data:`REQUEST_KINDS` or the name of a frame protocol
    (:data:`wsgauge_sidecar.protocols.registry.PROTOCOLS`, e.g. ``phoenix``)."""
    argument: str | None = None
    """The regex (``path_regex``), parameter name (``query``), header name (``header``), or
    the fallback rule of ``auto`` (a rule spec, ``path`` by default)."""

    @property
    def protocol(self) -> ProtocolSpec | None:
        """The frame protocol whose messages give the topics, or ``None`` (request rules and
        ``auto``, whose sockets each get theirs from :meth:`for_socket`)."""
        return protocol_spec(self.kind)

    @property
    def needs_frames(self) -> bool:
        """True when topics come (or, for ``auto``, may come) from the WebSocket messages."""
        return self.kind in PROTOCOLS or self.kind == AUTO

    @property
    def fallback(self) -> TopicRule:
        """``auto``: the rule of sockets no protocol is recognised for; else the rule itself."""
        if self.kind != AUTO:
            return self
        return parse_topic_rule(self.argument or "path")

    def for_socket(self, request: RequestHead, response: ResponseHead) -> TopicRule:
        """The rule that counts one socket: ``auto`` chooses from its handshake (the accepted
        subprotocol, the URL shape, else the fallback); any other rule is itself."""
        if self.kind != AUTO:
            return self
        fallback = self.fallback
        chosen = choose_rule(request, response, str(fallback), PROTOCOLS)
        return fallback if chosen == str(fallback) else TopicRule(chosen)

    def strips_extensions(self, request: RequestHead) -> bool:
        """Whether ``Sec-WebSocket-Extensions`` is removed from this upgrade request, so that
        permessage-deflate is never negotiated on a socket whose messages are read."""
        if self.kind == AUTO:
            names = candidate_protocols(request, PROTOCOLS)
            names.add(self.fallback.kind)
        else:
            names = {self.kind}
        return any(spec.strip_extensions for spec in map(protocol_spec, names) if spec)

    def __str__(self) -> str:
        if self.kind == "path_regex":
            return f"path:{self.argument}"
        if self.kind == AUTO and self.argument == "path":
            return AUTO
        if self.argument is None:
            return self.kind
        return f"{self.kind}:{self.argument}"


def parse_topic_rule(spec: str) -> TopicRule:
    """Parse a ``--topic`` value; raise :class:`InvalidTopicRule` with a clear message."""
    kind, separator, argument = spec.strip().partition(":")
    if kind == AUTO:
        fallback = parse_topic_rule(argument) if separator else TopicRule("path")
        if fallback.kind in (AUTO, "report"):
            raise InvalidTopicRule(f"topic rule 'auto:RULE' cannot fall back to {argument!r}")
        return TopicRule(AUTO, str(fallback))
    if kind == "report" or kind in PROTOCOLS:
        if separator:
            raise InvalidTopicRule(f"topic rule {kind!r} takes no argument (got {spec!r})")
        return TopicRule(kind)
    if kind == "path":
        if not separator:
            return TopicRule("path")
        if not argument:
            raise InvalidTopicRule("topic rule 'path:REGEX' needs a regular expression")
        pattern = _compile(argument)
        if pattern.groups < 1:
            raise InvalidTopicRule(
                f"topic rule 'path:{argument}': the regular expression needs a capture group "
                "(group 1 is the topic), e.g. path:^/ws/([^/]+)"
            )
        return TopicRule("path_regex", argument)
    if kind == "query":
        if not argument:
            raise InvalidTopicRule("topic rule 'query:NAME' needs a parameter name")
        return TopicRule("query", argument)
    if kind == "header":
        if not argument or not _HEADER_NAME.match(argument):
            raise InvalidTopicRule(
                f"topic rule 'header:NAME' needs a valid header name (got {argument!r})"
            )
        return TopicRule("header", argument.lower())
    raise InvalidTopicRule(f"unknown topic rule {spec!r}; expected one of: {_RULES_HELP}")


def topic_from_request(
    rule: TopicRule, target: str, headers: Sequence[tuple[bytes, bytes]]
) -> str | None:
    """The topic of an upgrade request under ``rule`` (``None`` = in no topic).

    Frame protocols and ``report`` never take a topic from the request: ``None``.
    """
    if rule.kind == "path":
        path, _ = split_target(target)
        return normalize_topic(unquote(path, errors="replace"))
    if rule.kind == "path_regex":
        path, _ = split_target(target)
        match = _compile(rule.argument or "").search(path)
        if match is None:
            return None
        group = match.group(1)
        return normalize_topic(unquote(group, errors="replace")) if group else None
    if rule.kind == "query":
        _, query = split_target(target)
        for param, param_value in parse_qsl(query, keep_blank_values=True, errors="replace"):
            if param == rule.argument:
                return normalize_topic(param_value)
        return None
    if rule.kind == "header":
        wanted = (rule.argument or "").lower().encode("ascii", errors="replace")
        for header_name, header_value in headers:
            if header_name.lower() == wanted:
                text = header_value.decode("utf-8", errors="replace").strip(" \t")
                return normalize_topic(text)
        return None
    return None


@functools.lru_cache(maxsize=64)
def _compile(expression: str) -> re.Pattern[str]:
    try:
        return re.compile(expression)
    except (re.error, RecursionError, OverflowError) as error:
        raise InvalidTopicRule(f"invalid regular expression {expression!r}: {error}") from None
