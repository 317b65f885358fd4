"""The image recipes: each image pins exactly the third-party packages its code imports, at the
versions the tests run with, and copies only its own packages."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

IMPORT_TO_DISTRIBUTION = {
    "aiohttp": "aiohttp",
    "prometheus_client": "prometheus-client",
    "uvloop": "uvloop",
    "kopf": "kopf",
    "kubernetes": "kubernetes",
    "urllib3": "kubernetes",  # comes with the kubernetes client
    "yaml": "PyYAML",
    "cryptography": "cryptography",
}
REPO = Path(__file__).resolve().parents[3]
OWN = {"wsgauge_contract", "wsgauge_sidecar", "wsgauge_operator"}


def third_party_imports(package_dirs: list[Path]) -> set[str]:
    found: set[str] = set()
    for directory in package_dirs:
        for path in directory.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in OWN:
                        found.add(top)
    return found


def pinned(requirements: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for raw in requirements.read_text().splitlines():
        line = raw.split("#")[0].strip()
        if line:
            name, _, pinned_version = line.partition("==")
            assert pinned_version, f"{requirements.name}: {line!r} is not pinned"
            pins[name] = pinned_version
    return pins


@pytest.mark.parametrize(
    ("image", "packages"),
    [
        ("sidecar", ["contract/wsgauge_contract", "sidecar/wsgauge_sidecar"]),
        ("operator", ["contract/wsgauge_contract", "operator/wsgauge_operator"]),
    ],
)
def test_image_pins_what_its_code_imports(image: str, packages: list[str]) -> None:
    pins = pinned(REPO / "images" / f"requirements-{image}.txt")
    imports = third_party_imports([REPO / p for p in packages])
    needed = {IMPORT_TO_DISTRIBUTION[name] for name in imports}
    # uvloop is optional (used when installed), so it may be pinned without a hard import
    assert needed <= set(pins), f"{image}: missing {needed - set(pins)}"
    assert set(pins) - needed <= {"uvloop"}, f"{image}: not needed {set(pins) - needed}"
    for name, pinned_version in pins.items():
        assert version(name) == pinned_version, f"{name}: tests run with {version(name)}"
    dockerfile = (REPO / "images" / f"Dockerfile.{image}").read_text()
    copied = set(re.findall(r"^COPY (?!--from)(\S+) ", dockerfile, flags=re.MULTILINE))
    assert copied == {f"images/requirements-{image}.txt", *packages}
    assert re.search(r"^USER 65532:65532$", dockerfile, flags=re.MULTILINE)
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11\.\d+-slim-\w+$", dockerfile, re.MULTILINE)
