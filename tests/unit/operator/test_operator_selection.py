"""Unit tests of the selection index: incremental answers equal brute-force matching."""

from __future__ import annotations

from collections.abc import Mapping

from hypothesis import given, settings
from hypothesis import strategies as st
from wsgauge_operator.model.label_selector import LabelSelector, Operator, Requirement
from wsgauge_operator.model.selection import SelectionIndex

NAMESPACES = ("a", "b")
PODS = tuple(f"p{i}" for i in range(6))
CONNECTION_STATS = ("cs1", "cs2", "cs3")
LABEL_VALUES = ("x", "y")

labels_strategy = st.dictionaries(
    st.sampled_from(("app", "tier")), st.sampled_from(LABEL_VALUES), max_size=2
)
selector_strategy = st.one_of(
    st.none(),
    st.builds(lambda app: LabelSelector.from_match({"app": app}), st.sampled_from(LABEL_VALUES)),
    st.builds(
        lambda tier: LabelSelector(
            (Requirement("tier", Operator.IN, (tier,)), Requirement("app", Operator.EXISTS))
        ),
        st.sampled_from(LABEL_VALUES),
    ),
)
operation_strategy = st.one_of(
    st.tuples(
        st.just("pod"),
        st.sampled_from(NAMESPACES),
        st.sampled_from(PODS),
        st.one_of(st.none(), labels_strategy),
    ),
    st.tuples(
        st.just("selector"),
        st.sampled_from(NAMESPACES),
        st.sampled_from(CONNECTION_STATS),
        selector_strategy,
    ),
    st.tuples(
        st.just("remove"), st.sampled_from(NAMESPACES), st.sampled_from(CONNECTION_STATS), st.none()
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(operation_strategy, max_size=40))
def test_index_equals_brute_force_matching(
    operations: list[tuple[str, str, str, object]],
) -> None:
    index = SelectionIndex()
    pods: dict[tuple[str, str], Mapping[str, str]] = {}
    selectors: dict[tuple[str, str], LabelSelector] = {}
    for kind, namespace, name, value in operations:
        if kind == "pod":
            labels = value if isinstance(value, dict) else None
            expected_affected = {
                key
                for key, selector in selectors.items()
                if key[0] == namespace
                and (
                    ((namespace, name) in pods and selector.matches(pods[(namespace, name)]))
                    or (labels is not None and selector.matches(labels))
                )
            }
            if labels is None:
                pods.pop((namespace, name), None)
            else:
                pods[(namespace, name)] = labels
            assert index.update_pod(namespace, name, labels) == expected_affected
        elif kind == "selector":
            selector = value if isinstance(value, LabelSelector) else None
            key = (namespace, name)
            if selector is None:
                selectors.pop(key, None)
            else:
                selectors[key] = selector
            known = [(pod, labels) for (ns, pod), labels in pods.items() if ns == namespace]
            index.set_selector(key, selector, known)
        else:
            selectors.pop((namespace, name), None)
            index.remove((namespace, name))
        for key, selector in selectors.items():
            expected = {pod for (ns, pod), labels in pods.items() if ns == key[0]}
            expected = {pod for pod in expected if selector.matches(pods[(key[0], pod)])}
            assert index.members(key) == expected
        for namespace_ in NAMESPACES:
            for pod in PODS:
                expected_keys = {
                    key
                    for key, selector in selectors.items()
                    if key[0] == namespace_
                    and (namespace_, pod) in pods
                    and selector.matches(pods[(namespace_, pod)])
                }
                assert index.selecting(namespace_, pod) == expected_keys
            assert sorted(index.keys(namespace_)) == sorted(
                key for key in selectors if key[0] == namespace_
            )
        assert sorted(index.keys()) == sorted(selectors)


def test_relabelled_pod_moves_between_connection_stats() -> None:
    index = SelectionIndex()
    index.set_selector(
        ("ns", "chat"), LabelSelector.from_match({"app": "chat"}), [("p", {"app": "chat"})]
    )
    index.set_selector(
        ("ns", "feed"), LabelSelector.from_match({"app": "feed"}), [("p", {"app": "chat"})]
    )
    assert index.members(("ns", "chat")) == {"p"}
    assert index.update_pod("ns", "p", {"app": "feed"}) == {("ns", "chat"), ("ns", "feed")}
    assert index.members(("ns", "chat")) == set()
    assert index.selecting("ns", "p") == {("ns", "feed")}
    assert index.update_pod("ns", "p", None) == {("ns", "feed")}
    assert index.members(("ns", "feed")) == set()
    index.set_selector(("ns", "feed"), None, [])
    assert index.keys("ns") == [("ns", "chat")]
