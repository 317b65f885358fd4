"""The kind cluster's and node image's pure parts, and the quick start of docs/install.md."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml
from wsgauge_devcluster.kindcluster import (
    KindSettings,
    cluster_config,
    internal_kubeconfig,
    pod_route,
)
from wsgauge_devcluster.kindnode import (
    KindVersions,
    component_dockerfile,
    component_images,
    node_ref,
)

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tests" / "kind"))
from test_install_quick_start import commands, quick_start  # noqa: E402


def test_cluster_config_has_one_control_plane_two_workers_and_our_ranges() -> None:
    document = yaml.safe_load(cluster_config(KindSettings()))
    assert [n["role"] for n in document["nodes"]] == ["control-plane", "worker", "worker"]
    assert document["networking"] == {"podSubnet": "10.245.0.0/16", "serviceSubnet": "10.97.0.0/16"}
    assert "&" not in cluster_config(KindSettings())  # no YAML anchors for kind to read


def test_internal_kubeconfig_names_the_control_plane_by_address() -> None:
    given = yaml.safe_dump(
        {
            "apiVersion": "v1",
            "clusters": [
                {"name": "kind-x", "cluster": {"server": "https://x-control-plane:6443", "a": 1}}
            ],
        }
    )
    out = yaml.safe_load(internal_kubeconfig(given, "172.31.250.3"))
    assert out["clusters"][0]["cluster"] == {"server": "https://172.31.250.3:6443", "a": 1}


def test_pod_route_is_the_node_image_subnet_of_that_address() -> None:
    assert pod_route("172.31.250.4") == "10.245.4.0/24"
    assert pod_route("10.1.2.254") == "10.245.254.0/24"


def test_component_images_carry_the_names_kubeadm_asks_for() -> None:
    refs = [c.ref for c in component_images(KindVersions(), "base:1")]
    assert refs == [
        "registry.k8s.io/kube-apiserver:v1.37.2",
        "registry.k8s.io/kube-controller-manager:v1.37.2",
        "registry.k8s.io/kube-scheduler:v1.37.2",
        "registry.k8s.io/kube-proxy:v1.37.2",
        "registry.k8s.io/etcd:3.7.0-0",
        "registry.k8s.io/coredns/coredns:v1.14.6",
    ]
    proxy, coredns = component_images(KindVersions(), "base:1")[3::2]
    assert component_dockerfile(proxy).startswith("FROM base:1\nCOPY kube-proxy /usr/local/bin/")
    assert 'ENTRYPOINT ["/coredns"]' in component_dockerfile(coredns)


def test_node_image_cni_config_matches_the_pod_subnet() -> None:
    script = (REPO / "images/kind-node/files/usr/local/bin/wsgauge-kind-cni").read_text()
    assert "10.245.${own}.0/24" in script
    containerd = (REPO / "images/kind-node/files/etc/containerd/config.toml").read_text()
    assert f'sandbox_image = "registry.k8s.io/pause:{KindVersions().pause}"' in containerd


def test_install_md_quick_start_uses_the_tests_cluster_config_and_our_node_image() -> None:
    block = quick_start()
    heredoc = re.search(r"<<'YAML'\n(.*?)\nYAML\n", block, re.S)
    assert heredoc, "no kind cluster config in the quick start"
    assert yaml.safe_load(heredoc.group(1)) == yaml.safe_load(cluster_config(KindSettings()))
    create = next(c for c in commands(block) if c[:3] == ["kind", "create", "cluster"])
    assert create[create.index("--image") + 1] == node_ref()
    assert [c[0] for c in commands(block)] == [
        "make",
        "cat",
        "kind",
        "make",
        "kind",
        "helm",
        "kubectl",
    ]
