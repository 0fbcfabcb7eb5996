"""A host's code operations: compile (with its warm compile worker), hot reload, rollback and version history."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, TypeVar

from .. import compiler
from ..codeload import CodeTable
from ..config import ResourceLimits
from ..errors import HotReloadError, PluginHostError
from ..messages import (
    BatchHotReload,
    Blob,
    GetModuleVersion,
    GetSandboxCode,
    GetSandboxInfo,
    GetVersionHistory,
    HotReload,
    ListModuleVersions,
    Request,
    RollbackModule,
)
from ..values import Artifact, CompileInfo, ModuleVersion, ReloadResult, VersionHistory
from .channel import unwrap

if TYPE_CHECKING:
    from ..config import HostConfig
    from .channel import AdminChannel

__all__ = ["VALIDATION_USER", "CodeOps"]

T = TypeVar("T")

_SLACK = 5.0
VALIDATION_USER = (65534, 65534)
"""``nobody``/``nogroup``: the uid and gid of a compile validator for an ``isolation="user"`` sandbox (or
host).  It owns no file and no process of the host or of any sandbox."""
_POOL_LOCK = threading.Lock()
"""Makes a host's compile pool once, whichever thread compiles first."""


def _artifacts(code: Artifact | CompileInfo | Iterable[Artifact]) -> list[Artifact]:
    if isinstance(code, CompileInfo):
        return list(code.artifacts)
    if isinstance(code, Artifact):
        return [code]
    return list(code)


class CodeOps:
    """Compile, hot reload, rollback and version queries for one host.

    Owns the host's compile pool (made on first use) and the folder each sandbox was created from.

    Args:
        channel: the line to the admin.
        config: the host's configuration (timeouts, ``state_dir``, security profile).
        prepare_dependencies: installs a folder's requirements (``Host.prepare_dependencies``).
    """

    def __init__(
        self,
        channel: AdminChannel,
        config: HostConfig,
        prepare_dependencies: Callable[[str | os.PathLike[str]], Path | None],
    ) -> None:
        self._channel = channel
        self.config = config
        self.prepare_dependencies = prepare_dependencies
        self.sandbox_paths: dict[str, str] = {}
        """The folder each sandbox was created from: its requirements are read again at a reload."""
        self._compile_pool_made: compiler.CompilePool | None = None
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

    def close(self) -> None:
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
        """Compile a sandbox folder in a separate process (see :meth:`plugin_host.Host.compile_sandbox`)."""
        environment = self.prepare_dependencies(path) if validate else None
        return compiler.compile_sandbox(
            path,
            timeout=timeout or self.config.compile_timeout,
            validate=validate,
            security_profile=security_profile or self.config.security_profile,
            cache_dir=self._cache_dir(),
            import_paths=() if environment is None else (str(environment),),
            pool=self._compile_pool(),
            **self._confinement(self.config.isolation, self.config.limits),
        )

    def compile_file(self, path: str | os.PathLike[str], timeout: float | None = None) -> CompileInfo:
        """Compile one module file in a separate process (see :meth:`plugin_host.Host.compile_file`)."""
        return compiler.compile_file(
            path,
            timeout=timeout or self.config.compile_timeout,
            security_profile=self.config.security_profile,
            cache_dir=self._cache_dir(),
            pool=self._compile_pool(),
            **self._confinement(self.config.isolation, self.config.limits),
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
        """Swap new code into the sandbox (see :meth:`plugin_host.Host.hot_reload`)."""
        timeout = timeout or self.config.reload_timeout
        request = HotReload(
            sandbox_id=sandbox_id,
            artifacts=_artifacts(code),
            timeout=timeout,
            probation=probation,
            state_handler=None if state_handler is None else Blob.dump(state_handler),
            environment=self._environment_for(sandbox_id),
        )
        return self._channel.request(
            request,
            timeout + _SLACK,
            lambda: HotReloadError(f"no answer reloading {sandbox_id!r}", actor="", cause="timeout"),
        )

    def _environment_for(self, sandbox_id: str) -> str | None:
        """The sandbox's requirements as its folder declares them now, installed first (outside it)."""
        folder = self.sandbox_paths.get(sandbox_id)
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
        """Compile ``source`` as ``module`` and hot-reload it (see :meth:`plugin_host.Host.hot_reload_source`).

        It compiles under the sandbox's own profile, so a refusal comes before anything is sent; the
        admin scans again what it receives, and its verdict is the one that holds.
        """
        wire = self._ask_admin(GetSandboxCode(sandbox_id=sandbox_id))
        sandbox = self._ask_admin(GetSandboxInfo(sandbox_id=sandbox_id))
        table = CodeTable.from_wire(wire)
        environment = self._environment_for(sandbox_id)
        info = compiler.compile_source(
            module,
            source,
            sandbox_sources=table,
            timeout=self.config.compile_timeout,
            security_profile=sandbox.security_profile,
            cache_dir=self._cache_dir(),
            pool=self._compile_pool(),
            import_paths=() if environment is None else (environment,),
            **self._confinement(sandbox.isolation, ResourceLimits.from_mapping(sandbox.limits or None)),
        )
        return self.hot_reload(sandbox_id, info, state_handler=state_handler, timeout=timeout, probation=probation)

    def _confinement(self, isolation: str, limits: ResourceLimits) -> dict[str, Any]:
        """The validator's limits, uid, syscall filter and control groups (the host's) for a sandbox of ``isolation``
        and ``limits``.

        Under ``isolation="user"`` the validator runs as :data:`VALIDATION_USER`: the sandbox's own uid is
        given out by the admin at the create, after a first compile, and a validation must not reach the
        running processes of the sandbox whose new code it checks.
        """
        user = VALIDATION_USER if isolation == "user" else None
        return {
            "limits": limits,
            "user": user,
            "syscall_filter": self.config.syscall_filter,
            "control_groups": self.config.control_groups,
            "cgroup_root": self.config.cgroup_root,
        }

    def _ask_admin(self, request: Request[T]) -> T:
        return self._channel.request(
            request,
            self.config.call_timeout,
            lambda: HotReloadError("no answer from the admin", actor="", cause="timeout"),
        )

    def batch_hot_reload(
        self, sandbox_ids: Iterable[str], code: Artifact | CompileInfo | Iterable[Artifact]
    ) -> list[ReloadResult | PluginHostError]:
        """The same code into many sandboxes (see :meth:`plugin_host.Host.batch_hot_reload`)."""
        timeout = self.config.reload_timeout
        request = BatchHotReload(sandbox_ids=list(sandbox_ids), artifacts=_artifacts(code), timeout=timeout)
        replies = self._channel.request(
            request, timeout + _SLACK, lambda: HotReloadError("no answer to a batch reload", actor="", cause="timeout")
        )
        return [unwrap(r) for r in replies]

    def rollback_module(
        self, sandbox_id: str, module: str, version: int, *, timeout: float | None = None
    ) -> ReloadResult:
        """Hot-reload a stored version (see :meth:`plugin_host.Host.rollback_module`)."""
        timeout = timeout or self.config.reload_timeout
        return self._channel.request(
            RollbackModule(sandbox_id=sandbox_id, module=module, version=version, timeout=timeout),
            timeout + _SLACK,
            lambda: HotReloadError(f"no answer rolling back {sandbox_id!r}", actor="", cause="timeout"),
        )

    def get_module_version(self, sandbox_id: str, module: str) -> int:
        """The current version of ``module`` (see :meth:`plugin_host.Host.get_module_version`)."""
        return self._query(GetModuleVersion(sandbox_id=sandbox_id, module=module))

    def list_module_versions(self, sandbox_id: str, module: str) -> list[ModuleVersion]:
        """Every stored version of ``module``, newest first."""
        return self._query(ListModuleVersions(sandbox_id=sandbox_id, module=module))

    def get_version_history(self, sandbox_id: str, module: str) -> VersionHistory:
        """``VersionHistory(current_version, total_versions, versions)``, newest first."""
        return self._query(GetVersionHistory(sandbox_id=sandbox_id, module=module))

    def _query(self, request: Request[T]) -> T:
        return self._channel.request(
            request,
            self.config.call_timeout,
            lambda: HotReloadError("no answer from the registry", actor="registry", cause="timeout"),
        )
