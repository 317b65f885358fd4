"""The real images, built by images.py with the Docker engine docker_engine.py makes sure of.

What test_image_filesystem.py cannot check without a container runtime is checked here on the
images themselves: the sidecar image, run read-only as uid 65532, counts a WebSocket to the demo
app run from the same image, relayed by its native relay; the operator image starts; the pause
image stops at once on SIGTERM with exit code 0; nothing but runtime packages is in the Python
images; a second build reuses everything (no debootstrap, same image ids); ``load_into`` puts the
images into a containerd under their ``docker.io/...`` names and skips them the second time.

Skipped only when no Docker engine answers and none can be started here (no dockerd installed,
or not root); otherwise the engine is started by docker_engine.py (and stopped again afterwards
if this module started it). The first run on a machine makes the Python base with debootstrap
(about two minutes); later runs take seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect
from wsgauge_devcluster import docker_engine, images

pytestmark = pytest.mark.timeout(1500)

LOG: list[str] = []


def log(message: str) -> None:
    LOG.append(message)
    print(f"[images-test {time.strftime('%H:%M:%S')}] {message}", flush=True)


def docker(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        docker_engine.docker(*args),
        env=docker_engine.docker_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


@pytest.fixture(scope="module")
def engine() -> Iterator[None]:
    if docker_engine.engine_version() is None:
        if docker_engine.find_dockerd() is None:
            pytest.skip("no Docker engine answers and dockerd is not installed")
        if os.geteuid() != 0:
            pytest.skip("no Docker engine answers and starting dockerd needs root")
    started = docker_engine.ensure_docker_engine(log)
    yield
    if started:
        docker_engine.stop_docker_engine(log)


@pytest.fixture(scope="module")
def refs(engine: None) -> dict[str, str]:
    built = images.build_all(log)
    assert [ref.split("/")[-1].split(":")[0] for ref in built] == list(images.IMAGE_NAMES)
    return dict(zip(images.IMAGE_NAMES, built, strict=True))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Containers:
    """Detached containers removed at the end; their logs are shown when a test fails."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def run(self, *args: str) -> str:
        name = f"wsgauge-test-{uuid.uuid4().hex[:8]}"
        docker("run", "--detach", "--name", name, *args)
        self.names.append(name)
        return name

    def logs(self) -> str:
        out = []
        for name in self.names:
            result = docker("logs", name, check=False)
            out.append(f"--- {name}\n{result.stdout}{result.stderr}")
        return "\n".join(out)

    def running(self, name: str) -> bool:
        result = docker("inspect", "--format", "{{.State.Running}}", name, check=False)
        return result.stdout.strip() == "true"

    def remove(self) -> None:
        for name in self.names:
            docker("rm", "--force", name, check=False)


@pytest.fixture
def containers() -> Iterator[Containers]:
    handle = Containers()
    yield handle
    handle.remove()


def wait_http(url: str, containers: Containers, name: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert containers.running(name), f"{name} exited:\n{containers.logs()}"
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer in {timeout} s:\n{containers.logs()}")


RESTRICTED = ("--read-only", "--user", "65532:65532", "--cap-drop", "ALL")
"""How the chart runs the containers: read-only root, non-root, no capabilities."""


def test_sidecar_image_counts_a_websocket_read_only_as_non_root(
    refs: dict[str, str], containers: Containers
) -> None:
    sidecar = refs["sidecar"]
    app_port, data_port, admin_port = free_port(), free_port(), free_port()
    containers.run(
        *RESTRICTED,
        "--network",
        "host",
        "--entrypoint",
        "python",
        sidecar,
        "-m",
        "wsgauge_sidecar.demo_app",
        "--listen",
        f"127.0.0.1:{app_port}",
    )
    proxy = containers.run(
        *RESTRICTED,
        "--network",
        "host",
        "--env",
        "POD_NAME=image-test",
        "--env",
        "POD_NAMESPACE=default",
        sidecar,
        f"--listen=127.0.0.1:{data_port}",
        f"--admin-listen=127.0.0.1:{admin_port}",
        f"--upstream=127.0.0.1:{app_port}",
        "--topic=path:^/ws/([^/]+)",
        "--relay=native",  # the image carries the native relay (else: exit 2 at start)
    )
    wait_http(f"http://127.0.0.1:{admin_port}/readyz", containers, proxy)
    with connect(f"ws://127.0.0.1:{data_port}/ws/lobby", open_timeout=10) as client:
        client.send("hello")
        assert client.recv(timeout=10), containers.logs()
        deadline = time.monotonic() + 10
        stats: dict[str, object] = {}
        while time.monotonic() < deadline and stats.get("topics") != {"lobby": 1}:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/stats", timeout=5) as r:
                stats = json.load(r)
            time.sleep(0.1)
        assert stats.get("topics") == {"lobby": 1}, (stats, containers.logs())
        assert stats["connections"] == 1
        assert stats["pod"] == "image-test"
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as r:
        text = r.read()
        assert b"wsgauge_connections_opened_total" in text
        assert b"wsgauge_native_relay 1.0" in text


def test_operator_image_starts(refs: dict[str, str]) -> None:
    operator = refs["operator"]
    result = docker("run", "--rm", *RESTRICTED, "--network", "none", operator, "--help")
    assert "usage:" in result.stdout
    assert "--leader-elect" in result.stdout
    assert "--metrics-api" in result.stdout
    result = docker(
        "run",
        "--rm",
        *RESTRICTED,
        "--network",
        "none",
        "--entrypoint",
        "python",
        operator,
        "-m",
        "wsgauge_operator.injector.server",
        "--help",
    )
    assert "usage:" in result.stdout


IMPORT_ALL = """
import importlib, importlib.util, pkgutil, sys
for name in sys.argv[1:]:
    package = importlib.import_module(name)
    for module in pkgutil.iter_modules(package.__path__):
        if module.name != '__main__':
            importlib.import_module(name + '.' + module.name)
tools = ['pip', 'setuptools', 'wheel', 'pytest', 'hypothesis', 'mypy', 'websockets']
print(' '.join(t for t in tools if importlib.util.find_spec(t)) or 'none')
"""


@pytest.mark.parametrize(
    ("image", "packages"),
    [
        ("sidecar", ["wsgauge_contract", "wsgauge_sidecar"]),
        ("operator", ["wsgauge_contract", "wsgauge_operator"]),
    ],
)
def test_python_images_import_everything_and_hold_only_runtime_packages(
    refs: dict[str, str], image: str, packages: list[str]
) -> None:
    ref = refs[image]
    result = docker(
        "run",
        "--rm",
        *RESTRICTED,
        "--network",
        "none",
        "--entrypoint",
        "python",
        ref,
        "-c",
        IMPORT_ALL,
        *packages,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["none"], f"build/test tools in {ref}: {result.stdout}"
    config = json.loads(docker("image", "inspect", ref).stdout)[0]["Config"]
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"][:2] == ["python", "-m"]


def test_pause_image_stops_on_sigterm_with_exit_0(
    refs: dict[str, str], containers: Containers
) -> None:
    pause = refs["pause"]
    size = images.image_sizes([pause])[pause]
    assert size < 2_000_000, size
    config = json.loads(docker("image", "inspect", pause).stdout)[0]["Config"]
    assert config["Entrypoint"] == ["/pause"]
    assert config["User"] == "65535:65535"
    name = containers.run("--read-only", "--network", "none", pause)
    time.sleep(0.5)
    assert containers.running(name), containers.logs()
    docker("stop", "--time", "10", name)  # exit code 0: it stopped on SIGTERM, not SIGKILL
    state = docker("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
    assert state == "0", containers.logs()


def test_second_build_reuses_everything(refs: dict[str, str]) -> None:
    before = {ref: images.image_id(ref) for ref in refs.values()}
    LOG.clear()
    again = images.build_all(log)
    assert {ref: images.image_id(ref) for ref in again} == before
    assert not any("debootstrap" in line and "making" in line for line in LOG), LOG
    assert any("no debootstrap" in line for line in LOG) or os.environ.get("PYTHON_IMAGE"), LOG


@pytest.fixture
def containerd_socket() -> Iterator[Path]:
    """A throwaway containerd (no CRI plugin): enough for ctr import / images ls."""
    if shutil.which("containerd") is None or shutil.which("ctr") is None:
        pytest.skip("containerd/ctr not installed (hack/install-node-deps.sh)")
    if os.geteuid() != 0:
        pytest.skip("a throwaway containerd needs root")
    base = Path(tempfile.mkdtemp(prefix="wsg-ctr-"))
    sock = base / "containerd.sock"
    (base / "config.toml").write_text(
        "version = 2\n"
        f'root = "{base}/root"\n'
        f'state = "{base}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{sock}"\n'
        f'[ttrpc]\n  address = "{sock}.ttrpc"\n'
        '[debug]\n  address = ""\n'
        '[metrics]\n  address = ""\n'
    )
    with (base / "containerd.log").open("w") as out:
        process = subprocess.Popen(
            ["containerd", "--config", str(base / "config.toml")],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while not sock.exists():
            assert process.poll() is None, (base / "containerd.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "containerd did not start"
            time.sleep(0.1)
        yield sock
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(base, ignore_errors=True)


def test_load_into_containerd_under_docker_io_names_once(
    refs: dict[str, str], containerd_socket: Path
) -> None:
    ordered = list(refs.values())
    images.load_into(containerd_socket, ordered, log)
    listing = subprocess.run(
        ["ctr", "-a", str(containerd_socket), "-n", "k8s.io", "images", "ls", "-q"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for ref in ordered:
        assert images.containerd_ref(ref) in listing, listing
        assert images.containerd_config_digest(
            containerd_socket, images.containerd_ref(ref)
        ) == images.image_id(ref)
    LOG.clear()
    images.load_into(containerd_socket, ordered, log)
    assert sum("already in containerd" in line for line in LOG) == len(ordered), LOG
