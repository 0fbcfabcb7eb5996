"""Per-sandbox module namespaces (the "virtual code table").

A sandbox's modules are held as source text in a :class:`CodeTable` and imported inside
the sandbox's own processes through a meta-path finder, under their plain names.  Every
process of a sandbox descends from its sandbox root, so each sandbox has its own
``sys.modules``: two sandboxes may each have a module ``counter`` with different code, and
the host application's ``sys.modules`` never sees either.

The table's import graph, read from the ASTs (no code runs), says which modules import a
changed one and in which order to reload them (:func:`dependents`): the compiler validates
with it and the admin orders reloads by it, so it lives here, light enough for both.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import linecache
import os
import sys
import types
from pathlib import Path
from typing import Iterable, Sequence

import attrs

from .errors import CodeIntegrityError, CompilationError, SandboxStartError

__all__ = [
    "CodeTable",
    "dependents",
    "import_graph",
    "in_dependency_order",
    "ModuleSource",
    "PROTECTED_MODULES",
    "SandboxFinder",
    "read_sandbox_folder",
    "check_syntax",
    "verify_checksums",
    "wire_checksums",
]

_SKIP_DIRS = {"__pycache__", ".git", ".hg", ".svn", ".tox", ".venv", "venv", "node_modules", "build", "dist"}


@attrs.frozen
class ModuleSource:
    """The source of one module of a sandbox."""

    name: str
    path: str
    source: str
    is_package: bool = False

    @property
    def checksum(self) -> str:
        """sha256 of the source text, hex."""
        return hashlib.sha256(self.source.encode("utf-8")).hexdigest()


@attrs.frozen
class CodeTable:
    """The modules of one sandbox, by plain module name."""

    modules: dict[str, ModuleSource] = attrs.field(factory=dict)

    def as_wire(self) -> dict[str, tuple[str, str, bool]]:
        """Plain-data form for actor messages: name -> (path, source, is_package)."""
        return {m.name: (m.path, m.source, m.is_package) for m in self.modules.values()}

    @classmethod
    def from_wire(cls, data: dict[str, tuple[str, str, bool]]) -> CodeTable:
        """Inverse of :meth:`as_wire`."""
        return cls({name: ModuleSource(name, p, s, pkg) for name, (p, s, pkg) in data.items()})


def wire_checksums(sources: dict[str, tuple[str, str, bool]]) -> dict[str, str]:
    """sha256 of each module's source in a wire table (sent along with the sources)."""
    return {name: hashlib.sha256(source.encode("utf-8")).hexdigest() for name, (_, source, _) in sources.items()}


def verify_checksums(sources: dict[str, tuple[str, str, bool]], checksums: dict[str, str] | None) -> None:
    """Refuse sources that do not match the sha256 they were sent with (code that changed on the way).

    ``None`` means the sender sent none (a message from an older host): nothing to check.

    Raises:
        CodeIntegrityError: a module's source does not match, or has no checksum.
    """
    if checksums is None:
        return
    actual = wire_checksums(sources)
    bad = sorted(name for name in actual if checksums.get(name) != actual[name])
    if bad:
        raise CodeIntegrityError(
            f"refusing module(s) {', '.join(bad)}: the source does not match the sha256 it was sent with", modules=bad
        )


def _module_name(relative: Path) -> tuple[str, bool]:
    parts = list(relative.with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(parts), is_package


def read_sandbox_folder(path: str | os.PathLike[str]) -> CodeTable:
    """Read every module of a sandbox folder (top-level modules and packages with ``__init__.py``).

    Raises:
        SandboxStartError: the folder does not exist or holds no Python module.
        CompilationError: a file is not valid UTF-8 text.
    """
    root = Path(path)
    if not root.is_dir():
        raise SandboxStartError(f"sandbox folder {str(root)!r} does not exist or is not a folder", path=str(root))
    modules: dict[str, ModuleSource] = {}
    errors: list[tuple[str, int, str]] = []
    for file in sorted(root.rglob("*.py")):
        relative = file.relative_to(root)
        if any(part in _SKIP_DIRS or part.startswith(".") for part in relative.parts[:-1]):
            continue
        if not _inside_packages(root, relative):
            continue
        name, is_package = _module_name(relative)
        if not all(part.isidentifier() for part in name.split(".")):
            continue
        try:
            source = file.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError) as exc:
            errors.append((str(file), 0, f"cannot read as UTF-8 text: {exc}"))
            continue
        if name in modules and modules[name].is_package and not is_package:
            continue  # as in Python's import system, a package shadows a module of the same name
        modules[name] = ModuleSource(name, str(file.resolve()), source, is_package)
    if errors:
        raise CompilationError(_format_errors(errors), errors=errors)
    if not modules:
        raise SandboxStartError(f"sandbox folder {str(root)!r} holds no Python module", path=str(root))
    return CodeTable(modules)


def _inside_packages(root: Path, relative: Path) -> bool:
    """A file in a sub-folder counts only when every folder on its way is a package."""
    folder = root
    for part in relative.parts[:-1]:
        folder = folder / part
        if not (folder / "__init__.py").is_file():
            return False
    return True


def _format_errors(errors: Sequence[tuple[str, int, str]]) -> str:
    return "\n".join(f"{file}:{line}: {message}" for file, line, message in errors)


def check_syntax(table: CodeTable) -> None:
    """Compile every module (no code runs) and report every syntax error at once.

    Raises:
        CompilationError: with ``errors`` listing (file, line, message) for each problem.
    """
    errors: list[tuple[str, int, str]] = []
    for module in table.modules.values():
        try:
            compile(module.source, module.path, "exec", dont_inherit=True)
        except SyntaxError as exc:
            errors.append((module.path, exc.lineno or 0, exc.msg))
        except ValueError as exc:  # e.g. null bytes in the source
            errors.append((module.path, 0, str(exc)))
    if errors:
        raise CompilationError(_format_errors(errors), errors=errors)


class SandboxFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports a sandbox's modules from a :class:`CodeTable`, first on ``sys.meta_path``."""

    def __init__(self, table: CodeTable) -> None:
        self.table = table

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        """Serve ``fullname`` when the code table holds it."""
        module = self.table.modules.get(fullname)
        if module is None:
            return None
        spec = importlib.util.spec_from_loader(fullname, self, origin=module.path, is_package=module.is_package)
        if spec is not None:
            spec.has_location = True
        return spec

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        """Use the default module object."""
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        """Run the module's source in its namespace."""
        source = self.table.modules[module.__name__]
        _remember_source(source)
        module.__file__ = source.path
        code = compile(source.source, source.path, "exec", dont_inherit=True)
        exec(code, module.__dict__)


def _remember_source(module: ModuleSource) -> None:
    # Tracebacks show the running source, even when it was never a file on disk.
    lines = module.source.splitlines(keepends=True)
    linecache.cache[module.path] = (len(module.source), None, lines, module.path)


PROTECTED_MODULES = ("actors", "plugin_host", "thespian", "cloudpickle", "attrs", "attr", "psutil")
"""Top-level packages of the runtime that a sandbox module must never shadow."""


def install(table: CodeTable, *, protected: Iterable[str] = PROTECTED_MODULES) -> SandboxFinder:
    """Make ``table``'s modules importable in this (sandbox) process.

    Raises:
        SandboxStartError: a module would shadow one this process has already imported.
    """
    clashes = sorted(name for name in table.modules if name in sys.modules or name.split(".")[0] in set(protected))
    if clashes:
        raise SandboxStartError(
            f"sandbox module(s) {', '.join(clashes)} would shadow module(s) the host runtime already uses; rename them",
            modules=clashes,
        )
    finder = SandboxFinder(table)
    sys.meta_path.insert(0, finder)
    return finder


# -- the import graph of a code table (read from the ASTs; no code runs) ----------------------


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


def dependents(table: CodeTable, module: str) -> list[str]:
    """``module`` first, then every module of ``table`` that imports it, directly or not.

    Imports are read from the AST (``import x``, ``from x import y``, relative imports inside
    packages; no code runs).  The order is a dependency order: a module comes after every
    module of the list it imports, so reloading in this order never sees stale code.  An
    import cycle is broken deterministically (by name).  ``module`` need not be in ``table``
    (it may just have been deleted).
    """
    return in_dependency_order(import_graph(table, {module}), module)
