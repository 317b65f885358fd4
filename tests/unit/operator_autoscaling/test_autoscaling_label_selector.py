"""Label selector parsing and matching (apimachinery string syntax)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wsgauge_operator.model.label_selector import (
    LabelSelectorError,
    Operator,
    parse_label_selector,
    selector_from_match_labels,
)


@pytest.mark.parametrize("text", [None, "", "   "])
def test_blank_selects_everything(text: str | None) -> None:
    selector = parse_label_selector(text)
    assert selector.empty
    assert selector.matches({})
    assert selector.matches({"app": "chat"})


@pytest.mark.parametrize(
    ("text", "labels", "expected"),
    [
        ("app=chat", {"app": "chat"}, True),
        ("app=chat", {"app": "feed"}, False),
        ("app=chat", {}, False),
        ("app==chat", {"app": "chat"}, True),
        ("app!=chat", {}, True),
        ("app!=chat", {"app": "chat"}, False),
        ("app!=chat", {"app": "feed"}, True),
        ("tier in (a, b)", {"tier": "b"}, True),
        ("tier in (a,b)", {"tier": "c"}, False),
        ("tier in (a,b)", {}, False),
        ("tier notin (a,b)", {}, True),
        ("tier notin (a,b)", {"tier": "a"}, False),
        ("canary", {"canary": ""}, True),
        ("canary", {}, False),
        ("!canary", {}, True),
        ("!canary", {"canary": "x"}, False),
        ("rev>3", {"rev": "4"}, True),
        ("rev>3", {"rev": "3"}, False),
        ("rev<3", {"rev": "x"}, False),
        ("rev<3", {}, False),
        ("app=chat,tier in (web),!canary", {"app": "chat", "tier": "web"}, True),
        ("app=chat,tier in (web),!canary", {"app": "chat", "tier": "web", "canary": "1"}, False),
        ("example.com/team=a", {"example.com/team": "a"}, True),
        ("app=", {"app": ""}, True),
    ],
)
def test_matching(text: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_label_selector(text).matches(labels) is expected


@pytest.mark.parametrize(
    "text",
    [
        "app=chat,",
        ",app=chat",
        "app in (a",
        "app in a)",
        "app in ()",
        "app=ch at",
        "-app=chat",
        "app=" + "x" * 64,
        "Bad_Prefix.com/app=x",
        "/app=x",
        "rev>abc",
        "app=(x)",
        "app in ((a))",
        "=x",
        "a" * 5000,
    ],
)
def test_malformed_selectors_raise(text: str) -> None:
    with pytest.raises(LabelSelectorError):
        parse_label_selector(text)


def test_equality_value_and_structured_form() -> None:
    selector = parse_label_selector("topic=stream")
    assert selector.equality_value("topic") == "stream"
    assert selector.to_label_selector_dict() == {"matchLabels": {"topic": "stream"}}
    assert parse_label_selector("topic in (x)").equality_value("topic") == "x"
    assert parse_label_selector("topic in (x,y)").equality_value("topic") is None
    assert parse_label_selector("topic!=x").equality_value("topic") is None
    complex_selector = parse_label_selector("a=1,b in (x,y),c notin (z),d,!e")
    assert complex_selector.to_label_selector_dict() == {
        "matchLabels": {"a": "1"},
        "matchExpressions": [
            {"key": "b", "operator": "In", "values": ["x", "y"]},
            {"key": "c", "operator": "NotIn", "values": ["z"]},
            {"key": "d", "operator": "Exists"},
            {"key": "e", "operator": "DoesNotExist"},
        ],
    }
    assert [r.operator for r in complex_selector.requirements] == [
        Operator.EQUALS,
        Operator.IN,
        Operator.NOT_IN,
        Operator.EXISTS,
        Operator.DOES_NOT_EXIST,
    ]


_names = st.from_regex(r"[a-z0-9]([a-z0-9._-]{0,20}[a-z0-9])?", fullmatch=True)


@given(st.dictionaries(_names, _names, min_size=1, max_size=5), st.dictionaries(_names, _names))
def test_match_labels_round_trip(
    match_labels: dict[str, str], other_labels: dict[str, str]
) -> None:
    """A matchLabels map printed and parsed again selects exactly the supersets of it."""
    selector = parse_label_selector(selector_from_match_labels(match_labels))
    labels = {**other_labels, **match_labels}
    assert selector.matches(labels)
    key = sorted(match_labels)[0]
    assert not selector.matches({**labels, key: match_labels[key] + "x"})
    assert not selector.matches({k: v for k, v in labels.items() if k != key})
