"""``kubectl wsgauge``: the live view in a terminal (installed as ``kubectl-wsgauge``).

- ``top``: per pod: sockets, per topic, ready/draining, node (like ``kubectl top pods``);
- ``watch``: live totals per ConnectionStats, a new table (or JSON line) on every change;
- ``describe NAME``: a ConnectionStats with its pods, conditions and recent Events.

Table output by default, ``-o json``; ``-n``/``-A``, ``--context`` and ``--kubeconfig`` as in
kubectl. It talks to the API server only, with the official ``kubernetes`` client (the one the
operator uses): the ConnectionStats and its Events from the API, the per-pod live counts from
the operator's ``GET /stats/live`` through the API server's *service proxy*
(``/api/v1/namespaces/NS/services/NAME:http-stats/proxy/stats/live``), so no port-forward is
needed; the user needs ``get`` on ``services/proxy`` of the operator's Service. The operator is
found by its Service's labels in ``--operator-namespace`` (default ``wsgauge-system``).

The pure part (:func:`top_rows`, :func:`totals_rows`, :func:`describe_lines`,
:func:`render_table`) turns the documents into rows and text; :class:`Cluster` is the I/O.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TextIO

import kubernetes
import urllib3

from wsgauge_operator.model.settings import API_GROUP, API_VERSION, PLURAL

OPERATOR_SELECTOR = "app.kubernetes.io/component=operator,app.kubernetes.io/name=wsgauge"
"""Labels of the operator's stats Service (the chart's)."""
STATS_PORT_NAME = "http-stats"


class PluginError(Exception):
    """What the plugin tells the user before it exits with status 1."""


# -- pure: documents in, rows and text out -----------------------------------------------------


def _selected(entry: Mapping[str, Any], namespace: str | None) -> bool:
    return namespace is None or entry.get("namespace") == namespace


def _topics_text(topics: Mapping[str, Any]) -> str:
    return ",".join(f"{name}={topics[name]}" for name in sorted(topics)) or "-"


def _yes(value: object) -> str:
    return "yes" if value else "no"


def top_rows(document: Mapping[str, Any], namespace: str | None) -> list[dict[str, Any]]:
    """One row per pod of the selected ConnectionStats, the busiest first."""
    rows = []
    for entry in document.get("connectionStats") or []:
        if not _selected(entry, namespace):
            continue
        for pod in entry.get("podList") or []:
            rows.append(
                {
                    "namespace": entry["namespace"],
                    "connectionStats": entry["name"],
                    "pod": pod["name"],
                    "node": pod.get("node") or "",
                    "sockets": int(pod.get("connections") or 0),
                    "topics": dict(pod.get("topics") or {}),
                    "ready": bool(pod.get("ready")),
                    "draining": bool(pod.get("draining")),
                    "overCapacity": bool(pod.get("overCapacity")),
                    "sidecar": pod.get("sidecar") or "",
                }
            )
    rows.sort(key=lambda row: (-row["sockets"], row["namespace"], row["pod"]))
    return rows


def totals_rows(document: Mapping[str, Any], namespace: str | None) -> list[dict[str, Any]]:
    """One row per selected ConnectionStats: its totals."""
    return [
        {
            "namespace": entry["namespace"],
            "name": entry["name"],
            "connections": int(entry.get("connections") or 0),
            "pods": int((entry.get("pods") or {}).get("reporting") or 0),
            "currentReplicas": entry.get("currentReplicas"),
            "desiredReplicas": entry.get("desiredReplicas"),
            "topics": dict(entry.get("topics") or {}),
        }
        for entry in document.get("connectionStats") or []
        if _selected(entry, namespace)
    ]


def render_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Columns padded like kubectl's (three spaces apart), upper-case headers."""
    text_rows = [[str(cell) for cell in row] for row in rows]
    widths = [len(header) for header in headers]
    for row in text_rows:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]
    lines = []
    for row in [list(headers), *text_rows]:
        lines.append("   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    return "\n".join(line.rstrip() for line in lines)


def top_table(rows: Sequence[Mapping[str, Any]], all_namespaces: bool) -> str:
    """``kubectl wsgauge top`` as a table."""
    headers = ["NAME", "CONNECTIONSTATS", "NODE", "SOCKETS", "READY", "DRAINING", "TOPICS"]
    if all_namespaces:
        headers.insert(0, "NAMESPACE")
    table = []
    for row in rows:
        cells: list[object] = [
            row["pod"],
            row["connectionStats"],
            row["node"] or "<none>",
            row["sockets"],
            _yes(row["ready"]),
            _yes(row["draining"]),
            _topics_text(row["topics"]),
        ]
        if all_namespaces:
            cells.insert(0, row["namespace"])
        table.append(cells)
    return render_table(headers, table)


def totals_table(rows: Sequence[Mapping[str, Any]], all_namespaces: bool) -> str:
    """``kubectl wsgauge watch`` as a table."""
    headers = ["NAME", "CONNECTIONS", "PODS", "CURRENT", "DESIRED", "TOPICS"]
    if all_namespaces:
        headers.insert(0, "NAMESPACE")
    table = []
    for row in rows:
        desired = row["desiredReplicas"]
        cells: list[object] = [
            row["name"],
            row["connections"],
            row["pods"],
            _or(row["currentReplicas"], "<unknown>"),
            _or(desired, "<none>"),
            _topics_text(row["topics"]),
        ]
        if all_namespaces:
            cells.insert(0, row["namespace"])
        table.append(cells)
    return render_table(headers, table)


def describe_data(
    resource: Mapping[str, Any],
    live_entry: Mapping[str, Any] | None,
    events: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """What ``describe`` shows, as one JSON-able object."""
    metadata = resource.get("metadata") or {}
    status = resource.get("status") or {}
    return {
        "namespace": metadata.get("namespace"),
        "name": metadata.get("name"),
        "spec": resource.get("spec") or {},
        "status": {
            key: status.get(key)
            for key in ("connections", "topics", "pods", "averagePerPod", "desiredReplicas")
        },
        "conditions": list(status.get("conditions") or []),
        "pods": list((live_entry or {}).get("podList") or []),
        "currentReplicas": (live_entry or {}).get("currentReplicas"),
        "events": [
            {
                "type": event.get("type"),
                "reason": event.get("reason"),
                "time": event.get("eventTime")
                or (event.get("metadata") or {}).get("creationTimestamp"),
                "note": event.get("note"),
            }
            for event in events
        ],
    }


def _or(value: object, missing: str) -> object:
    return missing if value is None else value


def describe_text(data: Mapping[str, Any], live_available: bool) -> str:
    """``kubectl wsgauge describe`` as text (kubectl describe's layout)."""
    spec = data["spec"]
    status = data["status"]
    target = spec.get("targetRef") or {}
    lines = [
        f"Name:           {data['name']}",
        f"Namespace:      {data['namespace']}",
        f"Target:         {target.get('kind', '<none>')}/{target.get('name', '<none>')}",
        f"Connections:    {status.get('connections') or 0}",
        f"Topics:         {_topics_text(status.get('topics') or {})}",
        f"Average/pod:    {status.get('averagePerPod') or 0}",
        f"Replicas:       {_or(data['currentReplicas'], '<unknown>')} current, "
        f"{_or(status.get('desiredReplicas'), '<none>')} desired",
        "Conditions:",
    ]
    conditions = data["conditions"]
    if conditions:
        table = render_table(
            ["TYPE", "STATUS", "REASON", "MESSAGE"],
            [
                [c.get("type"), c.get("status"), c.get("reason") or "", c.get("message") or ""]
                for c in conditions
            ],
        )
        lines += ["  " + line for line in table.splitlines()]
    else:
        lines.append("  <none>")
    lines.append("Pods:")
    if not live_available:
        lines.append("  <the operator's live stats could not be read>")
    elif data["pods"]:
        table = render_table(
            ["NAME", "NODE", "SOCKETS", "READY", "DRAINING", "OVER CAPACITY", "TOPICS"],
            [
                [
                    pod["name"],
                    pod.get("node") or "<none>",
                    pod.get("connections", 0),
                    _yes(pod.get("ready")),
                    _yes(pod.get("draining")),
                    _yes(pod.get("overCapacity")),
                    _topics_text(pod.get("topics") or {}),
                ]
                for pod in data["pods"]
            ],
        )
        lines += ["  " + line for line in table.splitlines()]
    else:
        lines.append("  <none>")
    lines.append("Events:")
    if data["events"]:
        table = render_table(
            ["TYPE", "REASON", "TIME", "MESSAGE"],
            [[e["type"], e["reason"], e["time"] or "", e["note"] or ""] for e in data["events"]],
        )
        lines += ["  " + line for line in table.splitlines()]
    else:
        lines.append("  <none>")
    return "\n".join(lines)


# -- I/O: the API server -----------------------------------------------------------------------


class Cluster:
    """The API server of one kubeconfig context (and the operator behind its service proxy)."""

    def __init__(
        self, kubeconfig: str | None, context: str | None, operator_namespace: str
    ) -> None:
        configuration = kubernetes.client.Configuration()
        try:
            kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, context=context, client_configuration=configuration
            )
        except (kubernetes.config.ConfigException, OSError) as error:
            raise PluginError(f"cannot load the kubeconfig: {error}") from None
        configuration.retries = False
        self._api = kubernetes.client.ApiClient(configuration)
        self._core = kubernetes.client.CoreV1Api(self._api)
        self._custom = kubernetes.client.CustomObjectsApi(self._api)
        self.operator_namespace = operator_namespace
        contexts, active = kubernetes.config.list_kube_config_contexts(kubeconfig)  # type: ignore[no-untyped-call]
        chosen = next((c for c in contexts if c["name"] == context), active) if context else active
        self.default_namespace = str(
            (chosen or {}).get("context", {}).get("namespace") or "default"
        )

    def _call(self, what: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, _request_timeout=10, **kwargs)
        except kubernetes.client.ApiException as error:
            reason = error.reason or ""
            with contextlib.suppress(TypeError, ValueError, AttributeError):
                reason = json.loads(error.body or "").get("message") or reason
            raise PluginError(f"{what}: {error.status} {reason}") from None
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise PluginError(f"{what}: {error}") from None

    def _operator_service(self) -> str:
        services = self._call(
            f"listing the operator's Service in {self.operator_namespace}",
            self._core.list_namespaced_service,
            self.operator_namespace,
            label_selector=OPERATOR_SELECTOR,
        )
        for service in services.items:
            if any(port.name == STATS_PORT_NAME for port in service.spec.ports or []):
                return str(service.metadata.name)
        raise PluginError(
            f"no wsgauge operator Service in namespace {self.operator_namespace} "
            "(install the chart there, or pass --operator-namespace)"
        )

    def live_document(self) -> dict[str, Any]:
        """The operator's ``/stats/live`` through the API server's service proxy."""
        service = self._operator_service()
        response = self._call(
            "reading the operator's live stats through the service proxy",
            self._core.connect_get_namespaced_service_proxy_with_path,
            f"{service}:{STATS_PORT_NAME}",
            self.operator_namespace,
            "stats/live",
            _preload_content=False,
        )
        try:
            document = json.loads(response.data)
        except ValueError:
            raise PluginError("the operator's live stats are not JSON") from None
        if not isinstance(document, dict):
            raise PluginError("the operator's live stats are not a JSON object")
        return document

    def connection_stats(self, namespace: str, name: str) -> dict[str, Any]:
        """One ConnectionStats object."""
        result: dict[str, Any] = self._call(
            f"reading ConnectionStats {namespace}/{name}",
            self._custom.get_namespaced_custom_object,
            API_GROUP,
            API_VERSION,
            namespace,
            PLURAL,
            name,
        )
        return result

    def events(self, namespace: str, name: str, limit: int = 20) -> list[dict[str, Any]]:
        """The Events about one ConnectionStats, the newest last (``events.k8s.io/v1``)."""
        response = self._call(
            f"listing the Events of {namespace}/{name}",
            kubernetes.client.EventsV1Api(self._api).list_namespaced_event,
            namespace,
            field_selector=f"regarding.kind=ConnectionStats,regarding.name={name}",
            _preload_content=False,
        )
        items = json.loads(response.data).get("items") or []

        def when(event: Mapping[str, Any]) -> str:
            series = event.get("series") or {}
            return str(
                series.get("lastObservedTime")
                or event.get("eventTime")
                or (event.get("metadata") or {}).get("creationTimestamp")
                or ""
            )

        items.sort(key=when)
        return list(items[-limit:])


# -- the command -------------------------------------------------------------------------------


def _common_flags(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """The kubectl-like flags; on a subcommand without defaults, so that a flag given before
    the subcommand is not reset by the subcommand's parser."""

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "-n", "--namespace", default=default(None), help="the namespace (default: the context's)"
    )
    parser.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        default=default(False),
        help="every namespace",
    )
    parser.add_argument(
        "-o", "--output", choices=("table", "json"), default=default("table"), help="table or json"
    )
    parser.add_argument("--context", default=default(None), help="the kubeconfig context to use")
    parser.add_argument(
        "--kubeconfig", default=default(None), help="the kubeconfig file (default: $KUBECONFIG)"
    )
    parser.add_argument(
        "--operator-namespace",
        default=default("wsgauge-system"),
        help="where the wsgauge operator runs (default: wsgauge-system)",
    )


def build_parser() -> argparse.ArgumentParser:
    """``kubectl wsgauge`` and its subcommands (the common flags are accepted before or after
    the subcommand, as with kubectl)."""
    parser = argparse.ArgumentParser(
        prog="kubectl wsgauge",
        description="Live WebSocket connection counts of wsgauge, from the API server.",
    )
    _common_flags(parser, defaults=True)
    common = argparse.ArgumentParser(add_help=False)
    _common_flags(common, defaults=False)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("top", parents=[common], help="per pod: sockets, topics, ready, node")
    watch = commands.add_parser("watch", parents=[common], help="live totals per ConnectionStats")
    watch.add_argument("--interval", type=float, default=2.0, help="seconds between reads")
    watch.add_argument("--count", type=int, default=0, help="stop after N changes (0: never)")
    describe = commands.add_parser("describe", parents=[common], help="one ConnectionStats")
    describe.add_argument("name")
    return parser


def _namespace(args: argparse.Namespace, cluster: Cluster) -> str | None:
    if args.all_namespaces:
        return None
    return str(args.namespace or cluster.default_namespace)


def run(args: argparse.Namespace, cluster: Cluster, out: TextIO) -> None:
    """Run one parsed command against ``cluster``, writing to ``out``."""
    namespace = _namespace(args, cluster)
    if args.command == "top":
        rows = top_rows(cluster.live_document(), namespace)
        if args.output == "json":
            print(json.dumps({"pods": rows}, indent=2), file=out)
        elif rows:
            print(top_table(rows, namespace is None), file=out)
        else:
            where = "any namespace" if namespace is None else f"namespace {namespace}"
            print(f"No pods of a ConnectionStats found in {where}.", file=out)
    elif args.command == "watch":
        last: list[dict[str, Any]] | None = None
        changes = 0
        while args.count <= 0 or changes < args.count:
            rows = totals_rows(cluster.live_document(), namespace)
            if rows != last:
                last = rows
                changes += 1
                if args.output == "json":
                    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                    print(json.dumps({"time": stamp, "connectionStats": rows}), file=out)
                else:
                    print(time.strftime("%H:%M:%S"), file=out)
                    print(totals_table(rows, namespace is None), file=out)
                out.flush()
                if args.count > 0 and changes >= args.count:
                    break
            time.sleep(args.interval)
    else:
        if namespace is None:
            raise PluginError("describe needs one namespace: -n NAMESPACE, not -A")
        resource = cluster.connection_stats(namespace, args.name)
        live_entry: Mapping[str, Any] | None = None
        live_available = True
        try:
            document = cluster.live_document()
        except PluginError as error:
            print(f"warning: {error}", file=sys.stderr)
            live_available = False
        else:
            live_entry = next(
                (
                    e
                    for e in document.get("connectionStats") or []
                    if (e.get("namespace"), e.get("name")) == (namespace, args.name)
                ),
                None,
            )
        data = describe_data(resource, live_entry, cluster.events(namespace, args.name))
        if args.output == "json":
            print(json.dumps(data, indent=2), file=out)
        else:
            print(describe_text(data, live_available), file=out)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``kubectl-wsgauge``."""
    args = build_parser().parse_args(argv)
    try:
        cluster = Cluster(args.kubeconfig, args.context, args.operator_namespace)
        run(args, cluster, sys.stdout)
    except PluginError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
