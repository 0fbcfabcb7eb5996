"""Isolated compilation of sandbox code: syntax check, security scan, validation, cache.

Compiling a sandbox folder (or one module of it) goes through these steps, cheapest first:

1. every module is compiled to bytecode in this process (no code runs), and every syntax error
   is reported at once;
2. the AST security scan of the profile (:mod:`plugin_host._compile.scan`): ``restricted`` rejects,
   ``standard`` warns, ``permissive`` skips it;
3. with ``validate``, the modules are imported in a separate Python process that is killed at
   the timeout (:mod:`plugin_host._compile.worker`), so top-level code never runs in the caller;
   with a :class:`CompilePool`, that process is forked from a warm worker instead of started
   afresh (the same result, without the interpreter's start-up);
4. a successful result is kept in a content-hash cache (:mod:`plugin_host._compile.cache`)
   under the caller's ``cache_dir`` (a folder of the host's ``state_dir``); nothing is ever
   written into the source tree.

The static scan is defence in depth, not a security boundary: code can always reach a
forbidden function in ways no static scan sees (a module handed to a function that calls
``getattr`` on its parameter).
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import Iterable, Sequence

import attrs

from ._cgroup import CompileGroups
from ._compile.cache import cache_key, cache_load, cache_store, manifest_load
from ._compile.job import Job as _Job
from ._compile.job import Options as _Options
from ._compile.pool import CompilePool, CompilePoolStatistics
from ._compile.validator import run_validator
from .codeload import (
    CodeTable,
    ModuleSource,
    check_syntax,
    dependents,
    import_graph,
    in_dependency_order,
    read_sandbox_folder,
)
from .config import CONTROL_GROUPS, SECURITY_PROFILES, SYSCALL_FILTERS, ResourceLimits, check_choice
from .errors import (
    CompilationError,
    CompilationTimeoutError,
    ConfigError,
    SandboxStartError,
)
from .scanning import Finding, check_sources, format_findings, scan_source
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
    limits: ResourceLimits | None = None,
    user: tuple[int, int] | None = None,
    syscall_filter: str = "auto",
    control_groups: str = "auto",
    cgroup_root: str | os.PathLike[str] = "/sys/fs/cgroup",
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
        limits: the sandbox's limits: the validator runs under its ``max_memory_mb`` and
            ``max_cpu_seconds`` as hard rlimits (it always runs without capabilities and with
            ``no_new_privs``); default: none but ``timeout``.
        user: ``(uid, gid)`` the validator runs as (the host must be root): a sandbox with
            ``isolation="user"``; default: the host's uid.
        syscall_filter: the sandbox processes' seccomp filter in the validator too (see
            ``HostConfig.syscall_filter``): ``"auto"`` where libseccomp loads, ``"required"`` (the
            compile fails without it) or ``"off"``; the validator is non-dumpable either way.
        control_groups: a control group per validation (as ``HostConfig.control_groups`` for sandboxes):
            ``"auto"`` where this process can make them under ``cgroup_root`` (root, cgroup v1 with
            ``memory`` and ``pids``, or v2), with ``pids.max`` the sandbox's ``max_tasks`` (else 64) and
            memory ``max_memory_mb`` plus 64 MiB for every process of the validation together; ``"off"``:
            none; ``"required"``: ``ConfigError`` where they cannot be made.
        cgroup_root: where control groups are mounted (``HostConfig.cgroup_root``).

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
    options = _options(timeout, validate, security_profile, cache_dir, plugin_classes, root, pool, import_paths)
    options = attrs.evolve(
        options,
        limits=limits,
        user=_user(user),
        syscall_filter=check_choice("syscall_filter", syscall_filter, SYSCALL_FILTERS),
    )
    options = attrs.evolve(options, groups=_groups(options, control_groups, cgroup_root))
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
    limits: ResourceLimits | None = None,
    user: tuple[int, int] | None = None,
    syscall_filter: str = "auto",
    control_groups: str = "auto",
    cgroup_root: str | os.PathLike[str] = "/sys/fs/cgroup",
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
        timeout, validate, security_profile, cache_dir, plugin_classes, pool, import_paths,
        limits, user, syscall_filter, control_groups, cgroup_root: as for :func:`compile_sandbox`.

    Returns:
        One artifact, for ``module``.

    Raises:
        CompilationError: invalid name, non-UTF-8 text, syntax or import errors.
        CompilationTimeoutError: the validation ran past ``timeout`` and was killed.
        SecurityViolationError: the ``restricted`` scan found something.
        ConfigError: an invalid profile or timeout.
    """
    start = time.perf_counter()
    options = _options(timeout, validate, security_profile, cache_dir, plugin_classes, None, pool, import_paths)
    options = attrs.evolve(
        options,
        limits=limits,
        user=_user(user),
        syscall_filter=check_choice("syscall_filter", syscall_filter, SYSCALL_FILTERS),
    )
    options = attrs.evolve(options, groups=_groups(options, control_groups, cgroup_root))
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
    limits: ResourceLimits | None = None,
    user: tuple[int, int] | None = None,
    syscall_filter: str = "auto",
    control_groups: str = "auto",
    cgroup_root: str | os.PathLike[str] = "/sys/fs/cgroup",
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
    options = _options(timeout, validate, security_profile, cache_dir, plugin_classes, None, pool, import_paths)
    options = attrs.evolve(
        options,
        limits=limits,
        user=_user(user),
        syscall_filter=check_choice("syscall_filter", syscall_filter, SYSCALL_FILTERS),
    )
    options = attrs.evolve(options, groups=_groups(options, control_groups, cgroup_root))
    try:
        text = _as_text(file.read_bytes(), str(file))
    except OSError as exc:
        raise _error(f"cannot read {file}: {exc}", [(str(file), 0, str(exc))]) from None
    return _compile_module(ModuleSource(name, str(file), text, is_package), _siblings(root), options, start)


# -- the pipeline --------------------------------------------------------------------------


def _options(
    timeout: float,
    validate: bool,
    profile: str,
    cache_dir: str | os.PathLike[str] | None,
    plugin_classes: Iterable[str],
    source_root: Path | None,
    pool: CompilePool | None = None,
    import_paths: Sequence[str] = (),
) -> _Options:
    """The checked settings of a compile; a clear ``ConfigError`` for a bad one."""
    check_choice("security_profile", profile, SECURITY_PROFILES)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ConfigError(f"timeout must be a positive number of seconds, got {timeout!r}", field="timeout")
    folder = Path(cache_dir).resolve() if cache_dir is not None else None
    if folder is not None and source_root is not None and folder.is_relative_to(source_root):
        raise ConfigError(
            f"cache_dir {str(folder)!r} is inside the source tree {str(source_root)!r}", field="cache_dir"
        )
    classes = tuple(plugin_classes)
    _check_class_specs(classes)
    return _Options(float(timeout), bool(validate), profile, folder, classes, pool, tuple(map(str, import_paths)))


def _groups(options: _Options, mode: str, root: str | os.PathLike[str]) -> CompileGroups | None:
    """Where the compile's validation gets its control group (only a validating compile needs one)."""
    check_choice("control_groups", mode, CONTROL_GROUPS)
    return CompileGroups.decide(mode, Path(root)) if options.validate else None


def _user(user: tuple[int, int] | None) -> tuple[int, int] | None:
    """A checked ``(uid, gid)``; ``ConfigError`` for a bad one, or one this process cannot switch to."""
    if user is None:
        return None
    if not (isinstance(user, tuple) and len(user) == 2 and all(type(n) is int and n > 0 for n in user)):
        raise ConfigError(f"user must be (uid, gid), two positive ints, got {user!r}", field="user")
    if os.geteuid() != 0:
        raise ConfigError("the validator can run as another user only when the host runs as root", field="user")
    return user


def _compile_module(entry: ModuleSource, base: CodeTable, options: _Options, start: float) -> CompileInfo:
    if not all(part.isidentifier() for part in entry.name.split(".")):
        raise _error(f"invalid module name {entry.name!r}", [(entry.path, 0, f"invalid module name {entry.name!r}")])
    table = CodeTable({**base.modules, entry.name: entry})
    return _compile(_Job(table, (entry.name,), entry.path, options, whole_tree=False), start)


def _compile(job: _Job, start: float) -> CompileInfo:
    key = cache_key(job)
    output = cache_load(job.options.cache_dir, key)
    if output is not None:
        _security(job)  # never taken from the cache: it is cheap, and a planted entry must not skip it
        return CompileInfo(_artifacts(job), output, _elapsed_ms(start), cached=True)
    lines = [
        f"compiling {len(job.targets)} module(s) of {job.label} "
        f"(profile {job.options.profile}, Python {sys.version.split()[0]})"
    ]
    _syntax(job)
    lines += _security(job)
    if job.options.validate:
        lines += _validate(job, lines)
    output = "\n".join(lines)
    if job.options.cache_dir is not None:
        cache_store(job.options.cache_dir, job, key, output)
    return CompileInfo(_artifacts(job), output, _elapsed_ms(start), cached=False)


def _syntax(job: _Job) -> None:
    check_syntax(CodeTable({name: job.table.modules[name] for name in job.targets}))


def _security(job: _Job) -> list[str]:
    modules = [job.table.modules[name] for name in job.targets]
    findings = check_sources(((m.path, m.source) for m in modules), job.options.profile)
    return [format_findings([f], "security warning") for f in findings]


def _validate(job: _Job, lines: list[str]) -> list[str]:
    targets = _to_import(job)
    if not targets and not job.options.plugin_classes:
        return [f"validated 0 of {len(job.table.modules)} module(s): none changed since the last success"]
    result = run_validator(
        job.table,
        targets,
        job.options.plugin_classes,
        timeout=job.options.timeout,
        label=job.label,
        pool=job.options.pool,
        paths=job.options.import_paths,
        profile=job.options.profile,
        limits=job.options.limits,
        user=job.options.user,
        syscall_filter=job.options.syscall_filter,
        groups=job.options.groups,
    )
    notes = [
        f"validated {len(targets)} of {len(job.table.modules)} module(s) by importing them "
        f"in a separate process ({result.elapsed * 1000:.0f} ms)"
    ]
    if result.audited:
        notes += [f"--- recorded by the runtime audit ({job.options.profile}) while top-level code ran ---"]
        notes += result.audited
    if result.chatter.strip():
        notes += ["--- printed by the modules' top-level code ---", result.chatter.rstrip()]
    output = "\n".join(lines + notes)
    if result.timed_out:
        raise CompilationTimeoutError(
            format_findings(result.errors, "timeout"), errors=result.errors, output=output, timeout=job.options.timeout
        )
    if result.errors:
        raise CompilationError(format_findings(result.errors, "import failed"), errors=result.errors, output=output)
    return notes


def _to_import(job: _Job) -> list[str]:
    """The modules whose import must be re-run, in a dependency-friendly order."""
    changed: Iterable[str] = job.targets
    if job.whole_tree:
        previous = manifest_load(job)
        if previous is None:
            return list(job.targets)
        changed = {n for n, m in job.table.modules.items() if previous.get(n) != m.checksum} | (
            set(previous) - set(job.table.modules)
        )
    graph = import_graph(job.table, changed)
    wanted: dict[str, None] = {}
    for name in sorted(changed):
        wanted.update(dict.fromkeys(n for n in in_dependency_order(graph, name) if n in job.table.modules))
    return list(wanted)


def _artifacts(job: _Job) -> list[Artifact]:
    modules = [job.table.modules[name] for name in job.targets]
    return [Artifact(m.name, m.path, m.checksum, m.source) for m in modules]


def _elapsed_ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


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
