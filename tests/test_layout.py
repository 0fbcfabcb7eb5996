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


def imported_modules(module: str, path: Path, known: set[str]) -> set[str]:
    """The modules of the two packages that ``module`` imports, type-only imports included.

    An import of a module's own package (its ``__init__``) is left out: Python runs a package
    before any of its modules whatever they import, so that edge is no circle.
    """
    is_package = path.name == "__init__.py"
    base = module.split(".") if is_package else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            anchor = base[: len(base) - node.level + 1] if node.level else []
            parent = ".".join(anchor + ([node.module] if node.module else []))
            # ``from x import y`` imports the module x.y if there is one, else a name of x
            names = [f"{parent}.{alias.name}" if f"{parent}.{alias.name}" in known else parent for alias in node.names]
        found |= {name for name in names if name in known and name != module and not module.startswith(name + ".")}
    return found


def import_circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The groups of modules that import each other, directly or round a circle (Tarjan's components)."""
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[set[str]] = []

    def visit(node: str) -> None:
        order[node] = low[node] = len(order)
        stack.append(node)
        for other in graph[node]:
            if other not in order:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], order[other])
        if low[node] == order[node]:
            group = {stack.pop()}
            while node not in group:
                group.add(stack.pop())
            if len(group) > 1:
                circles.append(group)

    for node in graph:
        if node not in order:
            visit(node)
    return circles


def test_no_module_imports_round_a_circle() -> None:
    """No two modules import each other, even only for type checking: the layers stay layers."""
    paths = dict(modules())
    graph = {name: imported_modules(name, path, set(paths)) for name, path in paths.items()}
    assert not import_circles(graph), f"import circles: {import_circles(graph)}"


def test_the_circle_check_sees_one() -> None:
    """The check itself: two modules importing each other, and a longer circle, are found; a chain is not."""
    assert import_circles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [{"a", "b"}]
    assert import_circles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [{"a", "b", "c"}]
    assert import_circles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
