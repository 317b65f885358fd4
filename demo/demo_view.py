"""What ``make demo`` prints: one snapshot of the demo namespace and its two-line rendering.

:func:`read_snapshot` reads the ``kubectl get connectionstats`` row, then the Deployment, the
ConnectionStats status, the owned HPA, the pods and the chat Service's EndpointSlices (one
kubectl call), and each pod's sockets straight from its sidecar (``GET <podIP>:9090/stats``:
pod IPs are routed from the host); :func:`render` turns that into two compact status lines.
Also the small printing helpers the demo uses.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from demo_kube import Kubectl, PodInfo, endpoint_readiness, pod_info


def say(message: str = "") -> None:
    """One line for the user."""
    print(message, flush=True)


def heading(message: str) -> None:
    """A section title."""
    say(f"\n=== {message}")


def short(pod: str) -> str:
    """The random suffix of a pod name (chat-5d8f7c9b6-x2k4q -> x2k4q)."""
    return pod.rsplit("-", 1)[-1]


def format_topics(topics: Mapping[str, Any]) -> str:
    """``stream=72 stats=36 chat=12``, biggest first."""
    ordered = sorted(topics.items(), key=lambda item: (-int(item[1]), item[0]))
    return " ".join(f"{name}={count}" for name, count in ordered) or "-"


def json_documents(text: str) -> list[dict[str, Any]]:
    """The objects of concatenated JSON documents (kubectl prints one per file)."""
    decoder = json.JSONDecoder()
    documents: list[dict[str, Any]] = []
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position >= len(text):
            return documents
        document, position = decoder.raw_decode(text, position)
        documents.extend(
            document.get("items", []) if document.get("kind") == "List" else [document]
        )


@dataclass
class Snapshot:
    """What one status line shows."""

    wss_row: str = ""
    """The ``kubectl get connectionstats chat`` data row."""
    topics: dict[str, Any] = field(default_factory=dict)
    """status.topics of the ConnectionStats."""
    pods_summary: str = ""
    """status.pods.summary of the ConnectionStats (reporting/matched)."""
    replicas: int = 0
    """Deployment spec.replicas."""
    ready_replicas: int = 0
    """Deployment status.readyReplicas."""
    hpa: dict[str, Any] | None = None
    """The owned HPA, if any."""
    pods: list[PodInfo] = field(default_factory=list)
    """The demo pods, oldest first."""
    endpoints: dict[str, bool] = field(default_factory=dict)
    """Pod -> ready, of the chat Service's EndpointSlice endpoints."""
    counts: dict[str, int] = field(default_factory=dict)
    """Sockets per pod as its sidecar reports them (GET podIP:9090/stats)."""

    @property
    def live(self) -> list[PodInfo]:
        """Pods not being deleted."""
        return [p for p in self.pods if not p.deleting]

    def ready_endpoints(self) -> int:
        """Ready endpoints of the Service."""
        return sum(self.endpoints.values())


async def sidecar_counts(
    session: aiohttp.ClientSession, pods: Sequence[PodInfo], admin_port: int = 9090
) -> dict[str, int]:
    """Sockets per pod, straight from each sidecar's admin port (GET podIP:9090/stats)."""

    async def one(pod: PodInfo) -> tuple[str, int | None]:
        if not pod.ip:
            return pod.name, None
        try:
            async with session.get(
                f"http://{pod.ip}:{admin_port}/stats", timeout=aiohttp.ClientTimeout(total=2)
            ) as response:
                document = await response.json(content_type=None)
                return pod.name, int(document["connections"])
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError, TypeError):
            return pod.name, None

    answers = await asyncio.gather(*(one(pod) for pod in pods))
    return {name: count for name, count in answers if count is not None}


async def read_snapshot(
    kubectl: Kubectl, session: aiohttp.ClientSession, namespace: str, name: str
) -> Snapshot:
    """Everything one status line shows (two kubectl calls, one GET per pod)."""
    snap = Snapshot()
    code, out, _ = await kubectl.run(
        "get", "connectionstats", name, "-n", namespace, "--no-headers", check=False
    )
    snap.wss_row = " ".join(out.split()) if code == 0 else "(no ConnectionStats)"
    listing = await kubectl.get_json(
        "deployments,connectionstats,horizontalpodautoscalers,pods,endpointslices",
        "-n",
        namespace,
    )
    slices = []
    for item in listing.get("items", []):
        kind = item.get("kind")
        if kind == "Deployment":
            snap.replicas = item.get("spec", {}).get("replicas", 0)
            snap.ready_replicas = item.get("status", {}).get("readyReplicas", 0)
        elif kind == "ConnectionStats":
            snap.topics = item.get("status", {}).get("topics") or {}
            snap.pods_summary = (item.get("status", {}).get("pods") or {}).get("summary", "")
        elif kind == "HorizontalPodAutoscaler":
            snap.hpa = item
        elif kind == "Pod":
            snap.pods.append(pod_info(item))
        elif kind == "EndpointSlice":
            service = (item.get("metadata", {}).get("labels") or {}).get(
                "kubernetes.io/service-name"
            )
            if service == name:
                slices.append(item)
    snap.endpoints = endpoint_readiness({"items": slices})
    snap.pods.sort(key=lambda p: (p.created, p.name))
    snap.counts = await sidecar_counts(session, snap.pods)
    return snap


def pod_notes(pod: PodInfo, endpoint: bool | None, costs: bool = False) -> list[str]:
    """Short marks of one pod: draining, starting, full (gate False), out of the Service."""
    notes = [f"c{pod.deletion_cost}"] if costs and pod.deletion_cost else []
    if pod.deleting:
        notes.append("draining")
    elif pod.gate == "False":
        notes.append("gate off")
    elif not pod.ready:
        notes.append("starting")
    if not pod.deleting and endpoint is False:
        notes.append("no traffic")
    return notes


def render(snap: Snapshot, elapsed: float, costs: bool = False) -> tuple[str, str]:
    """Two compact lines: the kubectl row, replicas, HPA, endpoints; topics and per-pod sockets."""
    line = f"[{elapsed:4.0f}s] wss {snap.wss_row:<38}"
    line += f" | replicas {snap.ready_replicas}/{snap.replicas}"
    if snap.hpa is not None:
        status = snap.hpa.get("status", {})
        line += f" | hpa desired {status.get('desiredReplicas') or '?'}"
    line += f" | endpoints ready {snap.ready_endpoints()}/{len(snap.endpoints)}"
    per_pod = []
    for pod in snap.pods:
        count = snap.counts.get(pod.name)
        notes = pod_notes(pod, snap.endpoints.get(pod.name), costs)
        text = f"{short(pod.name)}={'?' if count is None else count}"
        per_pod.append(text + (f"({','.join(notes)})" if notes else ""))
    second = f"        topics {format_topics(snap.topics)} | pod sockets {' '.join(per_pod) or '-'}"
    return line, second
