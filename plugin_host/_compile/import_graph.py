"""The import graph of a sandbox's modules, read from their ASTs (no code runs).

:mod:`plugin_host.compiler` uses it to find the modules that import a changed one (they are
validated, and reloaded, with it) and to order them so that none comes before what it imports.
"""

from __future__ import annotations

import ast
from typing import Iterable

from ..codeload import CodeTable, ModuleSource

__all__ = ["import_graph", "in_dependency_order"]


def import_graph(table: CodeTable, extra: Iterable[str] = ()) -> dict[str, set[str]]:
    """Module -> the modules of ``table`` (or ``extra`` names) it imports."""
    known = set(table.modules) | set(extra)
    return {name: _imports_of(source, known) for name, source in table.modules.items()}


def in_dependency_order(graph: dict[str, set[str]], module: str) -> list[str]:
    """``module`` first, then every module of ``graph`` that imports it, directly or not.

    Each module comes after every module of the list it imports; an import cycle is broken
    deterministically (by name).
    """
    found = _importers(graph, module)
    pending = {name: graph[name] & found - {module} for name in found - {module}}
    order = [module]
    while pending:
        ready = sorted(name for name, needs in pending.items() if not needs) or [min(pending)]
        order += ready
        for name in ready:
            del pending[name]
        for needs in pending.values():
            needs.difference_update(ready)
    return order


def _imports_of(module: ModuleSource, known: set[str]) -> set[str]:
    """The names in ``known`` that ``module`` imports (parent packages of a dotted import too)."""
    try:
        tree = ast.parse(module.source)
    except (SyntaxError, ValueError):
        return set()
    package = module.name if module.is_package else module.name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.update(_with_parents(alias.name))
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module, node.level, package)
            if base:
                found.update(_with_parents(base))
                found.update(f"{base}.{alias.name}" for alias in node.names)  # submodules by name
    return (found & known) - {module.name}


def _absolute(name: str | None, level: int, package: str) -> str | None:
    if level == 0:
        return name
    parts = package.split(".") if package else []
    if level - 1 >= len(parts):
        return None  # beyond the top-level package: fails at import time anyway
    base = ".".join(parts[: len(parts) - (level - 1)])
    return f"{base}.{name}" if name else base


def _with_parents(dotted: str) -> list[str]:
    parts = dotted.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _importers(graph: dict[str, set[str]], module: str) -> set[str]:
    found, frontier = {module}, [module]
    while frontier:
        target = frontier.pop()
        for name, imports in graph.items():
            if target in imports and name not in found:
                found.add(name)
                frontier.append(name)
    return found
