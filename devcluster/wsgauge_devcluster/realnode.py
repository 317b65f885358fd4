"""The real node of the local cluster: containerd, the kubelet and kube-proxy on this host.

Everything lives under ``<state>/node/`` except the container runtime's sockets, which go to
``/run/wsgauge/<cluster id>/`` (a unix socket path must stay short):

  node/containerd/config.toml   containerd's own config: own root, state and socket beside any
                                other containerd (Docker's), CRI with runc, cgroupfs, our CNI
  node/containerd/root|state    its images, snapshots and task bundles
  node/cni/net.d/               the CNI conflist: bridge (isGateway, hairpin) + host-local +
                                firewall + portmap; pods get routes to the pod and Service ranges
                                only, so nothing in a pod can send traffic off the machine
  node/kubelet/                 the kubelet's root directory (pods' volumes, its serving cert)
  node/kubelet.yaml             KubeletConfiguration (cgroup v1 allowed, webhook authn/authz)
  node/kube-proxy.yaml          KubeProxyConfiguration (iptables mode, NodePorts on the node IP)
  node/pod-logs/                container logs
  node/resolv.conf              the pods' resolver: loopback only
  node/host-changes.json        the host changes to undo (hostnet.py)

The kubelet and kube-proxy authenticate with client certificates of the cluster CA
(``system:node:<name>``/``system:nodes`` and ``system:kube-proxy``); the API server reaches the
kubelet with ``kube-apiserver-kubelet-client`` (``system:masters``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from wsgauge_devcluster import hostnet
from wsgauge_devcluster.binaries import Binaries
from wsgauge_devcluster.exceptions import StartupError
from wsgauge_devcluster.processes import ManagedProcess
from wsgauge_devcluster.settings import NodeSettings

CNI_BIN_DIR = Path("/usr/lib/cni")
"""Where Debian's containernetworking-plugins put the plugins."""

COMPONENTS = ("containerd", "kubelet", "kube-proxy")
"""Start order of the node's processes."""

Log = Callable[[str], None]


REGISTRY = Path("/run/wsgauge")
"""One directory per real node run on this machine (its sockets and ``node.json``); /run does not
outlive a reboot, and neither does the host state a node leaves."""


def socket_dir_for(state_dir: Path) -> Path:
    """Short directory for a cluster's containerd sockets (a unix socket path must stay under
    108 bytes, a state directory need not)."""
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:10]
    return REGISTRY / digest


@dataclass(frozen=True)
class RealNode:
    """One real node of the cluster described by its settings."""

    settings: NodeSettings
    """Name, bridge, pod range, ports."""
    state_dir: Path
    """The cluster's state directory."""
    binaries: Binaries
    """kubelet and kube-proxy (and kubectl for checks)."""
    service_cidr: str
    """The cluster's Service range (routed to the bridge)."""
    kubeconfig_dir: Path
    """Where the control plane wrote the kubelet's and kube-proxy's kubeconfigs."""
    sandbox_image: str
    """The pause image (must be loaded before pods start)."""

    # ----- paths ---------------------------------------------------------------------------
    @property
    def node_dir(self) -> Path:
        """Everything of the node but its sockets."""
        return self.state_dir / "node"

    @property
    def run_dir(self) -> Path:
        """Pid files and logs (shared with the control plane's components)."""
        return self.state_dir / "run"

    @property
    def socket_dir(self) -> Path:
        """Short directory for containerd's sockets, one per state directory."""
        return socket_dir_for(self.state_dir)

    @property
    def containerd_socket(self) -> Path:
        """containerd's CRI/gRPC socket (what `ctr -a` and the kubelet use)."""
        return self.socket_dir / "containerd.sock"

    @property
    def host_changes(self) -> hostnet.HostChanges:
        """The journal of host changes."""
        return hostnet.HostChanges(self.node_dir / "host-changes.json")

    def process(self, name: str) -> ManagedProcess:
        """The managed process of one node component."""
        match = {
            "containerd": str(self.node_dir / "containerd" / "config.toml"),
            "kubelet": str(self.binaries.path("kubelet")),
            "kube-proxy": str(self.binaries.path("kube-proxy")),
        }[name]
        return ManagedProcess(name, self.run_dir, match)

    def kubeconfig(self, name: str) -> Path:
        """The kubeconfig of the kubelet or kube-proxy."""
        return self.kubeconfig_dir / f"{name}.kubeconfig"

    # ----- configuration files -------------------------------------------------------------
    def _containerd_config(self) -> str:
        d = self.node_dir / "containerd"
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        return "\n".join(
            [
                "version = 2",
                f'root = "{d / "root"}"',
                f'state = "{d / "state"}"',
                'disabled_plugins = ["io.containerd.internal.v1.opt"]',
                "[grpc]",
                f'  address = "{self.containerd_socket}"',
                "[ttrpc]",
                f'  address = "{self.containerd_socket}.ttrpc"',
                f"[{cri}]",
                f'  sandbox_image = "{self.sandbox_image}"',
                # root here lacks CAP_SYS_RESOURCE: runc cannot lower the pause's OOM score
                "  restrict_oom_score_adj = true",
                '  stream_server_address = "127.0.0.1"',
                # pods' network namespaces under our state dir, not /run/netns
                "  netns_mounts_under_state_dir = true",
                f"[{cri}.containerd]",
                '  snapshotter = "overlayfs"',
                '  default_runtime_name = "runc"',
                f"[{cri}.containerd.runtimes.runc]",
                '  runtime_type = "io.containerd.runc.v2"',
                f"[{cri}.containerd.runtimes.runc.options]",
                "  SystemdCgroup = false",
                f"[{cri}.cni]",
                f'  bin_dir = "{CNI_BIN_DIR}"',
                f'  conf_dir = "{self.node_dir / "cni" / "net.d"}"',
                "  max_conf_num = 1",
                "",
            ]
        )

    def _cni_conflist(self) -> dict[str, object]:
        s = self.settings
        return {
            "cniVersion": "1.0.0",
            "name": "wsgauge",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": s.bridge,
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": s.pod_cidr, "gateway": s.node_ip}]],
                        # no default route: pods reach pods, Services and the node, nothing else
                        "routes": [{"dst": self.service_cidr}],
                        "dataDir": str(self.node_dir / "cni" / "ipam"),
                    },
                },
                {"type": "firewall"},
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }

    def _kubelet_config(self, ca_file: Path) -> dict[str, object]:
        s = self.settings
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": s.node_ip,
            "port": s.kubelet_port,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": s.kubelet_healthz_port,
            "readOnlyPort": 0,
            "failCgroupV1": False,  # this host has cgroup v1 (deprecated upstream)
            "failSwapOn": False,
            "cgroupDriver": "cgroupfs",
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(ca_file)},
            },
            "authorization": {"mode": "Webhook"},
            "clusterDomain": "cluster.local",
            "resolvConf": str(self.node_dir / "resolv.conf"),
            "maxPods": s.max_pods,
            "podLogsDir": str(self.node_dir / "pod-logs"),
            "serializeImagePulls": False,
            # a dev host: evict only when really short; never collect the local-only images
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "nodefs.inodesFree": "1%",
                "imagefs.available": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "nodeStatusUpdateFrequency": "10s",
        }

    def _kube_proxy_config(self) -> dict[str, object]:
        s = self.settings
        return {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self.kubeconfig("kube-proxy"))},
            "mode": "iptables",
            "clusterCIDR": s.pod_cidr,
            "hostnameOverride": s.name,
            "bindAddress": s.node_ip,
            "metricsBindAddress": f"127.0.0.1:{s.proxy_metrics_port}",
            "healthzBindAddress": f"127.0.0.1:{s.proxy_healthz_port}",
            "nodePortAddresses": [f"{s.node_ip}/32"],
            # leave the host's conntrack settings alone
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
            "iptables": {"localhostNodePorts": False, "syncPeriod": "30s", "minSyncPeriod": "0s"},
        }

    def write_configs(self, ca_file: Path) -> None:
        """Write every config file of the node; a file whose content is the same is left alone
        (kube-proxy exits when its config file is written to, even with the same content)."""
        for sub in ("containerd", "cni/net.d", "kubelet", "pod-logs"):
            (self.node_dir / sub).mkdir(parents=True, exist_ok=True)
        files = {
            "containerd/config.toml": self._containerd_config(),
            "cni/net.d/10-wsgauge.conflist": json.dumps(self._cni_conflist(), indent=1) + "\n",
            "kubelet.yaml": yaml.safe_dump(self._kubelet_config(ca_file), sort_keys=False),
            "kube-proxy.yaml": yaml.safe_dump(self._kube_proxy_config(), sort_keys=False),
            # no DNS server: names resolve nowhere (nothing leaves the machine)
            "resolv.conf": "nameserver 127.0.0.1\noptions ndots:1\n",
        }
        for name, text in files.items():
            path = self.node_dir / name
            if not path.exists() or path.read_text() != text:
                path.write_text(text)

    # ----- processes ------------------------------------------------------------------------
    def running(self) -> dict[str, int | None]:
        """Component name -> pid, or None."""
        return {name: self.process(name).pid() for name in COMPONENTS}

    def start_containerd(self, log: Log) -> None:
        """containerd with our config; waits for its socket to answer."""
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        proc = self.process("containerd")
        proc.start(["containerd", "--config", str(self.node_dir / "containerd" / "config.toml")])
        self._wait("containerd", lambda: self.ctr("version").returncode == 0, proc, 60)
        log(f"containerd answers at {self.containerd_socket}")

    def ctr(self, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        """Run ``ctr`` against our containerd in the kubelet's namespace."""
        return subprocess.run(
            ["ctr", "-a", str(self.containerd_socket), "-n", "k8s.io", *args],
            input=stdin,
            capture_output=True,
            check=False,
            timeout=300,
        )

    def start_kubelet(self) -> None:
        """The kubelet (its sysctl changes recorded first)."""
        self.host_changes.record_sysctls(hostnet.KUBELET_SYSCTLS)
        s = self.settings
        self.process("kubelet").start(
            [
                str(self.binaries.path("kubelet")),
                f"--config={self.node_dir / 'kubelet.yaml'}",
                f"--kubeconfig={self.kubeconfig('kubelet')}",
                f"--root-dir={self.node_dir / 'kubelet'}",
                f"--hostname-override={s.name}",
                f"--node-ip={s.node_ip}",
                "--v=1",
            ]
        )

    def start_kube_proxy(self) -> None:
        """kube-proxy in iptables mode."""
        self.process("kube-proxy").start(
            [
                str(self.binaries.path("kube-proxy")),
                f"--config={self.node_dir / 'kube-proxy.yaml'}",
                "--v=1",
            ]
        )

    @staticmethod
    def _wait(what: str, check: Callable[[], bool], proc: ManagedProcess, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            if proc.pid() is None:
                tail = proc.log_file.read_text(errors="replace")[-2000:]
                raise StartupError(f"{what} exited during startup; see {proc.log_file}:\n{tail}")
            time.sleep(0.3)
        raise StartupError(f"timed out waiting for {what}; see {proc.log_file}")

    def register(self) -> None:
        """Note this node run in the machine-wide registry (read by a later cleanup)."""
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "state_dir": str(self.state_dir.resolve()),
            "bridge": self.settings.bridge,
            "pod_cidr": self.settings.pod_cidr,
            "service_cidr": self.service_cidr,
        }
        (self.socket_dir / "node.json").write_text(json.dumps(record) + "\n")

    def others(self) -> list[RealNode]:
        """Node runs of other state directories registered on this machine."""
        found = []
        for entry in sorted(REGISTRY.glob("*/node.json")) if REGISTRY.is_dir() else []:
            try:
                record = json.loads(entry.read_text())
                state_dir = Path(record["state_dir"])
                settings = NodeSettings(
                    kind="kubelet", bridge=record["bridge"], pod_cidr=record["pod_cidr"]
                )
                service_cidr = str(record["service_cidr"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if state_dir == self.state_dir.resolve():
                continue
            found.append(
                RealNode(
                    settings=settings,
                    state_dir=state_dir,
                    binaries=self.binaries,
                    service_cidr=service_cidr,
                    kubeconfig_dir=state_dir / "kubeconfigs",
                    sandbox_image=self.sandbox_image,
                )
            )
        return found

    def require_alone(self, log: Log) -> None:
        """One real node per machine: refuse to start beside another cluster's running one,
        after waiting up to ``settings.wait_seconds`` for it to stop."""
        deadline = time.monotonic() + self.settings.wait_seconds
        said = float("-inf")
        while True:
            holder = self._other_running()
            if holder is None:
                return
            other, running = holder
            now = time.monotonic()
            if now < deadline:
                if now - said >= 30:
                    log(
                        f"waiting for the real node of {other.state_dir} to stop "
                        f"({deadline - now:.0f}s left of WSGAUGE_NODE_WAIT)"
                    )
                    said = now
                time.sleep(2)
                continue
            raise StartupError(
                f"a real node of another cluster runs on this machine ({other.state_dir}: "
                f"{', '.join(running)}); the kubelet, kube-proxy's rules and the kubepods "
                f"cgroups are host-wide. Stop it first: WSGAUGE_CLUSTER_DIR={other.state_dir} "
                "wsgauge-devcluster down (or set WSGAUGE_NODE_WAIT to wait for it)"
            )

    def _other_running(self) -> tuple[RealNode, list[str]] | None:
        """Another registered node run with processes still running, and their names."""
        for other in self.others():
            running = [name for name, pid in other.running().items() if pid is not None]
            if running:
                return other, running
        return None

    def stop(self, log: Log, timeout: float) -> None:
        """Stop kube-proxy, the kubelet and containerd, then undo every host change: this run's
        and those of node runs of other state directories that were killed (newest journal
        first, so the oldest recorded originals are the ones that stay)."""
        for name in reversed(COMPONENTS):
            if self.process(name).stop(timeout):
                log(f"stopped {name}")
        left = [node for node in self.others() if not any(node.running().values())]
        for node in left:
            log(f"undoing what a node run of {node.state_dir} left on this host")

        def journal_age(node: RealNode) -> float:
            try:
                return -node.host_changes.path.stat().st_mtime
            except OSError:
                return float("-inf")

        for node in sorted([self, *left], key=journal_age):
            hostnet.undo(
                node.settings,
                service_cidr=node.service_cidr,
                node_dir=node.node_dir,
                containerd_socket=node.containerd_socket,
                changes=node.host_changes,
                log=log,
            )
            shutil.rmtree(node.socket_dir, ignore_errors=True)
