"""``make demo``: wsgauge on the local real control plane, from an empty cluster to autoscaling.

Starts (or reuses) the local cluster, installs the ConnectionStats CRD, runs ``wsgauge-operator``
as a child process (log file named on screen), applies ``examples/chat/`` in namespace
``wsgauge-demo``, holds real WebSocket client sockets against the pods' sidecars on three topics,
and prints ``kubectl get connectionstats`` following the load up and down. When this operator
build serves the custom metrics API, it also registers it (``deploy/local/metrics-api.yaml``),
drives the owned HPA from 2 to 6 replicas with 120 sockets, then closes most sockets unevenly and
shows the HPA scaling down with the emptiest pods removed. It ends by itself within a few minutes,
stops the operator and the clients, deletes what it applied, and leaves the cluster running.

Run ``python demo/cluster_demo.py --help`` for the options. The building blocks live in
``demo_kube.py`` (cluster, kubectl, operator), ``demo_load.py`` (client sockets) and
``demo_view.py`` (snapshots and status lines).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from demo_kube import (
    REPO_ROOT,
    ClusterHandle,
    DemoError,
    Kubectl,
    OperatorProcess,
    PodInfo,
    autoscaling_flags,
    ensure_cluster,
    free_port,
    list_pods,
    operator_help,
    port_taken,
)
from demo_load import LoadPool, topic_plan
from demo_view import Snapshot, heading, json_documents, read_snapshot, render, say, short

NAME = "chat"
"""Name of the demo Deployment, ConnectionStats and HPA."""
SELECTOR = "app=chat"
"""Label selector of the demo pods."""
METRICS_NAMESPACE = "wsgauge-system"
"""Namespace of the metrics API Service in deploy/local/metrics-api.yaml."""
APISERVICES = ("v1beta2.custom.metrics.k8s.io", "v1beta1.custom.metrics.k8s.io")
"""The APIServices of deploy/local/metrics-api.yaml."""


@dataclass(frozen=True)
class DemoSettings:
    """What the demo does and how long it waits."""

    namespace: str = "wsgauge-demo"
    """Namespace the demo creates for examples/chat/ and deletes at the end."""
    metrics_port: int = int(os.environ.get("WSGAUGE_DEMO_METRICS_PORT", "8443"))
    """Loopback port of the operator's metrics API (deploy/local/metrics-api.yaml says 8443)."""
    tick: float = 2.0
    """Seconds between two status lines."""
    peak_sockets: int = 120
    """Sockets at the peak with autoscaling (20 per pod: 6 replicas)."""
    plain_peak_sockets: int = 60
    """Sockets at the peak without autoscaling (2 pods)."""
    keep: bool = False
    """Leave the namespace (Deployment, ConnectionStats) in place at the end."""
    autoscaling: bool = True
    """Show autoscaling when the operator supports it."""
    wait_ready: float = 120.0
    """Longest wait for the pods to become Ready."""
    wait_scale: float = 150.0
    """Longest wait for each HPA scaling step."""


class Demo:
    """One run of the demo: what it started and applied, so that it can undo exactly that."""

    def __init__(self, settings: DemoSettings) -> None:
        self.settings = settings
        self.cluster: ClusterHandle | None = None
        self.kubectl: Kubectl | None = None
        self.operator: OperatorProcess | None = None
        self.load: LoadPool | None = None
        self.session: aiohttp.ClientSession | None = None
        self.applied_namespace = False
        self.applied_metrics_api = False
        self.metrics_port = settings.metrics_port
        self.created_metrics_namespace = False
        self.started = time.monotonic()
        self.last_counts: dict[str, int] = {}

    @property
    def k(self) -> Kubectl:
        """kubectl (after setup)."""
        if self.kubectl is None:
            raise DemoError("no cluster yet")
        return self.kubectl

    @property
    def ns(self) -> str:
        """The demo namespace."""
        return self.settings.namespace

    # --- setup -------------------------------------------------------------------------------

    async def setup(self) -> bool:
        """Cluster, CRD, metrics API, operator, examples/chat/; True when autoscaling is on."""
        heading("1. local cluster")
        self.cluster = await asyncio.to_thread(ensure_cluster, say)
        self.kubectl = Kubectl(self.cluster)
        say(f"kubeconfig {self.cluster.kubeconfig}")

        heading("2. the ConnectionStats CRD (crds/)")
        await self.k.run("apply", "-f", str(REPO_ROOT / "crds"))
        await self.k.run(
            "wait",
            "--for=condition=Established",
            "crd/connectionstats.wsgauge.dev",
            "--timeout=60s",
        )
        say((await self.k.text("get", "crd", "connectionstats.wsgauge.dev")).rstrip())

        flags = await self.metrics_api_flags()
        await self.fresh_namespace()

        heading("3. the operator")
        log_path = self.cluster.state_dir / "demo" / "operator.log"
        args = ["--namespaces", self.ns, "--listen", f"127.0.0.1:{free_port()}"]
        args += ["--status-interval", "1s", *(flags or [])]
        self.operator = OperatorProcess(self.cluster, log_path, args)
        await self.operator.start()
        say(f"wsgauge-operator running (pid {self.operator.pid}, watching namespace {self.ns})")
        say(f"  its log: {log_path}   (tail -f it in another terminal)")
        if flags:
            await self.register_metrics_api()

        heading(f"4. examples/chat/ in namespace {self.ns}")
        await self.apply_example(keep_autoscaling=bool(flags))
        say("waiting for the pods: the pod runner starts the demo app + sidecar of each pod on its")
        say("own loopback IP; the readiness gate opens once the operator has seen its sidecar")
        await self.wait_pods_ready()
        autoscaling = bool(flags) and await self.wait_hpa()
        say((await self.k.text("get", "pods", "-n", self.ns, "-o", "wide")).rstrip())
        return autoscaling

    async def apply_example(self, keep_autoscaling: bool) -> None:
        """Apply examples/chat/; without the metrics API, without its autoscaling section."""
        example = str(REPO_ROOT / "examples/chat")
        if keep_autoscaling:
            say((await self.k.text("apply", "-n", self.ns, "-f", example)).rstrip())
            return
        # Client-side rendering (no YAML library needed): an HPA without its metric would only
        # show <unknown> targets, so the ConnectionStats goes in without spec.autoscaling.
        rendered = await self.k.text(
            "create", "--dry-run=client", "-o", "json", "-n", self.ns, "-f", example
        )
        items = json_documents(rendered)
        for item in items:
            if item.get("kind") == "ConnectionStats":
                item.get("spec", {}).pop("autoscaling", None)
        listing = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
        applied = await self.k.text("apply", "-n", self.ns, "-f", "-", input_text=listing)
        say(applied.rstrip())
        say("(the ConnectionStats without spec.autoscaling: no metrics API for an HPA here)")

    async def metrics_api_flags(self) -> list[str] | None:
        """Operator flags for the metrics API, or None (with the reason) to skip autoscaling."""
        if not self.settings.autoscaling:
            say("autoscaling part skipped (--no-autoscaling)")
            return None
        help_text = await asyncio.to_thread(operator_help)
        if autoscaling_flags(help_text, self.metrics_port) is None:
            say(
                "NOTE: this wsgauge-operator build has no custom metrics API yet "
                "(no --metrics-api flag): the autoscaling part of the demo is skipped."
            )
            return None
        present = await self.k.run("get", "apiservice", APISERVICES[0], "-o", "json", check=False)
        if present[0] == 0:
            service = json.loads(present[1]).get("spec", {}).get("service") or {}
            if (service.get("namespace"), service.get("name")) != (
                "wsgauge-system",
                "wsgauge-metrics-api",
            ):
                say(
                    f"NOTE: {APISERVICES[0]} is already served by {service.get('namespace')}/"
                    f"{service.get('name')} (one server per metrics API group): "
                    "autoscaling skipped."
                )
                return None
        if port_taken(self.metrics_port):
            taken, self.metrics_port = self.metrics_port, free_port()
            say(
                f"NOTE: 127.0.0.1:{taken} is in use: the metrics API listens on "
                f"127.0.0.1:{self.metrics_port} instead (the APIService Service follows)."
            )
        return autoscaling_flags(help_text, self.metrics_port)

    async def fresh_namespace(self) -> None:
        """Create the demo namespace, waiting for a previous run's copy to finish terminating."""
        deadline = time.monotonic() + 120
        told = False
        while await self.k.exists("namespace", self.ns):
            phase = (await self.k.get_json("namespace", self.ns)).get("status", {}).get("phase")
            if phase != "Terminating":
                say(f"namespace {self.ns} exists from an earlier run: deleting it first")
                await self.k.run("delete", "namespace", self.ns, "--wait=false")
            elif not told:
                say(f"waiting for namespace {self.ns} of an earlier run to go (its pods drain) ...")
            told = True
            if time.monotonic() > deadline:
                raise DemoError(f"namespace {self.ns} is still terminating after 120 s")
            await asyncio.sleep(2)
        await self.k.run("create", "namespace", self.ns)
        self.applied_namespace = True

    async def wait_not_terminating(self, namespace: str) -> None:
        """Wait (bounded) while a namespace from an earlier run is still being deleted."""
        deadline = time.monotonic() + 120
        told = False
        while await self.k.exists("namespace", namespace):
            phase = (await self.k.get_json("namespace", namespace)).get("status", {}).get("phase")
            if phase != "Terminating":
                return
            if not told:
                say(f"waiting for namespace {namespace} of an earlier run to go ...")
                told = True
            if time.monotonic() > deadline:
                raise DemoError(f"namespace {namespace} is still terminating after 120 s")
            await asyncio.sleep(2)

    async def register_metrics_api(self) -> None:
        """Apply deploy/local/metrics-api.yaml; wait until the aggregator reaches the operator."""
        text = (REPO_ROOT / "deploy/local/metrics-api.yaml").read_text()
        if self.metrics_port != 8443:
            text = text.replace("port: 8443", f"port: {self.metrics_port}")
        await self.wait_not_terminating(METRICS_NAMESPACE)
        self.created_metrics_namespace = not await self.k.exists("namespace", METRICS_NAMESPACE)
        self.applied_metrics_api = True
        say((await self.k.text("apply", "-f", "-", input_text=text)).rstrip())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.operator is not None:
                self.operator.check_alive()
            code, out, _ = await self.k.run(
                "get", "apiservice", APISERVICES[0], "--no-headers", check=False
            )
            if code == 0 and " True " in f" {out} ":
                say(
                    f"custom metrics API available: {out.split()[0]} -> the operator on "
                    f"127.0.0.1:{self.metrics_port}"
                )
                return
            await asyncio.sleep(1)
        say(f"WARNING: {APISERVICES[0]} not Available after 60 s (see the operator log)")

    async def wait_pods_ready(self) -> None:
        """Until every pod of the Deployment is Ready (bounded)."""
        deadline = time.monotonic() + self.settings.wait_ready
        while time.monotonic() < deadline:
            if self.operator is not None:
                self.operator.check_alive()
            code, out, _ = await self.k.run(
                "get", "deployment", NAME, "-n", self.ns, "-o", "json", check=False
            )
            if code == 0:
                deployment = json.loads(out)
                wanted = deployment.get("spec", {}).get("replicas", 0)
                ready = deployment.get("status", {}).get("readyReplicas", 0)
                if wanted and ready >= wanted:
                    say(f"{ready}/{wanted} pods Ready")
                    return
            await asyncio.sleep(1)
        state = self.cluster.state_dir if self.cluster else Path(".cluster")
        raise DemoError(
            f"the chat pods were not Ready within {self.settings.wait_ready:.0f} s; look at "
            f"'kubectl get pods -n {self.ns}', {state}/pods/*/ (container logs) and the "
            "operator log"
        )

    async def wait_hpa(self) -> bool:
        """Whether the operator created its HPA for chat (within 30 s)."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if await self.k.exists("hpa", NAME, "-n", self.ns):
                say(f"the operator created HorizontalPodAutoscaler {self.ns}/{NAME}")
                return True
            await asyncio.sleep(1)
        say("NOTE: the operator created no HPA for chat within 30 s: autoscaling part skipped")
        return False

    # --- observing ---------------------------------------------------------------------------

    async def snapshot(self) -> Snapshot:
        """Everything one status line shows."""
        if self.session is None:
            raise DemoError("no HTTP session yet")
        return await read_snapshot(self.k, self.session, self.ns, NAME)

    def show(self, snap: Snapshot, costs: bool = False) -> None:
        """The two status lines of a snapshot."""
        for line in render(snap, time.monotonic() - self.started, costs):
            say(line)

    async def watch(self, seconds: float, costs: bool = False) -> Snapshot:
        """Status lines every tick for ``seconds``; returns the last snapshot."""
        deadline = time.monotonic() + seconds
        while True:
            snap = await self.tick(costs)
            if time.monotonic() + self.settings.tick > deadline:
                return snap
            await asyncio.sleep(self.settings.tick)

    async def tick(self, costs: bool = False) -> Snapshot:
        """One status line (and a check that the operator still runs)."""
        if self.operator is not None:
            self.operator.check_alive()
        snap = await self.snapshot()
        self.show(snap, costs)
        for pod in snap.pods:
            if not pod.deleting and pod.name in snap.counts:
                self.last_counts[pod.name] = snap.counts[pod.name]
        return snap

    async def table_header(self) -> None:
        """The kubectl column names, once per section."""
        out = await self.k.text("get", "connectionstats", "-n", self.ns)
        say(
            f"        kubectl get connectionstats -n {self.ns}:  "
            + " ".join(out.splitlines()[0].split())
        )

    async def show_wide(self) -> None:
        """``kubectl get connectionstats -o wide`` and the status topics, verbatim."""
        say(f"$ kubectl get connectionstats -n {self.ns} -o wide")
        say((await self.k.text("get", "connectionstats", "-n", self.ns, "-o", "wide")).rstrip())
        topics = await self.k.text(
            "get", "connectionstats", NAME, "-n", self.ns, "-o", "jsonpath={.status.topics}"
        )
        say(
            f"$ kubectl get connectionstats chat -n {self.ns} -o jsonpath='{{.status.topics}}'\n"
            + topics
        )

    # --- the load ------------------------------------------------------------------------------

    async def ramp(
        self, total: int, step: int, pause: float, per_pod_limit: int | None = None
    ) -> None:
        """Open sockets in waves of ``step`` until ``total`` are open, a status line per tick."""
        assert self.load is not None
        deadline = time.monotonic() + self.settings.wait_scale
        while self.load.open_count() < total:
            wave = min(step, total - self.load.open_count())
            opened = await self.load.open(topic_plan(wave), per_pod_limit)
            note = ""
            if opened < wave and per_pod_limit is not None:
                note = f"; the Ready pods hold {per_pod_limit} each: the rest waits for new pods"
            say(f"        + opened {opened} sockets ({self.load.open_count()} open{note})")
            if time.monotonic() > deadline:
                raise DemoError(
                    f"could not open {total} sockets within {self.settings.wait_scale:.0f} s "
                    f"(connect failures: {self.load.failures}); see the operator log"
                )
            await self.watch(pause)

    # --- the two stories -----------------------------------------------------------------------

    async def plain_story(self) -> None:
        """Load up to 60 sockets on 2 pods, then down to 0, without autoscaling."""
        assert self.load is not None
        heading(
            f"5. load up: {self.settings.plain_peak_sockets} sockets on "
            "/ws/stream, /ws/stats, /ws/chat"
        )
        await self.table_header()
        await self.ramp(self.settings.plain_peak_sockets, 15, 4.0)
        await self.watch(2.0)
        await self.show_wide()
        heading("6. load down: closing sockets in steps")
        for fraction in (0.5, 0.7, 1.0):
            await self.load.close_fraction(fraction)
            say(f"        - closed sockets: {self.load.open_count()} open")
            await self.watch(4.0)

    async def scaling_story(self) -> None:
        """120 sockets: the HPA scales chat up; uneven close: it scales down, emptiest first."""
        assert self.load is not None
        peak = self.settings.peak_sockets
        heading(f"5. load up to {peak} sockets (target 20 per pod): the HPA scales chat up")
        await self.table_header()
        await self.ramp(peak, 20, 4.0, per_pod_limit=2 * 20)
        wanted = math.ceil(peak / 20)
        snap = await self.until(
            lambda s: s.replicas >= wanted and s.ready_replicas >= wanted,
            f"{wanted} Ready replicas",
        )
        await self.watch(4.0)
        await self.show_wide()
        say(f"$ kubectl get hpa -n {self.ns}")
        say((await self.k.text("get", "hpa", "-n", self.ns)).rstrip())
        await self.show_metrics_api()

        heading("6. most clients leave, unevenly: the HPA scales down, the emptiest pods go first")
        keep = await self.uneven_close(snap)
        say("        (c<N>: the pod-deletion-cost the operator keeps on each pod)")
        before = await self.tick(costs=True)
        snap = await self.until(
            lambda s: s.replicas < before.replicas, "the HPA to lower the replicas", costs=True
        )
        await self.report_removed(keep)
        say("the removed pods' sidecars drain: their clients get close code 1001 and reconnect")
        await self.until(
            lambda s: all(not p.deleting for p in s.pods), "the removed pods to go", costs=True
        )
        say(f"        clients reconnected after a drain: {self.load.reconnected}")
        await self.until(
            lambda s: s.pods_summary == f"{s.replicas}/{s.replicas}",
            "the status to drop the removed pods",
            timeout=30.0,
        )
        await self.show_wide()

    async def until(
        self,
        check: Callable[[Snapshot], bool],
        what: str,
        costs: bool = False,
        timeout: float | None = None,
    ) -> Snapshot:
        """Status lines until ``check(snapshot)`` holds (bounded by settings.wait_scale)."""
        say(f"        ... waiting for {what}")
        limit = self.settings.wait_scale if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            snap = await self.tick(costs)
            if check(snap):
                return snap
            if time.monotonic() > deadline:
                say(f"        gave up waiting for {what} after {limit:.0f} s")
                return snap
            await asyncio.sleep(self.settings.tick)

    async def uneven_close(self, snap: Snapshot) -> dict[str, int]:
        """Close all but 28 sockets, spread 14/10/3/1/0/0 over pods in an order unrelated to age."""
        assert self.load is not None
        pods = [p for p in snap.pods if p.serving]
        plan = [3, 0, 14, 1, 10, 0]  # oldest first: the oldest and the newest pods end up emptiest
        keep = {pod.name: plan[i] if i < len(plan) else 0 for i, pod in enumerate(pods)}
        await self.load.close_to(keep)
        have = self.load.per_pod()
        for pod in pods:
            missing = keep[pod.name] - have[pod.name]
            if missing > 0:
                await self.load.open_on(pod, topic_plan(missing))
        kept = " ".join(f"{short(p.name)}={keep[p.name]}" for p in pods)
        say(f"        - closed sockets: {self.load.open_count()} open; oldest pod first: {kept}")
        return keep

    async def report_removed(self, keep: Mapping[str, int]) -> None:
        """Which pods the ReplicaSet removed (sockets just before), and whether the emptiest."""
        pods = await list_pods(self.k, self.ns, SELECTOR)
        going = [p for p in pods if p.deleting]
        staying = [p for p in pods if not p.deleting]
        counts = self.last_counts or {}

        def line(pod: PodInfo) -> str:
            sockets = counts.get(pod.name, keep.get(pod.name, "?"))
            return f"   {pod.name}  {sockets} sockets, deletion cost {pod.deletion_cost or '-'}"

        say("pods removed by the scale-down (sockets just before):")
        for pod in going:
            say(line(pod))
        say("pods kept:")
        for pod in staying:
            say(line(pod))
        if going and staying:
            most_gone = max(counts.get(p.name, keep.get(p.name, 0)) for p in going)
            least_kept = min(counts.get(p.name, keep.get(p.name, 0)) for p in staying)
            verdict = "yes" if most_gone <= least_kept else "NO"
            say(
                f"emptiest pods removed first: {verdict} (most sockets on a removed pod "
                f"{most_gone}, "
                f"fewest on a kept pod {least_kept})"
            )

    async def show_metrics_api(self) -> None:
        """The per-pod values the HPA reads, via kubectl get --raw."""
        path = (
            f"/apis/custom.metrics.k8s.io/v1beta2/namespaces/{self.ns}/pods/*/wsgauge_connections"
            "?labelSelector=app%3Dchat"
        )
        code, out, err = await self.k.run("get", "--raw", path, check=False)
        say(f'$ kubectl get --raw "{path}"')
        if code != 0:
            say(f"   (failed: {err.strip()})")
            return
        items = json.loads(out).get("items", [])
        say("   " + " ".join(f"{short(i['describedObject']['name'])}={i['value']}" for i in items))

    # --- teardown ----------------------------------------------------------------------------

    async def teardown(self, interrupted: bool) -> None:
        """Undo what the demo did, in order; each step on its own."""
        heading("cleaning up")
        if self.load is not None:
            await self.load.close_all()
            say("closed the client sockets")
        if self.kubectl is not None and self.applied_metrics_api:
            for name in APISERVICES:
                await self.k.run("delete", "apiservice", name, "--ignore-not-found", check=False)
            await self.k.run(
                "delete", "service", "wsgauge-metrics-api", "-n", METRICS_NAMESPACE,
                "--ignore-not-found", check=False,
            )  # fmt: skip
            if self.created_metrics_namespace:
                await self.k.run(
                    "delete", "namespace", METRICS_NAMESPACE, "--wait=false", check=False
                )
            say("unregistered the custom metrics API (deploy/local/metrics-api.yaml)")
        if self.operator is not None:
            await self.operator.stop()
            say(f"stopped the operator (log kept: {self.operator.log_path})")
        if self.kubectl is not None and self.applied_namespace and not self.settings.keep:
            await self.k.run("delete", "namespace", self.ns, "--wait=false", check=False)
            say(f"deleting namespace {self.ns} (examples/chat/; its pods drain for ~20 s)")
            if not interrupted:
                await self.k.run(
                    "wait", "--for=delete", f"namespace/{self.ns}", "--timeout=90s", check=False
                )


def epilogue(demo: Demo) -> None:
    """How to look around and how to stop."""
    cluster = demo.cluster
    if cluster is None:
        return
    heading("done")
    if cluster.started_by_demo:
        say("The demo started the local cluster and leaves it running (a next run starts faster).")
    else:
        say("The local cluster was already running; it keeps running.")
    say("The ConnectionStats CRD stays installed. To look around yourself:")
    say('  eval "$(.venv/bin/wsgauge-devcluster env)"')
    say("  .venv/bin/wsgauge-operator --kubeconfig $KUBECONFIG --listen 127.0.0.1:8090 &")
    say("  kubectl apply -f examples/chat/ && kubectl get wss -w")
    say("  kubectl get pods -o wide     # then connect to ws://<podIP>:8080/ws/<topic>")
    say(f"  (the demo's operator log: {cluster.state_dir}/demo/operator.log;")
    say(f"   container logs: {cluster.state_dir}/pods/<namespace>_<pod>/)")
    say("Stop the cluster: make cluster-down   (wsgauge-devcluster down --purge wipes its data)")


async def run(settings: DemoSettings) -> int:
    """The whole demo; returns the exit status."""
    demo = Demo(settings)
    interrupted = False
    try:
        autoscaling = await demo.setup()
        # limit=0: aiohttp's default pool of 100 connections would hold back socket 101.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            demo.session = session

            async def serving_pods() -> list[PodInfo]:
                return await list_pods(demo.k, demo.ns, SELECTOR)

            demo.load = LoadPool(session, serving_pods)
            say("\nClients connect to ws://<podIP>:8080/ws/<topic> (the sidecar's data port).")
            say("This local cluster routes no Services, so the demo balances the clients itself:")
            say("round robin over the Ready pods of 'kubectl get pods -o json', emptiest first.")
            try:
                if autoscaling:
                    await demo.scaling_story()
                    heading("all clients leave")
                    await demo.load.close_all()
                    await demo.watch(4.0)
                else:
                    await demo.plain_story()
            finally:
                await demo.load.close_all()
        return 0
    except DemoError as error:
        say(f"\ndemo failed: {error}")
        return 1
    except asyncio.CancelledError:
        interrupted = True
        say("\ninterrupted: cleaning up (a few seconds)")
        return 130
    finally:
        try:
            await demo.teardown(interrupted)
        except DemoError as error:
            say(f"cleanup incomplete: {error}")
        epilogue(demo)


def parse_args(argv: Sequence[str] | None) -> DemoSettings:
    """Command line -> settings."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--namespace", default=DemoSettings.namespace, help="demo namespace")
    parser.add_argument(
        "--keep", action="store_true", help="leave examples/chat/ applied at the end"
    )
    parser.add_argument("--no-autoscaling", action="store_true", help="skip the autoscaling part")
    options = parser.parse_args(argv)
    return DemoSettings(
        namespace=options.namespace, keep=options.keep, autoscaling=not options.no_autoscaling
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: runs the demo; SIGINT/SIGTERM clean up before exiting."""
    settings = parse_args(argv)

    async def runner() -> int:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        signals_seen: list[int] = []

        def interrupt(signum: int) -> None:
            # The first signal cancels the demo, which then cleans up; later ones only say so
            # (the operator and kubectl run in their own sessions: nothing else gets the signal).
            signals_seen.append(signum)
            if len(signals_seen) == 1 and task is not None:
                task.cancel()
            else:
                say("still cleaning up (stops the operator, deletes what the demo applied) ...")

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, interrupt, signum)
        return await run(settings)

    try:
        return asyncio.run(runner())
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
