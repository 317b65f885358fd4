"""Deletions the pod watch never delivered (issue #7, pod churn at fleet scale).

When the API server drops the operator's slow pod watch and kopf has to list the pods again,
the pods deleted in the gap get no DELETED event: before the periodic resync the operator
followed and counted them forever. No I/O: fake followers and a fake lister."""

from __future__ import annotations

from test_operator_controller_followers import Factory, connection_stats, followed, pod
from wsgauge_operator.control.controller import Controller
from wsgauge_operator.control.pod_resync import PodIdentity, PodResync
from wsgauge_operator.model.settings import OperatorSettings


class FakeLister:
    """Answers listings from a set of pods that exist (what the API server would list)."""

    def __init__(self, existing: set[PodIdentity]) -> None:
        self.existing = existing
        self.calls: list[str | None] = []

    async def list_pod_identities(self, namespace: str | None) -> set[PodIdentity]:
        self.calls.append(namespace)
        return {i for i in self.existing if namespace is None or i[0] == namespace}


def identity(name: str) -> PodIdentity:
    return ("ns", name, f"u-{name}")


async def test_a_relist_without_the_deletion_leaves_the_pod_followed_until_the_resync() -> None:
    controller = Controller(OperatorSettings(), None, follower_factory=Factory())
    controller.connectionstats_event(None, connection_stats())
    await controller.start()
    try:
        for name in ("a", "b", "c"):
            controller.pod_event("ADDED", pod(name))
        assert followed(controller) == {"a", "b", "c"}
        # "a" is deleted while the watch is down; kopf's new listing delivers b and c only.
        for name in ("b", "c"):
            controller.pod_event(None, pod(name))
        assert followed(controller) == {"a", "b", "c"}  # the watch alone never repairs this
        lister = FakeLister({identity("b"), identity("c")})
        resync = PodResync(controller, lister, ("ns",))
        assert await resync.resync_once() == []  # one listing is not enough
        assert await resync.resync_once() == [("ns", "a")]
        assert followed(controller) == {"b", "c"}
        assert controller.fleet.pod("ns", "a") is None
        assert controller.selection.members(("ns", "chat")) == frozenset({"b", "c"})
        assert lister.calls == ["ns", "ns"]
    finally:
        await controller.stop()


async def test_pods_newer_than_the_listing_are_kept_until_a_later_listing_misses_them() -> None:
    controller = Controller(OperatorSettings(), None, follower_factory=Factory())
    controller.connectionstats_event(None, connection_stats())
    await controller.start()
    try:
        lister = FakeLister({identity("a")})
        resync = PodResync(controller, lister, ())

        class Late(FakeLister):
            async def list_pod_identities(self, namespace: str | None) -> set[PodIdentity]:
                controller.pod_event("ADDED", pod("new"))  # created after the listing's mark
                return await super().list_pod_identities(namespace)

        controller.pod_event("ADDED", pod("a"))
        late = PodResync(controller, Late({identity("a")}), ())
        assert await late.resync_once() == []
        assert await resync.resync_once() == []
        assert followed(controller) == {"a", "new"}
        # The pod really is absent from the API: the next listing forgets it.
        assert await resync.resync_once() == [("ns", "new")]
        assert followed(controller) == {"a"}
        assert lister.calls == [None, None]
    finally:
        await controller.stop()


async def test_a_pod_missed_once_then_listed_again_is_not_forgotten() -> None:
    controller = Controller(OperatorSettings(), None, follower_factory=Factory())
    controller.connectionstats_event(None, connection_stats())
    await controller.start()
    try:
        controller.pod_event("ADDED", pod("a"))
        controller.pod_event("ADDED", pod("b"))
        lister = FakeLister({identity("b")})  # a stale listing
        resync = PodResync(controller, lister, ("ns",))
        assert await resync.resync_once() == []
        lister.existing = {identity("a"), identity("b")}
        assert await resync.resync_once() == []
        lister.existing = {identity("b")}
        assert await resync.resync_once() == []
        assert followed(controller) == {"a", "b"}
    finally:
        await controller.stop()


async def test_a_replaced_pod_of_the_same_name_is_forgotten_by_uid() -> None:
    controller = Controller(OperatorSettings(), None, follower_factory=Factory())
    controller.connectionstats_event(None, connection_stats())
    await controller.start()
    try:
        controller.pod_event("ADDED", pod("a"))
        lister = FakeLister({("ns", "a", "u-other")})  # a new pod "a" exists; ours (u-a) is gone
        resync = PodResync(controller, lister, ("ns",))
        assert await resync.resync_once() == []
        assert await resync.resync_once() == [("ns", "a")]
        assert followed(controller) == set()
    finally:
        await controller.stop()
