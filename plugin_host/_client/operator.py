"""Operator access to a host that runs in another process, through its admin port.

The ``status``, ``destroy``, ``reload``, ``rollback`` and ``history`` commands attach to the
actor system a ``Host`` already runs and speak the ``plugin_host.messages`` protocol to its admin
actor.  They never start that system and never shut it down: closing an :class:`AdminClient` only detaches from it.

An operator holds the host's credential, as an Erlang node holds the cookie and a Jupyter client
the connection file: the ``state_dir`` a host runs with names it (``run/<port>.json``, mode
``0600``) and holds its credential, so a user who cannot read that folder cannot drive the host.
:func:`find_host` reads the runtime files and checks the version before anything is sent; then
one signed probe frame checks the credential, so a wrong port or a wrong credential fails in
under a second, and nothing is ever sent to a service that is not a plugin host of this version.
Compilation needs no host: :func:`compile_path` runs the isolated compiler locally, the
way ``Host.compile_sandbox`` does, and ``reload`` sends its artifacts to the admin.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence, TypeVar

import attrs

from .. import __version__, compiler
from .._store import statedir as _statedir
from ..config import HostConfig
from ..errors import HostStartError, PluginHostError
from ..messages import (
    DestroySandbox,
    GetAuditLog,
    GetResourceUsage,
    GetSandboxInfo,
    GetVersionHistory,
    HotReload,
    ListNodes,
    ListSandboxes,
    Request,
    RollbackModule,
)
from ..values import (
    Artifact,
    AuditRecord,
    CompileInfo,
    NodeInfo,
    ReloadResult,
    ResourceUsage,
    SandboxInfo,
    VersionHistory,
)
from .channel import AdminChannel, connect
from .system import ActorSystemHandle

__all__ = ["AdminClient", "compile_path", "find_host"]

T = TypeVar("T")

_SLACK = 5.0  # seconds on top of the admin's own deadlines, so that it answers first


def find_host(config: HostConfig, port: int | None = None) -> dict[str, Any]:
    """The running host of ``config.state_dir`` (the one on ``port``, when given), from its runtime file.

    Raises:
        HostStartError: no host of this plugin-host version runs with that ``state_dir`` (on that
            port), or several do and ``port`` does not say which.
    """
    state_dir = config.state_dir
    try:
        if not Path(state_dir).is_dir():
            raise HostStartError(f"no plugin host runs with state_dir {state_dir} (the folder does not exist)")
        hosts = _statedir.running_hosts(state_dir)
    except OSError as exc:
        raise HostStartError(f"cannot read state_dir {state_dir}: {exc.strerror}") from None
    chosen = [h for h in hosts if port is None or h.get("port") == port]
    if not chosen:
        running = ", ".join(str(h.get("port")) for h in hosts) or "none"
        where = f" on port {port}" if port is not None else ""
        raise HostStartError(
            f"no plugin host runs{where} with state_dir {state_dir} (ports running: {running}); "
            "pass --state-dir, or set PLUGIN_HOST_STATE_DIR, to the host's",
            port=port,
        )
    if len(chosen) > 1:
        raise HostStartError(
            f"{len(chosen)} hosts run with state_dir {state_dir} (ports "
            f"{', '.join(str(h.get('port')) for h in chosen)}): pick one with --port"
        )
    info = chosen[0]
    if info.get("version") != __version__:
        raise HostStartError(
            f"the host on port {info.get('port')} runs plugin-host {info.get('version')}; this is "
            f"{__version__}: use the same version",
            port=info.get("port"),
        )
    return info


class AdminClient:
    """A connection to the admin actor of a running host.

    Args:
        port: the host's admin port (``Host.admin_port``); default: the one host that runs with
            ``config.state_dir`` (see :func:`find_host`).
        config: its ``state_dir`` (runtime files and credential), and the timeouts to use; default
            ``HostConfig()``, i.e. defaults and the ``PLUGIN_HOST_*`` environment.

    Raises:
        HostStartError: no plugin host of this version runs there.
        CredentialError: the host refuses this credential (``config.credential_file``).
    """

    def __init__(self, port: int | None = None, config: HostConfig | None = None) -> None:
        config = config or HostConfig()
        info = find_host(config, port)
        self.config = attrs.evolve(config, bind_address=str(info.get("bind") or config.bind_address))
        self.port: int = int(info["port"])
        """The admin port attached to."""
        self._system = ActorSystemHandle(self.config)
        try:
            self._system.attach_existing(self.port)
            self._channel = AdminChannel(self._system, connect(self._system), self._where, self.port)
        except PluginHostError:
            self._system.detach()
            raise
        except Exception as exc:
            self._system.detach()
            raise HostStartError(f"cannot reach a plugin host on port {self.port}: {exc}", port=self.port) from exc

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Detach from the host's actor system, leaving it running.  Idempotent."""
        self._system.detach()

    @property
    def _where(self) -> str:
        return f"the plugin host on port {self.port}"

    def request(self, request: Request[T], timeout: float) -> T:
        """Send one admin request and return the value of its ``Ok`` reply.

        Raises:
            CallTimeoutError: the admin did not answer within ``timeout`` seconds.
            HostClosedError: the host went away (its admin refused the request).
            PluginHostError: the admin answered ``Failed`` (its error is raised as is).
        """
        return self._channel.request(request, timeout)

    def list_sandboxes(self) -> list[SandboxInfo]:
        """Every sandbox of the host, sorted by id."""
        return list(self.request(ListSandboxes(), self.config.call_timeout + _SLACK))

    def get_sandbox_info(self, sandbox_id: str) -> SandboxInfo:
        """One sandbox of the host, as ``Host.get_sandbox_info``.

        Raises:
            SandboxNotFoundError: no such sandbox.
        """
        return self.request(GetSandboxInfo(sandbox_id=sandbox_id), self.config.call_timeout + _SLACK)

    def nodes(self) -> list[NodeInfo]:
        """The host's actor system (with what it refused) and the members of its convention, as ``Host.nodes``."""
        return list(self.request(ListNodes(), self.config.call_timeout + _SLACK))

    def resource_usage(self, sandbox_id: str) -> ResourceUsage:
        """Memory, CPU time, messages and restarts per actor of the sandbox, as ``Host.resource_usage`` does.

        Raises:
            SandboxNotFoundError: no such sandbox.
        """
        request = GetResourceUsage(sandbox_id=sandbox_id)
        return self.request(request, self.config.call_timeout + _SLACK)

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
        return self.request(request, timeout + _SLACK)

    def rollback_module(self, sandbox_id: str, module: str, version: int) -> ReloadResult:
        """Hot-reload the stored code of ``version``, as ``Host.rollback_module`` does.

        Raises:
            VersionNotFoundError: the registry has no such version.
            HotReloadError: an actor refused the code; the old code and state were kept.
        """
        timeout = self.config.reload_timeout
        request = RollbackModule(sandbox_id=sandbox_id, module=module, version=version, timeout=timeout)
        return self.request(request, timeout + _SLACK)

    def get_version_history(self, sandbox_id: str, module: str) -> VersionHistory:
        """Every stored version of ``module`` in the sandbox, newest first.

        Raises:
            UnknownModuleError: the registry knows no such module for that sandbox.
        """
        request = GetVersionHistory(sandbox_id=sandbox_id, module=module)
        return self.request(request, self.config.call_timeout + _SLACK)


def compile_path(
    path: str | os.PathLike[str], config: HostConfig | None = None, *, security_profile: str | None = None
) -> CompileInfo:
    """Compile a sandbox folder, or one module file with its folder importable, in a separate process.

    Uses the same timeout, security profile and result cache (under ``state_dir``) as a
    ``Host`` with this configuration would.

    Raises:
        CompilationError: syntax or import errors (``errors`` lists file, line, message).
        CompilationTimeoutError: the import-time validation ran past the compile timeout.
        SecurityViolationError: the ``restricted`` profile found something.
        ConfigError: ``state_dir`` is not private to this user.
    """
    config = config or HostConfig()
    state_dir = _statedir.prepare(config.state_dir)  # its cache must be this user's alone
    options: dict[str, Any] = {
        "timeout": config.compile_timeout,
        "cache_dir": state_dir / "compile-cache",
        "security_profile": security_profile or config.security_profile,
    }
    if Path(path).is_file():
        return compiler.compile_file(path, **options)
    return compiler.compile_sandbox(path, **options)
