"""The admin port: readiness, /stats/watch, /metrics, errors, report mode, and the CLI."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time

import aiohttp
import pytest
import websockets
from sidecar_it_harness import BIN, DemoAppProcess, SidecarFactory, SidecarProcess, free_port
from wsgauge_contract import StatsDocument, WatchHeartbeat, WatchStreamDecoder
from wsgauge_sidecar.cli import parse_settings


async def test_ready_below_makes_readyz_fail(start_sidecar: SidecarFactory) -> None:
    sidecar = start_sidecar("--ready-below", "2")
    assert sidecar.get("/readyz") == (200, "ready")
    first = await websockets.connect(f"{sidecar.ws_base}/ws/r")
    await sidecar.wait_stats(lambda d: d["connections"] == 1)
    assert sidecar.get("/readyz")[0] == 200
    second = await websockets.connect(f"{sidecar.ws_base}/ws/r")
    document = await sidecar.wait_stats(lambda d: d["connections"] == 2)
    assert document["ready"] is False
    assert document["capacity"] == {
        "max": None,
        "readyBelow": 2,
        "topics": {},
        "upgradesPerSecond": None,
    }
    status, reason = sidecar.get("/readyz")
    assert status == 503
    assert "ready-below" in reason
    # not a hard limit: a third socket is still accepted
    third = await websockets.connect(f"{sidecar.ws_base}/ws/r")
    await second.close()
    await third.close()
    document = await sidecar.wait_stats(lambda d: d["connections"] == 1)
    assert document["ready"] is True
    assert sidecar.get("/readyz")[0] == 200
    await first.close()


async def test_upstream_down_makes_readyz_fail(start_sidecar: SidecarFactory) -> None:
    app = DemoAppProcess()
    try:
        sidecar = start_sidecar(upstream_port=app.port)
        assert sidecar.get("/readyz") == (200, "ready")
        app.stop()
        await sidecar.wait_stats(lambda d: d["ready"] is False)
        status, reason = sidecar.get("/readyz")
        assert status == 503
        assert "upstream unreachable" in reason
        assert sidecar.metric("wsgauge_upstream_reachable") == 0
        app = DemoAppProcess(port=app.port)  # it comes back: ready again
        await sidecar.wait_stats(lambda d: d["ready"] is True)
        assert sidecar.get("/readyz") == (200, "ready")
    finally:
        app.stop()


async def _read_watch(
    response: aiohttp.ClientResponse, decoder: WatchStreamDecoder, timeout: float = 10
) -> StatsDocument | WatchHeartbeat:
    pending: list[StatsDocument | WatchHeartbeat] = []
    deadline = time.monotonic() + timeout
    while not pending:
        chunk = await asyncio.wait_for(
            response.content.readany(), max(0.1, deadline - time.monotonic())
        )
        assert chunk, "watch stream ended"
        pending += decoder.feed(chunk)
    assert len(pending) == 1, pending
    return pending[0]


async def test_watch_delivers_changes_and_heartbeats(start_sidecar: SidecarFactory) -> None:
    sidecar = start_sidecar("--watch-heartbeat", "0.5", "--watch-min-interval", "0")
    decoder = WatchStreamDecoder()
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{sidecar.admin}/stats/watch") as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("application/x-ndjson")
        first = await _read_watch(response, decoder)
        assert isinstance(first, StatsDocument)
        assert first.connections == 0
        ws = await websockets.connect(f"{sidecar.ws_base}/ws/watched")
        seen: list[StatsDocument] = []
        for _ in range(20):
            event = await _read_watch(response, decoder)
            if isinstance(event, StatsDocument):
                seen.append(event)
                if event.topics.get("/ws/watched") == 1:
                    break
        assert seen
        assert seen[-1].connections == 1
        assert [doc.seq for doc in seen] == sorted({doc.seq for doc in seen})
        assert seen[0].seq > first.seq
        # nothing changes now: heartbeats (blank lines) arrive
        assert isinstance(await _read_watch(response, decoder), WatchHeartbeat)
        assert isinstance(await _read_watch(response, decoder), WatchHeartbeat)
        await ws.close()
        for _ in range(20):
            event = await _read_watch(response, decoder)
            if isinstance(event, StatsDocument) and event.connections == 0:
                break
        else:
            raise AssertionError("no document with 0 connections")


async def test_watch_coalesces_bursts(start_sidecar: SidecarFactory) -> None:
    sidecar = start_sidecar("--watch-min-interval", "1", "--watch-heartbeat", "30")
    decoder = WatchStreamDecoder()
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{sidecar.admin}/stats/watch") as response,
    ):
        await _read_watch(response, decoder)
        sockets = [await websockets.connect(f"{sidecar.ws_base}/ws/b") for _ in range(10)]
        documents: list[StatsDocument] = []
        while not documents or documents[-1].connections < 10:
            event = await _read_watch(response, decoder)
            assert isinstance(event, StatsDocument)
            documents.append(event)
        # ten opens (plus joins: 20 changes) arrive in far fewer documents
        assert len(documents) < 10
        for ws in sockets:
            await ws.close()


async def test_metrics_text(sidecar: SidecarProcess) -> None:
    ws = await websockets.connect(f"{sidecar.ws_base}/ws/m")
    await sidecar.wait_stats(lambda d: d["connections"] == 1)
    status, text = sidecar.get("/metrics")
    assert status == 200
    assert "wsgauge_connections 1.0" in text
    assert 'wsgauge_topic_connections{topic="/ws/m"} 1.0' in text
    assert "wsgauge_connections_opened_total 1.0" in text
    assert "# TYPE wsgauge_connection_duration_seconds histogram" in text
    assert "# TYPE wsgauge_handshake_failures_total counter" in text
    assert "# TYPE wsgauge_connections_closed_total counter" in text
    await ws.close()
    await sidecar.wait_stats(lambda d: d["connections"] == 0)
    assert sidecar.metric("wsgauge_connection_duration_seconds_count") == 1
    assert sidecar.metric("wsgauge_connections_closed_total", 'reason="normal"') == 1
    assert "python_gc" not in sidecar.get("/metrics")[1]  # a dedicated registry


async def test_admin_errors_are_json(sidecar: SidecarProcess) -> None:
    status, body = sidecar.get("/nope")
    assert status == 404
    assert "error" in json.loads(body)
    status, answer = sidecar.send("POST", "/stats", {})
    assert status == 405
    assert "error" in answer
    status, answer = sidecar.send("PUT", "/report", {"connections": 1})
    assert status == 404
    assert "report" in answer["error"]
    assert sidecar.get("/healthz") == (200, "ok")


async def test_report_mode(start_sidecar: SidecarFactory) -> None:
    sidecar = start_sidecar("--topic", "report", "--max-topics", "2", wait_data_port=False)
    status, document = sidecar.send("PUT", "/report", {"connections": 5, "topics": {"a": 3}})
    assert status == 200
    assert document["connections"] == 5
    assert document["topics"] == {"a": 3}
    status, document = sidecar.send("POST", "/report", {"connections": 2, "topics": {"b": 2}})
    assert status == 200
    assert document["connections"] == 7
    assert document["topics"] == {"a": 3, "b": 2}
    status, document = sidecar.send("POST", "/report", {"topics": {"c": 1, "d": 1}})
    assert document["topics"] == {"a": 3, "b": 2, "_other": 2}
    # bad input: rejected, nothing changes
    assert sidecar.send("POST", "/report", {"connections": -100})[0] == 409
    assert sidecar.send("POST", "/report", {"topics": {"a": -10}})[0] == 409
    assert sidecar.send("PUT", "/report", {"connections": -1})[0] == 400
    assert sidecar.send("PUT", "/report", {"topics": {}})[0] == 400  # no connections
    assert sidecar.send("PUT", "/report", {"connections": "5"})[0] == 400
    assert sidecar.send("PUT", "/report", {"connections": True})[0] == 400
    assert sidecar.send("PUT", "/report", b"{not json")[0] == 400
    assert sidecar.send("PUT", "/report", [1, 2])[0] == 400
    assert sidecar.send("PUT", "/report", b"x" * 2_000_000)[0] == 413
    assert sidecar.stats()["connections"] == 7
    # the data port is not opened in report mode
    try:
        await asyncio.open_connection("127.0.0.1", sidecar.port)
    except OSError:
        pass
    else:
        raise AssertionError("data port is open in report mode")
    status, document = sidecar.send("PUT", "/report", {"connections": 0, "topics": {}})
    assert document["connections"] == 0
    assert document["topics"] == {}
    assert sidecar.metric("wsgauge_connections") == 0


async def test_report_mode_with_the_demo_app(start_sidecar: SidecarFactory) -> None:
    sidecar = start_sidecar("--topic", "report", wait_data_port=False)
    app = DemoAppProcess(report_to=sidecar.report)
    try:
        sockets = [await websockets.connect(f"ws://127.0.0.1:{app.port}/ws/rep") for _ in range(3)]
        await sidecar.wait_stats(lambda d: d["connections"] == 3 and d["topics"] == {"rep": 3})
        for ws in sockets:
            await ws.close()
        await sidecar.wait_stats(lambda d: d["connections"] == 0)
    finally:
        app.stop()


def _local_address_not_loopback() -> str | None:
    """An IPv4 address of this host that is not on the loopback (None if there is none)."""
    with open("/proc/net/fib_trie", encoding="ascii") as trie:
        lines = trie.read().splitlines()
    for number, line in enumerate(lines):  # "|-- A.B.C.D" followed by "/32 host LOCAL"
        if "/32 host LOCAL" in line and number > 0:
            address = lines[number - 1].split()[-1]
            if not address.startswith("127."):
                return address
    return None


async def test_report_listener_is_loopback_and_serves_only_report(
    start_sidecar: SidecarFactory,
) -> None:
    sidecar = start_sidecar("--topic", "report", wait_data_port=False)
    base = sidecar.report.removesuffix("/report")
    status, document = sidecar.send("PUT", "/report", {"connections": 4, "topics": {"a": 4}}, base)
    assert status == 200
    assert document["connections"] == 4
    status, document = sidecar.send("POST", "/report", {"connections": 1}, base)
    assert (status, document["connections"]) == (200, 5)
    assert sidecar.stats()["connections"] == 5
    assert sidecar.send("GET", "/stats", b"", base)[0] == 404  # only /report there
    assert f"report 127.0.0.1:{sidecar.report_port}" in sidecar.output()
    address = _local_address_not_loopback()
    if address is not None:  # bound to 127.0.0.1 only, not to the host's other addresses
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((address, sidecar.report_port), timeout=2).close()


async def test_state_changing_requests_from_outside_the_pod_get_403(
    start_sidecar: SidecarFactory,
) -> None:
    address = _local_address_not_loopback()
    if address is None:
        pytest.skip("no non-loopback address on this host")
    sidecar = start_sidecar("--topic", "report", wait_data_port=False, admin_host="0.0.0.0")
    assert sidecar.send("PUT", "/report", {"connections": 3, "topics": {"a": 3}})[0] == 200
    before = sidecar.stats()
    outside = f"http://{address}:{sidecar.admin_port}"
    for method, path, body in (
        ("PUT", "/report", {"connections": 900, "topics": {"a": 900}}),
        ("POST", "/report", {"connections": 900}),
        ("DELETE", "/report", b""),
        ("POST", "/stats", {}),
        ("PATCH", "/anything", {}),
    ):
        status, answer = sidecar.send(method, path, body, outside)
        assert status == 403, (method, path, answer)
        assert "loopback" in answer["error"]
    after = sidecar.stats()
    assert (after["connections"], after["topics"], after["seq"]) == (
        before["connections"], before["topics"], before["seq"],
    )  # fmt: skip
    # read-only endpoints stay open to the operator, kubelet and Prometheus
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{outside}/stats") as reply:
            assert (await reply.json())["connections"] == 3
        async with session.get(f"{outside}/readyz") as reply:
            assert reply.status == 200
    log = await _eventually_text(sidecar, f"refused PUT /report from {address}")
    assert "nothing changed" in log
    # from the pod itself (loopback) the admin port still takes reports
    assert sidecar.send("PUT", "/report", {"connections": 2})[0] == 200


async def _eventually_text(sidecar: SidecarProcess, text: str) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        output = sidecar.output()
        if text in output:
            return output
        await asyncio.sleep(0.05)
    raise AssertionError(f"{text!r} not in the sidecar's log:\n{sidecar.output()[-3000:]}")


def test_report_listen_must_be_loopback() -> None:
    result = _run_cli("--topic", "report", "--report-listen", "0.0.0.0:9091")
    assert result.returncode == 2
    assert "--report-listen" in result.stderr
    assert "loopback" in result.stderr


def _run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "wsgauge-sidecar"), *args],
        capture_output=True, text=True, timeout=30, env=env, check=False,
    )  # fmt: skip


def _parse_error(
    argv: list[str], environ: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> str:
    with pytest.raises(SystemExit) as exit_info:
        parse_settings(argv, environ)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_bad_flags_exit_2_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    # the real process: exit code 2 and the message on stderr
    result = _run_cli("--topic", "bogus")
    assert result.returncode == 2
    assert "unknown topic rule" in result.stderr
    # the same parser in-process, for the other cases
    message = _parse_error(["--listen", "127.0.0.1:9999", "--admin-listen", "127.0.0.1:9999"], {},
                           capsys)  # fmt: skip
    assert "must differ" in message
    assert "--max-connections" in _parse_error(["--max-connections", "-3"], {}, capsys)
    assert "regular expression" in _parse_error(["--topic", "path:(["], {}, capsys)
    message = _parse_error([], {"WSGAUGE_DRAIN_GRACE": "soon"}, capsys)
    assert "environment" in message
    assert "--drain-grace" in message
    assert "upstream" in _parse_error(["--upstream", "0.0.0.0:8080"], {}, capsys)
    with pytest.raises(SystemExit):
        parse_settings(["--help"], {})
    help_text = capsys.readouterr().out
    for flag in ("--max-connections", "--ready-below", "--drain-spread", "WSGAUGE_MAX_TOPICS"):
        assert flag in help_text


async def test_env_mirrors_flags_and_flag_wins(demo_app: DemoAppProcess) -> None:
    admin_port = free_port()
    env = {
        "WSGAUGE_MAX_CONNECTIONS": "7",
        "WSGAUGE_READY_BELOW": "5",
        "WSGAUGE_ADMIN_LISTEN": f"127.0.0.1:{admin_port}",
        "POD_NAME": "chat-abc",
        "POD_NAMESPACE": "prod",
        "NODE_NAME": "node-1",
    }
    sidecar = SidecarProcess(demo_app.port, "--ready-below", "4", env=env)
    try:
        # the harness passes --admin-listen itself: the flag wins over the env
        assert sidecar.admin_port != admin_port
        document = sidecar.stats()
        assert document["capacity"] == {
            "max": 7,
            "readyBelow": 4,
            "topics": {},
            "upgradesPerSecond": None,
        }
        assert (document["pod"], document["namespace"], document["node"]) == (
            "chat-abc", "prod", "node-1",
        )  # fmt: skip
    finally:
        sidecar.stop()


def test_port_in_use_exits_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run_cli("--listen", f"127.0.0.1:{port}", "--admin-listen", "127.0.0.1:0",
                          "--upstream", "127.0.0.1:1")  # fmt: skip
    assert result.returncode == 1
    assert "cannot start" in result.stderr
