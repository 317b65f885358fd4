"""The ``mqtt`` and ``graphql-ws`` rules with real Python client libraries (paho-mqtt, gql)
through the real sidecar, against the aedes broker and graphql-ws's server (``js/server.js``).

After each step /stats equals what the client holds: subscribe, a refused subscription,
unsubscribe (paho-mqtt, MQTT 3.1.1: aedes speaks no MQTT 5); two subscriptions, one
completed, then the socket closed (gql over ``graphql-transport-ws``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import paho.mqtt.client as paho
import pytest
from gql import Client, gql
from gql.transport.websockets import WebsocketsTransport
from paho.mqtt.enums import CallbackAPIVersion
from protocols_it_harness import NodeServer
from sidecar_it_harness import LOOPBACK, SidecarProcess


@pytest.fixture
async def mqtt_sidecar() -> AsyncIterator[SidecarProcess]:
    server = await NodeServer("mqtt").start()
    sidecar = SidecarProcess(server.port, "--topic", "mqtt")
    try:
        yield sidecar
    finally:
        sidecar.stop()
        await server.stop()


@pytest.fixture
async def graphql_sidecar() -> AsyncIterator[SidecarProcess]:
    server = await NodeServer("graphql").start()
    sidecar = SidecarProcess(server.port, "--topic", "graphql-ws")
    try:
        yield sidecar
    finally:
        sidecar.stop()
        await server.stop()


class PahoAcks:
    """The SUBACK / UNSUBACK answers paho-mqtt reports, by message id."""

    def __init__(self) -> None:
        self.condition = threading.Condition()
        self.connected = False
        self.answers: dict[int, list[int]] = {}

    def on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any,
                   properties: Any) -> None:  # fmt: skip
        with self.condition:
            self.connected = True
            self.condition.notify_all()

    def on_ack(self, client: paho.Client, userdata: Any, mid: int, reasons: Any,
               properties: Any) -> None:  # fmt: skip
        with self.condition:
            self.answers[mid] = [int(getattr(reason, "value", reason)) for reason in reasons]
            self.condition.notify_all()

    def wait(self, predicate: Any) -> None:
        with self.condition:
            assert self.condition.wait_for(predicate, timeout=30), "no answer from the broker"


async def test_paho_mqtt_subscribe_refused_unsubscribe(mqtt_sidecar: SidecarProcess) -> None:
    sidecar = mqtt_sidecar
    acks = PahoAcks()
    client = paho.Client(
        CallbackAPIVersion.VERSION2, transport="websockets", protocol=paho.MQTTv311
    )
    client.ws_set_options(path="/mqtt")
    client.on_connect = acks.on_connect
    client.on_subscribe = acks.on_ack
    client.on_unsubscribe = acks.on_ack
    client.connect(LOOPBACK, sidecar.port)
    client.loop_start()
    try:
        await asyncio.to_thread(acks.wait, lambda: acks.connected)
        await sidecar.wait_stats(lambda stats: stats["connections"] == 1)
        _, mid = client.subscribe([("chat/a", 0), ("chat/#", 1)])
        await asyncio.to_thread(acks.wait, lambda: mid in acks.answers)
        assert mid is not None
        assert acks.answers[mid] == [0, 1]
        await sidecar.wait_stats(lambda stats: stats["topics"] == {"chat/a": 1, "chat/#": 1})
        _, mid = client.subscribe("forbidden/x")
        await asyncio.to_thread(acks.wait, lambda: mid in acks.answers)
        assert mid is not None
        assert acks.answers[mid] == [0x80]
        _, mid = client.unsubscribe("chat/a")
        await asyncio.to_thread(acks.wait, lambda: mid in acks.answers)
        await sidecar.wait_stats(lambda stats: stats["topics"] == {"chat/#": 1})
    finally:
        client.disconnect()
        client.loop_stop()
    await sidecar.wait_stats(lambda stats: stats["connections"] == 0 and stats["topics"] == {})


async def test_gql_subscriptions_over_graphql_transport_ws(graphql_sidecar: SidecarProcess) -> None:
    sidecar = graphql_sidecar
    transport = WebsocketsTransport(
        url=f"ws://{LOOPBACK}:{sidecar.port}/graphql",
        subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],
    )
    async with Client(transport=transport) as session:
        ticks = session.subscribe(gql("subscription OnTick { tick }"))
        assert await anext(ticks) == {"tick": 1}
        greetings = session.subscribe(gql("subscription { greetings }"))
        assert await anext(greetings) == {"greetings": "hi"}
        await sidecar.wait_stats(lambda stats: stats["topics"] == {"OnTick": 1, "greetings": 1})
        await ticks.aclose()  # gql sends complete
        await sidecar.wait_stats(lambda stats: stats["topics"] == {"greetings": 1})
    await sidecar.wait_stats(lambda stats: stats["connections"] == 0 and stats["topics"] == {})
