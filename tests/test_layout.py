"""The layout holds its rules: every module says what it exports, and no package reaches into another's
private modules (``actors`` reaches the transport through the public ``plugin_host.lowlevel``)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
from conftest import ROOT

PACKAGES = ("plugin_host", "actors")


def modules() -> list[tuple[str, Path]]:
    """Every module of the two packages, by dotted name."""
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found.append((name, path))
    return found


def _package(module: str) -> str:
    return module.split(".", 1)[0]


def private_imports(module: str, path: Path) -> set[tuple[str, str]]:
    """The private modules of another package that ``module`` imports (``from x import _y`` counts as ``x._y``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for target in targets:
            parts = target.split(".")
            private = any(part.startswith("_") and not part.startswith("__") for part in parts[1:])
            if parts[0] in PACKAGES and parts[0] != _package(module) and private:
                found.add((module, ".".join(parts[: next(i for i, p in enumerate(parts) if p.startswith("_")) + 1])))
    return found


@pytest.mark.parametrize("module", [name for name, _ in modules()])
def test_every_module_declares_what_it_exports(module: str) -> None:
    """Each module has an ``__all__`` whose every name it defines (a star import or a reader sees the API)."""
    if module.endswith("__main__"):  # importing it runs the command line: read it instead
        source = dict(modules())[module].read_text()
        assert "\n__all__" in source, f"{module} has no __all__"
        return
    loaded = importlib.import_module(module)
    exported = getattr(loaded, "__all__", None)
    assert isinstance(exported, (list, tuple)), f"{module} has no __all__"
    missing = [name for name in exported if not hasattr(loaded, name)]
    assert not missing, f"{module}.__all__ names what it does not define: {missing}"


def test_no_package_imports_another_packages_private_modules() -> None:
    """``actors`` and ``plugin_host`` reach each other through public modules only."""
    found = set().union(*(private_imports(name, path) for name, path in modules()))
    assert not found, f"cross-package private imports: {sorted(found)}"


def test_the_private_import_check_sees_one() -> None:
    """The check itself: a module importing another package's private module is found."""
    sample = ROOT / "tests" / "plugins" / "intruders" / "hijacker.py"  # an attacker's plugin: it does
    assert ("actors.hijacker", "plugin_host._wire") in private_imports("actors.hijacker", sample)
