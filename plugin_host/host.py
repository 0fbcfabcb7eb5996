"""``Host``: the facade an application embeds.  Every method is one admin request."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import attrs
import psutil

from . import deps
from ._client.caller import ADMIN_SLACK, Caller
from ._client.channel import AdminChannel, connect, unwrap
from ._client.code import CodeOps
from ._client.events import EventListener, Subscription
from ._client.system import ActorSystemHandle
from .config import HostConfig, ResourceLimits, check_isolation
from .errors import (
    CallTimeoutError,
    HostStartError,
    InvalidSpecError,
    PluginHostError,
    SandboxStartError,
)
from .messages import (
    BatchCreate,
    BatchDestroy,
    Blob,
    CreateSandbox,
    DestroySandbox,
    Failed,
    GetAuditLog,
    GetResourceUsage,
    GetSandboxInfo,
    HostBoot,
    HostBooted,
    HostShutdown,
    ListNodes,
    ListSandboxes,
    RestartSandbox,
)
from .values import (
    Artifact,
    AuditRecord,
    CompileInfo,
    Event,
    ModuleVersion,
    NodeInfo,
    ReloadResult,
    ResourceUsage,
    SandboxInfo,
    VersionHistory,
)

__all__ = ["Host"]


class Host:
    """Runs plugin sandboxes in a private Thespian actor system and talks to them.

    The embedded default starts a ``multiprocTCPBase`` system on a free loopback port, in
    which every actor is its own process.  Use it as a context manager, or call
    :meth:`close`: closing ends every process the host started, hung ones included.

    Args:
        config: the configuration (default: ``HostConfig()``, i.e. defaults and the
            ``PLUGIN_HOST_*`` environment).
        **overrides: ``HostConfig`` fields to change, e.g. ``Host(call_timeout=2)``.

    Raises:
        ConfigError: an invalid configuration value.
        HostStartError: the actor system could not be started.
    """

    def __init__(self, config: HostConfig | None = None, **overrides: Any) -> None:
        config = config or HostConfig()
        self.config: HostConfig = attrs.evolve(config, **overrides) if overrides else config
        self._system = ActorSystemHandle(self.config)
        self._listener: EventListener | None = None
        self._admin: Any = None
        self.pid = os.getpid()
        try:
            self._boot()
        except BaseException:
            self._system.shutdown()
            raise

    def _boot(self) -> None:
        self._system.start()
        self.config = self._system.config  # state_dir resolved: a symlink on the way may change later
        self._admin = connect(self._system)
        self._channel = AdminChannel(self._system, self._admin, "the plugin host's admin actor", self.admin_port)
        self._caller = Caller(self._channel, self.config)
        self._code = CodeOps(self._channel, self.config, self.prepare_dependencies)
        config = attrs.evolve(self.config, admin_port=self.admin_port)
        token = self._system.new_corr()
        boot = HostBoot(token, os.getpid(), psutil.Process().create_time(), config)
        reply = self._channel.ask(boot, 30.0)  # matched on boot.corr, the token
        if isinstance(reply, Failed):
            raise reply.error
        if not isinstance(reply, HostBooted) or reply.token != token:
            raise HostStartError(f"the admin actor did not answer the boot request (got {reply!r})")
        if self.config.base != "simpleSystemBase":
            self._system.adopt(reply.system_pid, reply.pgid)
            self._system.publish()

    # -- lifetime --------------------------------------------------------------------------

    def __enter__(self) -> Host:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop every sandbox (``terminate`` runs), shut the actor system down, end every process.

        Idempotent; never raises for a sandbox that misbehaves.
        """
        if self._system.closed:
            return
        if os.getpid() != self.pid:  # a forked copy of the application: the system is the parent's
            self._system.detach()
            return
        if self._listener is not None:
            self._listener.close()
        try:
            if self._admin is not None:
                timeout = self._stop_wait()
                self._channel.ask(HostShutdown(self._system.new_corr()), timeout)
        except Exception:  # noqa: BLE001 - closing must go on whatever happened
            pass
        finally:
            self._code.close()
            self._system.shutdown()

    def _stop_wait(self) -> float:
        """How long the admin may take to stop a sandbox (the root, then its children), plus slack."""
        return 2 * self.config.shutdown_timeout + ADMIN_SLACK

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran."""
        return self._system.closed

    @property
    def actor_system(self) -> Any:
        """The Thespian ``ActorSystem`` this host runs (for advanced use; not thread-safe)."""
        return self._system.system

    @property
    def admin_address(self) -> Any:
        """The admin actor's address: send it ``plugin_host.messages`` requests."""
        return self._admin

    @property
    def admin_port(self) -> int | None:
        """The TCP port of the actor system (``None`` on ``simpleSystemBase``)."""
        return self._system.port or None

    # -- admin requests -------------------------------------------------------------------

    def _admin_timeout(self, what: str) -> Callable[[], PluginHostError]:
        return lambda: CallTimeoutError(f"the admin actor did not answer {what} in time")

    def create_sandbox(
        self,
        sandbox_id: str,
        supervisor: str | type,
        *,
        sandbox_path: str | os.PathLike[str] | None = None,
        args: object = None,
        limits: ResourceLimits | Mapping[str, Any] | None = None,
        security_profile: str | None = None,
        requirements: Mapping[str, Any] | None = None,
        restart_elsewhere: bool = False,
        isolation: str | None = None,
    ) -> SandboxInfo:
        """Create a sandbox and wait until every actor of its tree runs.

        Args:
            sandbox_id: 1-128 printable characters, no path separators.
            supervisor: ``"module:Class"`` inside ``sandbox_path``; without a folder, an
                importable class or dotted path.  A bare ``Plugin`` class makes a one-child
                sandbox whose actor is named after the class, lower-cased.
            sandbox_path: a folder of Python source loaded into the sandbox's own namespace.
            args: for a bare plugin, passed to its ``init``.
            limits: ``ResourceLimits`` (default ``HostConfig.limits``).
            security_profile: ``restricted``, ``standard`` or ``permissive``.
            requirements: capabilities the actor system running it must offer; the
                sandbox's root goes to this host's system if it matches, else to a member
                of the convention that does (``SandboxInfo.node`` says which).
            restart_elsewhere: when the member it runs on is lost, start it again, from its
                current code, on another capable member (default: it stays ``lost``).
            isolation: ``"process"`` or ``"user"``, a uid of its own for every process of the sandbox
                (default ``HostConfig.isolation``; see there).

        Raises:
            ConfigError: a bad ``isolation``, or ``"user"`` where this host cannot switch uids (not root,
                on another system of the convention, or ``simpleSystemBase``).
            LimitExceededError: every uid of ``HostConfig.sandbox_uids`` is taken.
            SandboxExistsError: the id is taken.
            CompilationError: a module of the folder does not compile.
            SecurityViolationError: the ``restricted`` profile's scan found something.
            DependencyError: the folder's requirements conflict with the host or do not install.
            SandboxStartError: import, spec or ``init`` failure, or start timeout
                (``InvalidSpecError`` for a bad spec).
            BadRequestError: a malformed argument (e.g. the id).
            NoCapableNodeError: no system of the convention offers ``requirements``.
        """
        if isolation is not None:
            check_isolation(isolation)
        environment = None
        if sandbox_path is not None and os.path.isdir(sandbox_path):
            # Syntax and the security scan here, in the caller (cached): the admin only reads the folder.
            self.compile_sandbox(sandbox_path, validate=False, security_profile=security_profile)
            environment = self.prepare_dependencies(sandbox_path)
        request = self._create_request(
            sandbox_id,
            supervisor,
            sandbox_path=sandbox_path,
            args=args,
            limits=limits,
            security_profile=security_profile,
            requirements=requirements,
            restart_elsewhere=restart_elsewhere,
        )
        if environment is not None:
            request = attrs.evolve(request, environment=str(environment))
        if isolation is not None:
            request = attrs.evolve(request, isolation=isolation)
        if request.sandbox_path is not None:
            self._code.sandbox_paths[sandbox_id] = request.sandbox_path
        timeout = self.config.start_timeout + self._stop_wait()
        return self._channel.request(request, timeout, lambda: SandboxStartError(f"no answer creating {sandbox_id!r}"))

    def _create_request(
        self,
        sandbox_id: str,
        supervisor: str | type,
        *,
        sandbox_path: str | os.PathLike[str] | None = None,
        args: object = None,
        limits: ResourceLimits | Mapping[str, Any] | None = None,
        security_profile: str | None = None,
        requirements: Mapping[str, Any] | None = None,
        restart_elsewhere: bool = False,
    ) -> CreateSandbox:
        if isinstance(supervisor, type):
            ref: Blob | str = Blob.dump(supervisor)
            label = f"{supervisor.__module__}:{supervisor.__qualname__}"
        elif isinstance(supervisor, str):
            ref = label = supervisor
        else:
            raise InvalidSpecError(f"supervisor must be 'module:Class', a dotted path or a class, got {supervisor!r}")
        if isinstance(limits, Mapping):
            limits = ResourceLimits.from_mapping(dict(limits))
        return CreateSandbox(
            sandbox_id=sandbox_id,
            supervisor=ref,
            supervisor_label=label,
            sandbox_path=None if sandbox_path is None else os.fspath(os.path.abspath(sandbox_path)),
            args=Blob.dump(args),
            limits=limits,
            security_profile=security_profile,
            requirements=dict(requirements) if requirements else None,
            restart_elsewhere=bool(restart_elsewhere),
        )

    def prepare_dependencies(self, sandbox_path: str | os.PathLike[str]) -> Path | None:
        """Install a sandbox folder's requirements into their shared environment under ``state_dir``.

        Identical requirement sets share one environment, installed once; nothing happens for a
        folder without requirements.  ``create_sandbox`` calls this itself.

        Raises:
            DependencyError: a requirement conflicts with what the host has loaded, or pip failed
                (nothing half-installed is left behind).
        """
        requirements = deps.read_requirements(sandbox_path)
        if not requirements:
            return None
        deps.check_conflicts(requirements)
        return deps.prepare_environment(
            requirements, self.config.state_dir, find_links=self.config.find_links, no_index=self.config.no_index
        )

    def destroy_sandbox(self, sandbox_id: str) -> None:
        """Stop a sandbox (every actor's ``terminate`` runs) and end its processes.

        Raises:
            SandboxNotFoundError: no such sandbox.
        """
        self._caller.forget(sandbox_id)
        timeout = self._stop_wait()
        self._channel.request(DestroySandbox(sandbox_id=sandbox_id), timeout, self._admin_timeout("destroy_sandbox"))

    def restart_sandbox(self, sandbox_id: str) -> SandboxInfo:
        """Stop the whole sandbox and start it again (also brings a ``failed`` one back).

        Raises:
            SandboxNotFoundError: no such sandbox.
            SandboxStartError: it did not start again.
        """
        self._caller.forget(sandbox_id)
        timeout = self.config.start_timeout + self._stop_wait()
        return self._channel.request(
            RestartSandbox(sandbox_id=sandbox_id),
            timeout,
            lambda: SandboxStartError(f"no answer restarting {sandbox_id!r}"),
        )

    def list_sandboxes(self) -> list[SandboxInfo]:
        """Every sandbox of this host, sorted by id."""
        return self._channel.request(ListSandboxes(), self.config.call_timeout, self._admin_timeout("list_sandboxes"))

    def nodes(self) -> list[NodeInfo]:
        """This host's actor system and every member of its convention, local one first.

        A host that leads the convention sees every member; one that joined another leader
        sees that leader only (Thespian tells members about the leader, not each other).
        """
        return self._channel.request(ListNodes(), self.config.call_timeout, self._admin_timeout("nodes"))

    def get_sandbox_info(self, sandbox_id: str) -> SandboxInfo:
        """A snapshot of one sandbox.

        Raises:
            SandboxNotFoundError: no such sandbox.
        """
        return self._channel.request(
            GetSandboxInfo(sandbox_id=sandbox_id), self.config.call_timeout, self._admin_timeout("get_sandbox_info")
        )

    def batch_create(self, specs: Iterable[Mapping[str, Any]]) -> list[SandboxInfo | PluginHostError]:
        """Create many sandboxes concurrently; one bad spec never fails the others.

        Args:
            specs: mappings of ``create_sandbox`` arguments (``sandbox_id``, ``supervisor``, ...).

        Returns:
            One item per spec, in order: its ``SandboxInfo``, or the error it raised.
        """
        requests: list[CreateSandbox | PluginHostError] = []
        for spec in specs:
            try:
                requests.append(self._create_request(**dict(spec)))
            except (PluginHostError, TypeError) as exc:
                requests.append(exc if isinstance(exc, PluginHostError) else InvalidSpecError(str(exc)))
        good = [r for r in requests if isinstance(r, CreateSandbox)]
        timeout = self.config.start_timeout + self._stop_wait()
        answers = self._channel.request(BatchCreate(specs=good), timeout, self._admin_timeout("batch_create"))
        replies = iter(answers)
        return [unwrap(next(replies)) if isinstance(r, CreateSandbox) else r for r in requests]

    def batch_destroy(self, sandbox_ids: Iterable[str]) -> list[None | PluginHostError]:
        """Destroy many sandboxes concurrently; returns ``None`` or the error, per id."""
        ids = list(sandbox_ids)
        for sandbox_id in ids:
            self._caller.forget(sandbox_id)
        timeout = self._stop_wait()
        return [
            unwrap(r)
            for r in self._channel.request(BatchDestroy(sandbox_ids=ids), timeout, self._admin_timeout("batch_destroy"))
        ]

    # -- plugins ----------------------------------------------------------------------------

    def call(self, sandbox_id: str, name: str, request: object, timeout: float | None = None) -> Any:
        """Send ``request`` to the actor ``name`` (its ``handle_call``) and return the reply.

        A call that reaches an actor while it restarts waits for the new incarnation
        (within ``timeout``) and is sent again: it provably never ran.  A call the actor
        crashed on, or was running when its process died, is never run twice.  While
        waiting, the host checks now and then (after 5 ms, then up to every 0.5 s) that the
        actor still runs, so a hard crash mid-call (``os._exit``, a signal, a hang killed by
        the heartbeat) fails the call promptly instead of at its timeout.

        Raises:
            SandboxNotFoundError: no such sandbox.
            ActorNotFoundError: no such actor, or the sandbox has failed.
            CallTimeoutError: no reply within ``timeout`` (default ``HostConfig.call_timeout``).
            PluginError: the plugin raised or its process died (the actor is being restarted), or, with
                ``HostConfig.plugin_values="plain"``, its reply is not plain data.
        """
        return self._caller.call(sandbox_id, name, request, timeout)

    def cast(self, sandbox_id: str, name: str, message: object) -> None:
        """Send ``message`` to the actor ``name`` (its ``handle_cast``); no reply.

        Sent straight to the actor, so casts and calls from one thread to one actor arrive
        in the order sent.  A cast refused by a dead actor, or sent while the actor restarts,
        goes through the admin, which delivers it once the actor runs again; one that meets
        a process in the middle of dying may be lost, as a message to a dying process is in
        OTP.  It never waits longer than a second for the transmit.

        Raises:
            SandboxNotFoundError: no such sandbox.
            ActorNotFoundError: the sandbox has no actor of that name.
        """
        self._caller.cast(sandbox_id, name, message)

    def run(self, sandbox_id: str, fn: Callable[[], Any], timeout: float | None = None) -> Any:
        """Run ``fn()`` in a fresh process of the sandbox (it sees the sandbox's modules).

        Raises:
            SandboxNotFoundError: no such sandbox.
            RunTimeoutError: ``fn`` did not return within ``timeout`` (its process is killed).
            PluginError: ``fn`` raised (or returned other than plain data, with ``plugin_values="plain"``).
        """
        return self._caller.run(sandbox_id, fn, timeout)

    # -- code --------------------------------------------------------------------------------

    def compile_sandbox(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float | None = None,
        validate: bool = True,
        security_profile: str | None = None,
    ) -> CompileInfo:
        """Compile a sandbox folder in a separate process (see :func:`plugin_host.compiler.compile_sandbox`).

        It names no sandbox, so it scans with ``security_profile`` (default: the host's); a reload of
        the result is scanned again, with the sandbox's own profile, by the admin.

        Raises:
            CompilationError: syntax or import errors (``errors`` lists file, line, message).
            CompilationTimeoutError: the import-time validation ran past ``timeout``.
            SecurityViolationError: the ``restricted`` profile found something.
        """
        return self._code.compile_sandbox(path, timeout=timeout, validate=validate, security_profile=security_profile)

    def compile_file(self, path: str | os.PathLike[str], timeout: float | None = None) -> CompileInfo:
        """Compile one module file (its folder's modules importable) in a separate process."""
        return self._code.compile_file(path, timeout)

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
            SecurityViolationError: the sandbox runs under ``restricted`` and the admin's scan of the
                changed modules, with that profile, found something (nothing changed).
            SandboxNotFoundError: no such sandbox.
        """
        return self._code.hot_reload(
            sandbox_id, code, state_handler=state_handler, timeout=timeout, probation=probation
        )

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

        It compiles under the sandbox's own security profile (``SandboxInfo.security_profile``).

        Raises:
            CompilationError: it does not compile or import.
            SecurityViolationError: the sandbox runs under ``restricted`` and the scan found something.
            HotReloadError: as :meth:`hot_reload`.
        """
        return self._code.hot_reload_source(
            sandbox_id, source, module, state_handler=state_handler, timeout=timeout, probation=probation
        )

    def batch_hot_reload(
        self, sandbox_ids: Iterable[str], code: Artifact | CompileInfo | Iterable[Artifact]
    ) -> list[ReloadResult | PluginHostError]:
        """Reload the same code into many sandboxes; one item per id: its result or its error (each sandbox's
        own profile decides whether its scan refuses the code)."""
        return self._code.batch_hot_reload(sandbox_ids, code)

    def rollback_module(
        self, sandbox_id: str, module: str, version: int, *, timeout: float | None = None
    ) -> ReloadResult:
        """Hot-reload the stored code of ``version`` (``code_change(state, current, version)``).

        Raises:
            VersionNotFoundError: the registry has no such version.
            SecurityViolationError: the sandbox's profile refuses that version's code (it was stored
                while the same id ran under a looser profile).
            HotReloadError: as :meth:`hot_reload`.
        """
        return self._code.rollback_module(sandbox_id, module, version, timeout=timeout)

    def get_module_version(self, sandbox_id: str, module: str) -> int:
        """The current version of ``module`` in the sandbox (running or not, as the registry knows it).

        Raises:
            UnknownModuleError: the registry knows no such module for that sandbox.
        """
        return self._code.get_module_version(sandbox_id, module)

    def list_module_versions(self, sandbox_id: str, module: str) -> list[ModuleVersion]:
        """Every stored version of ``module``, newest first."""
        return self._code.list_module_versions(sandbox_id, module)

    def get_version_history(self, sandbox_id: str, module: str) -> VersionHistory:
        """``VersionHistory(current_version, total_versions, versions)``, newest first."""
        return self._code.get_version_history(sandbox_id, module)

    # -- monitoring and events ------------------------------------------------------------

    def resource_usage(self, sandbox_id: str) -> ResourceUsage:
        """Memory, CPU time, messages and restarts per actor of the sandbox, sampled now; with a control group,
        also the group's CPU time (dead processes included) and memory charge (``group_*`` fields).

        Raises:
            SandboxNotFoundError: no such sandbox.
        """
        return self._channel.request(
            GetResourceUsage(sandbox_id=sandbox_id), self.config.call_timeout, self._admin_timeout("resource_usage")
        )

    def audit_log(self, sandbox_id: str) -> list[AuditRecord]:
        """The sandbox's recent audit records (file writes, processes, sockets...), oldest first.

        Raises:
            SandboxNotFoundError: no such sandbox.
        """
        return self._channel.request(
            GetAuditLog(sandbox_id=sandbox_id), self.config.call_timeout, self._admin_timeout("audit_log")
        )

    def subscribe(self, callback: Callable[[Event], Any]) -> Subscription:
        """Call ``callback(event)`` for every sandbox event from now on (in a thread of the host).

        Events: ``started``, ``crashed``, ``restarted``, ``failed``, ``limit_breached``,
        ``reloaded``, ``rolled_back``, ``stopped``, ``lost``; and what the host refused:
        ``denied`` (a sandbox asked for something only the host may do, or about another sandbox;
        ``details["request"]`` names it) and ``frame_rejected`` (frames that failed authentication,
        or that a sandbox may not send; ``details["count"]``, ``["peers"]``).  Returns a handle:
        call it to unsubscribe.
        """
        if self._listener is None:
            self._listener = EventListener(self._channel)
        return self._listener.add(callback)
