"""Isolated compilation of sandbox code: syntax check, security scan, validation, cache.

Compiling a sandbox folder (or one module of it) goes through these steps, cheapest first:

1. every module is compiled to bytecode in this process (no code runs), and every syntax error
   is reported at once;
2. the AST security scan of the profile: ``restricted`` rejects, ``standard`` warns,
   ``permissive`` skips it;
3. with ``validate``, the modules are imported in a separate Python process that is killed at
   the timeout (:mod:`plugin_host._compile_worker`), so top-level code never runs in the caller;
   with a :class:`CompilePool`, that process is forked from a warm worker instead of started
   afresh (the same result, without the interpreter's start-up);
4. a successful result is kept in a content-hash cache under the caller's ``cache_dir`` (a
   folder of the host's ``state_dir``); nothing is ever written into the source tree.

The static scan is defence in depth, not a security boundary: code can always reach a
forbidden function in ways no static scan sees (``getattr(os, name)``).
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable, Sequence

import attrs

from ._compile_worker import CompilePool, CompilePoolStatistics, run_validator
from .codeload import CodeTable, ModuleSource, check_syntax, read_sandbox_folder
from .config import SECURITY_PROFILES
from .errors import (
    CompilationError,
    CompilationTimeoutError,
    ConfigError,
    SandboxStartError,
    SecurityViolationError,
)
from .values import Artifact, CompileInfo

__all__ = [
    "CompilePool",
    "CompilePoolStatistics",
    "compile_file",
    "compile_sandbox",
    "compile_source",
    "dependents",
    "scan_source",
]

Finding = tuple[str, int, str]
"""(file, line, message)."""

_CACHE_FORMAT = 1
"""Bumped whenever what a cache entry means changes, so old entries stop matching."""
_CACHE_LIMIT = 512
"""Cache entries kept; the least recently used go first."""


# -- public API ----------------------------------------------------------------------------


def compile_sandbox(
    path: str | os.PathLike[str],
    *,
    timeout: float = 60.0,
    validate: bool = True,
    security_profile: str = "standard",
    cache_dir: str | os.PathLike[str] | None = None,
    plugin_classes: Iterable[str] = (),
    pool: CompilePool | None = None,
    import_paths: Sequence[str] = (),
) -> CompileInfo:
    """Compile every module of a sandbox folder in isolation.

    Args:
        path: the sandbox folder (top-level modules and packages).
        timeout: seconds the import-time validation may take before its process is killed.
        validate: import every module in a separate process (top-level code runs only there).
        security_profile: ``restricted`` (findings raise), ``standard`` (findings are warnings
            in ``output``) or ``permissive`` (no scan).
        cache_dir: folder for the result cache (under the host's ``state_dir``); ``None``: no cache.
            When a previous compile of this folder succeeded, only the modules changed since,
            and those that import them, are imported again.
        plugin_classes: ``"module:Class"`` names that must be ``actors.Plugin`` or
            ``actors.Supervisor`` subclasses after import (checked only when validating).
        import_paths: folders put first on the validator's import path (the sandbox's
            dependency environment, see :mod:`plugin_host.deps`).
        pool: validate in a process forked from this pool's warm worker; default: a fresh
            Python process per compile (same results, about 100 ms slower).

    Returns:
        One artifact per module, sorted by module name.

    Raises:
        CompilationError: unreadable folder or file, syntax or import errors, bad plugin classes;
            ``errors`` lists (file, line, message) for every problem.
        CompilationTimeoutError: the validation ran past ``timeout`` and was killed.
        SecurityViolationError: the ``restricted`` scan found something.
        ConfigError: an invalid profile, timeout or ``cache_dir`` (inside the source tree).
    """
    start = time.perf_counter()
    root = Path(path).resolve()
    options = _Options.make(timeout, validate, security_profile, cache_dir, plugin_classes, root, pool,
                            import_paths)
    table = _read_folder(root)
    return _compile(_Job(table, tuple(sorted(table.modules)), str(root), options, whole_tree=True), start)


def compile_source(
    module: str,
    source: str | bytes,
    *,
    path: str | os.PathLike[str] | None = None,
    sandbox_sources: CodeTable | None = None,
    timeout: float = 60.0,
    validate: bool = True,
    security_profile: str = "standard",
    cache_dir: str | os.PathLike[str] | None = None,
    plugin_classes: Iterable[str] = (),
    pool: CompilePool | None = None,
    import_paths: Sequence[str] = (),
) -> CompileInfo:
    """Compile one module given as text, as ``hot_reload_source`` does.

    Only ``module`` is syntax-checked and scanned; validation imports it and then every module
    of ``sandbox_sources`` that imports it (see :func:`dependents`), in a separate process.

    Args:
        module: its dotted name in the sandbox.
        source: its text (bytes must be UTF-8).
        path: the file name shown in errors; default: the path it has in ``sandbox_sources``,
            or ``<module>``.
        sandbox_sources: the sandbox's other modules, importable by this one.
        timeout, validate, security_profile, cache_dir, plugin_classes, pool: as for
            :func:`compile_sandbox`.

    Returns:
        One artifact, for ``module``.

    Raises:
        CompilationError: invalid name, non-UTF-8 text, syntax or import errors.
        CompilationTimeoutError: the validation ran past ``timeout`` and was killed.
        SecurityViolationError: the ``restricted`` scan found something.
        ConfigError: an invalid profile or timeout.
    """
    start = time.perf_counter()
    options = _Options.make(timeout, validate, security_profile, cache_dir, plugin_classes, None, pool,
                            import_paths)
    base = sandbox_sources or CodeTable()
    old = base.modules.get(module)
    file = str(path) if path is not None else (old.path if old else f"<{module}>")
    entry = ModuleSource(module, file, _as_text(source, file), old.is_package if old else False)
    return _compile_module(entry, base, options, start)


def compile_file(
    path: str | os.PathLike[str],
    *,
    timeout: float = 60.0,
    validate: bool = True,
    security_profile: str = "standard",
    cache_dir: str | os.PathLike[str] | None = None,
    plugin_classes: Iterable[str] = (),
    pool: CompilePool | None = None,
    import_paths: Sequence[str] = (),
) -> CompileInfo:
    """Compile one ``.py`` file; the other modules of its folder are importable by it.

    A file inside packages (folders with ``__init__.py``) gets its dotted name, the folder above
    the outermost package being the sandbox folder.  Arguments, value and errors are those of
    :func:`compile_source`.
    """
    start = time.perf_counter()
    file = Path(path).resolve()
    root, name, is_package = _module_of_file(file)
    # No cache-inside-the-tree check here: the folder is only read for imports, and a file in
    # the home folder would otherwise refuse a state_dir under it.
    options = _Options.make(timeout, validate, security_profile, cache_dir, plugin_classes, None, pool,
                            import_paths)
    try:
        text = _as_text(file.read_bytes(), str(file))
    except OSError as exc:
        raise _error(f"cannot read {file}: {exc}", [(str(file), 0, str(exc))]) from None
    return _compile_module(ModuleSource(name, str(file), text, is_package), _siblings(root), options, start)


def dependents(table: CodeTable, module: str) -> list[str]:
    """``module`` first, then every module of ``table`` that imports it, directly or not.

    Imports are read from the AST (``import x``, ``from x import y``, relative imports inside
    packages; no code runs).  The order is a dependency order: a module comes after every
    module of the list it imports, so reloading in this order never sees stale code.  An
    import cycle is broken deterministically (by name).  ``module`` need not be in ``table``
    (it may just have been deleted).
    """
    return _in_dependency_order(_import_graph(table, {module}), module)


# -- the pipeline --------------------------------------------------------------------------


@attrs.frozen
class _Options:
    timeout: float
    validate: bool
    profile: str
    cache_dir: Path | None
    plugin_classes: tuple[str, ...]
    pool: CompilePool | None = attrs.field(default=None, eq=False)
    """Where validation runs; not part of what a compile means (nor of its cache key)."""
    import_paths: tuple[str, ...] = ()
    """Folders put first on the validator's import path (a sandbox's dependency environment)."""

    @classmethod
    def make(
        cls,
        timeout: float,
        validate: bool,
        profile: str,
        cache_dir: str | os.PathLike[str] | None,
        plugin_classes: Iterable[str],
        source_root: Path | None,
        pool: CompilePool | None = None,
        import_paths: Sequence[str] = (),
    ) -> _Options:
        if profile not in SECURITY_PROFILES:
            raise ConfigError(
                f"security_profile must be one of {', '.join(SECURITY_PROFILES)}, got {profile!r}",
                field="security_profile",
            )
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ConfigError(f"timeout must be a positive number of seconds, got {timeout!r}", field="timeout")
        folder = Path(cache_dir).resolve() if cache_dir is not None else None
        if folder is not None and source_root is not None and folder.is_relative_to(source_root):
            raise ConfigError(f"cache_dir {str(folder)!r} is inside the source tree {str(source_root)!r}",
                              field="cache_dir")
        classes = tuple(plugin_classes)
        _check_class_specs(classes)
        return cls(float(timeout), bool(validate), profile, folder, classes, pool, tuple(map(str, import_paths)))


@attrs.frozen
class _Job:
    table: CodeTable
    targets: tuple[str, ...]
    """The modules compiled: syntax-checked, scanned, returned as artifacts."""
    label: str
    options: _Options
    whole_tree: bool
    """Every module is a target, so modules unchanged since the last success need no re-import."""


def _compile_module(entry: ModuleSource, base: CodeTable, options: _Options, start: float) -> CompileInfo:
    if not all(part.isidentifier() for part in entry.name.split(".")):
        raise _error(f"invalid module name {entry.name!r}", [(entry.path, 0, f"invalid module name {entry.name!r}")])
    table = CodeTable({**base.modules, entry.name: entry})
    return _compile(_Job(table, (entry.name,), entry.path, options, whole_tree=False), start)


def _compile(job: _Job, start: float) -> CompileInfo:
    key = _cache_key(job)
    output = _cache_load(job.options.cache_dir, key)
    if output is not None:
        return CompileInfo(_artifacts(job), output, _elapsed_ms(start), cached=True)
    lines = [f"compiling {len(job.targets)} module(s) of {job.label} "
             f"(profile {job.options.profile}, Python {sys.version.split()[0]})"]
    _syntax(job)
    lines += _security(job)
    if job.options.validate:
        lines += _validate(job, lines)
    output = "\n".join(lines)
    if job.options.cache_dir is not None:
        _cache_store(job.options.cache_dir, job, key, output)
    return CompileInfo(_artifacts(job), output, _elapsed_ms(start), cached=False)


def _syntax(job: _Job) -> None:
    check_syntax(CodeTable({name: job.table.modules[name] for name in job.targets}))


def _security(job: _Job) -> list[str]:
    if job.options.profile == "permissive":
        return []
    findings = [f for name in job.targets for f in scan_source(job.table.modules[name].source,
                                                               job.table.modules[name].path)]
    if findings and job.options.profile == "restricted":
        raise SecurityViolationError(_format(findings, "security violation"), errors=findings, output="")
    return [_format([f], "security warning") for f in findings]


def _validate(job: _Job, lines: list[str]) -> list[str]:
    targets = _to_import(job)
    if not targets and not job.options.plugin_classes:
        return [f"validated 0 of {len(job.table.modules)} module(s): none changed since the last success"]
    result = run_validator(job.table, targets, job.options.plugin_classes,
                           timeout=job.options.timeout, label=job.label, pool=job.options.pool,
                           paths=job.options.import_paths)
    notes = [f"validated {len(targets)} of {len(job.table.modules)} module(s) by importing them "
             f"in a separate process ({result.elapsed * 1000:.0f} ms)"]
    if result.chatter.strip():
        notes += ["--- printed by the modules' top-level code ---", result.chatter.rstrip()]
    output = "\n".join(lines + notes)
    if result.timed_out:
        raise CompilationTimeoutError(_format(result.errors, "timeout"), errors=result.errors, output=output,
                                      timeout=job.options.timeout)
    if result.errors:
        raise CompilationError(_format(result.errors, "import failed"), errors=result.errors, output=output)
    return notes


def _to_import(job: _Job) -> list[str]:
    """The modules whose import must be re-run, in a dependency-friendly order."""
    changed: Iterable[str] = job.targets
    if job.whole_tree:
        previous = _manifest_load(job)
        if previous is None:
            return list(job.targets)
        changed = {n for n, m in job.table.modules.items() if previous.get(n) != m.checksum} | (
            set(previous) - set(job.table.modules))
    graph = _import_graph(job.table, changed)
    wanted: dict[str, None] = {}
    for name in sorted(changed):
        wanted.update(dict.fromkeys(n for n in _in_dependency_order(graph, name) if n in job.table.modules))
    return list(wanted)


def _artifacts(job: _Job) -> list[Artifact]:
    modules = [job.table.modules[name] for name in job.targets]
    return [Artifact(m.name, m.path, m.checksum, m.source) for m in modules]


def _elapsed_ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def _format(errors: Sequence[Finding], kind: str) -> str:
    return "\n".join(f"{file}:{line}: {kind}: {message}" for file, line, message in errors)


def _error(message: str, errors: list[Finding]) -> CompilationError:
    return CompilationError(message, errors=errors, output="")


def _check_class_specs(specs: Sequence[str]) -> None:
    bad = [s for s in specs if not re.fullmatch(r"[\w.]+:[\w.]+", str(s))]
    if bad:
        errors = [(str(spec), 0, "a plugin class must be named 'module:Class'") for spec in bad]
        raise _error(f"plugin classes must be named 'module:Class', got {bad}", errors)


def _as_text(source: str | bytes, file: str) -> str:
    try:
        text = source.decode("utf-8") if isinstance(source, bytes) else source
        text.encode("utf-8")  # lone surrogates in a str cannot be stored or hashed
    except UnicodeError as exc:
        message = f"cannot read as UTF-8 text: {exc}"
        raise _error(f"{file}: {message}", [(file, 0, message)]) from None
    return text


def _read_folder(root: Path) -> CodeTable:
    try:
        return read_sandbox_folder(root)
    except SandboxStartError as exc:
        raise _error(str(exc), [(str(root), 0, str(exc))]) from None


def _module_of_file(file: Path) -> tuple[Path, str, bool]:
    """(sandbox folder, dotted module name, is a package) of a ``.py`` file."""
    if file.suffix != ".py" or not file.is_file():
        raise _error(f"{file} is not a Python source file", [(str(file), 0, "not a Python source file")])
    parts = [] if file.stem == "__init__" else [file.stem]
    folder = file.parent
    while (folder / "__init__.py").is_file() and folder.parent != folder:
        parts.insert(0, folder.name)
        folder = folder.parent
    return folder, ".".join(parts), file.stem == "__init__"


def _siblings(root: Path) -> CodeTable:
    # An unreadable neighbour is not this file's problem unless it is imported, and then the
    # validator says so.
    try:
        return read_sandbox_folder(root)
    except (CompilationError, SandboxStartError):
        return CodeTable()


# -- the security scan ---------------------------------------------------------------------

_BANNED_MODULES = {
    "subprocess": "starts processes",
    "_posixsubprocess": "starts processes",
    "pty": "starts processes",
    "multiprocessing": "starts processes",
    "_multiprocessing": "starts processes",
    "socket": "opens network connections",
    "_socket": "opens network connections",
    "ctypes": "calls native code",
    "_ctypes": "calls native code",
}
_OS_MODULES = ("os", "posix")
_OS_CALLS = re.compile(r"(system|popen|fork|forkpty|exec\w*|spawn\w*)")
_CODE_BUILTINS = ("eval", "exec", "compile", "__import__")
_SHADOWABLE = frozenset(_CODE_BUILTINS + ("open",))
_OPENERS = ("builtins.open", "io.open")
_PATH_CLASSES = ("pathlib.Path", "pathlib.PosixPath", "pathlib.PurePath", "pathlib.PurePosixPath")
_PARENT_STEP = re.compile(r"(^|[/\\])\.\.([/\\]|$)")


def scan_source(source: str, path: str) -> list[Finding]:
    """Scan one module's AST for what the security profiles forbid; no code runs.

    Finds imports of process, network and native-code modules (``subprocess``, ``socket``,
    ``ctypes``, ``multiprocessing`` and their private twins), calls of ``os.system``,
    ``os.popen``, ``os.exec*``, ``os.spawn*`` and ``os.fork`` (under any alias), calls of the
    builtins ``eval``, ``exec``, ``compile`` and ``__import__`` (unless the module defines its
    own), ``importlib.import_module`` of a forbidden module, and ``open`` (or ``io.open``,
    ``pathlib.Path(...).open/write_text/write_bytes``) for writing a literal path that is absolute
    or climbs with ``..``.  Names are resolved through the module's imports, so words inside
    identifiers, strings or comments and attributes of other objects never match.

    Returns:
        (path, line, message) per finding, in source order.

    Raises:
        CompilationError: ``source`` is not valid Python.
    """
    try:
        tree = ast.parse(source, path)
    except (SyntaxError, ValueError) as exc:
        line = getattr(exc, "lineno", 0) or 0
        raise _error(f"{path}:{line}: {exc}", [(path, line, str(exc))]) from None
    nodes = list(ast.walk(tree))  # one walk shared by every pass: scanning is on the compile path
    scanner = _Scanner(path, _import_aliases(nodes), _bound_names(nodes))
    for node in nodes:
        scanner.check(node)
    return sorted(scanner.findings, key=lambda f: f[1])


class _Scanner:
    def __init__(self, path: str, aliases: dict[str, str], bound: set[str]) -> None:
        self.path = path
        self.findings: list[Finding] = []
        self.aliases = aliases
        self.bound = bound

    def report(self, node: ast.stmt | ast.expr, message: str) -> None:
        self.findings.append((self.path, node.lineno, message))

    def check(self, node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                self.check_module(node, alias.name, "imports")
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:  # relative imports are the sandbox's own modules
                self.check_module(node, node.module, "imports")
        elif isinstance(node, ast.Call):
            name = self.resolve(node.func)
            if name is not None:
                self.check_call(node, name)
            elif isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Call):
                self.check_path_method(node, node.func.attr, node.func.value)

    def resolve(self, expr: ast.expr) -> str | None:
        """The dotted name ``expr`` stands for (``builtins.eval``, ``os.system``), if known."""
        if isinstance(expr, ast.Name):
            if expr.id in self.aliases:
                return self.aliases[expr.id] or None
            return f"builtins.{expr.id}" if expr.id in _SHADOWABLE and expr.id not in self.bound else None
        if isinstance(expr, ast.Attribute):
            base = self.resolve(expr.value)
            return f"{base}.{expr.attr}" if base else None
        return None

    def check_module(self, node: ast.stmt | ast.expr, module: str, verb: str) -> None:
        reason = _BANNED_MODULES.get(module.split(".")[0])
        if reason:
            self.report(node, f"{verb} {module!r}, which {reason}")

    def check_call(self, node: ast.Call, name: str) -> None:
        owner, _, function = name.rpartition(".")
        if owner == "builtins" and function in _CODE_BUILTINS:
            self.report(node, f"calls {function}(), which runs code built at run time")
        elif owner in _OS_MODULES and _OS_CALLS.fullmatch(function):
            self.report(node, f"calls {name}(), which starts a process or a shell command")
        elif name == "importlib.import_module" and node.args and isinstance(node.args[0], ast.Constant):
            if isinstance(node.args[0].value, str):
                self.check_module(node, node.args[0].value, "imports (through importlib.import_module)")
        elif name in _OPENERS and _writes(_argument(node, 1, "mode")):
            self.check_target(node, _argument(node, 0, "file"))

    def check_path_method(self, node: ast.Call, method: str, receiver: ast.Call) -> None:
        if self.resolve(receiver.func) not in _PATH_CLASSES or not receiver.args:
            return
        if method in ("write_text", "write_bytes") or (method == "open" and _writes(_argument(node, 0, "mode"))):
            self.check_target(node, receiver.args[0])

    def check_target(self, node: ast.Call, target: ast.expr | None) -> None:
        text = _outside_text(target)
        if text is not None:
            self.report(node, f"opens {text!r} for writing, outside the sandbox folder")


def _import_aliases(nodes: Iterable[ast.AST]) -> dict[str, str]:
    """Local name -> dotted name it is bound to by the module's imports ('' for its own modules)."""
    aliases: dict[str, str] = {}
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]  # ``import a.b`` binds ``a``; ``import a.b as c`` binds a.b
                aliases[alias.asname or top] = alias.name if alias.asname else top
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                own = node.level > 0 or not node.module
                aliases[alias.asname or alias.name] = "" if own else f"{node.module}.{alias.name}"
    return aliases


def _bound_names(nodes: Iterable[ast.AST]) -> set[str]:
    """Names the module binds itself (assignments, defs, parameters): they shadow builtins."""
    bound: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            bound.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    return bound


def _argument(node: ast.Call, position: int, keyword: str) -> ast.expr | None:
    if len(node.args) > position and not isinstance(node.args[position], ast.Starred):
        return node.args[position]
    return next((k.value for k in node.keywords if k.arg == keyword), None)


def _writes(mode: ast.expr | None) -> bool:
    # Only literal modes: a computed one is unknown, and guessing would mean false positives.
    return isinstance(mode, ast.Constant) and isinstance(mode.value, str) and bool(set(mode.value) & set("wax+"))


def _outside_text(target: ast.expr | None) -> str | None:
    """The literal text of a path that is absolute or climbs out with ``..``, else None."""
    if target is None:
        return None
    pieces = [n.value for n in ast.walk(target) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    leading = _leading_text(target)
    if leading.startswith(("/", "~", "\\")) or any(_PARENT_STEP.search(p) for p in pieces):
        return ast.unparse(target)
    return None


def _leading_text(node: ast.expr) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values:
        return _leading_text(node.values[0])
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _leading_text(node.left)
    return ""


# -- the import graph ----------------------------------------------------------------------


def _import_graph(table: CodeTable, extra: Iterable[str] = ()) -> dict[str, set[str]]:
    """Module -> the modules of ``table`` (or ``extra`` names) it imports."""
    known = set(table.modules) | set(extra)
    return {name: _imports_of(source, known) for name, source in table.modules.items()}


def _in_dependency_order(graph: dict[str, set[str]], module: str) -> list[str]:
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


# -- the cache -----------------------------------------------------------------------------


def _settings(job: _Job) -> list[object]:
    o = job.options
    return [_CACHE_FORMAT, sys.version, sys.executable, o.profile, o.validate, sorted(o.plugin_classes),
            list(o.import_paths)]


def _cache_key(job: _Job) -> str:
    digest = hashlib.sha256(json.dumps(_settings(job) + [list(job.targets)]).encode())
    for name in sorted(job.table.modules):
        m = job.table.modules[name]
        digest.update(json.dumps([name, m.path, m.is_package, m.checksum]).encode())
    return digest.hexdigest()


def _cache_load(folder: Path | None, key: str) -> str | None:
    """The output of a cached success, or None (no cache, a miss, or an unreadable entry)."""
    if folder is None:
        return None
    entry = folder / f"{key}.json"
    try:
        data = json.loads(entry.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    output = data.get("output") if isinstance(data, dict) and data.get("key") == key else None
    if not isinstance(output, str):
        return None
    with contextlib.suppress(OSError):
        os.utime(entry)  # the least recently used entries are pruned first
    return output


def _cache_store(folder: Path, job: _Job, key: str, output: str) -> None:
    _write_json(folder, f"{key}.json", {"key": key, "output": output})
    if job.whole_tree and job.options.validate:
        modules = {name: m.checksum for name, m in job.table.modules.items()}
        _write_json(folder, _manifest_name(job), {"label": job.label, "modules": modules})
    _prune(folder)


def _manifest_name(job: _Job) -> str:
    digest = hashlib.sha256(json.dumps(_settings(job) + [job.label]).encode()).hexdigest()
    return f"manifest-{digest}.json"


def _manifest_load(job: _Job) -> dict[str, str] | None:
    """Module -> checksum of the last successful validation of this folder with these settings."""
    if job.options.cache_dir is None:
        return None
    try:
        data = json.loads((job.options.cache_dir / _manifest_name(job)).read_text(encoding="utf-8"))
        modules = data["modules"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if not isinstance(modules, dict) or data.get("label") != job.label:
        return None
    return {str(k): str(v) for k, v in modules.items()}


def _write_json(folder: Path, name: str, data: object) -> None:
    # The cache is an optimisation: failing to write it never fails a compile.  A temporary file
    # and os.replace make a reader see the old entry or the new one, never half of one.
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
    except OSError:
        return
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle)
        os.replace(temporary, folder / name)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)


def _prune(folder: Path) -> None:
    try:
        entries = [e for e in os.scandir(folder) if e.name.endswith(".json") and not e.name.startswith(".")]
        if len(entries) <= _CACHE_LIMIT:
            return
        entries.sort(key=lambda e: e.stat().st_mtime)
        for entry in entries[: len(entries) - _CACHE_LIMIT]:
            os.unlink(entry.path)
    except OSError:
        pass
