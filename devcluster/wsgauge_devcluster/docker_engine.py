"""A Docker engine that answers: the one already running, or Debian's dockerd started by us.

Image builds (``make images``, :mod:`wsgauge_devcluster.images`) need a Docker engine. Nothing
starts one on the machines this project runs on (no systemd), so when ``docker info`` fails this
module starts Debian's ``dockerd`` as a background process the project owns: its pid file and log
live under ``~/.cache/wsgauge/docker/`` (``WSGAUGE_DOCKER_STATE_DIR`` overrides), and it is started
so that it changes as little host state as it can:

- ``--iptables=false --ip-forward=false --ip-masq=false``: no iptables chains, no sysctl change;
- ``--bridge=none``: no ``docker0`` bridge. Containers and builds run with ``--network host`` or
  ``--network none`` (a plain ``docker run`` without ``--network`` gets no network at all);
- the default data root ``/var/lib/docker``, so built images and the build cache stay across runs.

:func:`stop_docker_engine` stops the engine only if this module started it (its pid file names a
live ``dockerd``); an engine someone else runs is never touched.

The client: Debian's ``/usr/bin/docker`` (20.10, the same version as Debian's engine) is used when
it exists, whatever comes first on PATH (a newer client in /usr/local/bin would shadow it and
talks to a 20.10 engine only through API-version negotiation and a deprecated classic-builder
path). ``WSGAUGE_DOCKER`` names another client. Builds use the classic builder
(``DOCKER_BUILDKIT=0``): Debian's engine has no BuildKit/buildx client plugin here.

CLI::

    python -m wsgauge_devcluster.docker_engine up|down|status
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from wsgauge_devcluster.exceptions import DevClusterError
from wsgauge_devcluster.processes import ManagedProcess, file_lock

Log = Callable[[str], None]

DEFAULT_SOCKET = "/var/run/docker.sock"
DEBIAN_CLIENT = Path("/usr/bin/docker")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class DockerEngineError(DevClusterError):
    """No Docker engine answers and none could be started."""


def state_dir() -> Path:
    """Where the pid file and the log of the dockerd we start live."""
    override = os.environ.get("WSGAUGE_DOCKER_STATE_DIR")
    if override:
        return Path(override)
    return Path.home() / ".cache" / "wsgauge" / "docker"


def managed_dockerd() -> ManagedProcess:
    """The dockerd this module starts (pid file ``dockerd.pid``, log ``dockerd.log``)."""
    return ManagedProcess("dockerd", state_dir(), match="dockerd")


def docker_client() -> str:
    """The docker client to use: ``$WSGAUGE_DOCKER``, else Debian's, else the first on PATH."""
    override = os.environ.get("WSGAUGE_DOCKER")
    if override:
        return override
    if DEBIAN_CLIENT.exists() and os.access(DEBIAN_CLIENT, os.X_OK):
        return str(DEBIAN_CLIENT)
    found = shutil.which("docker")
    if found is None:
        raise DockerEngineError(
            "no docker client found: install Debian's docker.io (hack/install-node-deps.sh)"
        )
    return found


def docker_env() -> dict[str, str]:
    """The environment for docker commands: the classic builder, sbin on PATH."""
    env = dict(os.environ)
    env["DOCKER_BUILDKIT"] = "0"
    env.setdefault("PATH", SYSTEM_PATH)
    for part in ("/usr/sbin", "/sbin"):
        if part not in env["PATH"].split(":"):
            env["PATH"] += ":" + part
    return env


def docker(*args: str) -> list[str]:
    """A docker command line with the chosen client."""
    return [docker_client(), *args]


def dockerd_argv(dockerd: str = "dockerd", socket: str = DEFAULT_SOCKET) -> list[str]:
    """The command line of the dockerd we start (as few host changes as possible)."""
    return [
        dockerd,
        f"--host=unix://{socket}",
        "--iptables=false",
        "--ip-forward=false",
        "--ip-masq=false",
        "--bridge=none",
    ]


def engine_version(timeout: float = 15.0) -> str | None:
    """The engine's version if ``docker info`` answers, else None."""
    try:
        result = subprocess.run(
            docker("info", "--format", "{{.ServerVersion}}"),
            env=docker_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    version = result.stdout.strip()
    if result.returncode != 0 or not version or version == "<no value>":
        return None
    return version


def find_dockerd() -> str | None:
    """Path of the dockerd binary, also when sbin is not on PATH."""
    found = shutil.which("dockerd", path=docker_env()["PATH"])
    return found


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


def ensure_docker_engine(log: Log, timeout: float = START_TIMEOUT) -> bool:
    """Make sure a Docker engine answers; start Debian's dockerd if none does.

    Returns True if this call started the engine (then :func:`stop_docker_engine` stops it),
    False if one was already answering. Raises :class:`DockerEngineError` with the log's path
    and its last lines when the engine cannot be started or does not answer in ``timeout``.
    """
    version = engine_version()
    if version is not None:
        log(f"Docker engine {version} answers ({docker_client()})")
        return False
    with file_lock(state_dir() / "lock"):  # make images and the devcluster may race
        process = managed_dockerd()
        pid = process.pid()
        if pid is None:
            version = engine_version()
            if version is not None:  # someone else started one meanwhile
                log(f"Docker engine {version} answers ({docker_client()})")
                return False
            host = os.environ.get("DOCKER_HOST", "")
            if host and host != f"unix://{DEFAULT_SOCKET}":
                raise DockerEngineError(
                    f"DOCKER_HOST={host} does not answer; wsgauge only starts an engine on "
                    f"{DEFAULT_SOCKET}: start that engine or unset DOCKER_HOST"
                )
            dockerd = find_dockerd()
            if dockerd is None:
                raise DockerEngineError(
                    "no Docker engine answers and dockerd is not installed: run "
                    "hack/install-node-deps.sh (installs Debian's docker.io)"
                )
            if os.geteuid() != 0:
                raise DockerEngineError(
                    "no Docker engine answers, and starting dockerd needs root: start one "
                    "(sudo dockerd) or run as root"
                )
            log(f"no Docker engine answers: starting {dockerd} (log: {process.log_file})")
            pid = process.start(dockerd_argv(dockerd), env=docker_env())
            started = True
        else:
            log(f"waiting for the dockerd we started earlier (pid {pid}, log: {process.log_file})")
            started = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            version = engine_version(timeout=5)
            if version is not None:
                log(f"Docker engine {version} answers (pid {pid}, log: {process.log_file})")
                return started
            if process.pid() is None:
                raise DockerEngineError(
                    f"dockerd exited while starting; log: {process.log_file}\n"
                    + _log_tail(process.log_file)
                )
            time.sleep(0.5)
        raise DockerEngineError(
            f"dockerd (pid {pid}) did not answer within {timeout:.0f} s; log: "
            f"{process.log_file}\n" + _log_tail(process.log_file)
        )


def started_by_us() -> int | None:
    """The pid of the dockerd this module started, if it runs."""
    return managed_dockerd().pid()


@contextlib.contextmanager
def engine_in_use() -> Iterator[None]:
    """Held (a shared lock) while an image build or load uses the engine: another checkout's
    `down` leaves the dockerd running meanwhile (see :func:`stop_docker_engine`)."""
    with file_lock(state_dir() / "users.lock", shared=True):
        yield


def _busy_reason() -> str | None:
    """Why the engine must keep running: containers run (a kind cluster), or a build or image
    load holds :func:`engine_in_use`. None when nothing uses it."""
    result = subprocess.run(
        docker("ps", "--quiet"),
        env=docker_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    containers = result.stdout.split() if result.returncode == 0 else []
    if containers:
        return f"{len(containers)} containers run in it"
    path = state_dir() / "users.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return "a build or image load uses it"
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


def stop_docker_engine(log: Log, timeout: float = STOP_TIMEOUT) -> bool:
    """Stop the dockerd this module started, unless something still uses it (containers run,
    a build or load holds :func:`engine_in_use`); leave any other engine alone. True if
    stopped."""
    with file_lock(state_dir() / "lock"):  # make images and the devcluster may race
        process = managed_dockerd()
        pid = process.pid()
        if pid is None:
            if engine_version() is not None:
                log("the Docker engine that answers was not started by wsgauge: left running")
            else:
                log("no wsgauge-started Docker engine runs")
            return False
        busy = _busy_reason()
        if busy is not None:
            log(f"the dockerd wsgauge started (pid {pid}) is left running: {busy}")
            return False
        log(f"stopping the dockerd wsgauge started (pid {pid})")
        process.stop(timeout)
        log("dockerd stopped")
        return True


def status_lines() -> list[str]:
    """What runs: the engine's version and whether wsgauge started it."""
    version = engine_version()
    pid = started_by_us()
    lines = [f"client: {docker_client()}"]
    lines.append(f"engine: {version} answers" if version else "engine: none answers")
    if pid is not None:
        lines.append(f"started by wsgauge: pid {pid}, log {managed_dockerd().log_file}")
    else:
        lines.append("started by wsgauge: no")
    return lines


def _stderr_log(message: str) -> None:
    print(f"[docker {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``up`` / ``down`` / ``status``."""
    parser = argparse.ArgumentParser(
        prog="python -m wsgauge_devcluster.docker_engine",
        description="Make sure a Docker engine answers (starts Debian's dockerd if none does), "
        "stop the one wsgauge started, or show what runs.",
    )
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--timeout", type=float, default=START_TIMEOUT, help="start timeout (s)")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            ensure_docker_engine(_stderr_log, timeout=args.timeout)
        elif args.command == "down":
            stop_docker_engine(_stderr_log)
        else:
            for line in status_lines():
                print(line)
            return 0 if engine_version() is not None else 1
    except DockerEngineError as error:
        _stderr_log(f"error: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
