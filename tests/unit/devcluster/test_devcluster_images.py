"""The pure parts of images.py and docker_engine.py: keys, names, parsing, command lines."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest
from wsgauge_devcluster import docker_engine, images

REPO = Path(__file__).resolve().parents[3]


def test_content_key_is_stable_and_follows_the_recipe() -> None:
    key = images.content_key(images.BASE_RECIPE)
    assert key == images.content_key(images.BaseRecipe())
    assert len(key) == 12
    assert int(key, 16) >= 0
    reordered = replace(images.BASE_RECIPE, packages=tuple(reversed(images.BASE_RECIPE.packages)))
    assert images.content_key(reordered) == key  # a set of packages, not a sequence
    for changed in (
        replace(images.BASE_RECIPE, suite="trixie"),
        replace(images.BASE_RECIPE, packages=(*images.BASE_RECIPE.packages, "curl")),
        replace(images.BASE_RECIPE, recipe=images.BASE_RECIPE.recipe + 1),
        replace(images.BASE_RECIPE, variant="buildd"),
    ):
        assert images.content_key(changed) != key


def test_base_ref_names_suite_and_key() -> None:
    ref = images.base_ref("wsgauge")
    assert ref == f"wsgauge/python-base:bookworm-{images.content_key(images.BASE_RECIPE)}"
    assert images.base_ref("registry.local:5000/team/").startswith("registry.local:5000/team/")


def test_base_packages_give_venv_and_python() -> None:
    assert {"python3", "python3-venv", "python-is-python3"} <= set(images.BASE_RECIPE.packages)


DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian/
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
"""


def test_debian_mirror_from_deb822_sources() -> None:
    assert images.debian_mirror(DEB822, "bookworm") == "http://mirror.example/debian"
    assert images.debian_mirror(DEB822, "bookworm-security") == (
        "http://mirror.example/debian-security"
    )
    assert images.debian_mirror(DEB822, "trixie") is None


def test_debian_mirror_from_one_line_sources() -> None:
    text = (
        "# comment\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://one.example/debian/ bookworm main contrib\n"
    )
    assert images.debian_mirror(text, "bookworm") == "http://one.example/debian"


def test_debootstrap_command() -> None:
    argv = images.debootstrap_argv(
        images.BASE_RECIPE, Path("/r"), "http://m.example/debian", Path("/debs")
    )
    assert argv == [
        "debootstrap",
        "--variant=minbase",
        "--include=python3,python3-venv,python-is-python3",
        "--cache-dir=/debs",
        "bookworm",
        "/r",
        "http://m.example/debian",
    ]


def test_import_labels_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSGAUGE_DOCKER", "/x/docker")
    argv = images.import_argv("wsgauge/python-base:bookworm-k", images.BASE_RECIPE)
    assert argv[:2] == ["/x/docker", "import"]
    assert argv[-2:] == ["-", "wsgauge/python-base:bookworm-k"]
    assert any(images.content_key(images.BASE_RECIPE) in arg for arg in argv)


def test_wheel_platforms_cover_every_older_manylinux() -> None:
    tags = images.wheel_platforms((2, 36))
    assert tags[0] == "manylinux_2_36_x86_64"
    for tag in ("manylinux_2_17_x86_64", "manylinux_2_28_x86_64", "manylinux_2_5_x86_64"):
        assert tag in tags
    assert {"manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"} <= set(tags)
    assert "manylinux_2_37_x86_64" not in tags
    assert "manylinux2014_x86_64" not in images.wheel_platforms((2, 12))
    with pytest.raises(images.ImageBuildError):
        images.wheel_platforms((3, 1))


def test_pip_download_is_binary_only_for_the_base_python() -> None:
    own = [Path("/o/wsgauge_contract-1-py3-none-any.whl"), Path("/o/wsgauge_sidecar-1.whl")]
    argv = images.pip_download_argv(own, Path("c.txt"), Path("/w"), "3.11", (2, 36))
    assert argv[1:4] == ["-m", "pip", "download"]
    assert "--only-binary=:all:" in argv
    assert argv[argv.index("--python-version") + 1] == "3.11"
    # the own wheels as files (never looked up in an index), the rest pinned by the constraints;
    # the sidecar's with the extra its image installs
    assert argv[-6:] == ["-c", "c.txt", "-d", "/w", str(own[0]), f"{own[1]}[control]"]
    # the manylinux tags of the base's glibc, and the host's own tag (the sidecar's wheel)
    assert argv.count("--platform") == len(images.wheel_platforms((2, 36))) + 1
    assert argv[argv.index(images.HOST_WHEEL_PLATFORM) - 1] == "--platform"


def test_the_sidecar_wheel_needs_a_base_of_the_host_python() -> None:
    host = f"{sys.version_info.major}.{sys.version_info.minor}"
    images.check_host_python(images.PythonInfo(host, (2, 36)))
    with pytest.raises(images.ImageBuildError, match="host's is"):
        images.check_host_python(images.PythonInfo("3.9", (2, 36)))


def test_own_wheels_are_built_without_their_dependencies() -> None:
    argv = images.pip_wheel_argv([Path("/s/contract"), Path("/s/sidecar")], Path("/w"))
    assert argv[1:4] == ["-m", "pip", "wheel"]
    assert "--no-deps" in argv
    assert argv[argv.index("--wheel-dir") + 1] == "/w"
    assert argv[-2:] == ["/s/contract", "/s/sidecar"]
    assert images.OWN_DISTRIBUTIONS == {
        "sidecar": ("contract", "sidecar"),
        "operator": ("contract", "operator"),
    }


def test_build_command_has_no_network_and_the_base_argument(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WSGAUGE_DOCKER", "docker")
    argv = images.build_argv(Path("/c/Dockerfile"), Path("/c"), "wsgauge/x:1", "base:1")
    assert argv[:2] == ["docker", "build"]
    assert argv[argv.index("--network") + 1] == "none"
    assert argv[argv.index("--tag") + 1] == "wsgauge/x:1"
    assert argv[argv.index("--build-arg") + 1] == "PYTHON_IMAGE=base:1"
    assert argv[-1] == "/c"
    assert "--build-arg" not in images.build_argv(Path("/c/D"), Path("/c"), "r", None)


def test_pause_compile_command_is_static() -> None:
    argv = images.pause_compile_argv(Path("pause.c"), Path("out"), "0.1.0")
    assert argv[0] == "gcc"
    assert "-static" in argv
    assert '-DWSGAUGE_PAUSE_VERSION="0.1.0"' in argv
    assert argv[-3:] == ["-o", "out", "pause.c"]


@pytest.mark.parametrize("name", ["sidecar", "operator"])
def test_dockerignore_includes_exist_and_match_the_dockerfile(name: str) -> None:
    text = (REPO / "images" / f"Dockerfile.{name}.dockerignore").read_text()
    includes = images.dockerignore_includes(text)
    assert {"VERSION", "constraints.txt", "contract", name} <= set(includes)
    for relative in includes:
        assert (REPO / relative).exists(), relative
    dockerfile = (REPO / "images" / f"Dockerfile.{name}").read_text()
    assert "images/wheel[s]" in dockerfile  # optional wheels: builds from the index without them
    assert "ARG PYTHON_IMAGE=python:" in dockerfile  # the official image stays the default


def test_dockerignore_must_start_by_ignoring_everything() -> None:
    with pytest.raises(images.ImageBuildError):
        images.dockerignore_includes("!images/x\n")
    assert images.dockerignore_includes("# c\n*\n!a\n**/__pycache__\n!b/c\n") == ["a", "b/c"]


def test_image_refs_and_containerd_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMAGE_REGISTRY", raising=False)
    monkeypatch.delenv("IMAGE_TAG", raising=False)
    version = images.project_version()
    assert version == (REPO / "VERSION").read_text().strip()
    assert images.image_ref("pause") == f"wsgauge/pause:{version}"
    assert images.image_ref("sidecar", "reg.example/team/", "2") == "reg.example/team/sidecar:2"
    monkeypatch.setenv("IMAGE_REGISTRY", "other")
    assert images.image_ref("operator", tag="9") == "other/operator:9"
    assert images.containerd_ref("wsgauge/pause:0.1.0") == "docker.io/wsgauge/pause:0.1.0"
    assert images.containerd_ref("busybox:1") == "docker.io/library/busybox:1"
    assert images.containerd_ref("ghcr.io/w/s:1") == "ghcr.io/w/s:1"
    assert images.containerd_ref("localhost/w:1") == "localhost/w:1"
    assert images.containerd_ref("reg:5000/w:1") == "reg:5000/w:1"
    assert images.IMAGE_NAMES == ("pause", "sidecar", "operator")


def test_parse_python_info() -> None:
    info = images.parse_python_info("3.11 glibc 2.36\n")
    assert info == images.PythonInfo("3.11", (2, 36))
    with pytest.raises(images.ImageBuildError):
        images.parse_python_info("3.11  ")


def test_slim_rootfs_drops_docs_and_lists(tmp_path: Path) -> None:
    for relative in (
        "usr/share/doc/python3/changelog.gz",
        "usr/share/man/man1/python3.1.gz",
        "usr/share/locale/de/LC_MESSAGES/x.mo",
        "var/lib/apt/lists/deb.debian.org_dists_bookworm_InRelease",
        "usr/lib/python3.11/os.py",
    ):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text("x")
    images.slim_rootfs(tmp_path)
    assert (tmp_path / "usr/lib/python3.11/os.py").exists()
    assert (tmp_path / "usr/share/doc").is_dir()
    assert not any((tmp_path / "usr/share/doc").iterdir())
    assert not any((tmp_path / "var/lib/apt/lists").iterdir())
    assert (
        "path-exclude /usr/share/man/*"
        in (tmp_path / "etc/dpkg/dpkg.cfg.d/wsgauge-slim").read_text()
    )


def test_dockerd_changes_little_host_state() -> None:
    argv = docker_engine.dockerd_argv("/usr/sbin/dockerd")
    assert argv[0] == "/usr/sbin/dockerd"
    for flag in ("--iptables=false", "--ip-forward=false", "--ip-masq=false", "--bridge=none"):
        assert flag in argv
    assert "--host=unix:///var/run/docker.sock" in argv
    assert not any(arg.startswith("--data-root") for arg in argv)  # images stay cached


def test_docker_client_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSGAUGE_DOCKER", "/opt/docker")
    assert docker_engine.docker_client() == "/opt/docker"
    assert docker_engine.docker("info") == ["/opt/docker", "info"]
    monkeypatch.delenv("WSGAUGE_DOCKER")
    client = docker_engine.docker_client() if docker_engine.DEBIAN_CLIENT.exists() else None
    if client is not None:
        assert client == str(docker_engine.DEBIAN_CLIENT)  # Debian's, whatever PATH says
    env = docker_engine.docker_env()
    assert env["DOCKER_BUILDKIT"] == "0"
    assert "/usr/sbin" in env["PATH"].split(":")


def test_state_dir_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WSGAUGE_DOCKER_STATE_DIR", str(tmp_path))
    process = docker_engine.managed_dockerd()
    assert process.pid_file == tmp_path / "dockerd.pid"
    assert process.log_file == tmp_path / "dockerd.log"
    assert process.pid() is None
    assert docker_engine.started_by_us() is None


def test_clis_have_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        images.main(["build", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--load-into", "--print-sizes", "--python-image", "--registry"):
        assert flag in out
    with pytest.raises(SystemExit) as exit_info:
        docker_engine.main(["--help"])
    assert exit_info.value.code == 0
    assert "up" in capsys.readouterr().out


def test_the_engine_is_busy_while_a_build_or_load_uses_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`down` of one checkout leaves the dockerd it started running while another checkout
    builds or loads images with it (engine_in_use), and stops it once nothing does."""
    monkeypatch.setenv("WSGAUGE_DOCKER_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'none.sock'}")  # `docker ps` fails
    assert docker_engine._busy_reason() is None
    with docker_engine.engine_in_use(), docker_engine.engine_in_use():  # shared: both hold it
        assert docker_engine._busy_reason() == "a build or image load uses it"
    assert docker_engine._busy_reason() is None
