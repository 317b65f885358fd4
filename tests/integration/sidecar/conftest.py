"""Fixtures of the sidecar integration tests: a demo app process and a sidecar factory.

A test module that exercises relaying sets ``RELAY_PATHS = True``: its tests that start
sidecars then run twice, once with ``--relay python`` and once with ``--relay native`` (the
native relay; the sidecar exits at start if it is not available, so such a run cannot pass
on the Python path by accident). Other modules run with ``--relay auto``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sidecar_it_harness import DemoAppProcess, SidecarFactory, SidecarProcess

RELAYS = ("python", "native")
"""The two relay paths of ``--relay``."""


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run the tests of ``RELAY_PATHS`` modules once per relay path."""
    if "relay_path" in metafunc.fixturenames and getattr(metafunc.module, "RELAY_PATHS", False):
        metafunc.parametrize("relay_path", RELAYS, indirect=True)


@pytest.fixture
def relay_path(request: pytest.FixtureRequest) -> str:
    """The ``--relay`` value the sidecars of this test get."""
    return str(getattr(request, "param", "auto"))


@pytest.fixture(scope="module")
def demo_app() -> Iterator[DemoAppProcess]:
    """A ``wsgauge-demo-app`` on a free loopback port, shared by the tests of a module."""
    app = DemoAppProcess()
    try:
        yield app
    finally:
        app.stop()


@pytest.fixture
def start_sidecar(demo_app: DemoAppProcess, relay_path: str) -> Iterator[SidecarFactory]:
    """Start ``wsgauge-sidecar`` processes in front of ``demo_app``; all stopped afterwards."""
    started: list[SidecarProcess] = []

    def start(*args: str, upstream_port: int | None = None, **kwargs: object) -> SidecarProcess:
        port = demo_app.port if upstream_port is None else upstream_port
        sidecar = SidecarProcess(port, "--relay", relay_path, *args, **kwargs)  # type: ignore[arg-type]
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
