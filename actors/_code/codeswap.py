"""Loading new versions of a sandbox's modules into one process, with a way back.

Every process of a sandbox has its own ``sys.modules`` (forked from the sandbox root).  A
reload re-executes the changed modules and the modules that import them, in dependency
order, in each process; until the reload commits, the old module objects are kept so an
abort puts everything back exactly as it was.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import types
from typing import Any, Callable, ContextManager

from plugin_host import deps
from plugin_host.codeload import CodeTable, ModuleSource, SandboxFinder
from plugin_host.config import HostConfig
from plugin_host.deps import activate_environment, prepare_environment

__all__ = ["Staged", "local_environment", "sandbox_finder"]

_MISSING = object()


def sandbox_finder() -> SandboxFinder:
    """This process's sandbox finder, installed on first use (sandboxes made from importable classes)."""
    for finder in sys.meta_path:
        if isinstance(finder, SandboxFinder):
            return finder
    finder = SandboxFinder(CodeTable({}))
    sys.meta_path.insert(0, finder)
    return finder


class Staged:
    """New module versions loaded into this process; :meth:`abort` restores the old ones.

    Args:
        sources: module name -> (path, source, is_package) for the changed modules.
        order: every module to re-execute, the changed ones first, then their importers.
        environment: a dependency environment to put first on the import path (the runtime's work).
        plugin_code: the context in which the modules' top-level code runs (the process's runtime
            audit, :meth:`actors._base.SandboxMember.plugin_code`).

    Raises:
        Exception: whatever the modules' top-level code raised (the old state is restored).
    """

    def __init__(
        self,
        sources: dict[str, tuple[str, str, bool]],
        order: list[str],
        environment: str | None = None,
        plugin_code: Callable[[], ContextManager[None]] = contextlib.nullcontext,
    ) -> None:
        self._old_path: list[str] | None = None
        self._evicted: dict[str, Any] = {}
        if environment and (not sys.path or sys.path[0] != environment):
            self._old_path, modules = list(sys.path), dict(sys.modules)
            self._evicted = {name: modules[name] for name in activate_environment(environment)}
        self.order = [name for name in order if name in sources or name in sys.modules]
        self._finder = sandbox_finder()
        table = self._finder.table.modules
        self._old_sources = {name: table.get(name) for name in self.order}
        self._old_modules = {name: sys.modules.get(name, _MISSING) for name in self.order}
        self._old_parents = {name: _parent_binding(name) for name in self.order}
        try:
            for name in self.order:
                if name in sources:
                    path, source, is_package = sources[name]
                    table[name] = ModuleSource(name, path, source, is_package)
                elif table.get(name) is None:
                    table[name] = _source_of(name)
                sys.modules.pop(name, None)
            with plugin_code():
                for name in self.order:
                    if name not in sys.modules:  # an earlier module of the order may have imported it
                        importlib.import_module(name)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Put the old modules, sources, package attributes and import path back."""
        if self._old_path is not None:
            sys.path[:] = self._old_path
            sys.modules.update(self._evicted)
        table = self._finder.table.modules
        for name in self.order:
            old_source = self._old_sources[name]
            if old_source is None:
                table.pop(name, None)
            else:
                table[name] = old_source
            old = self._old_modules[name]
            if old is _MISSING:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old  # type: ignore[assignment]
            parent, attribute, value = self._old_parents[name]
            if parent is not None:
                setattr(parent, attribute, value)


def _parent_binding(name: str) -> tuple[types.ModuleType | None, str, Any]:
    package, _, attribute = name.rpartition(".")
    parent = sys.modules.get(package) if package else None
    return parent, attribute, getattr(parent, attribute, None)


def _source_of(name: str) -> ModuleSource:
    """The source of an importable module that is not in the code table yet (read from its file)."""
    module = sys.modules.get(name)
    path = getattr(module, "__file__", None)
    if path is None:
        raise ImportError(f"module {name!r} has no source file to reload from")
    with open(path, encoding="utf-8") as handle:
        return ModuleSource(name, path, handle.read(), hasattr(module, "__path__"))


def local_environment(environment: str | None, packages: tuple[str, ...]) -> str | None:
    """The environment folder to use on this system.

    The host prepared ``environment`` on its own system; a root on another system gets the
    ``packages`` instead and installs them under its own system's ``state_dir`` (its launcher's
    ``PLUGIN_HOST_*`` settings), reusing an environment already there.

    Raises:
        DependencyError: pip failed here.
    """
    if not packages:
        return environment
    deps.PIP_IN_OWN_SESSION = False  # this is a sandbox process: pip must die with the sandbox
    config = HostConfig()
    prepared = prepare_environment(packages, config.state_dir, find_links=config.find_links, no_index=config.no_index)
    return None if prepared is None else str(prepared)
