"""Operator access to a host that runs in another process, through its admin port.

The ``status``, ``destroy``, ``reload``, ``rollback`` and ``history`` commands attach to the
actor system a ``Host`` already runs and speak the ``plugin_host.messages`` protocol to its admin actor.  They never start that
system and never shut it down: closing an :class:`AdminClient` only detaches from it.
Compilation needs no host: :func:`compile_path` runs the isolated compiler locally, the
way ``Host.compile_sandbox`` does, and ``reload`` sends its artifacts to the admin.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import attrs

from . import compiler
from .config import HostConfig
from .errors import CallTimeoutError, HostClosedError, HostStartError, PluginHostError
from .messages import (
    ADMIN_GLOBAL_NAME,
    DestroySandbox,
    Failed,
    GetAuditLog,
    GetResourceUsage,
    GetVersionHistory,
    HotReload,
    ListSandboxes,
    Request,
    RollbackModule,
)
from ._system import DEAD, ActorSystemHandle
from .values import Artifact, AuditRecord, CompileInfo, ReloadResult, ResourceUsage, SandboxInfo, VersionHistory

__all__ = ["AdminClient", "compile_path"]

_SLACK = 5.0  # seconds on top of the admin's own deadlines, so that it answers first


class AdminClient:
    """A connection to the admin actor of a running host.

    Args:
        port: the host's admin port (``Host.admin_port``).
        config: where to connect (``bind_address``) and the timeouts to use; default
            ``HostConfig()``, i.e. defaults and the ``PLUGIN_HOST_*`` environment.

    Raises:
        HostStartError: no plugin host listens on that port.
    """

    def __init__(self, port: int, config: HostConfig | None = None) -> None:
        self.config = config or HostConfig()
        self.port = port
        """The admin port attached to."""
        self._system = ActorSystemHandle(self.config)
        try:
            self._system.attach_existing(port)
            # Global names are idempotent: this finds the running admin, it starts none.
            from actors.admin import AdminActor

            self._admin = self._system.create_actor(AdminActor, ADMIN_GLOBAL_NAME)
        except PluginHostError:
            self._system.detach()
            raise
        except Exception as exc:  # noqa: BLE001 - Thespian raises its own types for a bad peer
            self._system.detach()
            raise HostStartError(f"cannot reach a plugin host on port {port}: {exc}", port=port) from exc

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Detach from the host's actor system, leaving it running.  Idempotent."""
        self._system.detach()

    def request(self, request: Request, timeout: float) -> Any:
        """Send one admin request and return the value of its ``Ok`` reply.

        Raises:
            CallTimeoutError: the admin did not answer within ``timeout`` seconds.
            HostClosedError: the host went away (its admin refused the request).
            PluginHostError: the admin answered ``Failed`` (its error is raised as is).
        """
        request = attrs.evolve(request, corr=self._system.new_corr())
        reply = self._system.ask(self._admin, request, timeout)
        if reply is DEAD:
            raise HostClosedError(f"the plugin host on port {self.port} went away", port=self.port)
        if reply is None:
            raise CallTimeoutError(f"the admin actor did not answer {type(request).__name__} in time")
        if isinstance(reply, Failed):
            raise reply.error
        return reply.value

    def list_sandboxes(self) -> list[SandboxInfo]:
        """Every sandbox of the host, sorted by id."""
        return list(self.request(ListSandboxes(), self.config.call_timeout + _SLACK))

    def resource_usage(self, sandbox_id: str) -> ResourceUsage:
        """Memory, CPU time, messages and restarts per actor of the sandbox, as ``Host.resource_usage`` does.

        Raises:
            SandboxNotFoundError: no such sandbox.
        """
        request = GetResourceUsage(sandbox_id=sandbox_id)
        return self.request(request, self.config.call_timeout + _SLACK)  # type: ignore[no-any-return]

    def audit_log(self, sandbox_id: str) -> list[AuditRecord]:
        """The sandbox's recent audit records, oldest first, as ``Host.audit_log`` does.

        Raises:
            SandboxNotFoundError: no such sandbox.
        """
        return list(self.request(GetAuditLog(sandbox_id=sandbox_id), self.config.call_timeout + _SLACK))

    def destroy_sandbox(self, sandbox_id: str) -> None:
        """Stop a sandbox of the host and end its processes.

        Raises:
            SandboxNotFoundError: no such sandbox.
        """
        self.request(DestroySandbox(sandbox_id=sandbox_id), 2 * self.config.shutdown_timeout + _SLACK)

    def hot_reload(self, sandbox_id: str, artifacts: Sequence[Artifact]) -> ReloadResult:
        """Swap compiled code into a running sandbox, as ``Host.hot_reload`` does.

        Raises:
            HotReloadError: an actor refused the code; the old code and state were kept.
            SandboxNotFoundError: no such sandbox.
        """
        timeout = self.config.reload_timeout
        request = HotReload(sandbox_id=sandbox_id, artifacts=list(artifacts), timeout=timeout)
        return self.request(request, timeout + _SLACK)  # type: ignore[no-any-return]

    def rollback_module(self, sandbox_id: str, module: str, version: int) -> ReloadResult:
        """Hot-reload the stored code of ``version``, as ``Host.rollback_module`` does.

        Raises:
            VersionNotFoundError: the registry has no such version.
            HotReloadError: an actor refused the code; the old code and state were kept.
        """
        timeout = self.config.reload_timeout
        request = RollbackModule(sandbox_id=sandbox_id, module=module, version=version, timeout=timeout)
        return self.request(request, timeout + _SLACK)  # type: ignore[no-any-return]

    def get_version_history(self, sandbox_id: str, module: str) -> VersionHistory:
        """Every stored version of ``module`` in the sandbox, newest first.

        Raises:
            UnknownModuleError: the registry knows no such module for that sandbox.
        """
        request = GetVersionHistory(sandbox_id=sandbox_id, module=module)
        return self.request(request, self.config.call_timeout + _SLACK)  # type: ignore[no-any-return]


def compile_path(path: str | os.PathLike[str], config: HostConfig | None = None, *,
                 security_profile: str | None = None) -> CompileInfo:
    """Compile a sandbox folder, or one module file with its folder importable, in a separate process.

    Uses the same timeout, security profile and result cache (under ``state_dir``) as a
    ``Host`` with this configuration would.

    Raises:
        CompilationError: syntax or import errors (``errors`` lists file, line, message).
        CompilationTimeoutError: the import-time validation ran past the compile timeout.
        SecurityViolationError: the ``restricted`` profile found something.
    """
    config = config or HostConfig()
    options: dict[str, Any] = {"timeout": config.compile_timeout, "cache_dir": Path(config.state_dir) / "compile-cache",
                               "security_profile": security_profile or config.security_profile}
    if Path(path).is_file():
        return compiler.compile_file(path, **options)
    return compiler.compile_sandbox(path, **options)
