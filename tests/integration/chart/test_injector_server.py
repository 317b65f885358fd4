"""The injector's HTTPS endpoint on loopback: AdmissionReview round trips over real TLS, bad
requests, certificate reload, and the stand-alone command's configuration."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from wsgauge_operator.injector.plan import InjectorSettings
from wsgauge_operator.injector.server import (
    InjectorServerSettings,
    parse_command,
    start_injector,
)
from wsgauge_operator.model.exceptions import ConfigError
from wsgauge_operator.tls.certificates import self_signed


def _review(annotations: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "operation": "CREATE",
            "namespace": "prod",
            "object": {
                "metadata": {"name": "p", "annotations": annotations},
                "spec": {"containers": [{"name": "app", "image": "x"}]},
            },
        },
    }


def _client_context(cert_pem: bytes) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=cert_pem.decode())


async def test_admission_review_round_trip_over_tls() -> None:
    server = await start_injector(
        InjectorServerSettings(host="127.0.0.1", port=0), InjectorSettings(image="r/s:2")
    )
    try:
        context = _client_context(server.serving_cert_pem)
        url = f"https://127.0.0.1:{server.port}"
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{url}/mutate", json=_review({"wsgauge.dev/inject": "true"}), ssl=context
            ) as response:
                assert response.status == 200
                answer = await response.json()
            assert answer["response"]["uid"] == "u-1"
            assert answer["response"]["allowed"]
            patch = json.loads(base64.b64decode(answer["response"]["patch"]))
            added = [op["value"] for op in patch if op["path"] == "/spec/containers/-"]
            assert added[0]["image"] == "r/s:2"
            async with session.post(f"{url}/mutate", json=_review({}), ssl=context) as response:
                assert (await response.json())["response"] == {"uid": "u-1", "allowed": True}
            async with session.post(f"{url}/mutate", data=b"{not json", ssl=context) as response:
                assert response.status == 400
            async with session.post(f"{url}/mutate", json={"kind": "x"}, ssl=context) as response:
                assert response.status == 400
            async with session.get(f"{url}/healthz", ssl=context) as response:
                assert response.status == 200
    finally:
        await server.stop()


async def _served_certificate(port: int) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    _reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True)
        return bytes(der)
    finally:
        writer.close()
        await writer.wait_closed()


def _der(pem: bytes) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem.decode())


async def test_certificate_files_are_reloaded_when_they_change(tmp_path: Path) -> None:
    first = self_signed(["127.0.0.1"], common_name="wsgauge-injector")
    second = self_signed(["127.0.0.1"], common_name="wsgauge-injector")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(first.cert_pem)
    key.write_bytes(first.key_pem)
    server = await start_injector(
        InjectorServerSettings(
            host="127.0.0.1", port=0, cert_file=str(cert), key_file=str(key), reload_interval=0.05
        ),
        InjectorSettings(),
    )
    try:
        assert await _served_certificate(server.port) == _der(first.cert_pem)
        cert.write_bytes(second.cert_pem)
        key.write_bytes(second.key_pem)
        for _ in range(100):
            if await _served_certificate(server.port) == _der(second.cert_pem):
                break
            await asyncio.sleep(0.05)
        assert await _served_certificate(server.port) == _der(second.cert_pem)
    finally:
        await server.stop()


def test_command_from_flags_environment_and_config_file(tmp_path: Path) -> None:
    config = tmp_path / "injector.json"
    config.write_text(json.dumps({"image": "r/s:3", "topic": "phoenix", "maxConnections": 7}))
    command = parse_command(
        ["--listen", "127.0.0.1:9555"],
        {"WSGAUGE_INJECTOR_CONFIG": str(config), "WSGAUGE_INJECTOR_LOG_LEVEL": "debug"},
    )
    assert command.server.host == "127.0.0.1"
    assert command.server.port == 9555
    assert command.injector.image == "r/s:3"
    assert command.injector.topic == "phoenix"
    assert command.injector.max_connections == 7
    assert command.log_level == "DEBUG"
    with pytest.raises(ConfigError):
        parse_command(["--listen", "nowhere"], {})
    with pytest.raises(ConfigError):
        parse_command([], {"WSGAUGE_INJECTOR_CONFIG": str(tmp_path / "missing.json")})
    config.write_text(json.dumps({"imageName": "x"}))
    with pytest.raises(ConfigError):
        parse_command([], {"WSGAUGE_INJECTOR_CONFIG": str(config)})
