"""The images' file sets, assembled without Docker, run what the chart runs.

No Docker engine is needed (none exists where `make test` runs): each Dockerfile is read, and
what its build stage puts into ``/opt/wsgauge`` is assembled the same way in a temporary
directory: a fresh virtualenv with ``pip install -c constraints.txt`` of exactly the
distribution folders the Dockerfile copies (``contract`` and ``sidecar`` or ``operator``, from
copies of them, as the Dockerfile does without the wheels `make images` brings; nothing else: no
test tools). Every entrypoint the chart and the examples use is run from that tree with only the
image's ``ENV``, and afterwards the tree must be exactly as assembled (the chart runs the
containers with a read-only root filesystem; the tests run as root here, so file modes cannot
enforce that, and the test compares the tree instead):

- operator image: ``python -m wsgauge_operator --help`` and the injector's ``--help``;
- sidecar image: the sidecar in front of the demo app (``python -m wsgauge_sidecar.demo_app``,
  as in examples/chat), a real WebSocket client through it, counted in ``/stats``.

What this does not check: the base image itself (python:3.11 slim) and the USER/read-only
settings at run time under a container runtime (those are `make images` / `make kind-e2e`).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from websockets.sync.client import connect

pytestmark = pytest.mark.timeout(1200)
"""The module-scoped image trees are built by pip (several minutes on a busy machine)."""

REPO = Path(__file__).resolve().parents[3]
IMAGE_ROOT = "/opt/wsgauge"
FORBIDDEN_DISTRIBUTIONS = {"pytest", "hypothesis", "mypy", "ruff", "matplotlib", "websockets"}
"""Test and benchmark tools that must never end up in an image."""


@dataclass(frozen=True)
class Recipe:
    """What a Dockerfile's build stage puts under /opt/wsgauge, and how the image starts."""

    distributions: list[Path]
    """The distribution folders the Dockerfile copies and installs (in the repository)."""
    extras: dict[str, str]
    """Folder name -> the extra the Dockerfile installs it with (``sidecar[control]``)."""
    entrypoint: list[str]
    env: dict[str, str]


def read_recipe(dockerfile: Path) -> Recipe:
    """The parts of a Dockerfile this test replays (fails on anything it cannot follow)."""
    constraints = False
    distributions: list[Path] = []
    entrypoint: list[str] = []
    env: dict[str, str] = {}
    text = dockerfile.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "COPY" and not words[1].startswith("--from"):
            sources = words[1:-1]
            if "constraints.txt" in sources:
                constraints = True
            else:
                assert len(sources) == 1, line
                assert (REPO / sources[0] / "pyproject.toml").exists(), line
                distributions.append(REPO / sources[0])
        elif words[0] == "ENTRYPOINT":
            entrypoint = json.loads(line.partition("ENTRYPOINT")[2])
        elif words[0] == "ENV":
            env.update(re.findall(r"(\w+)=(\S+)", line))
    assert constraints, f"{dockerfile}: not understood"
    assert distributions, f"{dockerfile}: not understood"
    assert entrypoint, f"{dockerfile}: not understood"
    extras = dict(re.findall(r"/tmp/build/(\w+)\[(\w+)\]", text))
    assert extras.keys() <= {folder.name for folder in distributions}, extras
    return Recipe(distributions, extras, entrypoint, env)


def assemble(recipe: Recipe, root: Path, sources: Path) -> Path:
    """Build the /opt/wsgauge tree of an image under ``root``; returns its python.

    The distribution folders are copied to ``sources`` first (pip builds them in their folder).
    """
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    skip = shutil.ignore_patterns("__pycache__", "build", "dist", "*.egg-info")
    shutil.copy2(REPO / "VERSION", sources / "VERSION")  # what each folder's VERSION links to
    folders = []
    for folder in recipe.distributions:
        shutil.copytree(folder, sources / folder.name, ignore=skip, symlinks=True)
        extra = recipe.extras.get(folder.name)
        folders.append(str(sources / folder.name) + (f"[{extra}]" if extra else ""))
    pip = [str(root / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "install", "-c", str(REPO / "constraints.txt"), *folders], check=True, timeout=600
    )
    return root / "bin" / "python"


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and directory under ``root`` with its size and modification time."""
    state = {}
    for path in [root, *root.rglob("*")]:
        info = path.lstat()
        state[str(path.relative_to(root))] = (info.st_size, info.st_mtime_ns)
    return state


def image_env(recipe: Recipe, root: Path) -> dict[str, str]:
    """The image's ENV with /opt/wsgauge mapped to ``root``; nothing of the host's Python setup."""
    env = {"HOME": str(root), "LANG": "C.UTF-8"}
    for name, value in recipe.env.items():
        env[name] = value.replace(IMAGE_ROOT, str(root)).replace("$PATH", "/usr/bin:/bin")
    return env


def command(recipe: Recipe, python: Path, *args: str) -> list[str]:
    """The entrypoint with the image's python (``python`` is first on the image's PATH)."""
    assert recipe.entrypoint[0] == "python"
    return [str(python), *recipe.entrypoint[1:], *args]


@pytest.fixture(scope="module")
def image_tree(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, tuple[Recipe, Path]]]:
    trees: dict[str, tuple[Recipe, Path]] = {}
    states = {}
    for image in ("operator", "sidecar"):
        recipe = read_recipe(REPO / "images" / f"Dockerfile.{image}")
        root = tmp_path_factory.mktemp(f"image-{image}") / "opt-wsgauge"
        sources = tmp_path_factory.mktemp(f"image-{image}-build")
        trees[image] = (recipe, assemble(recipe, root, sources))
        states[image] = tree_state(root)
    yield trees
    for image, (_, python) in trees.items():
        after = tree_state(python.parent.parent)
        changed = {
            path
            for path in after.keys() | states[image].keys()
            if after.get(path) != states[image].get(path)
        }
        assert not changed, f"{image}: written into the image tree: {sorted(changed)[:10]}"


def installed(python: Path) -> set[str]:
    out = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {entry["name"].lower() for entry in json.loads(out)}


@pytest.mark.parametrize("image", ["operator", "sidecar"])
def test_image_holds_only_runtime_packages(
    image_tree: dict[str, tuple[Recipe, Path]], image: str
) -> None:
    recipe, python = image_tree[image]
    distributions = installed(python)
    assert not distributions & FORBIDDEN_DISTRIBUTIONS, distributions & FORBIDDEN_DISTRIBUTIONS
    if image == "sidecar":  # the sidecar's distribution pulls nothing of the operator
        assert not distributions & {"kopf", "kubernetes", "wsgauge-operator"}
        # ... and cryptography only as its `control` extra, which the image installs
        assert recipe.extras == {"sidecar": "control"}
        assert "cryptography" in distributions
    own = {p.name for p in python.parent.parent.glob("lib/python3*/site-packages/wsgauge_*")}
    own = {name for name in own if "." not in name}  # the packages, not their .dist-info
    assert own == {f"wsgauge_{folder.name}" for folder in recipe.distributions}
    assert distributions >= {f"wsgauge-{folder.name}" for folder in recipe.distributions}
    assert "wsgauge_devcluster" not in own
    assert ("wsgauge_sidecar" in own) == (image == "sidecar")
    assert ("wsgauge_operator" in own) == (image == "operator")
    # every module of the image's own packages imports with only the pinned dependencies
    importer = (
        "import importlib, pkgutil, sys\n"
        "for name in sys.argv[1:]:\n"
        "    package = importlib.import_module(name)\n"
        "    for module in pkgutil.iter_modules(package.__path__):\n"
        "        if module.name != '__main__':\n"
        "            importlib.import_module(name + '.' + module.name)\n"
    )
    result = subprocess.run(
        [str(python), "-c", importer, *sorted(own)],
        check=False,
        env=image_env(recipe, python.parent.parent),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_operator_image_entrypoints_start_from_a_read_only_tree(
    image_tree: dict[str, tuple[Recipe, Path]],
) -> None:
    recipe, python = image_tree["operator"]
    env = image_env(recipe, python.parent.parent)
    for args in ([], ["-m", "wsgauge_operator.injector.server"]):
        argv = [str(python), *args, "--help"] if args else command(recipe, python, "--help")
        result = subprocess.run(
            argv, check=False, env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert "usage:" in result.stdout
    # the help names the operator's real flags
    result = subprocess.run(
        command(recipe, python, "--help"),
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "--leader-elect" in result.stdout
    assert "--metrics-api" in result.stdout


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_http(url: str, process: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"exited with {process.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer in {timeout} s")


def test_sidecar_image_counts_a_websocket_to_the_demo_app(
    image_tree: dict[str, tuple[Recipe, Path]], tmp_path: Path
) -> None:
    recipe, python = image_tree["sidecar"]
    env = image_env(recipe, python.parent.parent)
    app_port, data_port, admin_port = free_port(), free_port(), free_port()
    processes: list[subprocess.Popen[str]] = []
    logs = [open(tmp_path / name, "w") for name in ("app.log", "sidecar.log")]  # noqa: SIM115
    try:
        processes.append(
            subprocess.Popen(
                [
                    str(python),
                    "-m",
                    "wsgauge_sidecar.demo_app",
                    "--listen",
                    f"127.0.0.1:{app_port}",
                ],
                env=env,
                stdout=logs[0],
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
        processes.append(
            subprocess.Popen(
                command(
                    recipe,
                    python,
                    f"--listen=127.0.0.1:{data_port}",
                    f"--admin-listen=127.0.0.1:{admin_port}",
                    f"--upstream=127.0.0.1:{app_port}",
                    "--topic=path:^/ws/([^/]+)",
                ),
                env={**env, "POD_NAME": "image-test", "POD_NAMESPACE": "default"},
                stdout=logs[1],
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
        wait_http(f"http://127.0.0.1:{admin_port}/readyz", processes[1])
        with connect(f"ws://127.0.0.1:{data_port}/ws/lobby", open_timeout=10) as client:
            client.send("hello")
            assert client.recv(timeout=10)
            deadline = time.monotonic() + 10
            topics: dict[str, int] = {}
            while time.monotonic() < deadline and topics.get("lobby") != 1:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/stats", timeout=5) as r:
                    topics = json.load(r).get("topics", {})
                time.sleep(0.1)
            assert topics == {"lobby": 1}
        # the admin port is not the data port: /stats is not served to data-port clients
        with urllib.request.urlopen(f"http://127.0.0.1:{data_port}/stats", timeout=5) as r:
            assert b'"topics"' not in r.read()
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in logs:
            log.close()
