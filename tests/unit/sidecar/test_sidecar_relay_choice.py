"""Which relay a proxy uses (``--relay``), and that it says so when the native one is missing."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from wsgauge_sidecar import proxy as proxy_module
from wsgauge_sidecar.cli import parse_settings
from wsgauge_sidecar.native_relay import load_extension
from wsgauge_sidecar.proxy import ProxyServer
from wsgauge_sidecar.settings import SidecarSettings
from wsgauge_sidecar.state import SidecarState
from wsgauge_sidecar.topics import TopicRule


def _proxy(relay: str, rule: str = "path") -> ProxyServer:
    settings = SidecarSettings()
    proxy_settings = replace(settings.proxy, relay=relay, topic_rule=TopicRule(rule))
    settings = replace(settings, proxy=proxy_settings)
    return ProxyServer(SidecarState(settings))


def _native_metric(server: ProxyServer) -> str:
    text = server.state.metrics.render().decode()
    return next(line for line in text.splitlines() if line.startswith("wsgauge_native_relay "))


def test_without_the_extension_auto_relays_in_python_and_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        proxy_module, "load_extension", lambda: (None, "not available (no module named x)")
    )
    server = _proxy("auto")
    loop = asyncio.new_event_loop()
    server._start_native(loop)
    loop.close()
    assert server.native is None
    assert (
        server.relay_description == "python (the native relay is not available (no module named x))"
    )
    assert _native_metric(server) == "wsgauge_native_relay 0.0"


def test_python_never_starts_the_native_relay() -> None:
    loop = asyncio.new_event_loop()
    for rule in ("path", "phoenix", "auto"):
        server = _proxy("python", rule)
        server._start_native(loop)
        assert server.native is None
        assert server.relay_description == "python (--relay python)"
        assert _native_metric(server) == "wsgauge_native_relay 0.0"
    loop.close()


@pytest.mark.skipif(load_extension()[0] is None, reason="the native relay is not built here")
def test_frame_protocol_rules_start_the_native_relay() -> None:
    loop = asyncio.new_event_loop()
    for rule in ("phoenix", "socketio", "mqtt", "auto"):
        server = _proxy("auto", rule)
        server._start_native(loop)
        try:
            assert server.native is not None
            assert server.relay_description == "native"
        finally:
            server.release()
    loop.close()


@pytest.mark.skipif(load_extension()[0] is None, reason="the native relay is not built here")
def test_auto_starts_the_native_relay_when_it_loads() -> None:
    loop = asyncio.new_event_loop()
    server = _proxy("auto")
    server._start_native(loop)
    try:
        assert server.native is not None
        assert server.relay_description == "native"
        assert _native_metric(server) == "wsgauge_native_relay 1.0"
    finally:
        server.release()
        loop.close()


def test_relay_flag_values(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_settings(["--relay", "Python"], {}).proxy.relay == "python"
    assert parse_settings([], {"WSGAUGE_RELAY": "auto"}).proxy.relay == "auto"
    with pytest.raises(SystemExit) as exit_info:
        parse_settings(["--relay", "rust"], {})
    assert exit_info.value.code == 2
    monkeypatch.setattr(
        "wsgauge_sidecar.cli.load_extension", lambda: (None, "not available (gone)")
    )
    with pytest.raises(SystemExit) as exit_info:  # --relay native without it: exit 2 at start
        parse_settings(["--relay", "native"], {})
    assert exit_info.value.code == 2
