"""Starts, checks and stops the local cluster: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, the real node (containerd, kubelet, kube-proxy: realnode.py) and the pod runner's
simulated nodes, each a background process with a pid file and a log file.

State directory layout (default <repo>/.cluster, env WSGAUGE_CLUSTER_DIR):
  pki/                 certificates and keys (see pki.py)
  kubeconfig           admin kubeconfig (system:masters), self-contained (embedded certificates)
  kubeconfigs/*.kubeconfig  per-component kubeconfigs
  etcd-data/           etcd's data; kept across `down`/`up`, wiped by `down --purge`
  run/<component>.pid|.log   one per component
  pods/<ns>_<pod>/<container>.pid|.log   processes the pod runner starts
  node/                the real node's configuration and state (realnode.py)
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from wsgauge_devcluster import hostnet
from wsgauge_devcluster.binaries import Binaries
from wsgauge_devcluster.exceptions import StartupError
from wsgauge_devcluster.pki import ensure_pki
from wsgauge_devcluster.processes import ManagedProcess, file_lock, require_free_ports
from wsgauge_devcluster.realnode import REGISTRY, RealNode
from wsgauge_devcluster.settings import ControlPlaneSettings, NodeSettings, RunnerSettings

CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
"""Start order of the control plane; `down` stops it in reverse, after the nodes."""


@dataclass(frozen=True)
class ControlPlane:
    """The local cluster described by its settings and binaries."""

    settings: ControlPlaneSettings
    """Ports, directories, timeouts."""
    binaries: Binaries
    """Where etcd and the Kubernetes binaries are."""
    runner: RunnerSettings
    """Settings handed to the pod runner (node count)."""
    node: NodeSettings
    """The real node (when node.enabled)."""
    sandbox_image: str = "docker.io/wsgauge/pause:latest"
    """The real node's pause image."""

    @property
    def components(self) -> tuple[str, ...]:
        """Every component in start order; `down` stops them in reverse."""
        real = ("containerd", "kubelet", "kube-proxy") if self.node.enabled else ()
        return (*CONTROL_PLANE, *real, "pod-runner")

    @property
    def real_node(self) -> RealNode:
        """The real node's processes and files."""
        return RealNode(
            settings=self.node,
            state_dir=self.settings.state_dir,
            binaries=self.binaries,
            service_cidr=self.settings.service_cluster_ip_range,
            kubeconfig_dir=self.settings.state_dir / "kubeconfigs",
            sandbox_image=self.sandbox_image,
        )

    # ----- paths -------------------------------------------------------------------------
    @property
    def pki_dir(self) -> Path:
        """Certificates and keys."""
        return self.settings.state_dir / "pki"

    @property
    def run_dir(self) -> Path:
        """Pid files and logs of the components."""
        return self.settings.state_dir / "run"

    def process(self, name: str) -> ManagedProcess:
        """The managed process of one component."""
        if name in ("containerd", "kubelet", "kube-proxy"):
            return self.real_node.process(name)
        match = (
            "wsgauge_devcluster.podrunner"
            if name == "pod-runner"
            else str(self.binaries.path(name))
        )
        return ManagedProcess(name, self.run_dir, match)

    def component_kubeconfig(self, name: str) -> Path:
        """Kubeconfig of a component (controller-manager, scheduler)."""
        return self.settings.state_dir / "kubeconfigs" / f"{name}.kubeconfig"

    # ----- status ------------------------------------------------------------------------
    def running(self) -> dict[str, int | None]:
        """Component name -> pid, or None when it does not run."""
        return {name: self.process(name).pid() for name in self.components}

    def exports(self) -> list[str]:
        """The shell lines `up` prints last."""
        return [
            f"export KUBECONFIG={self.settings.kubeconfig_path}",
            f"export PATH={self.binaries.bin_dir}:$PATH",
        ]

    # ----- up ----------------------------------------------------------------------------
    def up(self, log: Callable[[str], None], load_images: Callable[[], None] | None = None) -> None:
        """Start whatever is not running and wait until the cluster is usable. ``load_images``
        runs once the node's containerd answers, before the kubelet starts."""
        self.binaries.require()
        status = self.running()
        if all(pid is not None for pid in status.values()):
            log("cluster already running")
            if load_images is not None:
                load_images()
            self.wait_ready(log)
            return
        with contextlib.ExitStack() as stack:
            if self.node.enabled:
                # held until this node's processes run: a waiting `up` elsewhere sees them
                stack.enter_context(file_lock(REGISTRY / "node.lock"))
            self._start(status, log, load_images)
        self.wait_ready(log)

    def _start(
        self,
        status: dict[str, int | None],
        log: Callable[[str], None],
        load_images: Callable[[], None] | None,
    ) -> None:
        node = self.real_node
        if self.node.enabled:
            hostnet.require_root()
            node.require_alone(log)
            if all(status[name] is None for name in ("containerd", "kubelet", "kube-proxy")):
                # whatever a killed or crashed run left on the host goes first
                node.stop(log, self.settings.stop_timeout_seconds)
            node.register()
            hostnet.prepare(self.node, self.settings.service_cluster_ip_range, node.host_changes)
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        (self.settings.state_dir / ".gitignore").write_text("*\n")
        ports = {
            "etcd": self.settings.etcd_client_port,
            "etcd (peer)": self.settings.etcd_peer_port,
            "kube-apiserver": self.settings.apiserver_port,
        }
        require_free_ports(
            {label: port for label, port in ports.items() if status[label.split()[0]] is None}
        )
        node_ips = (self.node.node_ip,) if self.node.enabled else ()
        ensure_pki(self.pki_dir, self._service_ip(), node_ips, self.node.name)
        self._write_kubeconfigs()
        if self.node.enabled:
            node.write_configs(self.pki_dir / "ca.crt")

        def containerd_then_images() -> None:
            node.start_containerd(log)
            if load_images is not None:
                load_images()

        starters: dict[str, Callable[[], None]] = {
            "etcd": self._start_etcd,
            "kube-apiserver": self._start_apiserver,
            "kube-controller-manager": self._start_controller_manager,
            "kube-scheduler": self._start_scheduler,
            "containerd": containerd_then_images,
            "kubelet": node.start_kubelet,
            "kube-proxy": node.start_kube_proxy,
            "pod-runner": self._start_pod_runner,
        }
        for name in self.components:
            if status[name] is None:
                log(f"starting {name} (log: {self.process(name).log_file})")
                starters[name]()
            else:
                log(f"{name} already running (pid {status[name]})")
                if name == "containerd" and load_images is not None:
                    load_images()

    def _service_ip(self) -> str:
        network = self.settings.service_cluster_ip_range.split("/")[0].split(".")
        return ".".join([*network[:3], str(int(network[3]) + 1)])

    def _start_etcd(self) -> None:
        s = self.settings
        client = f"http://127.0.0.1:{s.etcd_client_port}"
        peer = f"http://127.0.0.1:{s.etcd_peer_port}"
        self.process("etcd").start(
            [
                str(self.binaries.path("etcd")),
                "--name=wsgauge",
                f"--data-dir={s.state_dir / 'etcd-data'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=wsgauge={peer}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ]
        )
        self._wait_for(
            "etcd",
            lambda: self._http_ok(f"{client}/health", ssl_context=None),
            self.process("etcd"),
        )

    def _start_apiserver(self) -> None:
        s, p = self.settings, self.pki_dir
        self.process("kube-apiserver").start(
            [
                str(self.binaries.path("kube-apiserver")),
                f"--etcd-servers=http://127.0.0.1:{s.etcd_client_port}",
                *self._apiserver_address_flags(),
                f"--secure-port={s.apiserver_port}",
                f"--cert-dir={p}",
                f"--tls-cert-file={p / 'apiserver.crt'}",
                f"--tls-private-key-file={p / 'apiserver.key'}",
                f"--client-ca-file={p / 'ca.crt'}",
                "--authorization-mode=Node,RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={p / 'sa.pub'}",
                f"--service-account-signing-key-file={p / 'sa.key'}",
                f"--service-cluster-ip-range={s.service_cluster_ip_range}",
                "--allow-privileged=true",
                "--enable-admission-plugins=NodeRestriction",
                f"--kubelet-client-certificate={p / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={p / 'apiserver-kubelet-client.key'}",
                "--kubelet-preferred-address-types=InternalIP",
                f"--requestheader-client-ca-file={p / 'front-proxy-ca.crt'}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={p / 'front-proxy-client.crt'}",
                f"--proxy-client-key-file={p / 'front-proxy-client.key'}",
                "--enable-aggregator-routing=false",
                "--profiling=false",
                "--v=1",
            ]
        )
        self._wait_for(
            "kube-apiserver",
            lambda: self._http_ok(f"{s.api_url}/readyz", ssl_context=self._admin_ssl()),
            self.process("kube-apiserver"),
        )

    def _apiserver_address_flags(self) -> list[str]:
        """Loopback only without a real node; with one, also the node IP, which pods reach
        through the `kubernetes` Service (its endpoint kept by the lease reconciler)."""
        if not self.node.enabled:
            return [
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",
            ]
        return [
            "--bind-address=0.0.0.0",
            f"--advertise-address={self.node.node_ip}",
            "--endpoint-reconciler-type=lease",
        ]

    def _start_controller_manager(self) -> None:
        s, p = self.settings, self.pki_dir
        kubeconfig = self.component_kubeconfig("controller-manager")
        self.process("kube-controller-manager").start(
            [
                str(self.binaries.path("kube-controller-manager")),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--secure-port=0",  # no health endpoint: no port to collide with
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={p / 'sa.key'}",
                f"--root-ca-file={p / 'ca.crt'}",
                f"--cluster-signing-cert-file={p / 'ca.crt'}",
                f"--cluster-signing-key-file={p / 'ca.key'}",
                f"--service-cluster-ip-range={s.service_cluster_ip_range}",
                "--controllers=*",
                f"--horizontal-pod-autoscaler-sync-period={s.hpa_sync_period_seconds}s",
                "--profiling=false",
                "--v=1",
            ]
        )

    def _start_scheduler(self) -> None:
        kubeconfig = self.component_kubeconfig("scheduler")
        self.process("kube-scheduler").start(
            [
                str(self.binaries.path("kube-scheduler")),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--secure-port=0",  # no health endpoint: no port to collide with
                "--leader-elect=false",
                "--profiling=false",
                "--v=1",
            ]
        )

    def _start_pod_runner(self) -> None:
        self.process("pod-runner").start(
            [
                sys.executable,
                "-m",
                "wsgauge_devcluster.podrunner",
                "--kubeconfig",
                str(self.settings.kubeconfig_path),
                "--state-dir",
                str(self.settings.state_dir),
                "--nodes",
                str(self.runner.node_count),
                "--kubelet-version",
                self.binaries.kubernetes_version,
                "--ip-base",
                str(self.runner.ip_second_octet_base),
                *(["--taint-simulated"] if self.node.enabled else []),
            ]
        )

    # ----- readiness -----------------------------------------------------------------------
    def _admin_ssl(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki_dir / "ca.crt"))
        context.load_cert_chain(str(self.pki_dir / "admin.crt"), str(self.pki_dir / "admin.key"))
        return context

    @staticmethod
    def _http_ok(url: str, ssl_context: ssl.SSLContext | None) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2, context=ssl_context) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _api_get(self, path: str) -> dict[str, Any] | None:
        url = f"{self.settings.api_url}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5, context=self._admin_ssl()) as response:
                body: dict[str, Any] = json.loads(response.read())
                return body
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def _wait_for(self, what: str, check: Callable[[], bool], proc: ManagedProcess | None) -> None:
        deadline = time.monotonic() + self.settings.startup_timeout_seconds
        while time.monotonic() < deadline:
            if check():
                return
            if proc is not None and proc.pid() is None:
                raise StartupError(f"{what} exited during startup; see {proc.log_file}")
            time.sleep(0.3)
        where = f"; see {proc.log_file}" if proc is not None else ""
        raise StartupError(f"timed out waiting for {what}{where}")

    def _nodes_ready(self) -> bool:
        body = self._api_get("/api/v1/nodes")
        if body is None:
            return False
        ready = {
            item["metadata"]["name"]
            for item in body.get("items", [])
            if any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in item.get("status", {}).get("conditions", [])
            )
        }
        wanted = set(self.runner.node_names())
        if self.node.enabled:
            wanted.add(self.node.name)
        return wanted <= ready

    def wait_ready(self, log: Callable[[str], None]) -> None:
        """Wait for a healthy API, Ready nodes and the default ServiceAccount."""
        s = self.settings
        self._wait_for(
            "API server readiness",
            lambda: self._http_ok(f"{s.api_url}/readyz", ssl_context=self._admin_ssl()),
            self.process("kube-apiserver"),
        )
        self._wait_for("Ready nodes", self._nodes_ready, self.process("pod-runner"))
        if self.node.enabled:
            self._wait_for(
                "the kubernetes Service endpoint on the node IP",
                lambda: (
                    self.node.node_ip
                    in json.dumps(
                        self._api_get("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices")
                    )
                ),
                self.process("kube-apiserver"),
            )
        self._wait_for(
            "the default ServiceAccount",
            lambda: self._api_get("/api/v1/namespaces/default/serviceaccounts/default") is not None,
            self.process("kube-controller-manager"),
        )
        log("cluster ready")

    # ----- down ----------------------------------------------------------------------------
    def down(self, log: Callable[[str], None], purge: bool = False) -> None:
        """Stop every component by pid (pod runner and the real node first, etcd last) and undo
        the real node's host changes; purge wipes the state dir."""
        if self.process("pod-runner").stop(self.settings.stop_timeout_seconds * 3):
            log("stopped pod-runner")  # (it stops its pod processes first)
        if self.node.enabled:
            self.real_node.stop(log, self.settings.stop_timeout_seconds)
        for name in reversed(CONTROL_PLANE):
            if self.process(name).stop(self.settings.stop_timeout_seconds):
                log(f"stopped {name}")
        if purge and self.settings.state_dir.exists():
            shutil.rmtree(self.settings.state_dir)
            log(f"removed {self.settings.state_dir}")

    # ----- kubeconfigs -----------------------------------------------------------------------
    def _kubeconfig(self, user: str, cert_stem: str) -> dict[str, Any]:
        def b64(name: str) -> str:
            return base64.b64encode((self.pki_dir / name).read_bytes()).decode()

        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "wsgauge",
                    "cluster": {
                        "server": self.settings.api_url,
                        "certificate-authority-data": b64("ca.crt"),
                    },
                }
            ],
            "users": [
                {
                    "name": user,
                    "user": {
                        "client-certificate-data": b64(f"{cert_stem}.crt"),
                        "client-key-data": b64(f"{cert_stem}.key"),
                    },
                }
            ],
            "contexts": [{"name": "wsgauge", "context": {"cluster": "wsgauge", "user": user}}],
            "current-context": "wsgauge",
        }

    def _write_kubeconfigs(self) -> None:
        self.settings.kubeconfig_path.write_text(
            yaml.safe_dump(self._kubeconfig("wsgauge-admin", "admin"))
        )
        self.settings.kubeconfig_path.chmod(0o600)
        directory = self.settings.state_dir / "kubeconfigs"
        directory.mkdir(exist_ok=True)
        users = {
            "controller-manager": "system:kube-controller-manager",
            "scheduler": "system:kube-scheduler",
            "kubelet": f"system:node:{self.node.name}",
            "kube-proxy": "system:kube-proxy",
        }
        for name, user in users.items():
            path = self.component_kubeconfig(name)
            path.write_text(yaml.safe_dump(self._kubeconfig(user, name)))
            path.chmod(0o600)
