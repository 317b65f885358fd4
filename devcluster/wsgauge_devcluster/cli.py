"""`wsgauge-devcluster up|down|status|env`: the command line of the local development cluster."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import sys
from collections.abc import Iterator
from pathlib import Path

from wsgauge_devcluster.binaries import locate
from wsgauge_devcluster.controlplane import ControlPlane
from wsgauge_devcluster.exceptions import DevClusterError
from wsgauge_devcluster.settings import ControlPlaneSettings, RunnerSettings


def _progress(message: str) -> None:
    print(f"[wsgauge-devcluster] {message}", file=sys.stderr, flush=True)


def build_control_plane() -> ControlPlane:
    """The cluster as configured by the environment (WSGAUGE_CLUSTER_DIR, ports, node count)."""
    return ControlPlane(ControlPlaneSettings(), locate(), RunnerSettings())


@contextlib.contextmanager
def state_lock(state_dir: Path) -> Iterator[None]:
    """Serialize `up`/`down` of one state directory across processes (flock)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with (state_dir / ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="wsgauge-devcluster",
        description="A real Kubernetes control plane on 127.0.0.1 plus a pod runner.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="start (or reuse) the cluster; prints export lines last")
    down = commands.add_parser("down", help="stop everything `up` started, by pid")
    down.add_argument("--purge", action="store_true", help="also delete the state directory")
    commands.add_parser("status", help="print which components run")
    commands.add_parser("env", help="print the export lines only")
    options = parser.parse_args(argv)
    try:
        plane = build_control_plane()
        if options.command == "up":
            with state_lock(plane.settings.state_dir):
                plane.up(_progress)
            print("\n".join(plane.exports()), flush=True)
        elif options.command == "down":
            with state_lock(plane.settings.state_dir):
                plane.down(_progress, purge=options.purge)
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
