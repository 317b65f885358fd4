"""Which pods each ConnectionStats selects, kept up to date one pod event at a time (pure).

Matching every ConnectionStats selector against every pod of a namespace on each
pod event costs O(pods) per event, O(pods²) while an operator starts on an
existing fleet. :class:`SelectionIndex` keeps the answer instead:

- :meth:`SelectionIndex.set_selector` (a ConnectionStats appeared or its selector
  changed) matches that one selector against the namespace's pods: O(pods), rare;
- :meth:`SelectionIndex.update_pod` (a pod was added, changed or deleted) matches
  that one pod against the namespace's selectors: O(ConnectionStats in the
  namespace), for every pod event;
- :meth:`SelectionIndex.selecting` and :meth:`SelectionIndex.members` answer in O(1).

No I/O, no clock: the controller feeds it from the watch events.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from wsgauge_operator.model.label_selector import LabelSelector

Key = tuple[str, str]
"""(namespace, name) of a ConnectionStats."""
PodKey = tuple[str, str]
"""(namespace, name) of a pod."""

_NOTHING: frozenset[Key] = frozenset()


class SelectionIndex:
    """Selected pods per ConnectionStats and selecting ConnectionStats per pod."""

    def __init__(self) -> None:
        self._selectors: dict[Key, LabelSelector] = {}
        self._by_namespace: dict[str, set[Key]] = {}
        self._members: dict[Key, set[str]] = {}
        self._selected_by: dict[PodKey, set[Key]] = {}

    def set_selector(
        self,
        key: Key,
        selector: LabelSelector | None,
        pods: Iterable[tuple[str, Mapping[str, str]]],
    ) -> None:
        """Set (``None``: clear) the selector of a ConnectionStats.

        ``pods`` are the (name, labels) of every known pod of ``key``'s namespace.
        """
        self.remove(key)
        if selector is None:
            return
        namespace = key[0]
        self._selectors[key] = selector
        self._by_namespace.setdefault(namespace, set()).add(key)
        members = {name for name, labels in pods if selector.matches(labels)}
        self._members[key] = members
        for name in members:
            self._selected_by.setdefault((namespace, name), set()).add(key)

    def remove(self, key: Key) -> None:
        """Forget a ConnectionStats (deleted, or its spec became invalid)."""
        if self._selectors.pop(key, None) is None:
            return
        namespace = key[0]
        keys = self._by_namespace.get(namespace)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_namespace[namespace]
        for name in self._members.pop(key, set()):
            selecting = self._selected_by.get((namespace, name))
            if selecting is not None:
                selecting.discard(key)
                if not selecting:
                    del self._selected_by[(namespace, name)]

    def update_pod(
        self, namespace: str, name: str, labels: Mapping[str, str] | None
    ) -> frozenset[Key]:
        """A pod was added or changed (``labels``) or deleted (``None``).

        Returns the ConnectionStats that selected it before or select it now.
        """
        before = self._selected_by.pop((namespace, name), set())
        now: set[Key] = set()
        if labels is not None:
            for key in self._by_namespace.get(namespace, ()):
                if self._selectors[key].matches(labels):
                    now.add(key)
        for key in before - now:
            self._members[key].discard(name)
        for key in now - before:
            self._members[key].add(name)
        if now:
            self._selected_by[(namespace, name)] = now
        return frozenset(before | now)

    def selecting(self, namespace: str, name: str) -> frozenset[Key]:
        """The ConnectionStats whose selector selects a pod."""
        keys = self._selected_by.get((namespace, name))
        return frozenset(keys) if keys else _NOTHING

    def members(self, key: Key) -> frozenset[str]:
        """Names of the pods a ConnectionStats selects (empty: none, or no valid selector)."""
        return frozenset(self._members.get(key, ()))

    def keys(self, namespace: str | None = None) -> list[Key]:
        """ConnectionStats with a selector (of one namespace, or all)."""
        if namespace is None:
            return list(self._selectors)
        return list(self._by_namespace.get(namespace, ()))
