"""The operator's subpackages import only along the layering of :mod:`wsgauge_operator`.

Every ``import`` and ``from ... import`` of every module (at module level, inside functions and
under ``TYPE_CHECKING`` alike) is read with :mod:`ast`; an import of a subpackage placed lower in
:data:`LAYERS` than the importer's own (``model`` importing ``kube``, ``kube`` importing
``control``, ...) fails the test, and so does a module in a folder the layering does not know.
The pure model also stays free of I/O libraries.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import wsgauge_operator

PACKAGE_DIR = Path(wsgauge_operator.__file__).parent

LAYERS: tuple[tuple[str, ...], ...] = (
    ("model",),
    ("tls",),
    ("kube",),
    ("metrics_api", "injector"),
    ("control",),
    ("autoscaling", "servers"),
    ("handlers",),
    ("cli", "kubectl_plugin"),
    ("__main__",),
)
"""Top to bottom: a module may import from its own subpackage and from layers above it (never from
a sibling in its own layer). Layer names are subpackages, or the entry-point modules at the
package's top. The package
itself (``wsgauge_operator``: its ``__version__``) sits above every layer."""

RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}

MODEL_FORBIDDEN = {"asyncio", "aiohttp", "kopf", "kubernetes", "urllib3", "socket", "threading"}
"""Libraries that mean I/O or tasks: the pure model imports none of them."""


def _unit(module: str) -> str | None:
    """The layer unit of a dotted module name inside the package (None for the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE_DIR.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module the file at ``path`` imports, with its line."""
    return _imports_in(path.read_text(), _module_name(path), is_package=path.name == "__init__.py")


def _imports_in(source: str, name: str, *, is_package: bool) -> list[tuple[int, str]]:
    """Every module the source of module ``name`` imports (relative imports resolved)."""
    package = name if is_package else name.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # ``from wsgauge_operator import kube`` imports the subpackage itself
            found.extend((node.lineno, f"{target}.{alias.name}") for alias in node.names)
    return found


def _modules() -> list[Path]:
    return sorted(PACKAGE_DIR.rglob("*.py"))


def test_every_module_belongs_to_a_known_layer() -> None:
    unknown = [
        str(path.relative_to(PACKAGE_DIR))
        for path in _modules()
        if (unit := _unit(_module_name(path))) is not None and unit not in RANK
    ]
    assert unknown == [], f"add these to LAYERS in {__file__}: {unknown}"


def test_no_import_runs_against_the_layering() -> None:
    violations: list[str] = []
    for path in _modules():
        importer = _module_name(path)
        own = _unit(importer)
        if own is None:
            continue  # the package's __init__: imports nothing of its own
        for line, target in _imports(path):
            if target != "wsgauge_operator" and not target.startswith("wsgauge_operator."):
                continue
            unit = _unit(target)
            if unit is None or unit not in RANK:
                continue  # the package itself, or a name imported from it (not a module)
            if RANK[unit] > RANK[own] or (RANK[unit] == RANK[own] and unit != own):
                violations.append(f"{path.relative_to(PACKAGE_DIR)}:{line} imports {target}")
    assert violations == []


def test_the_model_does_no_io() -> None:
    violations = [
        f"{path.relative_to(PACKAGE_DIR)}:{line} imports {target}"
        for path in sorted((PACKAGE_DIR / "model").rglob("*.py"))
        for line, target in _imports(path)
        if target.split(".")[0] in MODEL_FORBIDDEN
    ]
    assert violations == []


@pytest.mark.parametrize(
    ("source", "flagged"),
    [
        ("from wsgauge_operator.kube.kubeapi import KubeApi\n", True),
        ("def f() -> None:\n    from wsgauge_operator.control import controller\n", True),
        ("from wsgauge_operator import servers\n", True),
        ("from ..kube import events\n", True),
        ("from wsgauge_operator.model.spec import parse_spec\n", False),
        ("from .label_selector import LabelSelector\n", False),
        ("from wsgauge_operator import __version__\n", False),
    ],
)
def test_the_walk_sees_upward_imports(source: str, flagged: bool) -> None:
    """The check itself: an import from ``model`` into a lower layer is found, however written."""
    found = _imports_in(source, "wsgauge_operator.model.spec", is_package=False)
    units = {_unit(target) for _, target in found if target.startswith("wsgauge_operator.")}
    assert any(unit in RANK and RANK[unit] > RANK["model"] for unit in units) == flagged
