"""Fixtures of the sidecar integration tests: a demo app process and a sidecar factory."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sidecar_it_harness import DemoAppProcess, SidecarFactory, SidecarProcess


@pytest.fixture(scope="module")
def demo_app() -> Iterator[DemoAppProcess]:
    """A ``wsgauge-demo-app`` on a free loopback port, shared by the tests of a module."""
    app = DemoAppProcess()
    try:
        yield app
    finally:
        app.stop()


@pytest.fixture
def start_sidecar(demo_app: DemoAppProcess) -> Iterator[SidecarFactory]:
    """Start ``wsgauge-sidecar`` processes in front of ``demo_app``; all stopped afterwards."""
    started: list[SidecarProcess] = []

    def start(*args: str, upstream_port: int | None = None, **kwargs: object) -> SidecarProcess:
        port = demo_app.port if upstream_port is None else upstream_port
        sidecar = SidecarProcess(port, *args, **kwargs)  # type: ignore[arg-type]
        started.append(sidecar)
        return sidecar

    try:
        yield start
    finally:
        for sidecar in started:
            sidecar.stop()


@pytest.fixture
def sidecar(start_sidecar: SidecarFactory) -> SidecarProcess:
    """A sidecar with the default (``path``) topic rule."""
    return start_sidecar()
