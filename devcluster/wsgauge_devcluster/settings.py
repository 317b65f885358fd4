"""Settings of the local development cluster, one dataclass per concern, read from the env."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The repository this package lives in (devcluster/wsgauge_devcluster -> repo)."""


def _default_state_dir() -> Path:
    override = os.environ.get("WSGAUGE_CLUSTER_DIR")
    return Path(override).resolve() if override else REPO_ROOT / ".cluster"


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def _env_str(name: str, default: str) -> str:
    return os.environ.get(name) or default


NODE_KINDS = ("kubelet", "pod-runner")
"""`kubelet`: a real node (kubelet, containerd, runc, CNI bridge, kube-proxy) plus the pod
runner's simulated nodes, tainted so only pods that ask go there. `pod-runner`: simulated nodes
only (no root needed; what the fleet benchmark and dedicated fault clusters use)."""


@dataclass(frozen=True)
class ControlPlaneSettings:
    """Where and how the control plane processes run."""

    state_dir: Path = field(default_factory=_default_state_dir)
    """Holds PKI, kubeconfig, etcd data, pid files and logs (env WSGAUGE_CLUSTER_DIR)."""
    apiserver_port: int = field(default_factory=lambda: _env_int("WSGAUGE_APISERVER_PORT", 6443))
    """Secure port of kube-apiserver on 127.0.0.1 (env WSGAUGE_APISERVER_PORT)."""
    etcd_client_port: int = field(default_factory=lambda: _env_int("WSGAUGE_ETCD_PORT", 12379))
    """etcd client port on 127.0.0.1 (peer port is this + 1) (env WSGAUGE_ETCD_PORT)."""
    hpa_sync_period_seconds: int = field(
        default_factory=lambda: _env_int("WSGAUGE_HPA_SYNC_SECONDS", 5)
    )
    """HPA sync period of the controller manager (env WSGAUGE_HPA_SYNC_SECONDS)."""
    service_cluster_ip_range: str = field(
        default_factory=lambda: _env_str("WSGAUGE_SERVICE_CIDR", "10.96.0.0/16")
    )
    """ClusterIP range (env WSGAUGE_SERVICE_CIDR); with a real node, routed to its bridge and
    served by kube-proxy."""
    startup_timeout_seconds: float = 120.0
    """How long `up` waits for the API, the nodes and the default ServiceAccount."""
    stop_timeout_seconds: float = 10.0
    """How long `down` waits after SIGTERM before SIGKILL."""

    @property
    def etcd_peer_port(self) -> int:
        """etcd peer port (client port + 1)."""
        return self.etcd_client_port + 1

    @property
    def kubeconfig_path(self) -> Path:
        """The admin kubeconfig written by `up`."""
        return self.state_dir / "kubeconfig"

    @property
    def api_url(self) -> str:
        """The API server URL."""
        return f"https://127.0.0.1:{self.apiserver_port}"


@dataclass(frozen=True)
class RunnerSettings:
    """How the pod runner (our kubelet stand-in) behaves."""

    state_dir: Path = field(default_factory=_default_state_dir)
    """Pod process pid files and logs go under <state_dir>/pods/<ns>_<pod>/."""
    node_count: int = field(default_factory=lambda: _env_int("WSGAUGE_NODES", 2))
    """Number of nodes named wsgauge-node-1..N (env WSGAUGE_NODES)."""
    node_prefix: str = "wsgauge-node-"
    """Node names are this prefix plus 1..node_count."""
    ip_second_octet_base: int = field(default_factory=lambda: _env_int("WSGAUGE_POD_IP_BASE", 100))
    """Node i hands out pod IPs 127.<base+i>.x.y (x.y from 0.2 up); the node is .0.1 (env
    WSGAUGE_POD_IP_BASE; give a second cluster another base)."""
    max_pods: int = field(default_factory=lambda: _env_int("WSGAUGE_MAX_PODS", 2000))
    """The pods capacity each node reports (env WSGAUGE_MAX_PODS)."""
    lease_duration_seconds: int = 40
    """Node Lease duration; renewed every quarter of it."""
    node_status_interval_seconds: float = 60.0
    """How often the node's Ready condition heartbeat is refreshed."""
    venv_bin: Path = field(default_factory=lambda: REPO_ROOT / ".venv" / "bin")
    """Where wsgauge-sidecar and wsgauge-demo-app are found."""
    restart_backoff_max_seconds: float = 30.0
    """Cap of the exponential restart back-off (starts at 1 s)."""
    kubelet_version: str = "v1.37.2"
    """Reported in node.status.nodeInfo."""

    simulated_taint: bool = False
    """Taint the simulated nodes `wsgauge.dev/simulated=true:NoSchedule` (set when a real node
    runs beside them, so that ordinary pods land on the real one)."""

    def node_names(self) -> list[str]:
        """Names of the nodes this runner plays."""
        return [f"{self.node_prefix}{i}" for i in range(1, self.node_count + 1)]


@dataclass(frozen=True)
class NodeSettings:
    """The real node: kubelet, containerd, CNI bridge and kube-proxy on this host."""

    kind: str = field(default_factory=lambda: _env_str("WSGAUGE_NODE_KIND", "kubelet"))
    """One of NODE_KINDS (env WSGAUGE_NODE_KIND)."""
    name: str = "wsgauge-node"
    """Node name (kubelet --hostname-override)."""
    bridge: str = field(default_factory=lambda: _env_str("WSGAUGE_BRIDGE", "wsgauge0"))
    """The CNI bridge; its address is the node IP (env WSGAUGE_BRIDGE)."""
    pod_cidr: str = field(default_factory=lambda: _env_str("WSGAUGE_POD_CIDR", "10.244.0.0/24"))
    """Pod addresses; the first host address is the bridge, the node IP (env WSGAUGE_POD_CIDR).
    Pods get routes to this range and the Service range only: nothing leaves the machine."""
    kubelet_port: int = field(default_factory=lambda: _env_int("WSGAUGE_KUBELET_PORT", 10250))
    """kubelet API port on the node IP; healthz is this - 2, kube-proxy metrics this - 1 and
    kube-proxy healthz this + 6 (the upstream defaults 10250, 10248, 10249, 10256)."""
    max_pods: int = 110
    """Pods the kubelet admits."""
    wait_seconds: float = field(default_factory=lambda: _env_float("WSGAUGE_NODE_WAIT", 0.0))
    """How long `up` waits for another cluster's real node on this machine to stop before it
    gives up (env WSGAUGE_NODE_WAIT; 0: fail at once). Lets test runs of several checkouts
    take the one real node in turn."""
    images: tuple[str, ...] = ()
    """Local images to load into the node's containerd at `up` (filled by the CLI)."""

    @property
    def enabled(self) -> bool:
        """True when a real kubelet node is part of the cluster."""
        return self.kind == "kubelet"

    @property
    def node_ip(self) -> str:
        """The bridge's address: first host address of pod_cidr."""
        network = self.pod_cidr.split("/")[0].split(".")
        return ".".join([*network[:3], str(int(network[3]) + 1)])

    @property
    def prefix_length(self) -> int:
        """The pod CIDR's prefix length."""
        return int(self.pod_cidr.split("/")[1])

    @property
    def kubelet_healthz_port(self) -> int:
        """kubelet healthz (127.0.0.1)."""
        return self.kubelet_port - 2

    @property
    def proxy_metrics_port(self) -> int:
        """kube-proxy metrics (127.0.0.1)."""
        return self.kubelet_port - 1

    @property
    def proxy_healthz_port(self) -> int:
        """kube-proxy healthz (127.0.0.1)."""
        return self.kubelet_port + 6
