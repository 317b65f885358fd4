"""Build wsgauge's container images on a machine that can pull none, and load them into containerd.

Four images, all built here with the local Docker engine (:mod:`wsgauge_devcluster.docker_engine`
starts one when none answers) and the classic builder:

- a Python base from Debian's packages, unless ``PYTHON_IMAGE`` names one:
  ``debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3 bookworm``
  from the mirror apt uses here, slimmed (no apt lists, docs, man pages, locales) and imported with
  ``docker import``. Its tag carries a content key (suite, packages, recipe), so a later build
  finds it and never runs debootstrap again;
- ``<registry>/pause:<version>``: the pod sandbox, ``images/pause/pause.c`` compiled static on
  the host, ``FROM scratch``;
- ``<registry>/sidecar:<version>`` and ``<registry>/operator:<version>`` from
  ``images/Dockerfile.{sidecar,operator}`` with ``PYTHON_IMAGE`` as build argument. They install
  from the package metadata: the wheels of the image's own distributions (``./contract`` and
  ``./sidecar`` or ``./operator``) are built on the host (``pip wheel``), and the wheels of their
  dependencies downloaded on the host (``pip download`` of those wheels with ``constraints.txt``,
  binary only, for the base's Python version and glibc), into a build context assembled under
  ``~/.cache/wsgauge/images/`` from the ``!`` lines of the Dockerfile's ``.dockerignore``, so the
  build itself runs with ``--network none`` (``pip install --no-index``).

``version`` is the repository's ``VERSION`` file (every pyproject.toml reads it);
``registry`` defaults to ``wsgauge``.

CLI::

    python -m wsgauge_devcluster.images build [--load-into SOCKET] [--print-sizes]

Python API (what the devcluster calls): :func:`ensure_docker_engine`, :func:`build_all`,
:func:`load_into`, :func:`image_ref`, :func:`containerd_ref`, :func:`image_sizes`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
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
from wsgauge_devcluster.exceptions import DevClusterError
from wsgauge_devcluster.processes import file_lock

__all__ = [
    "BASE_RECIPE",
    "DEFAULT_REGISTRY",
    "IMAGE_NAMES",
    "BaseRecipe",
    "ImageBuildError",
    "build_all",
    "containerd_ref",
    "ensure_docker_engine",
    "image_ref",
    "image_sizes",
    "load_into",
]

REPO = Path(__file__).resolve().parents[2]
DEFAULT_REGISTRY = "wsgauge"
IMAGE_NAMES = ("pause", "sidecar", "operator")
"""The images :func:`build_all` builds, in build order."""
CONTAINERD_NAMESPACE = "k8s.io"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
SOURCES_FILES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))
BUILD_TIMEOUT = 1800


class ImageBuildError(DevClusterError):
    """Building, measuring or loading an image failed."""


@dataclass(frozen=True)
class BaseRecipe:
    """What the Debian-made Python base image is made of: its tag's content key hashes this."""

    suite: str = "bookworm"
    variant: str = "minbase"
    packages: tuple[str, ...] = ("python3", "python3-venv", "python-is-python3")
    recipe: int = 1
    """Bump when the slimming or import steps change (a new key, so a new base)."""
    name: str = "python-base"
    """The image name (``<registry>/<name>:<suite>-<content key>``); the kind node image's bases
    (:mod:`wsgauge_devcluster.kindnode`) are made the same way under their own names."""


BASE_RECIPE = BaseRecipe()

SLIM_GLOBS = (
    "var/lib/apt/lists/*",
    "var/cache/apt/*",
    "var/cache/debconf/*-old",
    "var/log/*",
    "usr/share/doc/*",
    "usr/share/man/*",
    "usr/share/info/*",
    "usr/share/locale/*",
    "usr/share/lintian/*",
    "usr/share/common-licenses/*",
)
"""Removed from the base's root filesystem (nothing at run time reads them)."""

DPKG_EXCLUDES = """\
# wsgauge base image: packages installed later do not bring docs, man pages or locales either.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
"""


def cache_dir() -> Path:
    """Build contexts, wheels, logs and the debootstrap download cache."""
    override = os.environ.get("WSGAUGE_IMAGES_CACHE")
    if override:
        return Path(override)
    return Path.home() / ".cache" / "wsgauge" / "images"


def project_version(version_file: Path = REPO / "VERSION") -> str:
    """The repository's ``VERSION`` file (every distribution's version): the images' tag."""
    version = version_file.read_text().strip()
    if not version or len(version.split()) != 1:
        raise ImageBuildError(f"{version_file}: not a version: {version!r}")
    return version


def image_tag() -> str:
    """The tag of the images built and installed here: ``$IMAGE_TAG`` or the project version
    (checkouts that share the Docker engine keep their images apart with their own tag)."""
    return os.environ.get("IMAGE_TAG") or project_version()


def image_ref(name: str, registry: str | None = None, tag: str | None = None) -> str:
    """``<registry>/<name>:<tag>`` with the defaults (``wsgauge``, :func:`image_tag`)."""
    registry = registry or os.environ.get("IMAGE_REGISTRY") or DEFAULT_REGISTRY
    tag = tag or image_tag()
    return f"{registry.rstrip('/')}/{name}:{tag}"


def containerd_ref(ref: str) -> str:
    """The fully qualified name containerd gives an image (``docker.io/wsgauge/pause:0.1.0``)."""
    name = ref.split("@", 1)[0]
    first, slash, _ = name.partition("/")
    if not slash:
        return f"docker.io/library/{ref}"
    if "." in first or ":" in first or first == "localhost":
        return ref
    return f"docker.io/{ref}"


def content_key(recipe: BaseRecipe) -> str:
    """A short hash of everything that decides the base image's content."""
    document = json.dumps(
        {
            "suite": recipe.suite,
            "variant": recipe.variant,
            "packages": sorted(recipe.packages),
            "recipe": recipe.recipe,
            "slim": SLIM_GLOBS,
            "dpkg": DPKG_EXCLUDES,
        },
        sort_keys=True,
    )
    return hashlib.sha256(document.encode()).hexdigest()[:12]


def base_ref(registry: str, recipe: BaseRecipe = BASE_RECIPE) -> str:
    """Tag of the Debian-made base: ``<registry>/<recipe.name>:<suite>-<content key>``."""
    return f"{registry.rstrip('/')}/{recipe.name}:{recipe.suite}-{content_key(recipe)}"


def debian_mirror(sources: str, suite: str) -> str | None:
    """The mirror apt uses for ``suite`` (deb822 ``.sources`` or one-line ``sources.list``)."""
    for stanza in re.split(r"\n\s*\n", sources):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" in fields.get("types", "").split() and suite in fields.get("suites", "").split():
            uris = fields.get("uris", "").split()
            if uris:
                return uris[0].rstrip("/")
    for line in sources.splitlines():
        words = [w for w in re.sub(r"\[[^]]*\]", "", line).split() if w]
        if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
            return words[1].rstrip("/")
    return None


def host_mirror(suite: str) -> str:
    """The mirror of this machine's apt sources, else deb.debian.org."""
    for path in SOURCES_FILES:
        with contextlib.suppress(OSError):
            mirror = debian_mirror(path.read_text(), suite)
            if mirror:
                return mirror
    return DEFAULT_MIRROR


def debootstrap_argv(recipe: BaseRecipe, rootfs: Path, mirror: str, debs: Path) -> list[str]:
    """The debootstrap command that makes the base's root filesystem."""
    return [
        "debootstrap",
        f"--variant={recipe.variant}",
        f"--include={','.join(recipe.packages)}",
        f"--cache-dir={debs}",
        recipe.suite,
        str(rootfs),
        mirror,
    ]


def import_argv(ref: str, recipe: BaseRecipe) -> list[str]:
    """``docker import`` of the root filesystem tarball on stdin."""
    return docker(
        "import",
        "--change",
        "ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--change",
        'CMD ["python3"]',
        "--change",
        f"LABEL dev.wsgauge.base.key={content_key(recipe)} dev.wsgauge.base.suite={recipe.suite}",
        "-",
        ref,
    )


def wheel_platforms(glibc: tuple[int, int]) -> list[str]:
    """pip ``--platform`` tags a glibc of this version runs (pip does not expand them itself)."""
    major, minor = glibc
    if major != 2 or minor < 5:
        raise ImageBuildError(f"unexpected glibc version {major}.{minor}")
    tags = [f"manylinux_2_{m}_x86_64" for m in range(minor, 4, -1)]
    for legacy, needs in (("manylinux2014", 17), ("manylinux2010", 12), ("manylinux1", 5)):
        if minor >= needs:
            tags.append(f"{legacy}_x86_64")
    return tags


def pip_wheel_argv(sources: Sequence[Path], dest: Path) -> list[str]:
    """Build the wheels of the image's own distributions on the host (no deps). The sidecar's is
    platform-specific (its native relay, a C extension): built by the host's Python, whose
    version the image's base must share (:func:`check_host_python`)."""
    argv = [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check"]
    return [*argv, "--no-deps", "--wheel-dir", str(dest), *map(str, sources)]


HOST_WHEEL_PLATFORM = "linux_x86_64"
"""The platform tag of a wheel built on the host (the sidecar's, with its C extension): named
for ``pip download`` too, which otherwise refuses the own wheel it is given as a file."""


def check_host_python(info: PythonInfo) -> None:
    """The host's Python builds the sidecar's wheel (its C extension is built for that Python's
    ABI): the image's base must run the same ``X.Y``, else :class:`ImageBuildError`."""
    host = f"{sys.version_info.major}.{sys.version_info.minor}"
    if info.version != host:
        raise ImageBuildError(
            f"the base image runs Python {info.version} but the host's is {host}: the sidecar's "
            "wheel (with its native relay) is built by the host's Python; build with a base "
            f"image of Python {host} (PYTHON_IMAGE)"
        )


def pip_download_argv(
    wheels: Sequence[Path],
    constraints: Path,
    dest: Path,
    python_version: str,
    glibc: tuple[int, int],
) -> list[str]:
    """Download, on the host, the wheels of the dependencies the own wheels' metadata declares.

    The own wheels are named as files, so pip takes them (and the dependency of one on another,
    ``wsgauge-contract``) from here, never from an index; the rest is pinned by ``constraints``.
    A wheel whose distribution the image installs with an extra (:data:`IMAGE_EXTRAS`) is named
    with it, so the extra's dependencies are downloaded too.
    """
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check"]
    argv += ["--only-binary=:all:", "--implementation", "cp", "--python-version", python_version]
    for tag in [*wheel_platforms(glibc), HOST_WHEEL_PLATFORM]:
        argv += ["--platform", tag]
    argv += ["-c", str(constraints), "-d", str(dest), *map(_with_extra, wheels)]
    return argv


IMAGE_EXTRAS = {"wsgauge_sidecar": "control"}
"""Own distribution (as in its wheel's name) -> the extra its image installs it with (the
Dockerfile says the same: ``wsgauge-sidecar[control]``, cryptography for the control orders)."""


def _with_extra(wheel: Path) -> str:
    extra = IMAGE_EXTRAS.get(wheel.name.split("-")[0])
    return f"{wheel}[{extra}]" if extra else str(wheel)


def build_argv(dockerfile: Path, context: Path, ref: str, python_image: str | None) -> list[str]:
    """``docker build`` (classic builder, no network: every input is in the context)."""
    argv = docker("build", "--network", "none", "--force-rm", "--file", str(dockerfile))
    argv += ["--tag", ref]
    if python_image:
        argv += ["--build-arg", f"PYTHON_IMAGE={python_image}"]
    argv.append(str(context))
    return argv


def dockerignore_includes(text: str) -> list[str]:
    """The paths a ``*``-first .dockerignore lets through (its ``!`` lines)."""
    lines = [line.strip() for line in text.splitlines()]
    rules = [line for line in lines if line and not line.startswith("#")]
    if not rules or rules[0] != "*":
        raise ImageBuildError(".dockerignore must start with '*' and list what to send with '!'")
    return [rule[1:] for rule in rules[1:] if rule.startswith("!")]


# --- running commands ------------------------------------------------------------------------


def _stamp() -> str:
    return time.strftime("%H:%M:%S")


def _run(
    argv: Sequence[str],
    log_file: Path,
    what: str,
    extra_env: dict[str, str] | None = None,
    **kwargs: object,
) -> None:
    """Run a command with its output appended to log_file; raise with the log's tail."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("a") as handle:
        handle.write(f"\n===== {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}\n")
        handle.flush()
        try:
            result = subprocess.run(
                list(argv),
                stdout=handle,
                stderr=subprocess.STDOUT,
                env={**docker_env(), **(extra_env or {})},
                timeout=BUILD_TIMEOUT,
                check=False,
                **kwargs,  # type: ignore[call-overload]
            )
        except subprocess.TimeoutExpired as error:
            raise ImageBuildError(f"{what}: timed out; log: {log_file}") from error
    if result.returncode != 0:
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-20:])
        raise ImageBuildError(f"{what} failed (exit {result.returncode}); log: {log_file}\n{tail}")


def _output(argv: Sequence[str], timeout: float = 120) -> str:
    result = subprocess.run(
        list(argv), env=docker_env(), capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise ImageBuildError(f"{' '.join(argv)}: {result.stderr.strip()[-500:]}")
    return result.stdout.strip()


def image_id(ref: str) -> str | None:
    """The local Docker image id of ref, or None if there is no such image."""
    result = subprocess.run(
        docker("image", "inspect", "--format", "{{.Id}}", ref),
        env=docker_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.stdout.strip() if result.returncode == 0 else None


def image_sizes(refs: Sequence[str]) -> dict[str, int]:
    """Each image's size in bytes as Docker reports it (layers shared with a base included)."""
    return {
        ref: int(_output(docker("image", "inspect", "--format", "{{.Size}}", ref))) for ref in refs
    }


# --- the base image --------------------------------------------------------------------------


def _unmount_below(path: Path) -> None:
    """Unmount what a killed debootstrap left mounted below path (deepest first)."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return
    prefix = str(path.resolve()) + "/"
    points = [line.split()[1] for line in mounts if len(line.split()) > 1]
    for point in sorted((p for p in points if p.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def _remove_tree(path: Path) -> None:
    if path.exists():
        _unmount_below(path)
        shutil.rmtree(path)


def slim_rootfs(rootfs: Path) -> None:
    """Drop what nothing at run time reads; keep later apt installs from adding it back."""
    for pattern in SLIM_GLOBS:
        for path in rootfs.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    dpkg_conf = rootfs / "etc" / "dpkg" / "dpkg.cfg.d"
    dpkg_conf.mkdir(parents=True, exist_ok=True)
    (dpkg_conf / "wsgauge-slim").write_text(DPKG_EXCLUDES)


def ensure_base_image(log: Log, registry: str, recipe: BaseRecipe = BASE_RECIPE) -> str:
    """A Debian-made base (the Python one by default): reused when its content key's tag
    exists, else made."""
    ref = base_ref(registry, recipe)
    if image_id(ref) is not None:
        log(f"base {ref} is there (content key {content_key(recipe)}): no debootstrap")
        return ref
    if os.geteuid() != 0:
        raise ImageBuildError(f"making the base {ref} with debootstrap needs root")
    if shutil.which("debootstrap", path=docker_env()["PATH"]) is None:
        raise ImageBuildError("debootstrap is missing: run hack/install-node-deps.sh")
    mirror = host_mirror(recipe.suite)
    work = cache_dir() / f"rootfs-{content_key(recipe)}"
    debs = cache_dir() / "debs"
    logs = cache_dir() / "logs"
    _remove_tree(work)
    debs.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    log(
        f"making the base {ref}: debootstrap {recipe.suite} from {mirror} "
        f"(a minute or two; log: {logs / 'base.log'})"
    )
    try:
        _run(debootstrap_argv(recipe, work, mirror, debs), logs / "base.log", "debootstrap")
        slim_rootfs(work)
        log("importing the root filesystem into Docker")
        tar = subprocess.Popen(
            ["tar", "-C", str(work), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE
        )
        try:
            _run(import_argv(ref, recipe), logs / "base.log", "docker import", stdin=tar.stdout)
        finally:
            if tar.stdout is not None:
                tar.stdout.close()
            if tar.wait() != 0:
                raise ImageBuildError(f"tar of {work} failed (exit {tar.returncode})")
    finally:
        _remove_tree(work)
    log(f"base {ref} made in {time.monotonic() - started:.0f} s")
    return ref


# --- the pause image -------------------------------------------------------------------------


def pause_compile_argv(source: Path, output: Path, version: str) -> list[str]:
    """gcc: a small static binary that needs nothing in its image."""
    return [
        "gcc",
        "-Os",
        "-static",
        "-s",
        "-Wall",
        "-Wextra",
        "-Werror",
        f'-DWSGAUGE_PAUSE_VERSION="{version}"',
        "-o",
        str(output),
        str(source),
    ]


def build_pause(log: Log, ref: str, version: str) -> None:
    """Compile images/pause/pause.c on the host and build the FROM scratch image."""
    if shutil.which("gcc") is None:
        raise ImageBuildError("gcc is missing: apt-get install gcc libc6-dev")
    context = cache_dir() / "context" / "pause"
    _remove_tree(context)
    context.mkdir(parents=True)
    logs = cache_dir() / "logs"
    source = REPO / "images" / "pause"
    _run(
        pause_compile_argv(source / "pause.c", context / "pause", version),
        logs / "pause.log",
        "gcc pause.c",
    )
    shutil.copy2(source / "Dockerfile", context / "Dockerfile")
    _run(
        build_argv(context / "Dockerfile", context, ref, None),
        logs / "pause.log",
        f"docker build {ref}",
    )


# --- the Python images -----------------------------------------------------------------------


@dataclass(frozen=True)
class PythonInfo:
    """What the wheels must fit: the base's Python (``3.11``) and glibc (``(2, 36)``)."""

    version: str
    glibc: tuple[int, int]


PROBE = (
    "import platform, sys; lib, ver = platform.libc_ver(); "
    "print(f'{sys.version_info[0]}.{sys.version_info[1]} {lib} {ver}')"
)


def python_info(image: str) -> PythonInfo:
    """Ask the base image which Python and glibc it has (no network, read-only)."""
    out = _output(
        docker(
            "run",
            "--rm",
            "--network",
            "none",
            "--read-only",
            "--entrypoint",
            "python3",
            image,
            "-c",
            PROBE,
        )
    )
    return parse_python_info(out)


def parse_python_info(out: str) -> PythonInfo:
    """Parse :data:`PROBE`'s output (``3.11 glibc 2.36``)."""
    words = out.split()
    if len(words) != 3 or words[1] != "glibc":
        raise ImageBuildError(f"base image: unexpected Python/libc probe output {out!r}")
    major, minor = (int(part) for part in words[2].split(".")[:2])
    return PythonInfo(words[0], (major, minor))


OWN_DISTRIBUTIONS = {"sidecar": ("contract", "sidecar"), "operator": ("contract", "operator")}
"""The repository folders (each a distribution with its pyproject.toml) an image installs."""
CONSTRAINTS = REPO / "constraints.txt"
SOURCE_IGNORE = ("__pycache__", "*.pyc", "*.so", "build", "dist", "*.egg-info")
"""What an in-tree build or a test run leaves in a distribution's folder: never copied."""
WHEEL_EPOCH = "315532800"
"""SOURCE_DATE_EPOCH of the own wheels (1980-01-01): the same sources give the same bytes, so
Docker's build cache stays valid from one build to the next."""


def build_own_wheels(log: Log, name: str) -> Path:
    """Build the wheels of the image's own distributions from a copy of their folders.

    The copy (not the repository) gets pip's in-tree build directories; each folder's
    ``VERSION`` link is copied as the file it points to.
    """
    scratch = cache_dir() / "src" / name
    dest = cache_dir() / "own-wheels" / name
    _remove_tree(scratch)
    _remove_tree(dest)
    skip = shutil.ignore_patterns(*SOURCE_IGNORE)
    sources = []
    for folder in OWN_DISTRIBUTIONS[name]:
        shutil.copytree(REPO / folder, scratch / folder, ignore=skip)
        sources.append(scratch / folder)
    dest.mkdir(parents=True)
    log(f"building the wheels of {', '.join(OWN_DISTRIBUTIONS[name])} on the host")
    _run(
        pip_wheel_argv(sources, dest),
        cache_dir() / "logs" / "wheels.log",
        f"pip wheel {' '.join(OWN_DISTRIBUTIONS[name])}",
        extra_env={"SOURCE_DATE_EPOCH": WHEEL_EPOCH},
    )
    _remove_tree(scratch)
    return dest


def dependencies_key(name: str, info: PythonInfo) -> str:
    """What decides an image's dependency wheels: the constraints, the own distributions'
    metadata (their pyproject.toml files) and the base's Python and glibc."""
    digest = hashlib.sha256(CONSTRAINTS.read_bytes())
    for folder in OWN_DISTRIBUTIONS[name]:
        digest.update((REPO / folder / "pyproject.toml").read_bytes())
    digest.update(f"{info.version} {info.glibc}".encode())
    return digest.hexdigest()[:12]


def ensure_dependency_wheels(log: Log, name: str, own: Path, info: PythonInfo) -> Path:
    """The wheels of the image's dependencies, downloaded on the host once per key."""
    dest = cache_dir() / "wheels" / f"{name}-{dependencies_key(name, info)}"
    if (dest / ".complete").exists():
        return dest
    _remove_tree(dest)
    dest.mkdir(parents=True)
    log(f"downloading the dependencies' wheels of the {name} image for Python {info.version}")
    _run(
        pip_download_argv(sorted(own.glob("*.whl")), CONSTRAINTS, dest, info.version, info.glibc),
        cache_dir() / "logs" / "wheels.log",
        f"pip download (the {name} image's dependencies)",
    )
    for wheel in dest.glob("wsgauge_*.whl"):  # the own wheels pip download copied: built anew
        wheel.unlink()
    (dest / ".complete").write_text("")
    return dest


def assemble_context(name: str, wheel_dirs: Sequence[Path]) -> Path:
    """The build context: what the Dockerfile's .dockerignore lets through, plus the wheels.

    The classic builder reads no per-Dockerfile .dockerignore, so the context is assembled
    instead of sending the repository (copies keep their modification times: the build cache
    stays valid from one run to the next).
    """
    dockerfile = REPO / "images" / f"Dockerfile.{name}"
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    context = cache_dir() / "context" / name
    _remove_tree(context)
    skip = shutil.ignore_patterns(*SOURCE_IGNORE)
    for relative in [f"images/{dockerfile.name}", *dockerignore_includes(ignore.read_text())]:
        source, target = REPO / relative, context / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            # symlinks=True: a distribution's VERSION stays the link to ../VERSION (copied too)
            shutil.copytree(source, target, ignore=skip, symlinks=True)
        else:
            shutil.copy2(source, target)
    wheels = context / "images" / "wheels"
    wheels.mkdir(parents=True)
    for directory in wheel_dirs:
        for wheel in directory.glob("*.whl"):
            shutil.copy2(wheel, wheels / wheel.name)
    return context


def build_python_image(log: Log, name: str, ref: str, python_image: str, info: PythonInfo) -> None:
    """Build images/Dockerfile.<name> on python_image from wheels made or fetched on the host."""
    if name == "sidecar":
        check_host_python(info)
    own = build_own_wheels(log, name)
    dependencies = ensure_dependency_wheels(log, name, own, info)
    context = assemble_context(name, [own, dependencies])
    _run(
        build_argv(context / "images" / f"Dockerfile.{name}", context, ref, python_image),
        cache_dir() / "logs" / f"{name}.log",
        f"docker build {ref}",
    )


def _pull(log: Log, ref: str) -> bool:
    """docker pull ref (for machines that can); False if that fails."""
    log(f"PYTHON_IMAGE={ref} is not a local image: trying docker pull")
    try:
        result = subprocess.run(
            docker("pull", ref),
            env=docker_env(),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0


# --- everything ------------------------------------------------------------------------------


def build_all(
    log: Log,
    registry: str | None = None,
    tag: str | None = None,
    python_image: str | None = None,
) -> list[str]:
    """Build the pause, sidecar and operator images; returns their refs (in that order).

    ``registry`` defaults to ``$IMAGE_REGISTRY`` or ``wsgauge``, ``tag`` to ``$IMAGE_TAG`` or the
    project version, ``python_image`` to ``$PYTHON_IMAGE`` or the Debian-made base (made once).
    Starts a Docker engine when none answers.
    """
    if platform.machine() != "x86_64":
        raise ImageBuildError(f"only x86_64 is supported here, not {platform.machine()}")
    registry = registry or os.environ.get("IMAGE_REGISTRY") or DEFAULT_REGISTRY
    version = tag or image_tag()
    python_image = python_image or os.environ.get("PYTHON_IMAGE") or None
    with engine_in_use(), file_lock(cache_dir() / "build.lock"):
        try:
            ensure_docker_engine(log)
        except DockerEngineError as error:
            raise ImageBuildError(str(error)) from error
        refs = [image_ref(name, registry, version) for name in IMAGE_NAMES]
        if python_image is None:
            python_image = ensure_base_image(log, registry)
        elif image_id(python_image) is None and not _pull(log, python_image):
            raise ImageBuildError(
                f"PYTHON_IMAGE={python_image} is not a local image and cannot be pulled: "
                "docker load it first, or leave PYTHON_IMAGE unset (a base is made from "
                "Debian's packages)"
            )
        else:
            log(f"Python base: PYTHON_IMAGE={python_image}")
        info = python_info(python_image)
        for name, ref in zip(IMAGE_NAMES, refs, strict=True):
            started = time.monotonic()
            log(f"building {ref} (log: {cache_dir() / 'logs' / (name + '.log')})")
            if name == "pause":
                build_pause(log, ref, version)
            else:
                build_python_image(log, name, ref, python_image, info)
            log(f"built {ref} in {time.monotonic() - started:.1f} s")
    return refs


# --- containerd ------------------------------------------------------------------------------


def _ctr(socket: Path, *args: str) -> list[str]:
    return ["ctr", "--address", str(socket), "--namespace", CONTAINERD_NAMESPACE, *args]


def _run_ctr(socket: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``ctr`` against the containerd at socket (text output, 60 s, never raises on exit)."""
    return subprocess.run(
        _ctr(socket, *args), capture_output=True, text=True, timeout=60, check=False
    )


def containerd_config_digest(socket: Path, ref: str) -> str | None:
    """The config digest (= Docker's image id) of ref in that containerd, None if absent."""
    listing = _run_ctr(socket, "images", "ls", f"name=={ref}")
    if listing.returncode != 0:
        raise ImageBuildError(f"ctr at {socket}: {listing.stderr.strip()[-500:]}")
    rows = [line.split() for line in listing.stdout.splitlines()[1:] if line.strip()]
    digest = next((row[2] for row in rows if row and row[0] == ref and len(row) > 2), None)
    for _ in range(3):  # index -> manifest -> config
        if digest is None:
            return None
        blob = _run_ctr(socket, "content", "get", digest)
        if blob.returncode != 0:
            return None
        document = json.loads(blob.stdout)
        if "config" in document:
            config_digest = document["config"].get("digest")
            return config_digest if isinstance(config_digest, str) else None
        manifests = document.get("manifests") or [{}]
        digest = manifests[0].get("digest")
    return None


def load_into(socket: Path, refs: Sequence[str], log: Log) -> None:
    """Import each image into the containerd at socket (namespace k8s.io) unless it is there.

    An image whose Docker id equals the config digest containerd has for it is skipped. After
    the import it is checked under its containerd name (``docker.io/wsgauge/...``).
    """
    if shutil.which("ctr") is None:
        raise ImageBuildError("ctr is missing: run hack/install-node-deps.sh (containerd)")
    with engine_in_use():
        try:
            ensure_docker_engine(log)
        except DockerEngineError as error:
            raise ImageBuildError(str(error)) from error
        for ref in refs:
            _load_one(socket, ref, log)


def _load_one(socket: Path, ref: str, log: Log) -> None:
    """``docker save ref | ctr import`` unless containerd has that image already."""
    wanted = image_id(ref)
    if wanted is None:
        raise ImageBuildError(f"{ref}: no such local image (build it first)")
    name = containerd_ref(ref)
    if containerd_config_digest(socket, name) == wanted:
        log(f"{name} is already in containerd at {socket}")
        return
    started = time.monotonic()
    save = subprocess.Popen(docker("save", ref), stdout=subprocess.PIPE, env=docker_env())
    try:
        result = subprocess.run(
            _ctr(socket, "images", "import", "-"),
            stdin=save.stdout,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            check=False,
        )
    finally:
        if save.stdout is not None:
            save.stdout.close()
        save.wait()
    if save.returncode != 0 or result.returncode != 0:
        raise ImageBuildError(
            f"docker save {ref} | ctr import failed: {result.stderr.strip()[-800:]}"
        )
    if containerd_config_digest(socket, name) != wanted:
        raise ImageBuildError(f"{name}: not in containerd at {socket} after the import")
    log(f"loaded {name} into containerd at {socket} in {time.monotonic() - started:.1f} s")


def alias_in(socket: Path, refs: Sequence[str], tag: str, log: Log) -> None:
    """Give each image in the containerd at socket a second name with ``tag`` (the examples
    name ``wsgauge/sidecar:<version>``; a checkout that builds under its own ``IMAGE_TAG`` runs
    them with its own images)."""
    for ref in refs:
        name = containerd_ref(ref)
        alias = f"{name.rsplit(':', 1)[0]}:{tag}"
        if alias == name:
            continue
        result = _run_ctr(socket, "images", "tag", "--force", name, alias)
        if result.returncode != 0:
            raise ImageBuildError(f"ctr images tag {name} {alias} failed: {result.stderr.strip()}")
        log(f"{alias} names {name} in containerd at {socket}")


# --- CLI -------------------------------------------------------------------------------------


def _stderr_log(message: str) -> None:
    print(f"[images {_stamp()}] {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``build [--load-into SOCKET] [--print-sizes]``."""
    parser = argparse.ArgumentParser(
        prog="python -m wsgauge_devcluster.images",
        description="Build wsgauge's images (pause, sidecar, operator, and the Python base made "
        "from Debian's packages unless PYTHON_IMAGE is set) with the local Docker engine, "
        "starting one if none answers.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build the images")
    build.add_argument(
        "--registry",
        default=os.environ.get("IMAGE_REGISTRY") or DEFAULT_REGISTRY,
        help="image name prefix (default: $IMAGE_REGISTRY or %(default)s)",
    )
    build.add_argument(
        "--tag", default=None, help="image tag (default: $IMAGE_TAG or the VERSION file)"
    )
    build.add_argument(
        "--python-image",
        default=os.environ.get("PYTHON_IMAGE") or None,
        help="a local Python image to build on (default: $PYTHON_IMAGE, else the base made "
        "from Debian's packages)",
    )
    build.add_argument(
        "--load-into",
        type=Path,
        metavar="CONTAINERD_SOCKET",
        help="then import each image into the containerd at this socket (namespace k8s.io)",
    )
    build.add_argument("--print-sizes", action="store_true", help="print each image's size")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        refs = build_all(_stderr_log, args.registry, args.tag, args.python_image)
        if args.load_into is not None:
            load_into(args.load_into, refs, _stderr_log)
        if args.print_sizes:
            for ref, size in image_sizes(refs).items():
                print(f"{ref}\t{size / 1e6:.1f} MB")
    except (ImageBuildError, DockerEngineError) as error:
        _stderr_log(f"error: {error}")
        return 1
    _stderr_log(f"done in {time.monotonic() - started:.0f} s: {' '.join(refs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
