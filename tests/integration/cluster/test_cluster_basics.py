"""The local control plane is real Kubernetes: pinned version, CRDs with status subresource and
printer columns, Deployments whose pods run with distinct loopback IPs and go away on scale-down."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from wsgauge_devcluster.testing import KubeCluster, eventually, on_simulated_node

pytestmark = pytest.mark.cluster


def test_server_and_client_report_the_pinned_version(kube: KubeCluster) -> None:
    if kube.state_dir is None:
        pytest.skip("a foreign cluster (KUBECONFIG) runs its own version")
    versions = json.loads(kube.kubectl("version", "-o", "json").stdout)
    assert versions["serverVersion"]["gitVersion"] == kube.version
    assert versions["clientVersion"]["gitVersion"] == kube.version
    assert kube.version.startswith("v1.")


def test_helm_is_the_pinned_version_and_reaches_the_cluster(kube: KubeCluster) -> None:
    def helm(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(kube.helm_path), *args],
            capture_output=True,
            text=True,
            env=kube.env,
            timeout=60,
            check=False,
        )

    pinned = kube.bin_dir.name.rsplit("helm-", 1)[-1]
    assert helm("version", "--short").stdout.strip().startswith(pinned)
    listing = helm("list", "--all-namespaces", "--output", "json")
    assert listing.returncode == 0, listing.stderr
    assert isinstance(json.loads(listing.stdout), list)


def test_nodes_are_ready(kube: KubeCluster) -> None:
    """The real node (kubelet + containerd) and the simulated node beside it, tainted."""
    if kube.state_dir is None:
        pytest.skip("the wsgauge-node* nodes exist only on the local devcluster")
    nodes = {n["metadata"]["name"]: n for n in kube.get_json("nodes")["items"]}
    ready = {
        name
        for name, n in nodes.items()
        if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"])
    }
    assert {"wsgauge-node", "wsgauge-node-1"} <= ready
    real = nodes["wsgauge-node"]["status"]
    assert real["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    assert real["nodeInfo"]["kubeletVersion"] == kube.version
    assert [a["type"] for a in real["addresses"]][:1] == ["InternalIP"]
    taints = nodes["wsgauge-node-1"]["spec"].get("taints") or []
    assert [t["key"] for t in taints] == ["wsgauge.dev/simulated"]


@pytest.fixture
def widget_crd(kube: KubeCluster) -> Iterator[str]:
    group = f"t{uuid.uuid4().hex[:8]}.wsgauge.dev"
    name = f"widgets.{group}"
    kube.apply(
        {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": name},
            "spec": {
                "group": group,
                "scope": "Namespaced",
                "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                "versions": [
                    {
                        "name": "v1",
                        "served": True,
                        "storage": True,
                        "subresources": {"status": {}},
                        "additionalPrinterColumns": [
                            {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        ],
                        "schema": {
                            "openAPIV3Schema": {
                                "type": "object",
                                "properties": {
                                    "spec": {
                                        "type": "object",
                                        "properties": {"size": {"type": "integer"}},
                                    },
                                    "status": {
                                        "type": "object",
                                        "properties": {"phase": {"type": "string"}},
                                    },
                                },
                            }
                        },
                    }
                ],
            },
        }
    )
    kube.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    try:
        yield name
    finally:
        kube.kubectl("delete", "crd", name, "--wait=false", check=False)


def test_crd_with_status_subresource_and_printer_columns(
    kube: KubeCluster, namespace: str, widget_crd: str
) -> None:
    group = widget_crd.split(".", 1)[1]
    kube.apply(
        {
            "apiVersion": f"{group}/v1",
            "kind": "Widget",
            "metadata": {"name": "w1", "namespace": namespace},
            "spec": {"size": 7},
        }
    )
    # with a status subresource, status written through the main resource is ignored ...
    kube.kubectl(
        "patch", widget_crd, "w1", "-n", namespace, "--type=merge",
        "-p", '{"status": {"phase": "Ignored"}}',
    )  # fmt: skip
    assert "status" not in kube.get_json(widget_crd, "w1", "-n", namespace)
    # ... and only /status changes it
    kube.kubectl(
        "patch", widget_crd, "w1", "-n", namespace, "--subresource=status", "--type=merge",
        "-p", '{"status": {"phase": "Shiny"}}',
    )  # fmt: skip
    table = kube.kubectl("get", widget_crd, "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "SIZE", "PHASE"]
    assert table[1].split()[:3] == ["w1", "7", "Shiny"]


def _running_pods(kube: KubeCluster, namespace: str, selector: str) -> list[dict[str, object]]:
    pods = kube.get_json("pods", "-n", namespace, "-l", selector)["items"]
    return [p for p in pods if p["status"].get("phase") == "Running"]


def test_deployment_pods_run_with_distinct_loopback_ips_and_go_on_scale_down(
    kube: KubeCluster, namespace: str
) -> None:
    kube.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": namespace},
            "spec": {
                "replicas": 4,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": on_simulated_node(
                        {
                            "terminationGracePeriodSeconds": 2,
                            "containers": [{"name": "web", "image": "nginx:1.27"}],
                        }
                    ),
                },
            },
        }
    )

    def four_running() -> list[dict[str, object]] | None:
        pods = _running_pods(kube, namespace, "app=web")
        return pods if len(pods) == 4 else None

    pods = eventually(four_running, timeout=90, what="4 running pods")
    ips = [p["status"]["podIP"] for p in pods]  # type: ignore[index]
    assert len(set(ips)) == 4
    for ip in ips:
        address = ipaddress.ip_address(ip)
        assert address.is_loopback
        assert str(address) != "127.0.0.1"
    nodes = {p["spec"]["nodeName"] for p in pods}  # type: ignore[index]
    assert nodes <= {"wsgauge-node-1", "wsgauge-node-2"}  # simulated nodes only
    eventually(
        lambda: (
            kube.get_json("deployment", "web", "-n", namespace)["status"].get("readyReplicas") == 4
        ),
        timeout=60,
        what="4 ready replicas",
    )
    kube.kubectl("scale", "deployment", "web", "-n", namespace, "--replicas=1")
    eventually(
        lambda: len(kube.get_json("pods", "-n", namespace, "-l", "app=web")["items"]) == 1,
        timeout=90,
        what="scale-down to one pod",
    )


def test_loopback_is_accepted_as_pod_ip_but_rejected_in_endpoint_slices(
    kube: KubeCluster, namespace: str
) -> None:
    """The design's fact: pod status takes 127.x, EndpointSlices (and Endpoints) refuse it."""
    slice_manifest = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "loop", "namespace": namespace},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["127.101.0.9"]}],
        "ports": [{"port": 8080}],
    }
    result = kube.kubectl("apply", "-f", "-", input_text=json.dumps(slice_manifest), check=False)
    assert result.returncode != 0
    assert "loopback" in result.stderr
    endpoints = {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": "loop", "namespace": namespace},
        "subsets": [{"addresses": [{"ip": "127.101.0.9"}], "ports": [{"port": 8080}]}],
    }
    result = kube.kubectl("apply", "-f", "-", input_text=json.dumps(endpoints), check=False)
    assert result.returncode != 0
    assert "loopback" in result.stderr


def test_service_account_tokens_authenticate_and_rbac_authorizes(
    kube: KubeCluster, namespace: str, tmp_path: Path
) -> None:
    token = kube.kubectl("create", "token", "default", "-n", namespace).stdout.strip()
    config = yaml.safe_load(kube.kubeconfig.read_text())
    context = next(c for c in config["contexts"] if c["name"] == config["current-context"])
    for user in config["users"]:
        if user["name"] == context["context"]["user"]:
            user["user"] = {"token": token}  # no client certificate: only the token counts
    sa_kubeconfig = tmp_path / "sa.kubeconfig"
    sa_kubeconfig.write_text(yaml.safe_dump(config))
    as_sa = ("--kubeconfig", str(sa_kubeconfig))
    whoami = json.loads(kube.kubectl("auth", "whoami", "-o", "json", *as_sa).stdout)
    assert whoami["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:default"
    denied = kube.kubectl("get", "pods", "-n", namespace, *as_sa, check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()
    kube.kubectl("create", "role", "pod-reader", "-n", namespace, "--verb=list", "--resource=pods")
    kube.kubectl(
        "create", "rolebinding", "pod-reader", "-n", namespace, "--role=pod-reader",
        f"--serviceaccount={namespace}:default",
    )  # fmt: skip
    eventually(
        lambda: kube.kubectl("get", "pods", "-n", namespace, *as_sa, check=False).returncode == 0,
        timeout=30,
        what="RoleBinding to take effect",
    )
