"""Unit tests of the real node's configuration (what containerd, CNI, the kubelet and kube-proxy
are told), of the host-changes journal and of the one-node-per-machine registry, without
starting any of them (a plain process stands for another checkout's kubelet)."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import tomllib
from pathlib import Path

import pytest
import yaml
from wsgauge_devcluster import hostnet, realnode
from wsgauge_devcluster.binaries import Binaries
from wsgauge_devcluster.exceptions import StartupError
from wsgauge_devcluster.nodes import SIMULATED_TAINT, NodeAgent
from wsgauge_devcluster.realnode import RealNode, socket_dir_for
from wsgauge_devcluster.settings import NodeSettings


def _node(tmp_path: Path, **settings: object) -> RealNode:
    return RealNode(
        settings=NodeSettings(**settings),  # type: ignore[arg-type]
        state_dir=tmp_path,
        binaries=Binaries(tmp_path / "bin"),
        service_cidr="10.96.0.0/16",
        kubeconfig_dir=tmp_path / "kubeconfigs",
        sandbox_image="docker.io/wsgauge/pause:9.9.9",
    )


def test_node_addresses_and_ports_derive_from_the_settings() -> None:
    node = NodeSettings(pod_cidr="10.250.3.0/24", kubelet_port=20250)
    assert node.node_ip == "10.250.3.1"
    assert node.prefix_length == 24
    assert (node.kubelet_healthz_port, node.proxy_metrics_port, node.proxy_healthz_port) == (
        20248,
        20249,
        20256,
    )


def test_containerd_config_is_our_own_runtime(tmp_path: Path) -> None:
    node = _node(tmp_path)
    node.write_configs(tmp_path / "ca.crt")
    config = tomllib.loads((tmp_path / "node" / "containerd" / "config.toml").read_text())
    assert config["root"].startswith(str(tmp_path))
    assert config["state"].startswith(str(tmp_path))
    assert config["grpc"]["address"] == str(node.containerd_socket)
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["restrict_oom_score_adj"] is True  # root lacks CAP_SYS_RESOURCE here
    assert cri["sandbox_image"] == "docker.io/wsgauge/pause:9.9.9"
    assert cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is False
    assert cri["cni"]["bin_dir"] == "/usr/lib/cni"


def test_pods_get_no_default_route(tmp_path: Path) -> None:
    node = _node(tmp_path, pod_cidr="10.244.0.0/24", bridge="br-test")
    node.write_configs(tmp_path / "ca.crt")
    conflist = json.loads((tmp_path / "node/cni/net.d/10-wsgauge.conflist").read_text())
    bridge = conflist["plugins"][0]
    assert bridge["bridge"] == "br-test"
    assert bridge["isGateway"] is True
    assert bridge["ipMasq"] is False
    assert bridge["ipam"]["routes"] == [{"dst": "10.96.0.0/16"}]
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.244.0.0/24", "gateway": "10.244.0.1"}]]
    assert (tmp_path / "node/resolv.conf").read_text().startswith("nameserver 127.0.0.1")


def test_kubelet_and_kube_proxy_configs(tmp_path: Path) -> None:
    node = _node(tmp_path)
    node.write_configs(tmp_path / "ca.crt")
    kubelet = yaml.safe_load((tmp_path / "node/kubelet.yaml").read_text())
    assert kubelet["failCgroupV1"] is False
    assert kubelet["cgroupDriver"] == "cgroupfs"
    assert kubelet["readOnlyPort"] == 0
    assert kubelet["authentication"]["anonymous"]["enabled"] is False
    assert kubelet["authorization"]["mode"] == "Webhook"
    assert kubelet["containerRuntimeEndpoint"] == f"unix://{node.containerd_socket}"
    assert kubelet["imageGCHighThresholdPercent"] == 100  # local-only images stay
    proxy = yaml.safe_load((tmp_path / "node/kube-proxy.yaml").read_text())
    assert proxy["mode"] == "iptables"
    assert proxy["nodePortAddresses"] == ["10.244.0.1/32"]
    assert proxy["conntrack"]["maxPerCore"] == 0
    assert proxy["iptables"]["localhostNodePorts"] is False


def test_socket_dir_is_short_and_per_state_dir(tmp_path: Path) -> None:
    deep = tmp_path / ("x" * 120)
    assert len(str(socket_dir_for(deep) / "containerd.sock.ttrpc")) < 100
    assert socket_dir_for(deep) != socket_dir_for(tmp_path)


def test_journal_keeps_the_first_original_and_restores_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = {"net.ipv4.ip_forward": "0", "kernel.panic": "1"}
    monkeypatch.setattr(hostnet, "read_sysctl", values.get)
    monkeypatch.setattr(hostnet, "write_sysctl", values.__setitem__)
    journal = hostnet.HostChanges(tmp_path / "host-changes.json")
    journal.record_sysctls(["net.ipv4.ip_forward", "no.such.setting"])
    values["net.ipv4.ip_forward"] = "1"
    journal.record_sysctls(["net.ipv4.ip_forward", "kernel.panic"])  # a second start
    values["kernel.panic"] = "10"
    restored = journal.restore_sysctls()
    assert restored == {"net.ipv4.ip_forward": "0", "kernel.panic": "1"}
    assert values == {"net.ipv4.ip_forward": "0", "kernel.panic": "1"}
    assert not journal.path.exists()
    assert journal.restore_sysctls() == {}


def test_simulated_nodes_are_tainted_only_beside_a_real_node() -> None:
    plain = NodeAgent(name="n1", node_ip="127.101.0.1")
    tainted = NodeAgent(name="n1", node_ip="127.101.0.1", tainted=True)
    assert plain.node_object()["spec"] == {}
    assert tainted.node_object()["spec"] == {"taints": [SIMULATED_TAINT]}


def test_configs_written_again_only_when_they_change(tmp_path: Path) -> None:
    """kube-proxy exits when its config file is written to: an `up` beside a running node must
    not touch files whose content is the same."""
    node = _node(tmp_path)
    node.write_configs(tmp_path / "ca.crt")
    proxy = tmp_path / "node" / "kube-proxy.yaml"
    before = proxy.stat().st_mtime_ns
    node.write_configs(tmp_path / "ca.crt")
    assert proxy.stat().st_mtime_ns == before
    _node(tmp_path, kubelet_port=20250).write_configs(tmp_path / "ca.crt")
    assert "20249" in proxy.read_text()


def test_registry_finds_node_runs_of_other_state_dirs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A killed run of another state directory is found (to be cleaned up); it does not stop a
    new node from starting while none of its processes runs."""
    monkeypatch.setattr(realnode, "REGISTRY", tmp_path / "registry")
    mine = _node(tmp_path / "mine")
    earlier = _node(tmp_path / "earlier", bridge="br-old", pod_cidr="10.250.0.0/24")
    earlier.register()
    mine.register()
    (found,) = mine.others()
    assert found.state_dir == (tmp_path / "earlier").resolve()
    assert (found.settings.bridge, found.settings.node_ip) == ("br-old", "10.250.0.1")
    assert found.containerd_socket == earlier.containerd_socket
    mine.require_alone(print)  # nothing of the earlier run is running
    (earlier.socket_dir / "node.json").write_text("{not json")
    assert mine.others() == []


def test_a_second_node_waits_for_the_first_to_stop_or_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WSGAUGE_NODE_WAIT: `up` beside another checkout's running node waits for it to stop
    (test runs of several checkouts take the one real node in turn); without it, or when the
    wait runs out, it refuses with the command that stops the other node."""
    monkeypatch.setattr(realnode, "REGISTRY", tmp_path / "registry")
    earlier = _node(tmp_path / "earlier", bridge="br-old", pod_cidr="10.250.0.0/24")
    earlier.register()
    (seen,) = _node(tmp_path / "mine").others()  # the earlier run, as `up` here sees it
    # a process whose command line names the kubelet binary stands for the other node's kubelet
    kubelet = seen.process("kubelet")
    kubelet.start([sys.executable, "-c", "import time; time.sleep(60)", kubelet.match])
    held = kubelet.pid()
    assert held is not None
    try:
        with pytest.raises(StartupError, match="WSGAUGE_NODE_WAIT") as refused:
            _node(tmp_path / "mine", wait_seconds=0.0).require_alone(print)
        assert str((tmp_path / "earlier").resolve()) in str(refused.value)
        lines: list[str] = []
        threading.Timer(1.0, lambda: os.kill(held, signal.SIGTERM)).start()
        _node(tmp_path / "mine", wait_seconds=60.0).require_alone(lines.append)  # no raise
        assert kubelet.pid() is None
        assert lines
        assert "waiting for the real node of" in lines[0]
    finally:
        kubelet.stop(5.0)
