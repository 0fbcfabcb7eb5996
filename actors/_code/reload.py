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
from typing import Any, Callable

import attrs
from thespian.actors import ActorExitRequest

from plugin_host import codeload

from .. import _messages as m
from .._base import describe_exception
from .codeswap import Staged, sandbox_finder
from .envprep import EnvironmentActor

__all__ = ["ReloadCoordinator"]


@attrs.define
class _Reload:
    request: m.ReloadSandbox
    admin: Any
    staged: Staged
    affected: list[str]
    started_ns: int
    waiting: set[str]
    prepared: list[str] = attrs.field(factory=list)
    updated: list[str] = attrs.field(factory=list)
    restarted: list[str] = attrs.field(factory=list)
    failure: tuple[str, str] | None = None


class ReloadCoordinator:
    """Mixed into the sandbox root; needs ``live``, ``infos``, ``modules``, ``send`` and friends."""

    live: dict[str, tuple[Any, int]]
    infos: dict[str, Any]
    modules: dict[str, int]
    phase: str
    reload: _Reload | None = None
    committed_ns = 0
    """When the last reload committed (``time.time_ns()``)."""
    aborted_window: tuple[int, int] = (0, -1)
    """From the start to the end of the last aborted reload (ns): children forked then ran its code."""
    send: Callable[[Any, Any], None]  # the actor's (Thespian)
    createActor: Callable[..., Any]
    wakeupAfter: Callable[..., None]

    installing: tuple[m.ReloadSandbox, Any, Any, float] | None = None
    """A reload waiting for its requirements to be installed on this system: (request, admin, installer, since)."""

    def receiveMsg_EnvironmentReady(self, msg: m.EnvironmentReady, sender: Any) -> None:
        """The reload's requirements are installed here (or failed): go on with it."""
        if self.installing is None or self.installing[0].reload_id != msg.reload_id:
            return
        (request, admin, _, since), self.installing = self.installing, None
        left = request.timeout - (time.monotonic() - since)
        if msg.path is None or left <= 0:
            cause = (
                f"installing the requirements failed: {msg.error}"
                if msg.path is None
                else f"installing the requirements took longer than the reload's {request.timeout:g} s"
            )
            self.send(admin, m.SandboxReloaded(request.reload_id, False, actor="root", cause=cause))
            return
        # The install used part of the reload's time: the admin waits for the whole of it, no longer.
        self.receiveMsg_ReloadSandbox(attrs.evolve(request, environment=msg.path, packages=(), timeout=left), admin)

    def installer_exited(self, address: Any) -> None:
        """An environment installer exited; one that never answered died installing: fail its reload."""
        if self.installing is not None and self.installing[2] == address:
            self.receiveMsg_EnvironmentReady(
                m.EnvironmentReady(self.installing[0].reload_id, None, "the installer process died"), address
            )

    def receiveMsg_ReloadSandbox(self, msg: m.ReloadSandbox, sender: Any) -> None:
        """Reload code across the sandbox (see the module docstring)."""
        if self.reload is not None or self.installing is not None or self.phase != "running":
            busy = self.reload is not None or self.installing is not None
            cause = "another reload is in progress" if busy else f"the sandbox is {self.phase}"
            self.send(sender, m.SandboxReloaded(msg.reload_id, False, actor="root", cause=cause))
            return
        if msg.packages:  # on another system than the host's: install them here first, off this loop
            installer = self.createActor(EnvironmentActor)
            self.installing = (msg, sender, installer, time.monotonic())
            self.send(installer, m.PrepareEnvironment(msg.reload_id, msg.packages))
            return
        started_ns = time.time_ns()
        try:
            codeload.verify_checksums(msg.sources, msg.checksums)
            staged = Staged(msg.sources, msg.order, msg.environment)
        except Exception as exc:  # noqa: BLE001 - plugin top-level code may raise anything
            self.send(
                sender,
                m.SandboxReloaded(
                    msg.reload_id, False, actor="root", cause=f"loading the new code failed: {describe_exception(exc)}"
                ),
            )
            return
        affected = [
            name
            for name, info in self.infos.items()
            if info.kind == "worker" and info.module in staged.order and name in self.live
        ]
        # Always two phases, even for one actor: one that answers too late must still be able
        # to drop the new code (the abort follows its LoadCode, from the same sender).
        self.reload = _Reload(msg, sender, staged, affected, started_ns, set(affected))
        for name in affected:
            self.send(
                self.live[name][0],
                m.LoadCode(
                    msg.reload_id,
                    msg.sources,
                    msg.order,
                    msg.versions,
                    msg.state_handler,
                    True,
                    msg.timeout,
                    msg.environment,
                ),
            )
        if affected:
            self.wakeupAfter(timedelta(seconds=msg.timeout), payload=("reload", msg.reload_id))
        else:
            self._finish_reload()

    def receiveMsg_CodeLoaded(self, msg: m.CodeLoaded, sender: Any) -> None:
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
            self._finish_reload()

    def reload_child_down(self, name: str) -> None:
        """An actor went down mid-reload: stop waiting for it (its next incarnation gets the outcome)."""
        reload = self.reload
        if reload is not None and name in reload.waiting:
            reload.waiting.discard(name)
            if not reload.waiting:
                self._finish_reload()

    def reload_child_up(self, name: str, incarnation: int, address: Any) -> None:
        """A child came up: make sure it runs the current code.

        Forked mid-reload, it runs the staged code (restarted if the reload aborts); forked
        before the last commit but up only after it, it missed the commit: it loads the
        current code now.  (Incarnations are spawn times in ns.)
        """
        if self.reload is not None:
            self.reload.restarted.append(name)
        elif self.aborted_window[0] <= incarnation <= self.aborted_window[1]:
            self.send(address, ActorExitRequest())  # forked on code that was then aborted: back on the old
        elif incarnation < self.committed_ns:
            sources = sandbox_finder().table.as_wire()
            versions = {module: (version, version) for module, version in self.modules.items()}
            self.send(address, m.LoadCode("catch-up", sources, sorted(sources), versions, None, False, 30.0))

    def reload_timeout(self, reload_id: str) -> None:
        """The reload's deadline passed with actors still silent."""
        reload = self.reload
        if reload is not None and reload.request.reload_id == reload_id and reload.waiting:
            reload.failure = reload.failure or (
                sorted(reload.waiting)[0],
                f"no answer within {reload.request.timeout} s (busy or hung)",
            )
            reload.waiting.clear()
            self._finish_reload()

    def _finish_reload(self) -> None:
        reload, self.reload = self.reload, None
        assert reload is not None
        request = reload.request
        if reload.failure is not None:
            for name in reload.affected:  # the late ones too: they prepare, then drop it at once
                self._to_live(name, m.AbortCode(request.reload_id))
            reload.staged.abort()
            self.aborted_window = (reload.started_ns, time.time_ns())
            for name in reload.restarted:
                self._to_live(name, ActorExitRequest())  # forked on the new code: bring it back on the old
            actor, cause = reload.failure
            self.send(reload.admin, m.SandboxReloaded(request.reload_id, False, actor=actor, cause=cause))
            return
        prepared = set(reload.prepared)
        for name, (address, _) in self.live.items():
            if name in prepared:
                self.send(address, m.CommitCode(request.reload_id))
            else:
                self.send(
                    address,
                    m.LoadCode(
                        request.reload_id,
                        request.sources,
                        request.order,
                        request.versions,
                        None,
                        False,
                        request.timeout,
                        request.environment,
                    ),
                )
        self.committed_ns = time.time_ns()
        self.commit_versions({module: new for module, (_, new) in request.versions.items()})
        self.send(reload.admin, m.SandboxReloaded(request.reload_id, True, tuple(sorted(reload.updated))))

    def _to_live(self, name: str, message: Any) -> None:
        entry = self.live.get(name)
        if entry is not None:
            self.send(entry[0], message)

    def commit_versions(self, versions: dict[str, int]) -> None:
        """Hook: record the modules' new versions (the root updates its tree info)."""
        self.modules.update(versions)
