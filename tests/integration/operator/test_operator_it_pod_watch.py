"""The operator's own pod watch (kube/pod_watch.py) and its client (kube/kubeapi.py) against the
real API server.

The unit tests (tests/unit/operator/test_operator_pod_watch.py) script the API; these check the
assumptions they rest on with the real kube-apiserver: a listing reaches the controller, then
ADDED / MODIFIED / DELETED from the watch that continues at the listing's resourceVersion, and
the real server's answer to a resourceVersion it no longer serves is what the watch treats as
"list again" (``410 Gone``: an ERROR event in the stream or a refused request). The client's
writes are concurrent up to its connection pool's size.

The pods are bound to a node that no pod runner serves, so nothing starts containers for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable

import aiohttp
from wsgauge_devcluster.testing import KubeCluster
from wsgauge_operator.control.controller import Controller
from wsgauge_operator.kube.kubeapi import CONNECTION_POOL_SIZE, KubeApi
from wsgauge_operator.kube.pod_watch import LineSplitter, PodWatch, WatchGone, watch_events
from wsgauge_operator.model.exceptions import KubeApiError
from wsgauge_operator.model.settings import KubeSettings, OperatorSettings

UNSERVED_NODE = "pod-watch-test-no-kubelet"


def pod_manifest(namespace: str, name: str, labels: dict[str, str]) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {
                "nodeName": UNSERVED_NODE,
                "containers": [{"name": "app", "image": "registry.invalid/none:1"}],
            },
        }
    )


def kube_settings(kube: KubeCluster, namespace: str) -> KubeSettings:
    return KubeSettings(kubeconfig=str(kube.kubeconfig), namespaces=(namespace,))


@contextlib.asynccontextmanager
async def watching(kube: KubeCluster, namespace: str) -> AsyncIterator[tuple[Controller, PodWatch]]:
    """A controller (no ConnectionStats, no writes) fed by a running pod watch of ``namespace``."""
    settings = OperatorSettings(kube=kube_settings(kube, namespace))
    api = KubeApi(settings.kube)
    controller = Controller(settings, None)
    watch = PodWatch(controller, api, settings.kube.namespaces)
    await watch.start()
    try:
        yield controller, watch
    finally:
        await watch.stop()
        await controller.stop()
        await api.close()


async def until(condition: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {seconds} s: {what}")


async def test_listing_then_watch_events_reach_the_controller(
    kube: KubeCluster, namespace: str
) -> None:
    kube.kubectl("apply", "-f", "-", input_text=pod_manifest(namespace, "listed", {"v": "1"}))
    async with watching(kube, namespace) as (controller, watch):
        await until(lambda: controller.fleet.pod(namespace, "listed") is not None, "listed pod")
        assert watch.listings == 1
        kube.kubectl("apply", "-f", "-", input_text=pod_manifest(namespace, "added", {"v": "1"}))
        await until(lambda: controller.fleet.pod(namespace, "added") is not None, "added pod")
        kube.kubectl("label", "pod", "listed", "v=2", "--overwrite", "-n", namespace)

        def relabelled() -> bool:
            record = controller.fleet.pod(namespace, "listed")
            return record is not None and record.labels.get("v") == "2"

        await until(relabelled, "label change of the listed pod")
        kube.kubectl(
            "delete", "pod", "listed", "-n", namespace, "--grace-period=0", "--force", "--wait"
        )
        await until(lambda: controller.fleet.pod(namespace, "listed") is None, "deleted pod")
        assert controller.fleet.pod(namespace, "added") is not None
        assert watch.listings == 1  # all of it came from the one watch, no re-listing


async def test_an_expired_resource_version_is_gone_as_the_watch_expects(
    kube: KubeCluster, namespace: str
) -> None:
    api = KubeApi(kube_settings(kube, namespace))

    async def read_stream() -> str:
        splitter = LineSplitter()
        try:
            async with api.watch_pods(namespace, "1", 10, 15.0) as chunks:
                async for chunk in chunks:
                    watch_events(splitter.feed(chunk))
        except KubeApiError as error:
            return "request refused with 410" if error.status == 410 else f"refused: {error}"
        except WatchGone:
            return "ERROR 410 in the stream"
        return "the stream ended without 410"

    try:
        outcome = await read_stream()
    finally:
        await api.close()
    print(f"expired resourceVersion: {outcome}")
    assert outcome in ("request refused with 410", "ERROR 410 in the stream")


async def test_stop_interrupts_an_idle_watch(kube: KubeCluster, namespace: str) -> None:
    # a hang guard, not a measurement: without the interruption stopping would wait for the
    # reader thread's 150 s read timeout
    async with asyncio.timeout(60):
        async with watching(kube, namespace) as (_, watch):
            await until(lambda: watch.listings == 1, "first listing")
            await asyncio.sleep(0.5)  # the reader thread is now blocked in the idle stream
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("pod watch")]


async def test_writes_are_concurrent_up_to_the_connection_pool_size(
    kube: KubeCluster, namespace: str
) -> None:
    """More writes at once than the pool holds: exactly the pool's size of connections is opened
    (every write of the first wave in flight together), the rest wait for a free one."""
    opened: list[int] = []
    queued: list[int] = []
    trace = aiohttp.TraceConfig()

    async def on_opened(*_: object) -> None:
        opened.append(1)

    async def on_queued(*_: object) -> None:
        queued.append(1)

    trace.on_connection_create_end.append(on_opened)
    trace.on_connection_queued_start.append(on_queued)
    api = KubeApi(kube_settings(kube, namespace), trace_configs=[trace])
    writes = CONNECTION_POOL_SIZE + 8
    try:
        await api.open()
        results = await asyncio.gather(
            *(
                api.patch_pod_annotations(namespace, f"absent-{i}", "no-uid", {"k": "v"})
                for i in range(writes)
            ),
            return_exceptions=True,
        )
    finally:
        await api.close()
    assert all(isinstance(r, KubeApiError) and r.not_found for r in results), results
    assert len(opened) == CONNECTION_POOL_SIZE
    assert len(queued) == writes - CONNECTION_POOL_SIZE
