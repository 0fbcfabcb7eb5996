"""The sandbox root: one per sandbox, the root supervisor of its tree and keeper of its code.

It runs in a process group of its own, installs the sandbox's modules into its own
``sys.modules`` (every actor of the sandbox is forked from it, so they inherit them),
keeps the directory of named actors, and reports the tree's state to the admin actor.
"""

from __future__ import annotations

import importlib
import os
import signal
import time
from datetime import timedelta
from typing import Any

import attrs
from thespian.actors import ActorAddress

from plugin_host import codeload, lowlevel
from plugin_host.config import ResourceLimits
from plugin_host.deps import activate_environment
from plugin_host.errors import (
    ActorNotFoundError,
    InvalidSpecError,
    LimitExceededError,
    PluginError,
    PluginHostError,
    RunTimeoutError,
    SandboxStartError,
)
from plugin_host.messages import Blob, Call, Failed, Run, unblob
from plugin_host.states import ChildStatus, EventKind, RootStatus, SupervisorPhase
from plugin_host.values import ChildInfo

from . import _messages as m
from ._base import describe_exception, log
from ._code.codeswap import local_environment
from ._code.reload import RootReload
from ._process.descriptors import close_inherited
from ._process.hardening import drop_privileges, new_process_group
from ._process.identity import become
from ._process.limits import apply_rlimits, check_rlimits
from ._process.syscalls import confine
from ._process.tree import REAP_INTERVAL, become_subreaper, reap_orphans
from ._spec import Supervisor, bare_plugin_supervisor
from .plugin import Plugin
from .runner import RunnerActor
from .supervisor import SupervisorActor

__all__ = ["SandboxActor", "resolve_supervisor", "COUNT_WAIT"]

COUNT_WAIT = 0.5
"""Seconds a root waits for its actors' message counts: one busy in a long call keeps its heartbeat figure."""


def resolve_supervisor(ref: Any, args: Any) -> type[Supervisor]:
    """Turn ``"module:Class"``, a dotted path or a class into a checked ``Supervisor`` spec.

    Raises:
        SandboxStartError: the module cannot be imported or has no such class.
        InvalidSpecError: the class is not a Supervisor or Plugin, or its spec is invalid.
    """
    cls = ref.load() if isinstance(ref, Blob) else ref
    if isinstance(cls, str):
        cls = _import_class(cls)
    if isinstance(cls, type) and issubclass(cls, Plugin):
        cls = bare_plugin_supervisor(cls, args)
    if not (isinstance(cls, type) and issubclass(cls, Supervisor)):
        raise InvalidSpecError(f"{ref!r} is neither a Supervisor nor a Plugin subclass")
    cls.check()
    return cls


def _sandbox_folders(sources: dict[str, tuple[str, str, bool]], environment: str | None) -> list[str]:
    """What the sandbox's plugin code may read under ``restricted``: its folder and its environment."""
    found = set()
    for name, (path, _, is_package) in sources.items():
        if os.path.isabs(path):
            for _ in range(name.count(".") + 1 + is_package):  # from the file up to the folder the name starts in
                path = os.path.dirname(path)
            found.add(path)
    return sorted(found) + ([environment] if environment else [])


def _import_class(path: str) -> Any:
    module_name, sep, qualname = path.partition(":")
    if not sep:
        module_name, _, qualname = path.rpartition(".")
    if not module_name or not qualname:
        raise SandboxStartError(f"supervisor {path!r} must be 'module:Class' or 'package.module.Class'")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - plugin import-time code may raise anything
        raise SandboxStartError(f"cannot import {module_name!r}: {describe_exception(exc)}") from None
    for part in qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise SandboxStartError(f"module {module_name!r} has no {qualname!r}") from None
    return obj


class SandboxActor(SupervisorActor):
    """Root supervisor of one sandbox; its reloads are a component (:class:`actors._code.reload.RootReload`).

    The admin may place it on another actor system of the convention (Thespian's capability
    check, see ``HostActor.actorSystemCapabilityCheck``); the code travels in its start
    message, checked against its sha256, so that system needs none of the plugin's files.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.admin: ActorAddress | None = None
        self.infos: dict[str, ChildInfo] = {}
        self.live: dict[str, tuple[ActorAddress, int]] = {}
        self.restart_count = 0
        self.modules: dict[str, int] = {}
        self._routes: dict[str, list[Any]] = {}
        self._runners: list[tuple[ActorAddress, Any, Run, float]] = []
        self.order: dict[str, int] = {}
        self.deaths: dict[str, tuple[tuple[int, str], ...]] = {}
        self.crashes: dict[str, int] = {}
        self.message_counts: dict[str, int] = {}
        self._counting: dict[str, set[str]] = {}
        """Admin questions being answered (corr -> actors not heard from yet)."""
        self.reloads = RootReload(self, self.live, self.infos, self.modules, lambda: self.phase, self.commit_versions)

    def setup_process(self) -> None:
        """A process group of its own, so the whole sandbox can be killed at once, and a subreaper, so a
        process a plugin hides from both (``setsid``, a double fork) stays in its tree (see ``_process.tree``)."""
        if self.multiprocess:
            new_process_group()
            become_subreaper()
            self.wakeupAfter(timedelta(seconds=REAP_INTERVAL), payload=_REAP)

    def receiveMsg_StartSandbox(self, msg: m.StartSandbox, sender: ActorAddress) -> None:
        """Take this incarnation's key (and only it), then load the sandbox's code and start the tree."""
        keys = lowlevel.process_keys()
        if keys is not None and keys.is_host:
            # Before any plugin code: the host key, and every key derived from it, are wiped here;
            # every actor of the tree is forked from this process and inherits only this one.  (A
            # root started by hand, without a key id, still never runs plugin code with the host's.)
            principal = (
                lowlevel.Principal(msg.kid) if msg.kid else lowlevel.new_sandbox_principal(msg.context.sandbox_id)
            )
            keys.become_sandbox(principal)
        self.admin, self.parent = sender, sender
        self.context = attrs.evolve(msg.context, root=self.myAddress)
        self.modules.clear()  # the same dict, not a new one: the reloads read it
        self.modules.update(msg.modules)
        # The pid first, before any plugin code: a root hung in an import can still be killed by pid
        # (on another system, by the host's monitor there).
        self.send(self.admin, m.SandboxStatus(msg.context.sandbox_id, RootStatus.STARTING, pid=os.getpid()))
        try:
            if self.multiprocess:  # under simpleSystemBase this is the host's own process
                _private_memory()  # first: no window in which another sandbox may open its /proc/<pid>/mem
                close_inherited(keep=_kept_descriptors(msg.context.user))  # the admin's database, sockets, pipes
                _join_group(msg.context.sandbox_id, msg.group)
                _enter_namespace(msg.context, sealed=bool(msg.group))
                _contain(msg.context.limits)
                _give_up_privileges(msg.context.user)
                confine(msg.syscall_filter, msg.context.sandbox_id)  # no namespaces, mounts, ptrace ...
            environment = local_environment(msg.environment, msg.packages)
            if environment:
                activate_environment(environment)  # inherited by every actor forked from here
            # The audit first: every process of the tree is forked from here and inherits it.
            self.claim_audit(self.context, _sandbox_folders(msg.sources, environment))
            if msg.sources:
                codeload.verify_checksums(msg.sources, msg.checksums)
            with self.plugin_code():  # the modules' top-level code, the spec's class and its args
                if msg.sources:
                    codeload.install(codeload.CodeTable.from_wire(msg.sources))
                spec = resolve_supervisor(msg.supervisor, unblob(msg.args))
                _check_max_actors(spec, msg.context.limits.max_actors)
        except PluginHostError as exc:
            self._report_start_failure(exc)
            return
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - plugin import-time code may raise anything
            self._report_start_failure(SandboxStartError(describe_exception(exc)))
            return
        self.start_tree(spec)

    def _report_start_failure(self, error: PluginHostError) -> None:
        self._set_phase(SupervisorPhase.STOPPED)
        self.send(
            self.admin,
            m.SandboxStatus(
                self.ctx.sandbox_id,
                RootStatus.START_FAILED,
                reason=str(error),
                pid=os.getpid(),
                error=error,
            ),
        )

    # -- tree state ------------------------------------------------------------------------

    def on_started(self) -> None:
        """Every actor of the tree runs: tell each where the others are; the sandbox is up."""
        everyone = m.DirectoryUpdate(dict(self.directory))
        for address, _ in self.live.values():
            self.send(address, everyone)
        self._report(RootStatus.RUNNING)

    def on_all_down(self) -> None:
        """Stopped, aborted or given up: report; the admin decides what comes next."""
        status = _REPORT_WHEN_DOWN[self.phase]
        error = SandboxStartError(self.reason or "") if status == RootStatus.START_FAILED else None
        self._set_phase(SupervisorPhase.FAILED if status == RootStatus.FAILED else SupervisorPhase.STOPPED)
        self._report(status, error)

    def start_tree(self, spec: type[Supervisor]) -> None:
        """Remember the tree's order (depth first, as started) before starting it."""
        self.order = {name: index for index, name in enumerate(_tree_names(spec))}
        super().start_tree(spec)

    def _report(self, status: RootStatus, error: PluginHostError | None = None) -> None:
        children = tuple(sorted(self.infos.values(), key=lambda info: self.order.get(info.name, 0)))
        self.send(
            self.admin,
            m.SandboxStatus(
                self.ctx.sandbox_id,
                status,
                reason=self.reason,
                children=children,
                restart_count=self.restart_count,
                directory=dict(self.live),
                pid=os.getpid(),
                error=error,
                deaths=dict(self.deaths),
                crashes=dict(self.crashes),
            ),
        )

    def receiveMsg_ChildUp(self, msg: m.ChildUp, sender: ActorAddress) -> None:
        """A child of the tree (re)started: update the directory and tell everyone."""
        self.infos[msg.name] = ChildInfo(
            msg.name,
            msg.pid,
            msg.restarts,
            msg.module,
            self.modules.get(msg.module),
            ChildStatus.RUNNING,
            msg.supervisor,
            msg.kind,
        )
        self.live[msg.name] = (msg.address, msg.incarnation)
        self.directory[msg.name] = msg.address
        if self.phase != SupervisorPhase.STARTING:  # at start-up, everyone gets the whole directory once, at the end
            update = m.DirectoryUpdate({msg.name: msg.address})
            for name, (address, _) in self.live.items():
                self.send(address, m.DirectoryUpdate(dict(self.directory)) if name == msg.name else update)
        for pending in self._routes.pop(msg.name, []):
            self.send(msg.address, pending)
        self.reloads.child_up(msg.name, msg.incarnation, msg.address)
        if self.phase != SupervisorPhase.STARTING:
            # Only now: a caller the admin lets through must find the directory already sent.
            self._report(RootStatus.FAILED if self.phase == SupervisorPhase.FAILED else RootStatus.RUNNING)
        if msg.restarts:
            self._event(EventKind.RESTARTED, msg.name, f"restart #{msg.restarts}", pid=msg.pid)

    def receiveMsg_ChildDown(self, msg: m.ChildDown, sender: ActorAddress) -> None:
        """A child of the tree stopped or crashed."""
        if msg.restarting:
            self.restart_count += 1
        self.deaths[msg.name] = (*self.deaths.get(msg.name, ())[-7:], (msg.incarnation, msg.last_call))
        if msg.status in (ChildStatus.CRASHED, ChildStatus.FAILED):
            self.crashes[msg.name] = self.crashes.get(msg.name, 0) + 1
            first_line = msg.reason.strip().splitlines()[0] if msg.reason.strip() else "unknown"
            self._event(EventKind.CRASHED, msg.name, first_line, restarting=msg.restarting)
            limit = _breached_limit(first_line)
            if limit:
                self._event(EventKind.LIMIT_BREACHED, msg.name, first_line, limit=limit)
        info = self.infos.get(msg.name)
        if info is not None:
            status = ChildStatus.RESTARTING if msg.restarting else ChildStatus(msg.status)
            self.infos[msg.name] = attrs.evolve(info, pid=None, status=status)
        entry = self.live.get(msg.name)
        if entry is not None and entry[1] == msg.incarnation:
            del self.live[msg.name]
            self.directory.pop(msg.name, None)
        self.reloads.child_down(msg.name)
        if self.phase == SupervisorPhase.RUNNING:
            self._report(RootStatus.RUNNING)

    def _event(self, kind: EventKind, actor: str, reason: str, **details: Any) -> None:
        self.send(self.admin, m.TreeEvent(self.ctx.sandbox_id, kind, actor, reason, details))

    def receiveMsg_TreeEvent(self, msg: m.TreeEvent, sender: ActorAddress) -> None:
        """An event an actor of the tree reports itself (a limit it enforced): on to the admin."""
        self.send(self.admin, msg)

    def receiveMsg_AuditRecords(self, msg: m.AuditRecords, sender: ActorAddress) -> None:
        """A worker's audit records: on to the admin, which keeps the sandbox's log."""
        self.send(self.admin, msg)

    def receiveMsg_Usage(self, msg: m.Usage, sender: ActorAddress) -> None:
        """Message counts from a supervisor: keep them and tell the admin."""
        self.message_counts.update(msg.messages)
        self.send(self.admin, m.Usage(dict(self.message_counts), self.ctx.sandbox_id))

    def receiveMsg_CountMessages(self, msg: m.CountMessages, sender: ActorAddress) -> None:
        """Ask every live actor how many messages it handled; answer once all did, or after ``COUNT_WAIT``."""
        waiting = set(self.live)
        self._counting[msg.corr] = waiting
        for address, _ in self.live.values():
            self.send(address, m.Ping(0))  # answered between messages: it counts every one handled so far
        if waiting:
            self.wakeupAfter(timedelta(seconds=COUNT_WAIT), payload=("count", msg.corr))
        else:
            self._counted(msg.corr)

    def receiveMsg_Pong(self, msg: m.Pong, sender: ActorAddress) -> None:
        """A heartbeat answer from a child, or a count from any actor of the tree."""
        super().receiveMsg_Pong(msg, sender)
        entry = self.live.get(msg.name)
        if entry is None or entry[1] != msg.incarnation:
            return
        self.message_counts[msg.name] = msg.messages
        for corr, waiting in list(self._counting.items()):
            if msg.name in waiting:
                waiting.discard(msg.name)
                if not waiting:
                    self._counted(corr)

    def _counted(self, corr: str) -> None:
        entry = self._counting.pop(corr, None)
        if entry is not None:  # anyone still busy keeps the figure it last gave
            self.send(self.admin, m.Usage(dict(self.message_counts), self.ctx.sandbox_id, corr))

    def receiveMsg_Route(self, msg: m.Route, sender: ActorAddress) -> None:
        """Deliver a message for a named actor, holding it while that actor (re)starts."""
        entry = self.live.get(msg.name)
        if entry is not None:
            self.send(entry[0], msg.message)
        elif msg.name in self.infos or self.phase == SupervisorPhase.STARTING:
            queue = self._routes.setdefault(msg.name, [])
            if len(queue) < 1000:
                queue.append(msg.message)
        elif isinstance(msg.message, Call):
            self.send(
                msg.message.reply_to or sender,
                Failed(
                    ActorNotFoundError(
                        f"no actor {msg.name!r} in sandbox {self.ctx.sandbox_id!r}",
                        sandbox_id=self.ctx.sandbox_id,
                        name=msg.name,
                    ),
                    msg.message.corr,
                ),
            )

    # -- Host.run ----------------------------------------------------------------------------

    def receiveMsg_Run(self, msg: Run, sender: ActorAddress) -> None:
        """Run a function in a fresh process of this sandbox (it counts against ``max_actors``)."""
        if self.context is None:  # not started: neither limits nor a profile to run it under yet
            self.send(msg.reply_to or sender, Failed(SandboxStartError("the sandbox has not started yet"), msg.corr))
            return
        limit = self.context.limits.max_actors
        if limit is not None and len(self.live) + len(self._runners) + 1 > limit:
            self.send(
                msg.reply_to or sender,
                Failed(
                    LimitExceededError(
                        f"sandbox {self.ctx.sandbox_id!r} already runs {limit} actors (max_actors)",
                        limit="max_actors",
                    ),
                    msg.corr,
                ),
            )
            return
        runner = self.createActor(RunnerActor)
        process = self.child_process()
        self._runners.append((runner, process, msg, time.monotonic() + msg.timeout))
        self.send(runner, m.RunIn(self.ctx, attrs.evolve(msg, reply_to=msg.reply_to or sender)))
        self.wakeupAfter(timedelta(seconds=msg.timeout), payload=("run", msg.corr))

    def receiveMsg_RunDone(self, msg: m.RunDone, sender: ActorAddress) -> None:
        """A runner finished; it exits by itself."""
        self._runners = [r for r in self._runners if r[2].corr != msg.corr]

    # -- hot reload (the reloads component does the work) -------------------------------------

    def receiveMsg_ReloadSandbox(self, msg: m.ReloadSandbox, sender: ActorAddress) -> None:
        """Reload code across the sandbox, all or nothing (see :mod:`actors._code.reload`)."""
        self.reloads.start(msg, sender)

    def receiveMsg_CodeLoaded(self, msg: m.CodeLoaded, sender: ActorAddress) -> None:
        """One actor's answer to a reload's ``LoadCode``."""
        self.reloads.code_loaded(msg)

    def receiveMsg_EnvironmentReady(self, msg: m.EnvironmentReady, sender: ActorAddress) -> None:
        """A reload's requirements are installed here (or failed): go on with it."""
        self.reloads.environment_ready(msg)

    def commit_versions(self, versions: dict[str, int]) -> None:
        """A reload committed: the modules and the tree's info show the new versions."""
        self.modules.update(versions)
        for name, info in self.infos.items():
            if info.module in versions:
                self.infos[name] = attrs.evolve(info, version=versions[info.module])
        self._report(RootStatus.RUNNING)

    def on_wakeup(self, payload: Any) -> None:
        """A ``Host.run`` or reload deadline, or the round of reaping orphans that exited under the root."""
        if payload == _REAP:
            reap_orphans()
            self.wakeupAfter(timedelta(seconds=REAP_INTERVAL), payload=_REAP)
            return
        if isinstance(payload, tuple) and payload[0] == "reload":
            self.reloads.timeout(payload[1])
            return
        if isinstance(payload, tuple) and payload[0] == "count":
            self._counted(payload[1])
            return
        if not (isinstance(payload, tuple) and payload[0] == "run"):
            return
        for runner in [r for r in self._runners if r[2].corr == payload[1]]:
            self._runners.remove(runner)
            _, process, run, _ = runner
            if process is not None and process.pid:
                try:
                    os.kill(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.send(run.reply_to, Failed(RunTimeoutError(f"run did not finish within {run.timeout} s"), run.corr))

    def on_other_exit(self, address: ActorAddress) -> None:
        """A runner or an environment installer exited; one that never answered died: say so at once."""
        self.reloads.installer_exited(address)
        for runner in [r for r in self._runners if r[0] == address]:
            self._runners.remove(runner)
            run = runner[2]
            self.send(
                run.reply_to,
                Failed(
                    PluginError(
                        "run: the process died before answering (os._exit, a signal or a limit)",
                        type_name="ProcessDied",
                    ),
                    run.corr,
                ),
            )


_REAP = "plugin_host.reap"
"""Payload of the root's wakeups that reap orphans."""

_REPORT_WHEN_DOWN = {
    SupervisorPhase.STOPPING: RootStatus.STOPPED,
    SupervisorPhase.ABORTING: RootStatus.START_FAILED,
    SupervisorPhase.FAILING: RootStatus.FAILED,
}
"""What the root reports once its whole tree is down, by why it went down."""


def _private_memory() -> None:
    """Non-dumpable (inherited by every process of the sandbox): a process of the same uid without
    ``CAP_SYS_PTRACE`` (another sandbox, under ``isolation="process"``) can neither attach to it nor open its
    ``/proc/<pid>/mem`` or ``environ``.  Done before anything else: the kernel checks at the open, and a
    descriptor opened while the root was still dumpable (between dropping its capabilities and this, say)
    would keep working.

    Raises:
        SandboxStartError: the kernel refused.
    """
    try:
        lowlevel.confine.make_non_dumpable()
    except OSError as exc:
        raise SandboxStartError(f"cannot make the sandbox's processes non-dumpable: {exc.strerror}") from None


def _kept_descriptors(user: m.SandboxUser | None) -> set[int]:
    """What the root keeps of what it inherited: under ``isolation="process"``, the log of dropped frames
    (every process of the host appends there, so that the admin counts them; such a sandbox runs as the host's
    uid and could open that file by its path anyway); a sandbox of its own uid keeps nothing."""
    keys = lowlevel.process_keys()
    if user is not None or keys is None or keys.log.fd is None:
        return set()
    return {keys.log.fd}


def _join_group(sandbox_id: str, group: dict[str, str] | None) -> None:
    """Into the sandbox's control group (the admin made it), while this process may still write there: every
    process of the sandbox is forked from here, and stays in it whatever it detaches from (its cgroup mounts
    are made read-only next, in :func:`_enter_namespace`, so that its plugin cannot move out).

    Raises:
        SandboxStartError: the group cannot be joined.
    """
    if not group:
        return
    try:
        lowlevel.cgroup.SandboxGroup.at(group).join()
    except OSError as exc:
        raise SandboxStartError(f"cannot join the sandbox's control group: {exc}") from None


def _enter_namespace(context: m.SandboxContext, sealed: bool) -> None:
    """The sandbox's own mount namespace (see ``plugin_host._namespace``), while this process may still mount: its
    cgroup mounts read-only (``sealed``: so that its plugin cannot move out of its group) and, for a sandbox
    run as its own user, its own IPC namespace, temporaries and POSIX queues, and the folders it imports from
    (the interpreter's and the runtime's, not the application's) readable where a home its uid cannot pass or
    a fresh temporary would hide them.  A sandbox of the host's own uid (``isolation="process"``) keeps the
    host's ``/tmp`` and IPC: it runs as the host's user, and a plugin may hand files to the host there.

    Raises:
        SandboxStartError: a sandbox run as its own user cannot have its namespace (never run it without).
    """
    user = context.user
    if not sealed and user is None:
        return
    try:
        lowlevel.namespace.enter(ipc=user is not None)
    except OSError as exc:
        if user is not None:
            raise SandboxStartError(f"cannot make the sandbox's own mount and IPC namespace: {exc}") from None
        log.warning(
            "sandbox %s: no mount namespace of its own (%s): its plugin may leave its group", context.sandbox_id, exc
        )
        return
    if sealed:
        _seal(context.sandbox_id)
    if user is None:
        return
    try:
        lowlevel.namespace.private_for_user(context.limits.max_memory_mb)
    except OSError as exc:
        raise SandboxStartError(f"cannot make the sandbox's own /tmp or show it the interpreter: {exc}") from None


def _seal(sandbox_id: str) -> None:
    """Every cgroup mount read-only in the sandbox's namespace (see ``plugin_host._namespace.seal``), or a warning."""
    try:
        lowlevel.namespace.seal()
    except OSError as exc:
        log.warning(
            "sandbox %s: cannot make the cgroup mounts read-only (%s): its plugin may leave its group", sandbox_id, exc
        )


def _contain(limits: ResourceLimits) -> None:
    """Before the root's first plugin code: limits it cannot lift (its privileges go next, in
    :func:`_give_up_privileges`); every process of the sandbox is forked from here and inherits them.

    Raises:
        ConfigError: a limit that cannot be applied here.
    """
    check_rlimits(limits)
    apply_rlimits(limits)


def _give_up_privileges(user: m.SandboxUser | None) -> None:
    """Before the root's first plugin code, after its key and its control group: no capability, and, with
    ``isolation="user"``, the sandbox's own uid (:mod:`actors._process.identity`); every process of the
    sandbox is forked from here and inherits both.

    Raises:
        SandboxStartError: the kernel refused to drop the privileges or to switch the uid.
    """
    try:
        drop_privileges(None if user is None else lambda: become(user))
    except OSError as exc:
        raise SandboxStartError(f"cannot drop the host's privileges: {exc}") from None


def _tree_names(spec: type[Supervisor]) -> list[str]:
    names: list[str] = []
    for child in spec.children:
        names.append(child.name)
        if child.is_supervisor:
            names.extend(_tree_names(child.plugin))
    return names


def _check_max_actors(spec: type[Supervisor], limit: int | None) -> None:
    count = len(_tree_names(spec))
    if limit is not None and count > limit:
        raise SandboxStartError(f"the supervision tree has {count} actors; max_actors is {limit}", limit="max_actors")


_LIMIT_MARKERS = (
    ("MemoryError", "max_memory_mb"),
    ("SIGXCPU", "max_cpu_seconds"),
    ("LimitExceededError", "call_cpu_budget_ms"),
)


def _breached_limit(reason: str) -> str | None:
    """Which limit a crash reason shows was hit, if any."""
    return next((limit for marker, limit in _LIMIT_MARKERS if marker in reason), None)
