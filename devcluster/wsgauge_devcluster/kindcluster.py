"""A kind cluster of one control plane and two workers, its nodes run by podman.

``up`` creates it from wsgauge's node image (:mod:`wsgauge_devcluster.kindnode`, built here with
the Docker engine) or from ``KIND_NODE_IMAGE``, with kind of ``hack/build-kind.sh``; ``load``
puts local Docker images into every node (``kind load docker-image``); ``down`` deletes the
cluster and what ``up`` set up.

kind's nodes are privileged containers. On the machines this project runs on, root's capability
bounding set lacks CAP_SYS_RESOURCE and Debian's Docker 20.10 asks runc for every capability
("unable to apply caps"), so the nodes run with kind's podman provider
(``KIND_EXPERIMENTAL_PROVIDER=podman``): Debian's podman gives a privileged container the
capabilities of the bounding set. Its configuration is the project's own
(``CONTAINERS_CONF=~/.cache/wsgauge/kind/containers.conf``: runc, cgroupfs, netavark, and
rlimits below the current hard limits); the node image is copied from Docker into podman
(``docker save | podman load``, skipped when podman has the same image id).

The nodes live on podman network ``wsgauge-kind``: ``--internal`` (no default route in the
nodes, no masquerading: nothing leaves the machine), subnet ``KIND_SUBNET`` (default
172.31.250.0/24; not 10.244/16, 10.96/16 or 127/8). The kubeconfig written here names the
control plane by its address on that network (kubeadm's certificate carries it). The host routes
the cluster's Service range (10.97.0.0/16) to the control plane and each node's pod subnet
(10.245.N.0/24, see the node image's pod network) to that node, so tests reach Services and pods
as they do on the devcluster's real node; ``down`` removes those routes.

CLI::

    python -m wsgauge_devcluster.kindcluster up | load REF... | alias REF TAG | down | kubeconfig
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from wsgauge_devcluster.docker_engine import (
    DockerEngineError,
    Log,
    docker,
    docker_env,
    engine_in_use,
    ensure_docker_engine,
)
from wsgauge_devcluster.exceptions import DevClusterError
from wsgauge_devcluster.images import containerd_ref, image_id
from wsgauge_devcluster.kindnode import K8S_SCRIPT, KIND_SCRIPT, build_node_image, script_bin_dir

__all__ = ["KindCluster", "KindError", "KindSettings"]

POD_SUBNET = "10.245.0.0/16"
"""The pod network of the node image: 10.245.N.0/24 on the node at <kind subnet>.N."""
SERVICE_SUBNET = "10.97.0.0/16"
"""Apart from the devcluster's 10.96.0.0/16, which the host routes to its real node."""


class KindError(DevClusterError):
    """kind, Docker or the host's routes failed."""


@dataclass(frozen=True)
class KindSettings:
    """Where and how the kind cluster runs."""

    name: str = field(default_factory=lambda: os.environ.get("KIND_CLUSTER", "wsgauge-e2e"))
    """kind's cluster name ($KIND_CLUSTER)."""
    node_image: str = field(default_factory=lambda: os.environ.get("KIND_NODE_IMAGE", ""))
    """A node image to use instead of building ours ($KIND_NODE_IMAGE, e.g. kindest/node)."""
    network: str = "wsgauge-kind"
    """The podman network of the nodes (kind's KIND_EXPERIMENTAL_PODMAN_NETWORK)."""
    subnet: str = field(default_factory=lambda: os.environ.get("KIND_SUBNET", "172.31.250.0/24"))
    """Its subnet ($KIND_SUBNET): a /24, so node N's pod subnet is 10.245.N.0/24."""
    workers: int = 2
    """Worker nodes beside the control plane."""
    kubeconfig: Path = field(
        default_factory=lambda: Path(
            os.environ.get("KIND_KUBECONFIG")
            or Path(os.environ.get("TMPDIR", "/tmp")) / "wsgauge-kind.kubeconfig"
        )
    )
    """The admin kubeconfig written for the host ($KIND_KUBECONFIG)."""
    wait_seconds: int = 600
    """kind create's --wait."""


def cluster_config(settings: KindSettings) -> str:
    """kind's Cluster document: the nodes and the cluster's address ranges."""
    nodes = [{"role": "control-plane"}] + [{"role": "worker"} for _ in range(settings.workers)]
    document = {
        "kind": "Cluster",
        "apiVersion": "kind.x-k8s.io/v1alpha4",
        "networking": {"podSubnet": POD_SUBNET, "serviceSubnet": SERVICE_SUBNET},
        "nodes": nodes,
    }
    return yaml.safe_dump(document, sort_keys=False)


def internal_kubeconfig(text: str, address: str) -> str:
    """kind's ``--internal`` kubeconfig with the control plane named by its address."""
    document = yaml.safe_load(text)
    for cluster in document.get("clusters", []):
        cluster["cluster"]["server"] = f"https://{address}:6443"
    return yaml.safe_dump(document, sort_keys=False)


def pod_route(address: str) -> str:
    """The pod subnet of the node at ``address`` (its last octet names it)."""
    last = int(ipaddress.ip_address(address).packed[-1])
    return f"10.245.{last}.0/24"


PODMAN_CONF = """\
# podman as wsgauge's kind cluster uses it (written by wsgauge_devcluster.kindcluster)
[containers]
# below the hard limits of root here: podman asks for these rlimits in every container
default_ulimits = ["nofile=16384:16384", "nproc=4096:4096"]
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"
[network]
network_backend = "netavark"
"""


def podman_conf() -> Path:
    """The project's containers.conf for podman (written when it differs)."""
    path = Path.home() / ".cache" / "wsgauge" / "kind" / "containers.conf"
    if not path.exists() or path.read_text() != PODMAN_CONF:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(PODMAN_CONF)
    return path


class KindCluster:
    """One kind cluster driven through kind's CLI, its nodes run by podman."""

    def __init__(self, settings: KindSettings, log: Log) -> None:
        self.settings = settings
        self.log = log
        self.kind = script_bin_dir(KIND_SCRIPT) / "kind"
        self.bin_dir = script_bin_dir(K8S_SCRIPT)

    def kind_env(self) -> dict[str, str]:
        """What kind needs in its environment here: podman, its configuration, the network."""
        return {
            "KIND_EXPERIMENTAL_PROVIDER": "podman",
            "KIND_EXPERIMENTAL_PODMAN_NETWORK": self.settings.network,
            "CONTAINERS_CONF": str(podman_conf()),
        }

    def _env(self) -> dict[str, str]:
        env = {**docker_env(), **self.kind_env()}
        env["PATH"] = f"{self.bin_dir}:{env['PATH']}"
        return env

    def _kind(self, *args: str, timeout: float = 900, stdin: str | None = None) -> str:
        result = subprocess.run(
            [str(self.kind), *args],
            env=self._env(),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise KindError(f"kind {' '.join(args)}: {result.stderr.strip()[-2000:]}")
        return result.stdout

    def _podman(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        if shutil.which("podman") is None:
            raise KindError("podman is missing: run hack/install-node-deps.sh --kind")
        result = subprocess.run(
            ["podman", *args],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if check and result.returncode != 0:
            raise KindError(f"podman {' '.join(args)}: {result.stderr.strip()}")
        return result

    def node_image_in_podman(self, ref: str) -> str:
        """The node image in podman's storage: copied from Docker unless podman has that id."""
        wanted = image_id(ref)
        if wanted is None:  # not a local Docker image: podman pulls it (kindest/node)
            return ref
        local = f"localhost/{ref}" if ref.count("/") == 1 else ref
        found = self._podman("image", "inspect", "--format", "{{.Id}}", local, check=False)
        if found.returncode == 0 and found.stdout.strip() == wanted.removeprefix("sha256:"):
            return local
        started = time.monotonic()
        self.log(f"copying {ref} from Docker to podman (docker save | podman load)")
        save = subprocess.Popen(docker("save", ref), stdout=subprocess.PIPE, env=docker_env())
        try:
            result = subprocess.run(
                ["podman", "load"],
                stdin=save.stdout,
                env=self._env(),
                capture_output=True,
                text=True,
                timeout=1800,
                check=False,
            )
        finally:
            if save.stdout is not None:
                save.stdout.close()
            save.wait()
        if save.returncode != 0 or result.returncode != 0:
            raise KindError(f"docker save {ref} | podman load: {result.stderr.strip()[-800:]}")
        self.log(f"{local} in podman after {time.monotonic() - started:.0f} s")
        return local

    def exists(self) -> bool:
        """kind lists the cluster."""
        return self.settings.name in self._kind("get", "clusters").split()

    def ensure_network(self) -> None:
        """The internal podman network of the nodes (made once, kept)."""
        if self._podman("network", "inspect", self.settings.network, check=False).returncode == 0:
            return
        net = ipaddress.ip_network(self.settings.subnet)
        if net.prefixlen != 24:
            raise KindError(f"KIND_SUBNET must be a /24, not {net}")
        gateway = str(next(net.hosts()))
        self.log(f"creating the internal podman network {self.settings.network} ({net})")
        self._podman(
            "network", "create", "--internal", "--subnet", str(net), "--gateway", gateway,
            self.settings.network,
        )  # fmt: skip

    def node_addresses(self) -> dict[str, str]:
        """Each node container's address on the network."""
        names = self._kind("get", "nodes", "--name", self.settings.name).split()
        addresses = {}
        for name in names:
            found = self._podman("inspect", "--type", "container", name).stdout
            networks = json.loads(found)[0]["NetworkSettings"]["Networks"]
            addresses[name] = networks[self.settings.network]["IPAddress"]
        return addresses

    def up(self) -> Path:
        """Create the cluster (unless it exists), write the kubeconfig, set the host routes."""
        self.ensure_network()
        if not self.exists():
            with engine_in_use():  # the node image is read from Docker
                try:
                    ensure_docker_engine(self.log)
                except DockerEngineError as error:
                    raise KindError(str(error)) from error
                image = self.node_image_in_podman(
                    self.settings.node_image or build_node_image(self.log)
                )
            config = self.settings.kubeconfig.with_suffix(".cluster.yaml")
            config.parent.mkdir(parents=True, exist_ok=True)
            config.write_text(cluster_config(self.settings))
            started = time.monotonic()
            self.log(
                f"kind create cluster --name {self.settings.name} --image {image} "
                f"(1 control plane, {self.settings.workers} workers)"
            )
            self._kind(
                "create", "cluster", "--name", self.settings.name, "--image", image,
                "--config", str(config), "--wait", f"{self.settings.wait_seconds}s",
                "--kubeconfig", str(self.settings.kubeconfig.with_suffix(".kind")),
                timeout=self.settings.wait_seconds + 600,
            )  # fmt: skip
            self.log(f"cluster {self.settings.name} up in {time.monotonic() - started:.0f} s")
        addresses = self.node_addresses()
        control = addresses[f"{self.settings.name}-control-plane"]
        text = self._kind("get", "kubeconfig", "--internal", "--name", self.settings.name)
        self.settings.kubeconfig.write_text(internal_kubeconfig(text, control))
        self.settings.kubeconfig.chmod(0o600)
        self._routes("replace", addresses, control)
        self.log(f"kubeconfig: {self.settings.kubeconfig}")
        return self.settings.kubeconfig

    def _routes(self, verb: str, addresses: dict[str, str], control: str) -> None:
        wanted = [(SERVICE_SUBNET, control)]
        wanted += [(pod_route(address), address) for address in addresses.values()]
        for destination, via in wanted:
            argv = ["ip", "route", verb, destination]
            argv += ["via", via] if verb == "replace" else []
            result = subprocess.run(argv, capture_output=True, text=True, check=False)
            if result.returncode != 0 and verb == "replace":
                raise KindError(f"{' '.join(argv)}: {result.stderr.strip()}")

    def load(self, refs: Sequence[str]) -> None:
        """``kind load docker-image`` of local images into every node."""
        started = time.monotonic()
        with engine_in_use():  # the Docker engine is not stopped by another checkout meanwhile
            try:
                ensure_docker_engine(self.log)
            except DockerEngineError as error:
                raise KindError(str(error)) from error
            self._kind("load", "docker-image", "--name", self.settings.name, *refs)
        self.log(f"loaded {' '.join(refs)} in {time.monotonic() - started:.0f} s")

    def alias(self, ref: str, tag: str) -> None:
        """Name a loaded image also ``<name>:<tag>`` in every node's containerd (the examples
        name ``wsgauge/sidecar:<version>``; a checkout builds under its own ``IMAGE_TAG``)."""
        name = containerd_ref(ref)
        alias = f"{name.rsplit(':', 1)[0]}:{tag}"
        if alias == name:
            return
        for node in self.node_addresses():
            self._podman(
                "exec",
                node,
                "ctr",
                "--namespace",
                "k8s.io",
                "images",
                "tag",
                "--force",
                name,
                alias,
            )
        self.log(f"{alias} names {name} on every node")

    def down(self) -> None:
        """Delete the cluster and the host routes (the podman network is kept)."""
        if self.exists():
            try:
                addresses = self.node_addresses()
                control = addresses.get(f"{self.settings.name}-control-plane", "")
                self._routes("del", addresses, control)
            finally:
                self._kind("delete", "cluster", "--name", self.settings.name)
            self.log(f"deleted kind cluster {self.settings.name}")
        for leftover in (self.settings.kubeconfig, self.settings.kubeconfig.with_suffix(".kind")):
            leftover.unlink(missing_ok=True)


def _stderr_log(message: str) -> None:
    print(f"[kind {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``up`` / ``load REF...`` / ``down`` / ``kubeconfig``."""
    parser = argparse.ArgumentParser(
        prog="python -m wsgauge_devcluster.kindcluster",
        description="A kind cluster (1 control plane, 2 workers) from wsgauge's node image.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="create the cluster (node image built unless KIND_NODE_IMAGE)")
    load = commands.add_parser("load", help="kind load docker-image into every node")
    load.add_argument("refs", nargs="+")
    alias = commands.add_parser("alias", help="name a loaded image also <name>:TAG in the nodes")
    alias.add_argument("ref")
    alias.add_argument("tag")
    commands.add_parser("down", help="delete the cluster and its host routes")
    commands.add_parser("kubeconfig", help="print the kubeconfig path")
    args = parser.parse_args(argv)
    cluster = KindCluster(KindSettings(), _stderr_log)
    try:
        if args.command == "up":
            print(cluster.up())
        elif args.command == "load":
            cluster.load(args.refs)
        elif args.command == "alias":
            cluster.alias(args.ref, args.tag)
        elif args.command == "down":
            cluster.down()
        else:
            print(cluster.settings.kubeconfig)
    except (KindError, DevClusterError, subprocess.TimeoutExpired) as error:
        _stderr_log(f"error: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
