"""The controller's followers per pod: started and stopped per pod event, poked, and held back
beyond ``max_followed_pods`` (with the Degraded/PodLimitReached condition). No I/O: the
followers are recording fakes."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from wsgauge_operator.control.controller import Controller
from wsgauge_operator.control.follower_set import Follower
from wsgauge_operator.model.fleet import EndpointKey, FleetState
from wsgauge_operator.model.settings import FollowerSettings, OperatorSettings

GATE = "wsgauge.dev/connections-ok"


class FakeFollower:
    """Records pokes; runs until cancelled."""

    def __init__(self, key: EndpointKey) -> None:
        self.key = key
        self.pokes = 0

    def poke(self) -> None:
        self.pokes += 1

    async def run(self) -> None:
        await asyncio.Event().wait()


class Factory:
    """Builds and remembers fake followers."""

    def __init__(self) -> None:
        self.built: list[FakeFollower] = []

    def __call__(
        self, key: EndpointKey, fleet: FleetState, session: aiohttp.ClientSession
    ) -> Follower:
        follower = FakeFollower(key)
        self.built.append(follower)
        return follower


def pod(name: str, app: str = "chat", *, ready: bool = True, ip: str = "") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": f"u-{name}", "labels": {"app": app}},
        "spec": {
            "nodeName": "node-1",
            "readinessGates": [{"conditionType": GATE}],
            "containers": [{"name": "s", "ports": [{"name": "admin", "containerPort": 9090}]}],
        },
        "status": {
            "phase": "Running",
            "podIP": ip or f"127.0.60.{ord(name[-1]) % 250}",
            "conditions": [{"type": "ContainersReady", "status": "True" if ready else "False"}],
        },
    }


def connection_stats(name: str = "chat") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": f"u-{name}", "generation": 1},
        "spec": {"selector": {"matchLabels": {"app": name}}, "sidecarPort": "admin"},
    }


def followed(controller: Controller) -> set[str]:
    return {key.pod for key in controller.fleet.endpoint_keys()}


async def test_followers_follow_pod_events_and_pokes() -> None:
    factory = Factory()
    controller = Controller(OperatorSettings(), None, follower_factory=factory)
    controller.connectionstats_event(None, connection_stats())
    controller.pod_event("ADDED", pod("a"))
    await controller.start()
    try:
        assert followed(controller) == {"a"}
        controller.pod_event("ADDED", pod("b", ready=False))
        controller.pod_event("ADDED", pod("c", app="other"))
        assert followed(controller) == {"a", "b"}
        controller.pod_event("MODIFIED", pod("b", ready=True))
        assert [(f.key.pod, f.pokes) for f in factory.built] == [("a", 0), ("b", 1)]
        controller.pod_event("MODIFIED", pod("a", app="other"))  # relabelled out
        assert followed(controller) == {"b"}
        controller.pod_event("DELETED", pod("b"))
        assert followed(controller) == set()
        controller.pod_event("MODIFIED", pod("c", app="chat"))  # relabelled in
        assert followed(controller) == {"c"}
        controller.connectionstats_event("DELETED", connection_stats())
        assert followed(controller) == set()
    finally:
        await controller.stop()


async def test_followed_pod_limit_degrades_and_frees_up() -> None:
    factory = Factory()
    settings = OperatorSettings(follower=FollowerSettings(max_followed_pods=2))
    controller = Controller(settings, None, follower_factory=factory)
    await controller.start()
    try:
        controller.connectionstats_event(None, connection_stats())
        for name in ("a", "b", "c"):
            controller.pod_event("ADDED", pod(name))
        assert followed(controller) == {"a", "b"}
        assert controller.telemetry.followers_over_limit._value.get() == 1
        await controller.reconcile(("ns", "chat"))
        status = controller.summaries[("ns", "chat")]
        assert status["pods"]["matched"] == 3
        degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
        assert (degraded["status"], degraded["reason"]) == ("True", "PodLimitReached")
        assert degraded["message"].startswith("1 pods are not followed")
        assert degraded["message"].endswith(": c")

        controller.pod_event("DELETED", pod("a"))
        assert followed(controller) == {"b", "c"}
        assert controller.telemetry.followers_over_limit._value.get() == 0
        await controller.reconcile(("ns", "chat"))
        degraded = next(
            c for c in controller.summaries[("ns", "chat")]["conditions"] if c["type"] == "Degraded"
        )
        assert degraded["reason"] != "PodLimitReached"
    finally:
        await controller.stop()


async def test_held_back_pod_that_moves_is_followed_at_its_new_address() -> None:
    factory = Factory()
    settings = OperatorSettings(follower=FollowerSettings(max_followed_pods=1))
    controller = Controller(settings, None, follower_factory=factory)
    await controller.start()
    try:
        controller.connectionstats_event(None, connection_stats())
        controller.pod_event("ADDED", pod("a"))
        controller.pod_event("ADDED", pod("b", ip="127.0.61.1"))
        controller.pod_event("MODIFIED", pod("b", ip="127.0.61.2"))  # held back, new IP
        assert followed(controller) == {"a"}
        controller.pod_event("DELETED", pod("a"))
        assert [key.ip for key in controller.fleet.endpoint_keys()] == ["127.0.61.2"]
        assert [f.key.ip for f in factory.built] == ["127.0.60.97", "127.0.61.2"]
    finally:
        await controller.stop()
