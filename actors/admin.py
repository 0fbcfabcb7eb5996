"""The admin actor: the host's front door (global name ``"plugin_host.admin"``).

It speaks the ``plugin_host.messages`` protocol, owns one sandbox root per sandbox, keeps a
mirror of every sandbox's state (so lookups and info never wait on a sandbox), and watches
the host process: if the host dies without closing, the admin ends the whole actor system.
It never imports plugin code.
"""

from __future__ import annotations

import os
import signal
import time
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator

import attrs
import psutil
from thespian.actors import ActorExitRequest, ActorSystemConventionUpdate, ChildActorExited, WakeupMessage

from plugin_host import codeload, lowlevel
from plugin_host.config import NODE_CAPABILITY, SECURITY_PROFILES, HostConfig, ResourceLimits
from plugin_host.errors import (
    AccessDeniedError,
    BadRequestError,
    HostStartError,
    PluginHostError,
    SandboxExistsError,
    SandboxNotFoundError,
    SandboxStartError,
)
from plugin_host.messages import (
    BatchCreate,
    BatchDestroy,
    BatchHotReload,
    Blob,
    Call,
    Cast,
    CreateSandbox,
    DestroySandbox,
    Failed,
    GetAuditLog,
    GetModuleVersion,
    GetResourceUsage,
    GetSandboxCode,
    GetSandboxInfo,
    GetVersionHistory,
    HostBoot,
    HostBooted,
    HostBreach,
    HostShutdown,
    HotReload,
    ListModuleVersions,
    ListNodes,
    ListSandboxes,
    LookupActor,
    RestartSandbox,
    RollbackModule,
    Run,
    Subscribe,
    Unsubscribe,
)
from plugin_host.states import AdminAction, ChildStatus, EventKind, RecordStatus, RootStatus
from plugin_host.values import SandboxInfo

from . import _messages as m
from ._admin.events import Events
from ._admin.nodes import Nodes, remote_packages
from ._admin.record import Address, Done, SandboxRecord, batch, not_found
from ._admin.routing import Routing
from ._admin.versions import Versions
from ._base import Admission, HostActor, log
from ._hardening import kill_group, process_alive
from .sandbox import SandboxActor

__all__ = ["AdminActor", "check_sandbox_id"]

_SANDBOX_REQUESTS = (GetSandboxInfo, LookupActor, Call, Cast, Subscribe, Unsubscribe)
"""What a sandbox's process may ask the admin, about its own sandbox only (its info and events,
its own actors); everything else is the host's."""
_SANDBOX_REPORTS = (m.SandboxStatus, m.TreeEvent, m.Usage, m.AuditRecords, m.SandboxReloaded)
"""What a sandbox's root reports, about its own sandbox only."""

_VANISHING = "plugin_host.vanishing"
"""Payload of the short wakeups that check killed processes are gone."""


@contextmanager
def _forking(principal: lowlevel.Principal) -> Iterator[None]:
    keys = lowlevel.process_keys()
    if keys is None:  # simpleSystemBase: nothing is forked, nothing goes on a wire
        yield
        return
    with keys.forking(principal):
        yield


def _with_start_times(*pids: int | None) -> list[tuple[int, float]]:
    """``(pid, create time)`` of each pid given, to tell later whether that process still runs."""
    return [(pid, _create_time(pid)) for pid in pids if pid]


def _create_time(pid: int) -> float:
    """When ``pid`` started (a pid that is gone, or recycled since, counts as gone)."""
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return -1.0


def check_sandbox_id(sandbox_id: Any) -> None:
    """Sandbox ids are 1-128 printable characters without path separators.

    Raises:
        BadRequestError: the id is not acceptable.
    """
    if not isinstance(sandbox_id, str) or not 1 <= len(sandbox_id) <= 128:
        raise BadRequestError(f"sandbox id must be a string of 1 to 128 characters, got {sandbox_id!r}")
    if not sandbox_id.isprintable() or "/" in sandbox_id or "\\" in sandbox_id or sandbox_id in (".", ".."):
        raise BadRequestError(f"sandbox id {sandbox_id!r} has control characters or path separators")


class AdminActor(HostActor):
    """Front door of a host's actor system (and its view of the convention, see :class:`actors._admin.nodes.Nodes`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config = HostConfig()
        self.token: str | None = None
        self.host: tuple[int, float] | None = None
        self.sandboxes: dict[str, SandboxRecord] = {}
        self._ticking = False
        self._shutdown_waiters: list[Done] = []
        self._vanishing: list[tuple[list[tuple[int, float]], Callable[[], None], float]] = []
        """Destroyed sandboxes' processes, killed and not gone yet, with what to do once they are."""
        # The components share the records (only this actor's lifecycle code writes them); the cycle
        # Events -> Nodes -> Events is closed with a lambda.
        config = self._config  # read when used: the config arrives with HostBoot
        self.events = Events(self, self.sandboxes, config, lambda node: self.nodes.monitor_of(node), self.from_root)
        self.routing = Routing(self, self.sandboxes, self._info, self._tick)
        self.versions = Versions(self, self.sandboxes, config, self.events.emit, self.from_root)
        self.nodes = Nodes(self, self.sandboxes, config, self.events.watch, self.sandbox_lost)

    def _config(self) -> HostConfig:
        return self.config

    # -- who may ask what -------------------------------------------------------------------

    def admit(self, message: Any, principal: lowlevel.Principal) -> Admission:
        """A sandbox may ask about itself (:data:`_SANDBOX_REQUESTS`) and report on itself; nothing else."""
        if isinstance(message, ChildActorExited):
            return "report"  # a root's goodbye: the transport let it through only about that root itself
        if isinstance(message, m.SandboxReloaded):
            about: object = self.versions.sandbox_of(message.reload_id)
        else:
            about = getattr(message, "sandbox_id", principal.sandbox_id)
        if about != principal.sandbox_id:
            return "refused"
        if isinstance(message, _SANDBOX_REPORTS):
            return "report"  # each handler checks it comes from the sandbox's current root (from_root)
        rec = self.sandboxes.get(principal.sandbox_id or "")
        if rec is None or rec.principal != principal:
            return "refused"  # an ended incarnation, or another host's sandbox (hosts sharing a cookie)
        return "request" if isinstance(message, _SANDBOX_REQUESTS) else "refused"

    def refuse(self, message: Any, sender: Any, principal: lowlevel.Principal) -> AccessDeniedError:
        """Refuse, answer, and record a ``denied`` event for the sandbox that asked."""
        error = super().refuse(message, sender, principal)
        self.events.refused(message, principal, error)
        return error

    def from_root(self, rec: SandboxRecord, sender: Any) -> bool:
        """Whether a report comes from ``rec``'s current root: signed with its incarnation's key (or, from
        the host's own processes, sent from its address)."""
        principal = lowlevel.sender_principal()
        if not principal.is_host:
            return principal == rec.principal
        return rec.root is not None and rec.root == sender

    # -- boot and the host watchdog ----------------------------------------------------

    def receiveMsg_HostBoot(self, msg: HostBoot, sender: Any) -> None:
        """Claim this system for a host; a second, different claim means it is stale."""
        if self.token is not None and self.token != msg.token:
            self.send(
                sender,
                Failed(
                    HostStartError(
                        f"this actor system already belongs to another host (pid {self.host[0] if self.host else '?'})"
                    )
                ),
            )
            return
        self.token, self.config = msg.token, msg.config
        self.host = (msg.host_pid, msg.host_create_time)
        if self.config.admin_port:
            self.events.open_rejections(
                str(Path(self.config.state_dir) / "logs" / f"rejected-{self.config.admin_port}.log")
            )
        if self.versions.registry is None:
            self.versions.open(str(Path(self.config.state_dir) / "registry.sqlite3"), self.config.max_versions)
            self.nodes.boot()
        self.send(sender, HostBooted(msg.token, os.getpid(), os.getppid(), os.getpgid(0)))
        self._tick()

    def _tick(self) -> None:
        if not self._ticking and self.multiprocess and self.host is not None:
            self._ticking = True
            self.wakeupAfter(timedelta(seconds=min(1.0, self.config.heartbeat_interval)))

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: Any) -> None:
        """Tick: host still alive? sandboxes past their start or stop deadline?"""
        if msg.payload == _VANISHING:
            self._check_vanishing()
            return
        self._ticking = False
        if self.host is not None and not process_alive(*self.host):
            self._emergency_stop()
            return
        now = time.monotonic()
        try:
            # Each duty on its own: one that fails (say, on a malformed rejection log line) must not stop the
            # others, nor the next tick that watches whether the host is alive.
            for duty in (
                lambda: self._deadlines(now),
                lambda: self.routing.retry_parked(now),
                lambda: self.versions.deadlines(now),
                lambda: self.events.count_deadlines(now),
                lambda: self.nodes.ping(now),
                self.events.report_rejections,
            ):
                try:
                    duty()
                except Exception:  # noqa: BLE001
                    log.exception("the admin's tick failed in one of its duties")
        finally:
            self._tick()

    def _deadlines(self, now: float) -> None:
        for sandbox_id, rec in list(self.sandboxes.items()):
            if rec.deadline is not None and now > rec.deadline:
                self._deadline_passed(sandbox_id, rec)

    def _emergency_stop(self) -> None:
        """The host died without closing: take every process of this system down."""
        for rec in self.sandboxes.values():
            if not rec.node:  # on another system, the monitor there ends it once the pings stop
                kill_group(rec.pid)
        os.killpg(os.getpgid(0), signal.SIGKILL)

    # -- create ---------------------------------------------------------------------------

    def receiveMsg_CreateSandbox(self, msg: CreateSandbox, sender: Any) -> None:
        """Create a sandbox; the reply comes once it runs (or failed to start)."""
        self._create(msg, self._replier(sender, msg.corr))

    def _replier(self, target: Any, corr: str) -> Done:
        return lambda result: self.reply(target, result, corr)

    def _create(self, req: CreateSandbox, done: Done) -> None:
        try:
            rec = self._new_record(req)
        except PluginHostError as exc:
            done(exc)
            return
        rec.waiters.append(done)
        self.sandboxes[req.sandbox_id] = rec
        self._start_root(req.sandbox_id, rec)

    def _new_record(self, req: CreateSandbox) -> SandboxRecord:
        check_sandbox_id(req.sandbox_id)
        if req.sandbox_id in self.sandboxes:
            raise SandboxExistsError(f"sandbox {req.sandbox_id!r} already exists", sandbox_id=req.sandbox_id)
        if req.sandbox_path is not None and not isinstance(req.sandbox_path, str):
            raise BadRequestError(f"sandbox_path must be a folder path, got {req.sandbox_path!r}")
        if not isinstance(req.supervisor, (str, Blob)):
            raise BadRequestError("supervisor must be 'module:Class', a dotted path or a Blob of a class")
        if req.security_profile is not None and req.security_profile not in SECURITY_PROFILES:
            raise BadRequestError(f"security_profile must be one of {SECURITY_PROFILES}")
        if not isinstance(req.restart_elsewhere, bool):
            raise BadRequestError(f"restart_elsewhere must be a bool, got {req.restart_elsewhere!r}")
        node = self.nodes.place(req.requirements)
        limits = self.config.limits if req.limits is None else ResourceLimits.from_mapping(req.limits)
        sources: dict[str, tuple[str, str, bool]] = {}
        if req.sandbox_path is not None:
            table = codeload.read_sandbox_folder(req.sandbox_path)
            codeload.check_syntax(table)
            sources = table.as_wire()
        return SandboxRecord(
            req, sources, self.versions.register_created(req.sandbox_id, sources), limits, time.time(), node=node
        )

    def _start_root(self, sandbox_id: str, rec: SandboxRecord) -> None:
        rec.principal = lowlevel.new_sandbox_principal(sandbox_id)
        if rec.node:  # Thespian places it: the pinned node's admin forks it there (and signs for its key)
            wanted = {
                **(rec.request.requirements or {}),
                NODE_CAPABILITY: rec.node,
                lowlevel.KID_REQUIREMENT: rec.principal.kid.hex(),
            }
            rec.root, rec.pid = self.createActor(SandboxActor, targetActorRequirements=wanted), None
        else:
            with _forking(rec.principal):  # the child takes the sandbox's key as it is forked
                rec.root = self.createActor(SandboxActor)
            rec.pid = getattr(self.child_process(), "pid", None)
        keys = lowlevel.process_keys()
        if keys is not None:  # everything to the root, queued or not, is signed with its incarnation's key
            keys.expect_child(rec.root, rec.principal)
        rec.status, rec.reason, rec.children, rec.directory = RecordStatus.STARTING, None, (), {}
        rec.lost_reason = None
        rec.deadline = time.monotonic() + self.config.start_timeout
        cfg = self.config
        context = m.SandboxContext(
            sandbox_id,
            rec.root,
            cfg.heartbeat_interval,
            cfg.hang_timeout,
            cfg.shutdown_timeout,
            rec.limits,
            rec.request.security_profile or cfg.security_profile,
        )
        self.send(
            rec.root,
            m.StartSandbox(
                context,
                rec.request.supervisor,
                rec.sources,
                rec.request.args,
                dict(rec.modules),
                rec.request.environment,
                codeload.wire_checksums(rec.sources),
                remote_packages(rec.node, rec.request.environment),
                rec.principal.kid,
            ),
        )
        self._tick()

    # -- reports from sandbox roots ------------------------------------------------------

    def receiveMsg_SandboxStatus(self, msg: m.SandboxStatus, sender: Any) -> None:
        """Mirror a sandbox's state and answer whoever waits on it."""
        rec = self.sandboxes.get(msg.sandbox_id)
        if rec is None or not self.from_root(rec, sender):
            # A stale root: one given up while it stopped, or created late on a member that was lost.
            with lowlevel.signing_for(sender, lowlevel.sender_principal()):
                self.send(sender, ActorExitRequest())
            return
        rec.children, rec.directory, rec.restart_count = msg.children, msg.directory, msg.restart_count
        rec.deaths, rec.crashes = msg.deaths, msg.crashes
        if rec.node:  # a local root's pid is known from its fork: a report cannot move it elsewhere
            rec.pid = msg.pid or rec.pid
        if msg.status == RootStatus.RUNNING and rec.status == RecordStatus.STARTING:
            rec.status, rec.deadline = RecordStatus.RUNNING, None
            self._fire(rec, self._info(msg.sandbox_id, rec))
            self.events.emit(EventKind.STARTED, msg.sandbox_id)
        elif msg.status == RootStatus.FAILED and rec.status in (RecordStatus.RUNNING, RecordStatus.STARTING):
            rec.status, rec.reason = RecordStatus.FAILED, msg.reason
            self.events.emit(EventKind.FAILED, msg.sandbox_id, reason=msg.reason or "")
        elif msg.status == RootStatus.START_FAILED:
            rec.error = msg.error or SandboxStartError(msg.reason or "the sandbox failed to start")
            if rec.action != AdminAction.DESTROY:
                self._stop_root(msg.sandbox_id, rec, AdminAction.START_FAILED)
        elif msg.status == RootStatus.STOPPED and rec.status == RecordStatus.STOPPING:
            self.send(rec.root, ActorExitRequest())
        self.routing.retry_parked(time.monotonic())
        if rec.status == RecordStatus.RUNNING:
            self.versions.check_probation(msg.sandbox_id, rec)
        self.events.watch(msg.sandbox_id, rec)

    def _fire(self, rec: SandboxRecord, result: Any) -> None:
        waiters, rec.waiters = rec.waiters, []
        for done in waiters:
            done(result)

    def receiveMsg_ChildActorExited(self, msg: ChildActorExited, sender: Any) -> None:
        """A sandbox root exited: finish a stop, or record an unexpected death."""
        if self.nodes.monitor_exited(msg.childAddress):
            return
        for sandbox_id, rec in list(self.sandboxes.items()):
            if rec.root is not None and rec.root == msg.childAddress:
                self._root_gone(sandbox_id, rec)
                return

    def receiveMsg_RootGone(self, msg: m.RootGone, sender: Any) -> None:
        """A member's monitor saw a sandbox root's process end (its exit notice may never come)."""
        rec = self.sandboxes.get(msg.sandbox_id)
        if rec is None or not rec.node or rec.root is None or rec.pid != msg.pid:
            return  # the host's own system tells root exits itself; or an older root
        if self.nodes.monitor_of(rec.node) == sender:
            rec.lost_reason = rec.lost_reason or f"its root process on {rec.node} is gone"
            self._root_gone(msg.sandbox_id, rec)

    def _kill_sandbox_group(self, rec: SandboxRecord) -> None:
        """SIGKILL the sandbox's process group, wherever it runs (its node's monitor does it there)."""
        if not rec.node:
            kill_group(rec.pid)
        else:
            self.nodes.kill_on_node(rec.node, rec.pid)

    def _destroyed(self, sandbox_id: str, rec: SandboxRecord) -> None:
        self._fire(rec, rec.error if rec.action == AdminAction.START_FAILED else None)
        if rec.action == AdminAction.DESTROY:
            self.events.emit(EventKind.STOPPED, sandbox_id)
        self._check_shutdown_done()

    def _when_gone(self, pids: list[tuple[int, float]], then: Callable[[], None]) -> None:
        """Call ``then`` once none of ``pids`` (pid, create time) runs any more (checked every few ms, 2 s at most)."""
        self._vanishing.append((pids, then, time.monotonic() + 2.0))
        self._check_vanishing()

    def _check_vanishing(self) -> None:
        now, waiting, self._vanishing = time.monotonic(), self._vanishing, []
        for pids, then, deadline in waiting:
            left = [(pid, started) for pid, started in pids if process_alive(pid, started)]
            if left and now < deadline:
                self._vanishing.append((left, then, deadline))
            else:
                then()
        if self._vanishing and self.multiprocess:
            self.wakeupAfter(timedelta(milliseconds=5), payload=_VANISHING)

    def _root_gone(self, sandbox_id: str, rec: SandboxRecord) -> None:
        # Its local processes, to wait for when it is destroyed (a member's are the monitor's there).
        pids = [] if rec.node else rec.stopping + _with_start_times(rec.pid, *(c.pid for c in rec.children))
        self._kill_sandbox_group(rec)  # stragglers a plugin may have forked
        self.events.forget_subscribers(sandbox_id)
        rec.root, rec.pid, rec.directory, rec.deadline = None, None, {}, None
        if rec.action == AdminAction.RESTART:
            rec.action, rec.restarted = AdminAction.CREATE, True
            rec.next_incarnation()
            if rec.node and not self.nodes.member_up(rec.node):
                self._elsewhere(sandbox_id, rec, f"its node {rec.node} is lost")
                return
            self._start_root(sandbox_id, rec)
        elif rec.action == AdminAction.START_FAILED and rec.restarted:
            rec.action, rec.status, rec.reason = AdminAction.CREATE, RecordStatus.FAILED, str(rec.error)
            rec.children = ()
            self._fire(rec, rec.error)
        elif rec.action in (AdminAction.DESTROY, AdminAction.START_FAILED):
            del self.sandboxes[sandbox_id]
            # Answered once its processes are gone (killed above, they end within milliseconds):
            # destroy_sandbox promises that no process of the sandbox runs when it returns.
            self._when_gone(pids, lambda: self._destroyed(sandbox_id, rec))
        elif rec.status == RecordStatus.STARTING and not rec.restarted:
            del self.sandboxes[sandbox_id]  # died while starting: as a failed start, the id is free again
            self._fire(
                rec,
                SandboxStartError(
                    f"sandbox {sandbox_id!r} was lost while starting: {rec.lost_reason}"
                    if rec.lost_reason
                    else "the sandbox root process exited while starting (os._exit or a fatal signal in a module's "
                    "top-level code?)"
                ),
            )
        elif rec.status == RecordStatus.FAILED:  # gave up already (restart intensity): its root going changes nothing
            rec.children = tuple(attrs.evolve(c, pid=None, status=ChildStatus.STOPPED) for c in rec.children)
        elif rec.node:
            rec.children = tuple(attrs.evolve(c, pid=None, status=ChildStatus.STOPPED) for c in rec.children)
            self._elsewhere(sandbox_id, rec, rec.lost_reason or f"its root on node {rec.node} exited")
        else:
            rec.status, rec.reason = RecordStatus.FAILED, "the sandbox root process exited unexpectedly"
            rec.children = tuple(attrs.evolve(c, pid=None, status=ChildStatus.STOPPED) for c in rec.children)
            self._fire(rec, SandboxStartError(rec.reason))
            self.events.emit(EventKind.FAILED, sandbox_id, reason=rec.reason)
        self.events.watch(sandbox_id, rec)

    def sandbox_lost(self, sandbox_id: str, rec: SandboxRecord, reason: str) -> None:
        """Its system is lost: give the root up (it ends itself if it still runs, cut off)."""
        if rec.root is None:
            if rec.status in (RecordStatus.RUNNING, RecordStatus.STARTING):
                self._elsewhere(sandbox_id, rec, reason)
            return
        if rec.pid is None:
            # Never reported: maybe not even created yet there.  Thespian holds this until the address
            # resolves (nothing is pending towards the member), so a late creation ends at once.
            self.send(rec.root, ActorExitRequest())
        rec.lost_reason = reason  # else its process group is killed should the member answer again
        self._root_gone(sandbox_id, rec)

    def _elsewhere(self, sandbox_id: str, rec: SandboxRecord, reason: str) -> None:
        """A sandbox whose system was lost: start it on another capable one, or mark it ``lost``."""
        old_monitor = self.nodes.monitor_of(rec.node)
        if old_monitor is not None:  # its pids there mean nothing any more (and may be reused)
            self.send(old_monitor, m.Watch(sandbox_id, {}, rec.limits))
        self.versions.fail_reloads(sandbox_id, f"the sandbox was lost: {reason}")
        if rec.request.restart_elsewhere:
            try:
                node = self.nodes.place(rec.request.requirements, exclude=frozenset({rec.node}))
            except PluginHostError as exc:
                reason = f"{reason}; no other system can take it: {exc}"
            else:
                self.events.emit(EventKind.LOST, sandbox_id, reason=reason, restarting_on=node or self.nodes.node)
                rec.node, rec.restarted, rec.action = node, True, AdminAction.CREATE
                rec.next_incarnation()
                self._start_root(sandbox_id, rec)
                self.events.watch(sandbox_id, rec)
                return
        rec.status, rec.reason, rec.action = RecordStatus.LOST, reason, AdminAction.CREATE
        self._fire(rec, SandboxStartError(f"sandbox {sandbox_id!r} is lost: {reason}", sandbox_id=sandbox_id))
        self.events.emit(EventKind.LOST, sandbox_id, reason=reason)

    def _deadline_passed(self, sandbox_id: str, rec: SandboxRecord) -> None:
        rec.deadline = None
        if rec.status == RecordStatus.STARTING:
            rec.error = SandboxStartError(
                f"sandbox {sandbox_id!r} did not start within {self.config.start_timeout} s (hung import or init?)"
            )
            rec.action = AdminAction.START_FAILED
        self._kill_sandbox_group(rec)  # a stop or start past its deadline: ChildActorExited follows
        if rec.node and rec.root is not None and rec.pid is None:
            # A remote root that never reported (its creation may have failed there): no exit will come.
            if self.nodes.monitor_of(rec.node) is not None:
                self.send(rec.root, ActorExitRequest())
            self._root_gone(sandbox_id, rec)

    # -- destroy / restart / shutdown -----------------------------------------------------

    def _stop_root(self, sandbox_id: str, rec: SandboxRecord, action: AdminAction) -> None:
        rec.action = action
        if not rec.node:  # its processes as of now: the reports while it stops clear their pids
            rec.stopping = _with_start_times(rec.pid, *(c.pid for c in rec.children))
        if rec.root is None:
            self._root_gone(sandbox_id, rec)
            return
        rec.status = RecordStatus.STOPPING
        rec.deadline = time.monotonic() + 2 * self.config.shutdown_timeout + 1.0
        self.send(rec.root, m.Stop("shutdown"))
        self._tick()

    def receiveMsg_DestroySandbox(self, msg: DestroySandbox, sender: Any) -> None:
        """Stop a sandbox (``terminate`` runs in every actor) and forget it."""
        self._destroy(msg.sandbox_id, self._replier(sender, msg.corr))

    def _destroy(self, sandbox_id: str, done: Done) -> None:
        rec = self.sandboxes.get(sandbox_id) if isinstance(sandbox_id, str) else None
        if rec is None:
            done(not_found(sandbox_id))
            return
        if rec.status == RecordStatus.STARTING and rec.action == AdminAction.CREATE:
            self._fire(
                rec, SandboxStartError(f"sandbox {sandbox_id!r} was destroyed before it started", sandbox_id=sandbox_id)
            )
        rec.waiters.append(done)
        if rec.action not in (AdminAction.DESTROY, AdminAction.START_FAILED):
            self._stop_root(sandbox_id, rec, AdminAction.DESTROY)

    def receiveMsg_RestartSandbox(self, msg: RestartSandbox, sender: Any) -> None:
        """Stop the whole sandbox and start it again from its current code."""
        rec = self.sandboxes.get(msg.sandbox_id) if isinstance(msg.sandbox_id, str) else None
        if rec is None:
            self.reply(sender, not_found(msg.sandbox_id), msg.corr)
            return
        if rec.action in (AdminAction.DESTROY, AdminAction.START_FAILED):
            self.reply(
                sender,
                SandboxNotFoundError(f"sandbox {msg.sandbox_id!r} is being destroyed", sandbox_id=msg.sandbox_id),
                msg.corr,
            )
            return
        rec.waiters.append(self._replier(sender, msg.corr))
        if rec.action != AdminAction.RESTART:
            self._stop_root(msg.sandbox_id, rec, AdminAction.RESTART)

    def receiveMsg_HostShutdown(self, msg: HostShutdown, sender: Any) -> None:
        """Destroy every sandbox, then answer (the host shuts the system down next)."""
        self._shutdown_waiters.append(self._replier(sender, msg.corr))
        for sandbox_id in list(self.sandboxes):
            self._destroy(sandbox_id, lambda result: None)
        self._check_shutdown_done()

    def _check_shutdown_done(self) -> None:
        if self._shutdown_waiters and not self.sandboxes:
            waiters, self._shutdown_waiters = self._shutdown_waiters, []
            for done in waiters:
                done(None)

    # -- batch -------------------------------------------------------------------------

    def receiveMsg_BatchCreate(self, msg: BatchCreate, sender: Any) -> None:
        """Create many sandboxes at once; one bad spec never fails the others."""
        specs = msg.specs if isinstance(msg.specs, (list, tuple)) else None
        if specs is None or not all(isinstance(s, CreateSandbox) for s in specs):
            self.reply(sender, BadRequestError("BatchCreate.specs must be a list of CreateSandbox"), msg.corr)
            return
        self._batch(len(specs), sender, msg.corr, lambda i, done: self._create(specs[i], done))

    def receiveMsg_BatchDestroy(self, msg: BatchDestroy, sender: Any) -> None:
        """Destroy many sandboxes at once."""
        ids = list(msg.sandbox_ids) if isinstance(msg.sandbox_ids, (list, tuple)) else None
        if ids is None:
            self.reply(sender, BadRequestError("BatchDestroy.sandbox_ids must be a list"), msg.corr)
            return
        self._batch(len(ids), sender, msg.corr, lambda i, done: self._destroy(ids[i], done))

    def _batch(self, count: int, sender: Any, corr: str, start: Callable[[int, Done], None]) -> None:
        batch(count, lambda results: self.reply(sender, results, corr), start)

    # -- events, monitoring, audit (Events) ------------------------------------------------

    def receiveMsg_Subscribe(self, msg: Subscribe, sender: Address) -> None:
        """Push every event to the sender from now on (a sandbox: its own events only, a few subscriptions)."""
        self.events.subscribe(msg, sender)

    def receiveMsg_Unsubscribe(self, msg: Unsubscribe, sender: Address) -> None:
        """Stop pushing events to the sender."""
        self.events.unsubscribe(msg, sender)

    def receiveMsg_TreeEvent(self, msg: m.TreeEvent, sender: Address) -> None:
        """Crashes, restarts and limit breaches reported by a sandbox root."""
        self.events.tree_event(msg, sender)

    def receiveMsg_Sample(self, msg: m.Sample, sender: Address) -> None:
        """The monitor killed a process over a limit."""
        self.events.sample(msg)

    def receiveMsg_HostBreach(self, msg: HostBreach, sender: Address) -> None:
        """A host refused a call past ``max_mailbox``."""
        self.events.host_breach(msg)

    def receiveMsg_Usage(self, msg: m.Usage, sender: Address) -> None:
        """Message counts from a sandbox root: after a heartbeat, or asked for by a usage query."""
        self.events.usage(msg, sender)

    def receiveMsg_GetResourceUsage(self, msg: GetResourceUsage, sender: Address) -> None:
        """Memory, CPU, messages and restarts per actor: counts asked of the root now, figures sampled now."""
        self.events.resource_usage(msg, sender)

    def receiveMsg_AuditRecords(self, msg: m.AuditRecords, sender: Address) -> None:
        """Audit records of a sandbox, from its root."""
        self.events.audit_records(msg, sender)

    def receiveMsg_GetAuditLog(self, msg: GetAuditLog, sender: Address) -> None:
        """The sandbox's recent audit records, oldest first."""
        self.events.audit_log(msg, sender)

    # -- queries and routing (Routing) -------------------------------------------------------

    def receiveMsg_ListSandboxes(self, msg: ListSandboxes, sender: Address) -> None:
        """Every sandbox, by id."""
        self.routing.list_sandboxes(msg, sender)

    def receiveMsg_GetSandboxCode(self, msg: GetSandboxCode, sender: Address) -> None:
        """The sandbox's current sources (for compiling a new version against them)."""
        self.routing.sandbox_code(msg, sender)

    def receiveMsg_GetSandboxInfo(self, msg: GetSandboxInfo, sender: Address) -> None:
        """One sandbox."""
        self.routing.sandbox_info(msg, sender)

    def receiveMsg_LookupActor(self, msg: LookupActor, sender: Address) -> None:
        """Where a named actor runs now; with ``wait``, answered once it runs again."""
        self.routing.lookup(msg, sender)

    def receiveMsg_Call(self, msg: Call, sender: Address) -> None:
        """Route a call to its actor; the actor answers the caller directly."""
        self.routing.call(msg, sender)

    def receiveMsg_Cast(self, msg: Cast, sender: Address) -> None:
        """Route a cast; unknown sandboxes and actors drop it (casts are never answered)."""
        self.routing.cast(msg)

    def receiveMsg_Run(self, msg: Run, sender: Address) -> None:
        """Run a function in a fresh process of the sandbox."""
        self.routing.run(msg, sender)

    # -- versions: reloads, rollbacks, queries (Versions) -------------------------------------

    def receiveMsg_HotReload(self, msg: HotReload, sender: Address) -> None:
        """Reload compiled artifacts into a sandbox."""
        self.versions.hot_reload(msg, self._replier(sender, msg.corr))

    def receiveMsg_RollbackModule(self, msg: RollbackModule, sender: Address) -> None:
        """Reload the stored code of an earlier (or later) version."""
        self.versions.rollback(msg, self._replier(sender, msg.corr))

    def receiveMsg_BatchHotReload(self, msg: BatchHotReload, sender: Address) -> None:
        """The same code into many sandboxes; one failure never stops the others."""
        ids = list(msg.sandbox_ids) if isinstance(msg.sandbox_ids, (list, tuple)) else None
        if ids is None:
            self.reply(sender, BadRequestError("BatchHotReload.sandbox_ids must be a list"), msg.corr)
            return
        self._batch(len(ids), sender, msg.corr, lambda i, done: self.versions.batch_item(msg, ids[i], done))

    def receiveMsg_SandboxReloaded(self, msg: m.SandboxReloaded, sender: Address) -> None:
        """The root's verdict on a reload: record it and answer."""
        self.versions.on_reloaded(msg, sender)

    def receiveMsg_GetModuleVersion(self, msg: GetModuleVersion, sender: Address) -> None:
        """The current version of a module: answered by the registry actor."""
        self.versions.forward_query(msg, sender)

    def receiveMsg_ListModuleVersions(self, msg: ListModuleVersions, sender: Address) -> None:
        """Every stored version of a module: answered by the registry actor."""
        self.versions.forward_query(msg, sender)

    def receiveMsg_GetVersionHistory(self, msg: GetVersionHistory, sender: Address) -> None:
        """A module's version history: answered by the registry actor."""
        self.versions.forward_query(msg, sender)

    # -- the convention (Nodes) -------------------------------------------------------------

    def receiveMsg_ActorSystemConventionUpdate(self, msg: ActorSystemConventionUpdate, sender: Address) -> None:
        """A system joined or left the convention."""
        self.nodes.on_update(msg)

    def receiveMsg_NodePong(self, msg: m.NodePong, sender: Address) -> None:
        """A member's monitor answered: that system is alive (again, if it was lost)."""
        self.nodes.on_pong(sender)

    def receiveMsg_ListNodes(self, msg: ListNodes, sender: Address) -> None:
        """This system and every member known, each with this host's sandboxes on it."""
        self.reply(sender, self.nodes.list_nodes(self.events.rejected_frames(), self.events.denied), msg.corr)

    # -- queries ---------------------------------------------------------------------------

    def _info(self, sandbox_id: str, rec: SandboxRecord) -> SandboxInfo:
        status = rec.public_status()
        supervisor = rec.request.supervisor
        label = supervisor if isinstance(supervisor, str) else (rec.request.supervisor_label or "<class>")
        return SandboxInfo(
            sandbox_id,
            status,
            label,
            rec.created_at,
            rec.earlier_restarts + rec.restart_count,
            list(rec.children),
            dict(rec.modules),
            rec.node or self.nodes.node,
            rec.reason,
            rec.pid,
        )
