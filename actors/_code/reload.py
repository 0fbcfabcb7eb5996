"""The sandbox root's side of a hot reload: all or nothing across the sandbox's actors.

1. The root loads the new code into its own process first (a failure stops here).
2. The workers whose behaviour comes from a reloaded module load it and migrate their
   state with ``code_change``: a *prepare*; each holds the new code and every plugin
   message that arrives, until the root's verdict.
3. All prepared: commit everywhere, and every other actor of the tree (supervisors,
   unaffected workers, children restarted meanwhile) loads the code so that what they fork
   or import later is current.  Any failure: abort everywhere; old code and state stay.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Callable, ContextManager, Mapping, Protocol

import attrs
from thespian.actors import ActorAddress, ActorExitRequest

from plugin_host import codeload
from plugin_host.states import SupervisorPhase
from plugin_host.values import ChildInfo

from .. import _messages as m
from .._base import describe_exception
from .codeswap import Staged, sandbox_finder
from .envprep import EnvironmentActor

__all__ = ["ReloadPort", "RootReload"]


class ReloadPort(Protocol):
    """What the reload may do as the sandbox root's actor: send, fork an installer, wake up."""

    def send(self, targetAddr: ActorAddress, msg: object) -> None:  # noqa: N803 - Thespian's names
        """Send ``msg`` to ``targetAddr``."""
        ...

    def createActor(self, actorClass: type) -> ActorAddress:  # noqa: N803 - Thespian's names
        """Create a child actor of the root."""
        ...

    def wakeupAfter(self, timePeriod: timedelta, payload: object = None) -> None:  # noqa: N803 - Thespian's names
        """Be sent a ``WakeupMessage`` after ``timePeriod``."""
        ...

    def plugin_code(self) -> ContextManager[None]:
        """The context plugin code runs in here (the runtime audit)."""
        ...

    def allow_reading(self, folder: str) -> None:
        """Let plugin code read ``folder`` (a reload's new environment) under ``restricted``."""
        ...


@attrs.define
class _Reload:
    """One reload in progress: who asked, the code staged here, and who has answered."""

    request: m.ReloadSandbox
    admin: ActorAddress
    staged: Staged
    affected: list[str]
    started_ns: int
    waiting: set[str]
    prepared: list[str] = attrs.field(factory=list)
    updated: list[str] = attrs.field(factory=list)
    restarted: list[str] = attrs.field(factory=list)
    failure: tuple[str, str] | None = None


@attrs.define
class _Install:
    """A reload waiting for its requirements to be installed on this system."""

    request: m.ReloadSandbox
    admin: ActorAddress
    installer: ActorAddress
    since: float


class RootReload:
    """The sandbox root's reloads (see the module docstring); the root hands it every reload message.

    Args:
        port: the root's actor (send, createActor, wakeupAfter).
        live: the root's directory of running actors (name -> (address, incarnation)), read only.
        infos: the root's view of its tree (name -> ChildInfo), read only.
        modules: each sandbox module's current version, read only.
        phase: the root's supervisor phase, read when a reload is asked.
        commit: records the modules' new versions when a reload commits (the root's ``commit_versions``).
    """

    def __init__(
        self,
        port: ReloadPort,
        live: Mapping[str, tuple[ActorAddress, int]],
        infos: Mapping[str, ChildInfo],
        modules: Mapping[str, int],
        phase: Callable[[], SupervisorPhase],
        commit: Callable[[dict[str, int]], None],
    ) -> None:
        self._port, self._live, self._infos, self._modules = port, live, infos, modules
        self._phase, self._commit = phase, commit
        self.reload: _Reload | None = None
        self.installing: _Install | None = None
        self.committed_ns = 0
        """When the last reload committed (``time.time_ns()``)."""
        self.aborted_window: tuple[int, int] = (0, -1)
        """From the start to the end of the last aborted reload (ns): children forked then ran its code."""

    def environment_ready(self, msg: m.EnvironmentReady) -> None:
        """The reload's requirements are installed here (or failed): go on with it."""
        install = self.installing
        if install is None or install.request.reload_id != msg.reload_id:
            return
        self.installing = None
        request = install.request
        left = request.timeout - (time.monotonic() - install.since)
        if msg.path is None or left <= 0:
            cause = (
                f"installing the requirements failed: {msg.error}"
                if msg.path is None
                else f"installing the requirements took longer than the reload's {request.timeout:g} s"
            )
            self._port.send(install.admin, m.SandboxReloaded(request.reload_id, False, actor="root", cause=cause))
            return
        # The install used part of the reload's time: the admin waits for the whole of it, no longer.
        self.start(attrs.evolve(request, environment=msg.path, packages=(), timeout=left), install.admin)

    def installer_exited(self, address: ActorAddress) -> None:
        """An environment installer exited; one that never answered died installing: fail its reload."""
        if self.installing is not None and self.installing.installer == address:
            self.environment_ready(
                m.EnvironmentReady(self.installing.request.reload_id, None, "the installer process died")
            )

    def start(self, msg: m.ReloadSandbox, sender: ActorAddress) -> None:
        """Reload code across the sandbox (see the module docstring)."""
        refusal = self._refusal()
        if refusal is not None:
            self._port.send(sender, m.SandboxReloaded(msg.reload_id, False, actor="root", cause=refusal))
        elif msg.packages:  # on another system than the host's: install them here first, off this loop
            installer = self._port.createActor(EnvironmentActor)
            self.installing = _Install(msg, sender, installer, time.monotonic())
            self._port.send(installer, m.PrepareEnvironment(msg.reload_id, msg.packages))
        else:
            self._stage(msg, sender)

    def _refusal(self) -> str | None:
        """Why no reload can start now (None: one can)."""
        if self.reload is not None or self.installing is not None:
            return "another reload is in progress"
        phase = self._phase()
        return None if phase == SupervisorPhase.RUNNING else f"the sandbox is {phase}"

    def _stage(self, msg: m.ReloadSandbox, sender: ActorAddress) -> None:
        """Load the new code here first (a failure stops the reload), then ask the affected workers to prepare."""
        started_ns = time.time_ns()
        try:
            codeload.verify_checksums(msg.sources, msg.checksums)
            if msg.environment:
                self._port.allow_reading(msg.environment)  # each process of the tree does so as it loads it
            staged = Staged(msg.sources, msg.order, msg.environment, self._port.plugin_code)
        except Exception as exc:  # noqa: BLE001 - plugin top-level code may raise anything
            cause = f"loading the new code failed: {describe_exception(exc)}"
            self._port.send(sender, m.SandboxReloaded(msg.reload_id, False, actor="root", cause=cause))
            return
        affected = [
            name
            for name, info in self._infos.items()
            if info.kind == "worker" and info.module in staged.order and name in self._live
        ]
        # Always two phases, even for one actor: one that answers too late must still be able
        # to drop the new code (the abort follows its LoadCode, from the same sender).
        self.reload = _Reload(msg, sender, staged, affected, started_ns, set(affected))
        for name in affected:
            self._port.send(self._live[name][0], _load_code(msg, msg.state_handler, prepare=True))
        if affected:
            self._port.wakeupAfter(timedelta(seconds=msg.timeout), payload=("reload", msg.reload_id))
        else:
            self._finish()

    def code_loaded(self, msg: m.CodeLoaded) -> None:
        """One actor's answer to a ``LoadCode``."""
        reload = self.reload
        if reload is None or msg.reload_id != reload.request.reload_id or msg.name not in reload.waiting:
            return  # a late answer, or one to a commit-time load
        reload.waiting.discard(msg.name)
        if not msg.ok:
            reload.failure = reload.failure or (msg.name, msg.cause)
        else:
            reload.prepared.append(msg.name)
            if msg.updated:
                reload.updated.append(msg.name)
        if not reload.waiting:
            self._finish()

    def child_down(self, name: str) -> None:
        """An actor went down mid-reload: stop waiting for it (its next incarnation gets the outcome)."""
        reload = self.reload
        if reload is not None and name in reload.waiting:
            reload.waiting.discard(name)
            if not reload.waiting:
                self._finish()

    def child_up(self, name: str, incarnation: int, address: ActorAddress) -> None:
        """A child came up: make sure it runs the current code.

        Forked mid-reload, it runs the staged code (restarted if the reload aborts); forked
        before the last commit but up only after it, it missed the commit: it loads the
        current code now.  (Incarnations are spawn times in ns.)
        """
        if self.reload is not None:
            self.reload.restarted.append(name)
        elif self.aborted_window[0] <= incarnation <= self.aborted_window[1]:
            self._port.send(address, ActorExitRequest())  # forked on code that was then aborted: back on the old
        elif incarnation < self.committed_ns:
            sources = sandbox_finder().table.as_wire()
            versions = {module: (version, version) for module, version in self._modules.items()}
            self._port.send(address, m.LoadCode("catch-up", sources, sorted(sources), versions, None, False, 30.0))

    def timeout(self, reload_id: str) -> None:
        """The reload's deadline passed with actors still silent."""
        reload = self.reload
        if reload is not None and reload.request.reload_id == reload_id and reload.waiting:
            reload.failure = reload.failure or (
                sorted(reload.waiting)[0],
                f"no answer within {reload.request.timeout} s (busy or hung)",
            )
            reload.waiting.clear()
            self._finish()

    def _finish(self) -> None:
        reload, self.reload = self.reload, None
        assert reload is not None
        if reload.failure is not None:
            self._abort(reload, *reload.failure)
            return
        request = reload.request
        prepared = set(reload.prepared)
        for name, (address, _) in self._live.items():
            message = m.CommitCode(request.reload_id) if name in prepared else _load_code(request, None, prepare=False)
            self._port.send(address, message)
        self.committed_ns = time.time_ns()
        self._commit({module: new for module, (_, new) in request.versions.items()})
        self._port.send(reload.admin, m.SandboxReloaded(request.reload_id, True, tuple(sorted(reload.updated))))

    def _abort(self, reload: _Reload, actor: str, cause: str) -> None:
        reload_id = reload.request.reload_id
        for name in reload.affected:  # the late ones too: they prepare, then drop it at once
            self._to_live(name, m.AbortCode(reload_id))
        reload.staged.abort()
        self.aborted_window = (reload.started_ns, time.time_ns())
        for name in reload.restarted:
            self._to_live(name, ActorExitRequest())  # forked on the new code: bring it back on the old
        self._port.send(reload.admin, m.SandboxReloaded(reload_id, False, actor=actor, cause=cause))

    def _to_live(self, name: str, message: object) -> None:
        entry = self._live.get(name)
        if entry is not None:
            self._port.send(entry[0], message)


def _load_code(request: m.ReloadSandbox, state_handler: bytes | None, prepare: bool) -> m.LoadCode:
    """The ``LoadCode`` of a reload: a prepare (with the state handler) or a commit-time load."""
    return m.LoadCode(
        request.reload_id,
        request.sources,
        request.order,
        request.versions,
        state_handler,
        prepare,
        request.timeout,
        request.environment,
    )
