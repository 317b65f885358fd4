"""Unit tests of the topic rules (wsgauge_sidecar.topics)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsgauge_sidecar.exceptions import ConfigError, InvalidTopicRule
from wsgauge_sidecar.topics import (
    MAX_TOPIC_LENGTH,
    TopicRule,
    parse_topic_rule,
    split_target,
    topic_from_request,
)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("path", TopicRule("path", None)),
        ("path:^/ws/([^/]+)", TopicRule("path_regex", "^/ws/([^/]+)")),
        ("query:room", TopicRule("query", "room")),
        ("header:X-Topic", TopicRule("header", "x-topic")),
        ("phoenix", TopicRule("phoenix", None)),
        ("report", TopicRule("report", None)),
        ("  path  ", TopicRule("path", None)),
    ],
)
def test_parse_valid_rules(spec: str, expected: TopicRule) -> None:
    assert parse_topic_rule(spec) == expected


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("", "unknown topic rule"),
        ("topic", "unknown topic rule"),
        ("path:", "needs a regular expression"),
        ("path:^/ws/[^/]+", "capture group"),
        ("path:(", "invalid regular expression"),
        ("query:", "parameter name"),
        ("header:", "header name"),
        ("header:bad name", "header name"),
        ("phoenix:x", "takes no argument"),
        ("report:", "takes no argument"),
    ],
)
def test_parse_invalid_rules(spec: str, fragment: str) -> None:
    with pytest.raises(InvalidTopicRule, match=fragment):
        parse_topic_rule(spec)


def test_invalid_rule_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        parse_topic_rule("nope")


def test_rule_str_round_trips() -> None:
    for spec in ("path", "path:^/ws/([^/]+)", "query:room", "header:x-topic", "phoenix", "report"):
        assert parse_topic_rule(str(parse_topic_rule(spec))) == parse_topic_rule(spec)


@pytest.mark.parametrize(
    ("target", "topic"),
    [
        ("/ws/stream", "/ws/stream"),
        ("/ws/stream?x=1", "/ws/stream"),
        ("/ws/caf%C3%A9", "/ws/café"),
        ("http://example.test:80/ws/a?b=c", "/ws/a"),
        ("http://example.test?b=c", "/"),
        ("", None),
        ("?only=query", None),
    ],
)
def test_path_rule(target: str, topic: str | None) -> None:
    assert topic_from_request(parse_topic_rule("path"), target, []) == topic


@pytest.mark.parametrize(
    ("target", "topic"),
    [
        ("/ws/stream?x=1", "stream"),
        ("/ws/stream/more", "stream"),
        ("/ws/a%20b", "a b"),
        ("/other/stream", None),
        ("/ws/", None),
    ],
)
def test_path_regex_rule(target: str, topic: str | None) -> None:
    assert topic_from_request(parse_topic_rule("path:^/ws/([^/]+)"), target, []) == topic


def test_path_regex_optional_group_not_matched() -> None:
    rule = parse_topic_rule("path:^/ws(/x)?")
    assert topic_from_request(rule, "/ws", []) is None
    assert topic_from_request(rule, "/ws/x", []) == "/x"


@pytest.mark.parametrize(
    ("target", "topic"),
    [
        ("/ws?room=lobby", "lobby"),
        ("/ws?a=1&room=first&room=second", "first"),
        ("/ws?room=hello+world%21", "hello world!"),
        ("/ws?room=", None),
        ("/ws?other=1", None),
        ("/ws", None),
    ],
)
def test_query_rule(target: str, topic: str | None) -> None:
    assert topic_from_request(parse_topic_rule("query:room"), target, []) == topic


def test_header_rule_is_case_insensitive() -> None:
    rule = parse_topic_rule("header:X-Topic")
    headers = [(b"Host", b"h"), (b"x-TOPIC", b" news \t"), (b"X-Topic", b"second")]
    assert topic_from_request(rule, "/", headers) == "news"
    assert topic_from_request(rule, "/", [(b"Host", b"h")]) is None
    assert topic_from_request(rule, "/", [(b"X-Topic", b"")]) is None
    assert topic_from_request(rule, "/", [(b"X-Topic", "é".encode())]) == "é"


def test_frame_and_report_rules_take_no_topic_from_request() -> None:
    for spec in ("phoenix", "report"):
        assert topic_from_request(parse_topic_rule(spec), "/socket/websocket?vsn=2.0.0", []) is None


def test_long_topic_is_truncated() -> None:
    topic = topic_from_request(parse_topic_rule("query:t"), "/?t=" + "x" * 1000, [])
    assert topic == "x" * MAX_TOPIC_LENGTH


def test_split_target() -> None:
    assert split_target("/a?b#c") == ("/a", "b")
    assert split_target("https://h/p/q?x=1") == ("/p/q", "x=1")
    assert split_target("*") == ("*", "")


@settings(max_examples=200, deadline=None)
@given(
    spec=st.sampled_from(["path", "path:^/([^/]*)", "query:t", "header:t"]),
    target=st.text(max_size=80),
    header_value=st.binary(max_size=40),
)
def test_any_target_gives_a_short_string_or_none(
    spec: str, target: str, header_value: bytes
) -> None:
    topic = topic_from_request(parse_topic_rule(spec), target, [(b"T", header_value)])
    assert topic is None or (0 < len(topic) <= MAX_TOPIC_LENGTH)


@settings(max_examples=200, deadline=None)
@given(spec=st.text(max_size=30))
def test_any_spec_parses_or_raises_invalid_topic_rule(spec: str) -> None:
    try:
        rule = parse_topic_rule(spec)
    except InvalidTopicRule:
        return
    assert rule.kind in ("path", "path_regex", "query", "header", "phoenix", "report")
