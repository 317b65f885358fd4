"""``make demo``: wsgauge on the local cluster's real node, from the chart to a scale-down.

Starts (or reuses) the local cluster (control plane + the real node ``wsgauge-node``: kubelet,
containerd, CNI bridge, kube-proxy), installs wsgauge with its Helm chart (release ``wsgauge`` in
``wsgauge-system``, the local images), applies ``examples/chat/`` in a namespace labelled for
injection, and holds real WebSocket clients that connect through the chat Service and learn their
pod with ``whoami``. 120 sockets fill the two first pods past their capacity (they leave the
Service's ready endpoints), autoscaling is turned on and the HPA scales chat to 6, clients of the
full pods reconnect onto the new ones, then most clients leave unevenly: the HPA scales down, the
emptiest pods go (deletion cost), their sidecars drain with 1001 and the clients reconnect through
the Service. It ends by itself within a few minutes, closes its clients and deletes its namespace;
the release and the cluster keep running. It opens nothing by itself: it prints the port-forward
command and the address of the operator's live page, and its last step shows
``kubectl wsgauge top`` (the plugin of the wsgauge-operator package).

Run ``python demo/cluster_demo.py --help`` for the options. The building blocks live in
``demo_kube.py`` (cluster, release, kubectl), ``demo_load.py`` (client sockets) and
``demo_view.py`` (snapshots and status lines).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import aiohttp
from demo_kube import (
    GATE,
    RELEASE,
    RELEASE_NAMESPACE,
    REPO_ROOT,
    ClusterHandle,
    DemoError,
    Kubectl,
    PodInfo,
    ReleaseLock,
    ensure_cluster,
    injected_summary,
    install_release,
    release_installed,
)
from demo_load import ServiceLoad, keep_plan, topic_plan
from demo_view import Snapshot, heading, json_documents, read_snapshot, render, say, short

NAME = "chat"
"""Name of the demo Deployment, Service, ConnectionStats and HPA."""
SELECTOR = "app=chat"
"""Label selector of the demo pods."""
EXAMPLE = REPO_ROOT / "examples" / "chat"
"""The injected chat example."""
APISERVICE = "v1beta2.custom.metrics.k8s.io"
"""One of the APIServices the chart registers."""


@dataclass(frozen=True)
class DemoSettings:
    """What the demo does and how long it waits."""

    namespace: str = "wsgauge-demo"
    """Namespace the demo creates for examples/chat/ and deletes at the end."""
    tick: float = 2.0
    """Seconds between two status lines."""
    peak_sockets: int = 120
    """Sockets at the peak (20 per pod: 6 replicas)."""
    target_per_pod: int = 20
    """autoscaling.targetConnectionsPerPod of examples/chat/connectionstats.yaml."""
    capacity: int = 50
    """capacity.maxConnectionsPerPod of examples/chat/connectionstats.yaml."""
    keep: bool = False
    """Leave the namespace (Deployment, Service, ConnectionStats) in place at the end."""
    lock_wait: float = 600.0
    """Longest wait for the release lock (a test run may be using the release)."""
    wait_ready: float = 180.0
    """Longest wait for pods to become Ready."""
    wait_scale: float = 180.0
    """Longest wait for each scaling step."""


class Demo:
    """One run of the demo: what it started and applied, so that it can undo exactly that."""

    def __init__(self, settings: DemoSettings) -> None:
        self.settings = settings
        self.cluster: ClusterHandle | None = None
        self.kubectl: Kubectl | None = None
        self.lock = ReleaseLock()
        self.load: ServiceLoad | None = None
        self.session: aiohttp.ClientSession | None = None
        self.applied_namespace = False
        self.release_was_there = False
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

    async def show(self, *args: str) -> None:
        """``$ kubectl ARGS`` and its output, verbatim."""
        say(f"$ kubectl {' '.join(args)}")
        code, out, err = await self.k.run(*args, check=False)
        say((out if code == 0 else f"   (failed: {err.strip()})").rstrip())

    # --- setup -------------------------------------------------------------------------------

    async def setup(self) -> str:
        """Cluster, release, examples/chat/; returns the chat Service's ws:// base URL."""
        heading("1. the local cluster: control plane + the real node wsgauge-node")
        self.cluster = await asyncio.to_thread(ensure_cluster, say)
        self.kubectl = Kubectl(self.cluster)
        say(f"kubeconfig {self.cluster.kubeconfig}")
        await self.show("get", "nodes", "-o", "wide")

        heading(f"2. wsgauge from its Helm chart: release {RELEASE} in {RELEASE_NAMESPACE}")
        say("taking the release lock (the e2e tests install and uninstall this release) ...")
        await self.lock.acquire(self.settings.lock_wait, say)
        self.release_was_there = await asyncio.to_thread(release_installed, self.cluster)
        say(
            "the release is installed already: helm upgrade brings it to the local images"
            if self.release_was_there
            else "installing the release (a minute or two on a busy machine)"
        )
        await asyncio.to_thread(install_release, self.cluster, say)
        await self.show("get", "pods", "-n", RELEASE_NAMESPACE, "-o", "wide")
        await self.show("get", "apiservice", APISERVICE)
        say("the live page (the demo opens nothing; run this in another terminal, then open it):")
        say(f"  {live_page_hint()}")

        heading(f"3. examples/chat/ in namespace {self.ns} (labelled for injection)")
        await self.fresh_namespace()
        await self.k.run("label", "namespace", self.ns, "wsgauge.dev/injection=enabled")
        say(f"namespace {self.ns} labelled wsgauge.dev/injection=enabled")
        for name in ("deployment.yaml", "service.yaml", "pdb.yaml"):
            say((await self.k.text("apply", "-n", self.ns, "-f", str(EXAMPLE / name))).rstrip())
        await self.apply_connection_stats(autoscaling=False)
        say("(the ConnectionStats without its autoscaling section for now: turned on under load)")
        say("waiting for 2 Ready pods: containerd starts them on the node; each pod's readiness")
        say(f"gate ({GATE}) opens once the operator follows its sidecar ...")
        pods = await self.wait_pods_ready(2)
        first = await self.k.get_json("pod", pods[0].name, "-n", self.ns)
        say(f"what the injector made of pod {pods[0].name}:")
        for line in injected_summary(first):
            say(f"   {line}")
        await self.show("get", "pods", "-n", self.ns, "-o", "wide")
        service = await self.k.get_json("service", NAME, "-n", self.ns)
        cluster_ip = service["spec"]["clusterIP"]
        await self.show("get", "service", NAME, "-n", self.ns)
        return f"ws://{cluster_ip}:80"

    async def apply_connection_stats(self, autoscaling: bool) -> None:
        """examples/chat/connectionstats.yaml, with or without its autoscaling section."""
        rendered = await self.k.text(
            "create", "--dry-run=client", "-o", "json", "-n", self.ns,
            "-f", str(EXAMPLE / "connectionstats.yaml"),
        )  # fmt: skip
        items = json_documents(rendered)
        if not autoscaling:
            for item in items:
                item.get("spec", {}).pop("autoscaling", None)
        listing = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
        applied = await self.k.text("apply", "-n", self.ns, "-f", "-", input_text=listing)
        say(applied.rstrip())

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

    async def pods(self) -> list[PodInfo]:
        """The chat pods, oldest first."""
        return (await self.snapshot_pods()).pods

    async def snapshot_pods(self) -> Snapshot:
        """A snapshot without printing it."""
        if self.session is None:
            raise DemoError("no HTTP session yet")
        return await read_snapshot(self.k, self.session, self.ns, NAME)

    async def wait_pods_ready(self, count: int) -> list[PodInfo]:
        """Until ``count`` pods exist, all Ready (bounded; a progress line every 15 s)."""
        deadline = time.monotonic() + self.settings.wait_ready
        last_told = time.monotonic()
        while True:
            snap = await self.snapshot_pods()
            live = snap.live
            if len(live) == count and all(p.ready for p in live):
                say(f"{count}/{count} pods Ready on {', '.join(sorted({p.node for p in live}))}")
                return live
            if time.monotonic() > deadline:
                raise DemoError(
                    f"the chat pods were not Ready within {self.settings.wait_ready:.0f} s; see "
                    f"'kubectl get pods -n {self.ns} -o wide' and 'kubectl describe pods -n "
                    f"{self.ns}', and the operator's log ('kubectl logs -n {RELEASE_NAMESPACE} "
                    "deploy/wsgauge-operator')"
                )
            if time.monotonic() - last_told >= 15:
                states = " ".join(
                    f"{short(p.name)}={'Ready' if p.ready else (p.ip or 'pending')}" for p in live
                )
                say(f"   ... {states or 'no pods yet'}")
                last_told = time.monotonic()
            await asyncio.sleep(1)

    # --- observing ---------------------------------------------------------------------------

    async def tick(self, costs: bool = False) -> Snapshot:
        """One status line."""
        snap = await self.snapshot_pods()
        for line in render(snap, time.monotonic() - self.started, costs):
            say(line)
        for pod in snap.pods:
            if not pod.deleting and pod.name in snap.counts:
                self.last_counts[pod.name] = snap.counts[pod.name]
        return snap

    async def watch(self, seconds: float, costs: bool = False) -> Snapshot:
        """Status lines every tick for ``seconds``; returns the last snapshot."""
        deadline = time.monotonic() + seconds
        while True:
            snap = await self.tick(costs)
            if time.monotonic() + self.settings.tick > deadline:
                return snap
            await asyncio.sleep(self.settings.tick)

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

    async def legend(self) -> None:
        """The kubectl column names and the marks of the status lines."""
        out = await self.k.text("get", "connectionstats", "-n", self.ns)
        say(f"        wss = kubectl get connectionstats:  {' '.join(out.splitlines()[0].split())}")
        say("        pod sockets: each sidecar's own count (GET <podIP>:9090/stats);")
        say(f"        gate off: {GATE} False; starting: not Ready yet;")
        say("        no traffic: not a ready endpoint of the chat Service (its EndpointSlice)")

    async def show_endpoints(self) -> None:
        """The chat Service's EndpointSlice, one line per endpoint with its ready condition."""
        template = (
            '{range .items[*].endpoints[*]}{.targetRef.name}{"\\t"}{.addresses[0]}'
            '{"\\tready="}{.conditions.ready}{"\\n"}{end}'
        )
        args = ["get", "endpointslices", "-n", self.ns, "-l", f"kubernetes.io/service-name={NAME}"]
        say(f"$ kubectl {' '.join(args)} -o jsonpath='<pod, address, ready>'")
        code, out, err = await self.k.run(*args, "-o", f"jsonpath={template}", check=False)
        lines = sorted(out.splitlines()) if code == 0 else [f"(failed: {err.strip()})"]
        for line in lines:
            say(f"   {line}")

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

    # --- the story -----------------------------------------------------------------------------

    @property
    def clients(self) -> ServiceLoad:
        """The client sockets (after setup)."""
        if self.load is None:
            raise DemoError("no clients yet")
        return self.load

    async def surge(self) -> None:
        """120 sockets through the Service onto the 2 pods: they fill past their capacity."""
        peak, capacity = self.settings.peak_sockets, self.settings.capacity
        heading(f"4. {peak} clients connect through the Service: 2 pods, capacity {capacity} each")
        await self.legend()
        while self.clients.open_count() < peak:
            wave = min(20, peak - self.clients.open_count())
            opened = await self.clients.open(topic_plan(wave))
            say(
                f"        + {opened} sockets through the Service ({self.clients.open_count()} "
                f"open; landed: {self.landed()})"
            )
            if opened == 0:
                raise DemoError(
                    f"no socket could connect through {self.clients.base_url} (failures: "
                    f"{self.clients.failures}): is kube-proxy running? 'wsgauge-devcluster status'"
                )
            await self.tick()
            await asyncio.sleep(1.0)
        await self.until(
            lambda s: any(p.gate == "False" for p in s.live), f"a pod above {capacity} to be gated",
            timeout=30.0,
        )  # fmt: skip
        say(f"a pod above {capacity} sockets gets {GATE}=False: it keeps its sockets but is not")
        say("Ready, so the Service sends it no new ones (minReadyPods: 1 keeps the last one in)")
        await self.show_endpoints()

    def landed(self) -> str:
        """Open sockets per pod as the clients learnt them from whoami."""
        counts = self.clients.per_pod()
        return " ".join(f"{short(pod)}={n}" for pod, n in sorted(counts.items())) or "-"

    async def scale_up(self) -> Snapshot:
        """Autoscaling on: the HPA scales chat to 6; the full pods stay out of the endpoints."""
        wanted = math.ceil(self.settings.peak_sockets / self.settings.target_per_pod)
        heading(f"5. autoscaling on (target {self.settings.target_per_pod}/pod): the HPA scales up")
        await self.apply_connection_stats(autoscaling=True)
        await self.until(lambda s: s.hpa is not None, "the operator's HPA", timeout=60.0)
        say(f"the operator created HorizontalPodAutoscaler {self.ns}/{NAME}")

        def settled(s: Snapshot) -> bool:
            live = s.live
            return (
                s.replicas >= wanted
                and len(live) >= wanted
                and all(p.ready or p.gate == "False" for p in live)
            )

        snap = await self.until(settled, f"{wanted} pods, the new ones Ready")
        await asyncio.sleep(self.settings.tick)
        await self.tick()
        await self.show("get", "connectionstats", "-n", self.ns, "-o", "wide")
        await self.show("get", "hpa", "-n", self.ns)
        await self.show_metrics_api()
        await self.show("get", "pods", "-n", self.ns, "-o", "wide")
        await self.show_endpoints()
        return snap

    async def reload_full(self, snap: Snapshot) -> None:
        """Clients of the full pods reload: through the Service they land on the ready pods."""
        counts = self.clients.per_pod()
        full = [p.name for p in snap.live if p.gate == "False"]
        heading("6. clients of the full pods reconnect: the Service sends them to the Ready pods")
        if not full:
            say("(no pod is over capacity right now: nothing to move)")
            return
        movers = []
        for name in full:
            mine = [c for c in self.clients.sockets if c.pod == name and c.ws is not None]
            movers += mine[: max(0, counts[name] - self.settings.target_per_pod)]
        say(f"        {len(movers)} clients of {', '.join(map(short, full))} close and reconnect")
        for start in range(0, len(movers), 10):
            await self.clients.reload(movers[start : start + 10])
        say(f"        landed: {self.landed()}")
        await self.until(
            lambda s: all(p.ready for p in s.live) and s.ready_endpoints() == len(s.live),
            "every pod back under capacity, Ready, a ready endpoint",
            timeout=60.0,
        )

    async def scale_down(self) -> None:
        """Most clients leave unevenly: the HPA scales down, the emptiest pods are removed."""
        heading("7. most clients leave, unevenly: the HPA scales down, the emptiest pods go")
        snap = await self.snapshot_pods()
        live = [p.name for p in snap.live]
        keep = keep_plan(self.clients.per_pod(), live)
        await self.clients.close_to(keep)
        plan = " ".join(f"{short(name)}={keep[name]}" for name in live)
        say(f"        - {self.clients.open_count()} sockets left; oldest pod first: {plan}")
        say("        (c<N>: the pod-deletion-cost the operator keeps on each pod)")
        before = await self.snapshot_pods()
        await self.until(
            lambda s: s.replicas < before.replicas, "the HPA to lower the replicas", costs=True
        )
        await self.report_removed(keep)
        say("their sidecars drain: close code 1001, spread over 10 s; the clients reconnect")
        say("through the Service to the pods that stay")
        await self.until(
            lambda s: all(not p.deleting for p in s.pods), "the removed pods to go", costs=True
        )
        drained = " ".join(f"{short(p)}={n}" for p, n in sorted(self.clients.drained.items()))
        say(
            f"        closed with 1001 by a draining sidecar: {drained or 'none'}; reconnected "
            f"through the Service: {self.clients.reconnected}; landed: {self.landed()}"
        )
        await self.until(
            lambda s: (
                s.pods_summary == f"{s.replicas}/{s.replicas}"
                and sum(s.counts.values()) == self.clients.open_count()
            ),
            "the status and the sidecars to agree with the clients",
            timeout=30.0,
        )
        await self.show("get", "connectionstats", "-n", self.ns, "-o", "wide")

    async def report_removed(self, keep: Mapping[str, int]) -> None:
        """Which pods the ReplicaSet removed (sockets just before), and whether the emptiest."""
        pods = await self.pods()
        going = [p for p in pods if p.deleting]
        staying = [p for p in pods if not p.deleting]
        counts = self.last_counts

        def sockets(pod: PodInfo) -> int:
            return counts.get(pod.name, keep.get(pod.name, 0))

        def line(pod: PodInfo) -> str:
            return (
                f"   {pod.name}  {sockets(pod)} sockets, deletion cost {pod.deletion_cost or '-'}"
            )

        say("pods removed by the scale-down (sockets just before):")
        for pod in going:
            say(line(pod))
        say("pods kept:")
        for pod in staying:
            say(line(pod))
        if going and staying:
            most_gone = max(sockets(p) for p in going)
            least_kept = min(sockets(p) for p in staying)
            verdict = "yes" if most_gone <= least_kept else "NO"
            say(
                f"emptiest pods removed first: {verdict} (most sockets on a removed pod "
                f"{most_gone}, fewest on a kept pod {least_kept}); the oldest pod "
                f"{'went' if pods and pods[0] in going else 'stayed'}"
            )

    async def story(self) -> None:
        """Surge, scale-up, reload, scale-down, final listing."""
        await self.surge()
        snap = await self.scale_up()
        await self.reload_full(snap)
        await self.scale_down()
        heading("8. the pods now")
        await self.show("get", "pods", "-n", self.ns, "-o", "wide")
        say("per pod, as the operator sees them (kubectl-wsgauge, from the operator package):")
        await self.show("wsgauge", "top", "-n", self.ns, "--operator-namespace", RELEASE_NAMESPACE)

    # --- teardown ----------------------------------------------------------------------------

    async def teardown(self, interrupted: bool) -> None:
        """Undo what the demo did, in order; each step on its own. The release stays."""
        heading("cleaning up")
        try:
            if self.load is not None:
                await self.load.close_all()
                say("closed the client sockets")
            if self.kubectl is not None and self.applied_namespace and not self.settings.keep:
                await self.k.run("delete", "namespace", self.ns, "--wait=false", check=False)
                say(f"deleting namespace {self.ns} (examples/chat/; its pods drain for ~20 s)")
                if not interrupted:
                    await self.k.run(
                        "wait", "--for=delete", f"namespace/{self.ns}", "--timeout=90s",
                        check=False, timeout=100.0,
                    )  # fmt: skip
                    gone = not await self.k.exists("namespace", self.ns)
                    say(f"namespace {self.ns} {'deleted' if gone else 'still terminating'}")
        finally:
            self.lock.release()


def live_page_hint() -> str:
    """The port-forward command and the live page's address (docs/live-view.md)."""
    return (
        f"kubectl -n {RELEASE_NAMESPACE} port-forward svc/{RELEASE}-operator 8090:8090 &   "
        "# then open http://127.0.0.1:8090/ui/"
    )


def epilogue(demo: Demo) -> None:
    """What stays, how to look around and how to remove it."""
    cluster = demo.cluster
    if cluster is None:
        return
    heading("done")
    if cluster.started_by_demo:
        say("The demo started the local cluster and leaves it running (a next run starts faster).")
    else:
        say("The local cluster was already running; it keeps running.")
    say(f"wsgauge stays installed (release {RELEASE} in {RELEASE_NAMESPACE}). To look around:")
    say('  eval "$(.venv/bin/wsgauge-devcluster env)"      # KUBECONFIG and PATH (kubectl, helm)')
    say(f"  kubectl get pods -n {RELEASE_NAMESPACE} -o wide && kubectl get wss -A")
    say("  kubectl create ns try && kubectl label ns try wsgauge.dev/injection=enabled")
    say("  kubectl apply -n try -f examples/chat/ && kubectl get wss,hpa,pods -n try -o wide -w")
    say(f"  {live_page_hint()}")
    say("  curl -s localhost:8090/stats      # the operator's cluster-wide stats (also /metrics)")
    say("  .venv/bin/kubectl-wsgauge top -A   # or `kubectl wsgauge top -A` with .venv/bin on PATH")
    say(f"Remove wsgauge: helm uninstall {RELEASE} -n {RELEASE_NAMESPACE}   (the CRD stays)")
    say("(make test uninstalls it too: the tests run operators of their own beside it)")
    say("Stop the cluster: make cluster-down   (wsgauge-devcluster down --purge wipes its data)")


async def run(settings: DemoSettings) -> int:
    """The whole demo; returns the exit status."""
    demo = Demo(settings)
    interrupted = False
    try:
        # limit=0: aiohttp's default pool of 100 connections would hold back socket 101.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            demo.session = session
            base_url = await demo.setup()
            demo.load = ServiceLoad(session, base_url)
            say(f"\nClients connect to {base_url}/ws/<topic> (the chat Service's ClusterIP;")
            say("kube-proxy picks the pod) and ask 'whoami': the app answers pod:<name>.")
            try:
                await demo.story()
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
        say(f"\n(the demo ran {time.monotonic() - demo.started:.0f} s)")
        epilogue(demo)


def parse_args(argv: Sequence[str] | None) -> DemoSettings:
    """Command line -> settings."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--namespace", default=DemoSettings.namespace, help="demo namespace")
    parser.add_argument(
        "--keep", action="store_true", help="leave examples/chat/ applied at the end"
    )
    parser.add_argument(
        "--lock-wait",
        type=float,
        default=DemoSettings.lock_wait,
        metavar="SECONDS",
        help="longest wait for the release lock held by a test run (default %(default)s)",
    )
    options = parser.parse_args(argv)
    return DemoSettings(namespace=options.namespace, keep=options.keep, lock_wait=options.lock_wait)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: runs the demo; SIGINT/SIGTERM clean up before exiting."""
    settings = parse_args(argv)

    async def runner() -> int:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        signals_seen: list[int] = []

        def interrupt(signum: int) -> None:
            # The first signal cancels the demo, which then cleans up; later ones only say so
            # (kubectl runs in its own session: nothing else gets the signal).
            signals_seen.append(signum)
            if len(signals_seen) == 1 and task is not None:
                task.cancel()
            else:
                say("still cleaning up (closes the clients, deletes the demo namespace) ...")

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, interrupt, signum)
        return await run(settings)

    try:
        return asyncio.run(runner())
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
