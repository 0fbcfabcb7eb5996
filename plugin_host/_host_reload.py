"""The ``Host`` methods for code: compile, hot reload, rollback and version history."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, cast

from . import compiler
from .codeload import CodeTable
from .errors import HotReloadError, PluginHostError
from .messages import (
    BatchHotReload,
    Blob,
    Failed,
    GetModuleVersion,
    GetSandboxCode,
    GetVersionHistory,
    HotReload,
    ListModuleVersions,
    Request,
    RollbackModule,
)
from .values import Artifact, CompileInfo, ModuleVersion, ReloadResult, VersionHistory

if TYPE_CHECKING:
    from .config import HostConfig

__all__ = ["ReloadMethods"]

_SLACK = 5.0
_POOL_LOCK = threading.Lock()
"""Makes a host's compile pool once, whichever thread compiles first."""


def _artifacts(code: Artifact | CompileInfo | Iterable[Artifact]) -> list[Artifact]:
    if isinstance(code, CompileInfo):
        return list(code.artifacts)
    if isinstance(code, Artifact):
        return [code]
    return list(code)


class ReloadMethods:
    """Mixed into :class:`~plugin_host.Host`."""

    config: HostConfig
    _request: Callable[[Request, float, Callable[[], PluginHostError]], Any]  # provided by Host
    _sandbox_paths: dict[str, str]
    prepare_dependencies: Callable[[str | os.PathLike[str]], Path | None]
    _compile_pool_made: compiler.CompilePool | None = None
    """The warm compile worker of this host's validations; see :meth:`_compile_pool`."""

    def _cache_dir(self) -> Path:
        return Path(self.config.state_dir) / "compile-cache"

    def _compile_pool(self) -> compiler.CompilePool:
        """The host's compile pool, made on first use (its worker process starts on the first validation).

        Its worker's command line names the ``state_dir``, as every process of the host does.
        """
        with _POOL_LOCK:
            if self._compile_pool_made is None:
                self._compile_pool_made = compiler.CompilePool(label=str(self.config.state_dir))
            return self._compile_pool_made

    def _compile_pool_close(self) -> None:
        """End the warm compile worker (``Host.close`` calls this); later compiles run cold.

        Never raises: closing the host must go on.
        """
        try:
            self._compile_pool().close()  # made if need be, so a later compile cannot start a worker
        except Exception:  # noqa: BLE001 - Host.close shuts the actor system down after this, whatever happens
            pass

    def compile_sandbox(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float | None = None,
        validate: bool = True,
        security_profile: str | None = None,
    ) -> CompileInfo:
        """Compile a sandbox folder in a separate process (see :func:`plugin_host.compiler.compile_sandbox`).

        Raises:
            CompilationError: syntax or import errors (``errors`` lists file, line, message).
            CompilationTimeoutError: the import-time validation ran past ``timeout``.
            SecurityViolationError: the ``restricted`` profile found something.
        """
        environment = self.prepare_dependencies(path) if validate else None
        return compiler.compile_sandbox(
            path,
            timeout=timeout or self.config.compile_timeout,
            validate=validate,
            security_profile=security_profile or self.config.security_profile,
            cache_dir=self._cache_dir(),
            import_paths=() if environment is None else (str(environment),),
            pool=self._compile_pool(),
        )

    def compile_file(self, path: str | os.PathLike[str], timeout: float | None = None) -> CompileInfo:
        """Compile one module file (its folder's modules importable) in a separate process."""
        return compiler.compile_file(
            path,
            timeout=timeout or self.config.compile_timeout,
            security_profile=self.config.security_profile,
            cache_dir=self._cache_dir(),
            pool=self._compile_pool(),
        )

    def hot_reload(
        self,
        sandbox_id: str,
        code: Artifact | CompileInfo | Iterable[Artifact],
        *,
        state_handler: Callable[[Any, Any, Any], Any] | None = None,
        timeout: float | None = None,
        probation: float | None = None,
    ) -> ReloadResult:
        """Swap new code into every actor of the sandbox that runs it, keeping their state.

        Each affected actor builds the new behaviour and calls its
        ``code_change(old_state, old_vsn, new_vsn)`` (or ``state_handler`` with the same
        arguments) between two messages; messages that arrive meanwhile are handled by the new
        code.  All or nothing: if any actor fails, every actor keeps its old code and state.
        Modules that import a reloaded module are reloaded with it.  Code identical to the
        current version is a no-op; identical to a stored version, it switches to that number.
        When the sandbox's folder now declares other requirements, they are installed first,
        outside the sandbox (a failure raises ``DependencyError`` and changes nothing), and
        every module is re-executed against the new environment.

        Args:
            code: a ``CompileInfo``, an ``Artifact`` or a list of them.
            probation: seconds during which a crash of a reloaded actor rolls back by itself
                (default ``HostConfig.probation_seconds``; 0 disables).

        Returns:
            ``ReloadResult``; for several modules it names the first in dependency order.

        Raises:
            HotReloadError: an actor could not load the code or its ``code_change`` raised
                (``actor`` and ``cause`` say which and why).
            SandboxNotFoundError: no such sandbox.
        """
        timeout = timeout or self.config.reload_timeout
        request = HotReload(
            sandbox_id=sandbox_id,
            artifacts=_artifacts(code),
            timeout=timeout,
            probation=probation,
            state_handler=None if state_handler is None else Blob.dump(state_handler),
            environment=self._environment_for(sandbox_id),
        )
        return cast(
            ReloadResult,
            self._request(
                request,
                timeout + _SLACK,
                lambda: HotReloadError(f"no answer reloading {sandbox_id!r}", actor="", cause="timeout"),
            ),
        )

    def _environment_for(self, sandbox_id: str) -> str | None:
        """The sandbox's requirements as its folder declares them now, installed first (outside it)."""
        folder = self._sandbox_paths.get(sandbox_id)
        if folder is None or not os.path.isdir(folder):
            return None
        environment = self.prepare_dependencies(folder)
        return None if environment is None else str(environment)

    def hot_reload_source(
        self,
        sandbox_id: str,
        source: str,
        module: str,
        *,
        state_handler: Callable[[Any, Any, Any], Any] | None = None,
        timeout: float | None = None,
        probation: float | None = None,
    ) -> ReloadResult:
        """Compile ``source`` as the new version of ``module`` (validated against the sandbox's
        other modules, in a separate process) and hot-reload it (``state_handler``, ``timeout`` and
        ``probation`` as for :meth:`hot_reload`).

        Raises:
            CompilationError: it does not compile or import.
            HotReloadError: as :meth:`hot_reload`.
        """
        wire = self._request(
            GetSandboxCode(sandbox_id=sandbox_id),
            self.config.call_timeout,
            lambda: HotReloadError("no answer from the admin", actor="", cause="timeout"),
        )
        table = CodeTable.from_wire(wire)
        environment = self._environment_for(sandbox_id)
        info = compiler.compile_source(
            module,
            source,
            sandbox_sources=table,
            timeout=self.config.compile_timeout,
            security_profile=self.config.security_profile,
            cache_dir=self._cache_dir(),
            pool=self._compile_pool(),
            import_paths=() if environment is None else (environment,),
        )
        return self.hot_reload(sandbox_id, info, state_handler=state_handler, timeout=timeout, probation=probation)

    def batch_hot_reload(
        self, sandbox_ids: Iterable[str], code: Artifact | CompileInfo | Iterable[Artifact]
    ) -> list[ReloadResult | PluginHostError]:
        """Reload the same code into many sandboxes; one item per id: its result or its error."""
        timeout = self.config.reload_timeout
        request = BatchHotReload(sandbox_ids=list(sandbox_ids), artifacts=_artifacts(code), timeout=timeout)
        replies = self._request(
            request, timeout + _SLACK, lambda: HotReloadError("no answer to a batch reload", actor="", cause="timeout")
        )
        return [
            cast(PluginHostError, r.error) if isinstance(r, Failed) else cast(ReloadResult, r.value) for r in replies
        ]

    def rollback_module(
        self, sandbox_id: str, module: str, version: int, *, timeout: float | None = None
    ) -> ReloadResult:
        """Hot-reload the stored code of ``version`` (``code_change(state, current, version)``).

        Raises:
            VersionNotFoundError: the registry has no such version.
            HotReloadError: as :meth:`hot_reload`.
        """
        timeout = timeout or self.config.reload_timeout
        return cast(
            ReloadResult,
            self._request(
                RollbackModule(sandbox_id=sandbox_id, module=module, version=version, timeout=timeout),
                timeout + _SLACK,
                lambda: HotReloadError(f"no answer rolling back {sandbox_id!r}", actor="", cause="timeout"),
            ),
        )

    def get_module_version(self, sandbox_id: str, module: str) -> int:
        """The current version of ``module`` in the sandbox (running or not, as the registry knows it).

        Raises:
            UnknownModuleError: the registry knows no such module for that sandbox.
        """
        return cast(int, self._query(GetModuleVersion(sandbox_id=sandbox_id, module=module)))

    def list_module_versions(self, sandbox_id: str, module: str) -> list[ModuleVersion]:
        """Every stored version of ``module``, newest first."""
        return cast("list[ModuleVersion]", self._query(ListModuleVersions(sandbox_id=sandbox_id, module=module)))

    def get_version_history(self, sandbox_id: str, module: str) -> VersionHistory:
        """``VersionHistory(current_version, total_versions, versions)``, newest first."""
        return cast(VersionHistory, self._query(GetVersionHistory(sandbox_id=sandbox_id, module=module)))

    def _query(self, request: Request) -> Any:
        return self._request(
            request,
            self.config.call_timeout,
            lambda: HotReloadError("no answer from the registry", actor="registry", cause="timeout"),
        )
