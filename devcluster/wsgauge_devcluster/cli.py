"""`wsgauge-devcluster up|down|status|env`: the command line of the local development cluster.

With a real node (the default), `up` also makes sure the wsgauge images and the pause image
exist (built once by images.py, cached by the Docker engine) and loads them into the node's
containerd; `down` also stops the Docker engine if `up` started it."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from wsgauge_devcluster import docker_engine, images, keda
from wsgauge_devcluster.binaries import locate
from wsgauge_devcluster.controlplane import ControlPlane
from wsgauge_devcluster.deploy import ChartInstall
from wsgauge_devcluster.exceptions import DevClusterError
from wsgauge_devcluster.processes import file_lock
from wsgauge_devcluster.settings import (
    NODE_KINDS,
    ControlPlaneSettings,
    NodeSettings,
    RunnerSettings,
)


def _progress(message: str) -> None:
    print(f"[wsgauge-devcluster] {message}", file=sys.stderr, flush=True)


def build_control_plane() -> ControlPlane:
    """The cluster as configured by the environment (WSGAUGE_CLUSTER_DIR, ports, node kind)."""
    node = NodeSettings()
    if node.kind not in NODE_KINDS:
        raise DevClusterError(
            f"WSGAUGE_NODE_KIND={node.kind!r} is not one of {', '.join(NODE_KINDS)}"
        )
    runner = RunnerSettings()
    if node.enabled:
        # one simulated node beside the real one unless asked otherwise, tainted
        runner = RunnerSettings(
            node_count=int(os.environ.get("WSGAUGE_NODES") or 1), simulated_taint=True
        )
    pause = images.containerd_ref(images.image_ref("pause"))
    return ControlPlane(ControlPlaneSettings(), locate(), runner, node, sandbox_image=pause)


def _image_loader(plane: ControlPlane) -> Callable[[], None] | None:
    """Builds what is missing of the images, then loads them into the real node."""
    if not plane.node.enabled:
        return None

    def load() -> None:
        refs = [images.image_ref(name) for name in images.IMAGE_NAMES]
        if any(images.image_id(ref) is None for ref in refs):
            refs = images.build_all(_progress)  # `make images` rebuilds; here only what is missing
        images.load_into(plane.real_node.containerd_socket, refs, _progress)
        socket = plane.real_node.containerd_socket
        images.alias_in(socket, refs, images.project_version(), _progress)

    return load


def _keda(plane: ControlPlane, uninstall: bool) -> None:
    """KEDA on the running cluster: binaries, image (loaded into the real node), manifests."""
    directory = keda.ensure_built(_progress)
    ref = keda.image_ref(directory)
    if not uninstall:
        ref = keda.build_image(_progress, directory)
        if plane.node.enabled:
            images.load_into(plane.real_node.containerd_socket, [ref], _progress)
    install = keda.KedaInstall(
        kubeconfig=plane.settings.kubeconfig_path,
        bin_dir=plane.binaries.bin_dir,
        directory=directory,
        image=ref,
    )
    if uninstall:
        install.uninstall(_progress)
    else:
        install.install(_progress)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="wsgauge-devcluster",
        description=(
            "A real local Kubernetes cluster: control plane, a real node (kubelet, containerd, "
            "CNI bridge, kube-proxy; WSGAUGE_NODE_KIND=kubelet, the default) and simulated nodes "
            "(the pod runner; alone with WSGAUGE_NODE_KIND=pod-runner)."
        ),
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="start (or reuse) the cluster; prints export lines last")
    down = commands.add_parser(
        "down", help="stop everything `up` started and undo its host changes"
    )
    down.add_argument("--purge", action="store_true", help="also delete the state directory")
    deploy = commands.add_parser(
        "deploy",
        help="helm upgrade --install charts/wsgauge with the local images; wait until available",
    )
    deploy.add_argument("--namespace", default="wsgauge-system", help="release namespace")
    deploy.add_argument(
        "--set", dest="values", action="append", default=[], metavar="KEY=VALUE",
        help="extra chart value (repeatable)",
    )  # fmt: skip
    keda_command = commands.add_parser(
        "keda",
        help="build KEDA (cached) and its image, install it from its own manifests; wait until "
        "available (docs/keda.md)",
    )
    keda_command.add_argument("--uninstall", action="store_true", help="remove it instead")
    commands.add_parser("status", help="print which components run")
    commands.add_parser("env", help="print the export lines only")
    options = parser.parse_args(argv)
    try:
        plane = build_control_plane()
        if options.command == "up":
            with file_lock(plane.settings.state_dir / ".lock"):
                plane.up(_progress, _image_loader(plane))
            print("\n".join(plane.exports()), flush=True)
        elif options.command == "down":
            with file_lock(plane.settings.state_dir / ".lock"):
                plane.down(_progress, purge=options.purge)
                if plane.node.enabled:
                    docker_engine.stop_docker_engine(_progress)
        elif options.command == "deploy":
            ChartInstall(
                kubeconfig=plane.settings.kubeconfig_path,
                bin_dir=plane.binaries.bin_dir,
                image_tag=images.image_tag(),
                namespace=options.namespace,
                values=tuple(options.values),
            ).install(_progress)
        elif options.command == "keda":
            _keda(plane, uninstall=options.uninstall)
        elif options.command == "status":
            running = plane.running()
            print(f"state dir: {plane.settings.state_dir}")
            for name, pid in running.items():
                print(f"{name:26s} {'running, pid ' + str(pid) if pid else 'stopped'}")
            if all(running.values()):
                print("\n".join(plane.exports()))
            return 0 if all(running.values()) else 3
        else:
            print("\n".join(plane.exports()))
    except DevClusterError as error:
        print(f"wsgauge-devcluster: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
