"""The distributions and the image recipes: each distribution declares exactly the third-party
packages its code imports, every runtime dependency is pinned in constraints.txt at the version
the tests run with, the version is written once (VERSION), and each image installs its own
distributions from their metadata and copies nothing else."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import distribution, requires, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

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
OWN = {"wsgauge_contract": "wsgauge-contract", "wsgauge_sidecar": "wsgauge-sidecar"}
OWN["wsgauge_operator"] = "wsgauge-operator"
DISTRIBUTIONS = {"contract": "wsgauge-contract", "sidecar": "wsgauge-sidecar"}
DISTRIBUTIONS["operator"] = "wsgauge-operator"
OPTIONAL = {"uvloop"}
"""Used when installed (the sidecar's event loop), so declared without a hard import."""


def imports(package_dir: Path) -> set[str]:
    found: set[str] = set()
    for path in package_dir.rglob("*.py"):
        found |= imports_of(path)
    return found - set(sys.stdlib_module_names)


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {name.split(".")[0] for name in names}
    return found - set(sys.stdlib_module_names)


def project(folder: str) -> dict[str, object]:
    with (REPO / folder / "pyproject.toml").open("rb") as handle:
        table = tomllib.load(handle)["project"]
    assert isinstance(table, dict)
    return table


def declared(folder: str) -> set[str]:
    dependencies = project(folder)["dependencies"]
    assert isinstance(dependencies, list)
    return {canonicalize_name(Requirement(d).name) for d in dependencies}


def extras(folder: str) -> dict[str, set[str]]:
    """The distribution's extras: name -> the distributions each adds."""
    table = project(folder).get("optional-dependencies", {})
    assert isinstance(table, dict)
    return {
        extra: {canonicalize_name(Requirement(d).name) for d in requirements}
        for extra, requirements in table.items()
    }


EXTRAS = {"sidecar": {"control": {"cryptography"}}}
"""The extras, what each adds, and (below) the one module that may import it."""
EXTRA_MODULES = {"cryptography": "order_auth.py"}


def constraints() -> dict[str, str]:
    pins: dict[str, str] = {}
    for raw in (REPO / "constraints.txt").read_text().splitlines():
        line = raw.split("#")[0].strip()
        if line:
            name, _, pinned_version = line.partition("==")
            assert pinned_version, f"constraints.txt: {line!r} is not pinned"
            pins[canonicalize_name(name)] = pinned_version
    return pins


@pytest.mark.parametrize("folder", sorted(DISTRIBUTIONS))
def test_distribution_declares_what_its_code_imports(folder: str) -> None:
    package = f"wsgauge_{folder}"
    found = imports(REPO / folder / package)
    own = {OWN[name] for name in found & OWN.keys()} - {DISTRIBUTIONS[folder]}
    needed = {canonicalize_name(IMPORT_TO_DISTRIBUTION[name]) for name in found - OWN.keys()}
    assert project(folder)["name"] == DISTRIBUTIONS[folder]
    with_extras = declared(folder).union(*extras(folder).values())
    assert with_extras - OPTIONAL == needed | own
    assert extras(folder) == EXTRAS.get(folder, {})
    for extra_distribution, module in EXTRA_MODULES.items():
        if extra_distribution in declared(folder):
            continue
        importers = {
            path.name
            for path in (REPO / folder / package).rglob("*.py")
            if extra_distribution in imports_of(path)
        }
        assert importers <= {module}, f"only {module} may import {extra_distribution}"
    assert declared(folder) & OPTIONAL <= ({"uvloop"} if folder == "sidecar" else set())


def test_sidecar_distribution_pulls_nothing_of_the_operator() -> None:
    assert declared("contract") == set()
    # cryptography only through the `control` extra (verifying the operator's control orders)
    assert declared("sidecar") & {"kopf", "kubernetes", "cryptography"} == set()
    assert "wsgauge-contract" in declared("operator")
    assert "wsgauge-operator" not in declared("sidecar")


def runtime_closure(names: set[str]) -> set[str]:
    """Every installed distribution the given ones need at run time (no extras)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        for text in requires(name) or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return seen


def test_constraints_pin_every_runtime_dependency_at_the_tested_version() -> None:
    pins = constraints()
    closure = runtime_closure(set(DISTRIBUTIONS.values())) - set(DISTRIBUTIONS.values())
    assert closure <= set(pins), f"not pinned: {sorted(closure - set(pins))}"
    for name, pinned_version in pins.items():
        assert version(name) == pinned_version, f"{name}: tests run with {version(name)}"
    assert not any(name.startswith("wsgauge") for name in pins)


def test_the_version_is_written_once() -> None:
    written = (REPO / "VERSION").read_text().strip()
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", written)
    for folder in [*DISTRIBUTIONS, "."]:
        pyproject = REPO / folder / "pyproject.toml"
        with pyproject.open("rb") as handle:
            document = tomllib.load(handle)
        assert "version" not in document["project"], pyproject
        assert document["project"]["dynamic"] == ["version"], pyproject
        assert document["tool"]["setuptools"]["dynamic"]["version"] == {"file": "VERSION"}
        link = REPO / folder / "VERSION"
        if folder != ".":
            assert link.is_symlink(), f"{link} must be a link to ../VERSION"
            assert link.readlink() == Path("../VERSION")
    for name in [*DISTRIBUTIONS.values(), "wsgauge-dev"]:
        assert distribution(name).version == written, f"{name}: reinstall (make venv)"
    chart = (REPO / "charts" / "wsgauge" / "Chart.yaml").read_text()
    # Helm reads Chart.yaml itself: the chart's version follows VERSION, checked here
    assert re.search(rf"^version: {re.escape(written)}$", chart, re.MULTILINE)
    assert re.search(rf'^appVersion: "{re.escape(written)}"$', chart, re.MULTILINE)


@pytest.mark.parametrize(
    ("image", "folders"),
    [("sidecar", ["contract", "sidecar"]), ("operator", ["contract", "operator"])],
)
def test_image_installs_its_distributions_and_copies_nothing_else(
    image: str, folders: list[str]
) -> None:
    dockerfile = (REPO / "images" / f"Dockerfile.{image}").read_text()
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, flags=re.MULTILINE)
    sources = {source for line in copied for source in line.split()}
    assert sources == {"VERSION", "constraints.txt", "images/wheel[s]", *folders}
    # the image's own distribution with the extra it installs (the sidecar: `control`)
    extra = {"sidecar": "[control]"}.get(image, "")
    assert f"--find-links=/tmp/build 'wsgauge-{image}{extra}'" in dockerfile or (
        not extra and f"--find-links=/tmp/build wsgauge-{image}" in dockerfile
    )
    built = [f"/tmp/build/{folder}" for folder in folders]
    if extra:
        built[-1] = f"'{built[-1]}{extra}'"
    assert " ".join(built) in dockerfile
    assert "-c /tmp/build/constraints.txt" in dockerfile
    assert "PYTHONPATH" not in dockerfile
    assert re.search(r"^USER 65532:65532$", dockerfile, flags=re.MULTILINE)
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11\.\d+-slim-\w+$", dockerfile, re.MULTILINE)
    assert not list((REPO / "images").glob("requirements-*.txt"))
