"""Build a kind node image on a machine that can pull none: everything in it is made here.

The image (``images/kind-node/Dockerfile``) is assembled from:

- a Debian base made with debootstrap (:func:`wsgauge_devcluster.images.ensure_base_image`,
  cached by content key): systemd, containerd, runc, the CNI plugins, iptables;
- the Kubernetes binaries of ``hack/build-k8s.sh`` (kubelet, kubeadm, kubectl) and crictl of
  ``hack/build-kind.sh``;
- ``images/kind-node/files``: the entrypoint, the kubelet unit, containerd's configuration, the
  pod network (a CNI config and routes written at boot, no daemon) and kind's manifests;
- the images kubeadm runs, saved as tarballs in ``/kind/images`` and imported into the node's
  containerd at boot: ``registry.k8s.io/kube-{apiserver,controller-manager,scheduler}`` and
  ``etcd`` (``FROM scratch`` with our static binaries), ``kube-proxy`` (on a small Debian base
  with iptables), ``coredns/coredns`` (CoreDNS from its Go module) and ``pause`` (our
  ``images/pause``), under the names and tags kubeadm of our build asks for.

The node image is tagged ``<registry>/kind-node:<k8s version>`` and, for the cache,
``<registry>/kind-node:<k8s version>-<key>``: the key hashes every input (binaries' versions,
the files, the bases' keys), so a second build with nothing changed returns at once.

CLI::

    python -m wsgauge_devcluster.kindnode build [--print-ref]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from wsgauge_devcluster.docker_engine import (
    DockerEngineError,
    Log,
    docker,
    docker_env,
    engine_in_use,
    ensure_docker_engine,
)
from wsgauge_devcluster.images import (
    DEFAULT_REGISTRY,
    BaseRecipe,
    ImageBuildError,
    _remove_tree,
    _run,
    build_pause,
    cache_dir,
    content_key,
    ensure_base_image,
    image_id,
)
from wsgauge_devcluster.processes import file_lock
from wsgauge_devcluster.settings import REPO_ROOT

__all__ = [
    "NODE_BASE",
    "PROXY_BASE",
    "KindVersions",
    "build_node_image",
    "component_images",
    "node_ref",
]

NODE_DIR = REPO_ROOT / "images" / "kind-node"
K8S_SCRIPT = REPO_ROOT / "hack" / "build-k8s.sh"
KIND_SCRIPT = REPO_ROOT / "hack" / "build-kind.sh"
UPSTREAM = "registry.k8s.io"

NODE_BASE = BaseRecipe(
    packages=(
        "systemd",
        "systemd-sysv",
        "containerd",
        "runc",
        "containernetworking-plugins",
        "iptables",
        "conntrack",
        "ethtool",
        "socat",
        "iproute2",
        "kmod",
        "procps",
        "util-linux",
        "mount",
    ),
    name="kind-node-base",
)
"""The node's Debian base: init, the container runtime and what the kubelet runs."""

PROXY_BASE = BaseRecipe(packages=("iptables", "conntrack"), name="kube-proxy-base")
"""kube-proxy's Debian base (it runs iptables)."""


@dataclass(frozen=True)
class KindVersions:
    """The versions the node image is made of (kubeadm of this Kubernetes decides the rest)."""

    kubernetes: str = "v1.37.2"
    """k8s.io/kubernetes of hack/build-k8s.sh."""
    etcd: str = "3.7.0-0"
    """The etcd image tag kubeadm asks for (our etcd build is that release)."""
    pause: str = "3.10.2"
    """The pause image tag kubeadm and containerd's sandbox_image ask for."""
    coredns: str = "v1.14.6"
    """CoreDNS of hack/build-kind.sh, the tag kubeadm asks for."""


def script_bin_dir(script: Path) -> Path:
    """Where a build script keeps its binaries (``--print-bin-dir``)."""
    result = subprocess.run(
        [str(script), "--print-bin-dir"], check=True, capture_output=True, text=True
    )
    return Path(result.stdout.strip())


def ensure_binaries(log: Log) -> tuple[Path, Path]:
    """Run both build scripts (they return at once when the cache is complete)."""
    dirs = []
    for script in (K8S_SCRIPT, KIND_SCRIPT):
        log(f"{script.name}: building what is missing (cached by version)")
        result = subprocess.run([str(script)], check=False, stdout=subprocess.PIPE, text=True)
        if result.returncode != 0:
            raise ImageBuildError(f"{script} failed (exit {result.returncode})")
        dirs.append(Path(result.stdout.strip().splitlines()[-1]))
    return dirs[0], dirs[1]


@dataclass(frozen=True)
class Component:
    """One image kubeadm runs: its upstream name and what it holds."""

    ref: str
    binary: str
    """The binary (from the Kubernetes or the kind bin dir) the image carries."""
    path: str
    """Where the binary goes in the image."""
    base: str | None = None
    """A base image, None for ``FROM scratch``."""


def component_images(versions: KindVersions, proxy_base: str) -> list[Component]:
    """The images of the control plane, etcd, kube-proxy and CoreDNS, by upstream name."""
    k8s = versions.kubernetes
    return [
        Component(f"{UPSTREAM}/kube-apiserver:{k8s}", "kube-apiserver", "/usr/local/bin"),
        Component(
            f"{UPSTREAM}/kube-controller-manager:{k8s}",
            "kube-controller-manager",
            "/usr/local/bin",
        ),
        Component(f"{UPSTREAM}/kube-scheduler:{k8s}", "kube-scheduler", "/usr/local/bin"),
        Component(f"{UPSTREAM}/kube-proxy:{k8s}", "kube-proxy", "/usr/local/bin", proxy_base),
        Component(f"{UPSTREAM}/etcd:{versions.etcd}", "etcd", "/usr/local/bin"),
        Component(f"{UPSTREAM}/coredns/coredns:{versions.coredns}", "coredns", "/"),
    ]


def component_dockerfile(component: Component) -> str:
    """A two-line image: the binary on PATH, as entrypoint."""
    target = f"{component.path.rstrip('/')}/{component.binary}"
    return (
        f"FROM {component.base or 'scratch'}\n"
        f"COPY {component.binary} {target}\n"
        "ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin\n"
        f'ENTRYPOINT ["{target}"]\n'
    )


def files_digest(root: Path) -> str:
    """A hash of a folder's files (paths and bytes)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def node_key(versions: KindVersions, bin_dirs: Sequence[Path]) -> str:
    """What decides the node image: versions, binaries' cache dirs, bases, the repo's files."""
    digest = hashlib.sha256(repr(versions).encode())
    for directory in bin_dirs:
        digest.update(directory.name.encode())
    digest.update(content_key(NODE_BASE).encode())
    digest.update(content_key(PROXY_BASE).encode())
    digest.update(files_digest(NODE_DIR).encode())
    digest.update(files_digest(REPO_ROOT / "images" / "pause").encode())
    return digest.hexdigest()[:12]


def node_ref(registry: str = DEFAULT_REGISTRY, versions: KindVersions | None = None) -> str:
    """``<registry>/kind-node:<k8s version>``: the name users pass to ``kind --image``."""
    versions = versions or KindVersions()
    return f"{registry.rstrip('/')}/kind-node:{versions.kubernetes}"


def _build(log: Log, context: Path, dockerfile: Path, ref: str, *build_args: str) -> None:
    argv = docker("build", "--network", "none", "--force-rm", "--file", str(dockerfile))
    for arg in build_args:
        argv += ["--build-arg", arg]
    argv += ["--tag", ref, str(context)]
    _run(argv, cache_dir() / "logs" / "kind-node.log", f"docker build {ref}")


def _save(ref: str, target: Path) -> None:
    _run(
        docker("save", "--output", str(target), ref),
        cache_dir() / "logs" / "kind-node.log",
        f"docker save {ref}",
    )


def build_node_image(
    log: Log, registry: str = DEFAULT_REGISTRY, versions: KindVersions | None = None
) -> str:
    """Build (or find cached) the kind node image; returns :func:`node_ref`."""
    versions = versions or KindVersions()
    k8s_bin, kind_bin = ensure_binaries(log)
    ref = node_ref(registry, versions)
    keyed = f"{ref}-{node_key(versions, (k8s_bin, kind_bin))}"
    with engine_in_use(), file_lock(cache_dir() / "build.lock"):
        try:
            ensure_docker_engine(log)
        except DockerEngineError as error:
            raise ImageBuildError(str(error)) from error
        if image_id(keyed) is not None:
            log(f"node image {keyed} is there: nothing to build")
            _tag(keyed, ref)
            return ref
        started = time.monotonic()
        node_base = ensure_base_image(log, registry, NODE_BASE)
        proxy_base = ensure_base_image(log, registry, PROXY_BASE)
        context = cache_dir() / "context" / "kind-node"
        _remove_tree(context)
        (context / "images").mkdir(parents=True)
        (context / "bin").mkdir()
        for component in component_images(versions, proxy_base):
            step = time.monotonic()
            source = kind_bin if component.binary == "coredns" else k8s_bin
            scratch = cache_dir() / "context" / f"kind-{component.binary}"
            _remove_tree(scratch)
            scratch.mkdir(parents=True)
            shutil.copy2(source / component.binary, scratch / component.binary)
            (scratch / "Dockerfile").write_text(component_dockerfile(component))
            _build(log, scratch, scratch / "Dockerfile", component.ref)
            _save(component.ref, context / "images" / f"{component.binary}.tar")
            _remove_tree(scratch)
            log(f"built and saved {component.ref} in {time.monotonic() - step:.1f} s")
        pause = f"{UPSTREAM}/pause:{versions.pause}"
        build_pause(log, pause, versions.pause)
        _save(pause, context / "images" / "pause.tar")
        log(f"built and saved {pause}")
        for name in ("kubelet", "kubeadm", "kubectl"):
            shutil.copy2(k8s_bin / name, context / "bin" / name)
        shutil.copy2(kind_bin / "crictl", context / "bin" / "crictl")
        shutil.copytree(NODE_DIR / "files", context / "files")
        (context / "files" / "kind" / "version").write_text(versions.kubernetes + "\n")
        shutil.copy2(NODE_DIR / "Dockerfile", context / "Dockerfile")
        log(f"building the node image {keyed} (log: {cache_dir() / 'logs' / 'kind-node.log'})")
        _build(log, context, context / "Dockerfile", keyed, f"NODE_BASE={node_base}")
        _remove_tree(context)
        _tag(keyed, ref)
        log(f"node image {ref} built in {time.monotonic() - started:.0f} s")
    return ref


def _tag(source: str, target: str) -> None:
    result = subprocess.run(
        docker("tag", source, target), env=docker_env(), capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise ImageBuildError(f"docker tag {source} {target}: {result.stderr.strip()}")


def _stderr_log(message: str) -> None:
    print(f"[kind-node {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``build``: the node image, printed on stdout."""
    parser = argparse.ArgumentParser(
        prog="python -m wsgauge_devcluster.kindnode",
        description="Build wsgauge's kind node image from local builds only (cached by version).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build the node image (or find it cached)")
    build.add_argument("--registry", default=DEFAULT_REGISTRY, help="image name prefix")
    args = parser.parse_args(argv)
    try:
        ref = build_node_image(_stderr_log, args.registry)
    except ImageBuildError as error:
        _stderr_log(f"error: {error}")
        return 1
    print(ref)
    return 0


if __name__ == "__main__":
    sys.exit(main())
