"""A real Prometheus for the project's tests: Debian's package, run as a host process.

:func:`ensure_installed` runs ``hack/install-prometheus.sh`` (Debian's ``prometheus``, which brings
``prometheus`` and ``promtool``). :class:`PrometheusServer` starts ``prometheus`` bound to
``127.0.0.1`` on a free port with a given configuration (static targets only, see
:mod:`.scrape_config`), its data in a directory of the caller, and stops it. It never scrapes
anything but the targets it is given, sends no alerts and writes nowhere remote.
:func:`rules_of` takes the rule groups out of rendered PrometheusRule objects (what
``promtool check rules`` and ``prometheus --config.file`` read); as a command::

    helm template wsgauge charts/wsgauge --set monitoring.prometheusRule.enabled=true \
      | python -m wsgauge_devcluster.prometheus rules > wsgauge-rules.yaml
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from wsgauge_devcluster.exceptions import DevClusterError
from wsgauge_devcluster.settings import REPO_ROOT

INSTALL_SCRIPT = REPO_ROOT / "hack" / "install-prometheus.sh"
"""Installs Debian's prometheus package when prometheus or promtool is missing."""


class PrometheusError(DevClusterError):
    """Prometheus could not be installed, started or queried."""


def ensure_installed(timeout: float = 600.0) -> tuple[Path, Path]:
    """``(prometheus, promtool)``, installing Debian's package first when either is missing."""
    result = subprocess.run(
        [str(INSTALL_SCRIPT)], capture_output=True, text=True, check=False, timeout=timeout
    )
    if result.returncode != 0:
        raise PrometheusError(f"{INSTALL_SCRIPT.name} failed: {result.stderr.strip()}")
    found = shutil.which("prometheus"), shutil.which("promtool")
    if found[0] is None or found[1] is None:
        raise PrometheusError(f"{INSTALL_SCRIPT.name} ran but prometheus/promtool are not on PATH")
    return Path(found[0]), Path(found[1])


def rules_of(objects: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """A Prometheus rules file: the ``spec`` (its ``groups``) of every PrometheusRule."""
    groups: list[Any] = []
    for item in objects:
        if item.get("kind") == "PrometheusRule":
            groups += item["spec"]["groups"]
    if not groups:
        raise PrometheusError("no PrometheusRule among the objects")
    return {"groups": groups}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PrometheusServer:
    """``prometheus`` on 127.0.0.1:<free port>, configuration and data under ``directory``."""

    def __init__(self, binary: Path, directory: Path, config: Mapping[str, Any]) -> None:
        self.binary = binary
        self.directory = directory
        self.config_file = directory / "prometheus.yml"
        self.config_file.write_text(yaml.safe_dump(dict(config), sort_keys=False))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        """Base URL of the HTTP API."""
        self._process: subprocess.Popen[bytes] | None = None
        self.log_file = directory / "prometheus.log"

    def start(self, timeout: float = 60.0) -> None:
        """Start and wait until ``/-/ready`` answers (bounded)."""
        argv = [
            str(self.binary),
            f"--config.file={self.config_file}",
            f"--storage.tsdb.path={self.directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=1d",
            "--query.lookback-delta=1m",
        ]
        with self.log_file.open("wb") as log:
            self._process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise PrometheusError(
                    f"prometheus exited with {self._process.returncode}: {self._log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        self.stop()
        raise PrometheusError(f"prometheus not ready within {timeout}s: {self._log_tail()}")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)

    def reload(self, config: Mapping[str, Any]) -> None:
        """Write a new configuration and SIGHUP (targets moved: a pod was replaced)."""
        self.config_file.write_text(yaml.safe_dump(dict(config), sort_keys=False))
        if self._process is None or self._process.poll() is not None:
            raise PrometheusError("prometheus is not running")
        self._process.send_signal(signal.SIGHUP)

    def __enter__(self) -> PrometheusServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>``; its ``data`` (raises on an error answer)."""
        query = urllib.parse.urlencode(params)
        url = f"{self.url}/api/v1/{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as reply:
                body = json.loads(reply.read())
        except urllib.error.HTTPError as error:
            raise PrometheusError(f"{path} {params}: HTTP {error.code} {error.read()!r}") from error
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant vector query: ``[{"metric": {...}, "value": [t, "v"]}, ...]``."""
        data = self.api("query", query=expr)
        if data["resultType"] != "vector":
            raise PrometheusError(f"{expr}: a {data['resultType']}, not a vector")
        return list(data["result"])

    def targets(self) -> list[dict[str, Any]]:
        """The active targets with their health and last error."""
        return list(self.api("targets", state="active")["activeTargets"])

    def _log_tail(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"


def main(argv: Sequence[str] | None = None) -> int:
    """``rules``: read rendered chart objects on stdin, print the rules file; 2 on bad input."""
    parser = argparse.ArgumentParser(prog="python -m wsgauge_devcluster.prometheus")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("rules", help="the chart's PrometheusRule spec as a rules file")
    parser.parse_args(argv)
    try:
        rules = rules_of(doc for doc in yaml.safe_load_all(sys.stdin) if doc)
    except (PrometheusError, yaml.YAMLError, KeyError, TypeError) as error:
        print(f"prometheus rules: {error}", file=sys.stderr)
        return 2
    sys.stdout.write(yaml.safe_dump(rules, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
