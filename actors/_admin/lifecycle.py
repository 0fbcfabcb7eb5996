"""The admin's sandboxes and their lifecycle (:class:`Sandboxes`): create, start a root, mirror its
reports, stop, destroy, restart, lose and move a sandbox, and shut every one down.

It owns the records (the other components read them as a ``Mapping``), and :meth:`Sandboxes.move` is the
only writer of a record's status.  Transitions, with the event each emits (and its quirks, kept):

========================================  ======================  =====================================
from -> to                                 where                   event
========================================  ======================  =====================================
any -> STARTING                            a root is started       none
STARTING -> RUNNING                        its root reports        ``started`` (after the waiters' answer)
RUNNING | STARTING -> FAILED               its root reports        ``failed`` (the root's reason)
-> FAILED after a failed *restart*         its root is gone        none
-> FAILED, its local root died             its root is gone        ``failed`` (after the waiters' answer)
-> LOST, no other system takes it          its system is lost      ``lost`` (after the waiters' answer)
-> STOPPING                                a stop is asked         none
========================================  ======================  =====================================

Two events come without a status change: ``lost`` with ``restarting_on`` when a lost sandbox starts on
another system (then -> STARTING), and ``stopped`` when a destroyed sandbox's record is deleted.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from datetime import timedelta
from typing import Callable, Iterator, Protocol

import attrs
import psutil
from thespian.actors import ActorAddress, ActorExitRequest

from plugin_host import codeload, lowlevel
from plugin_host.config import NODE_CAPABILITY, SECURITY_PROFILES, HostConfig, ResourceLimits, check_isolation
from plugin_host.errors import (
    BadRequestError,
    ConfigError,
    PluginHostError,
    SandboxExistsError,
    SandboxNotFoundError,
    SandboxStartError,
)
from plugin_host.messages import Blob, CreateSandbox
from plugin_host.states import AdminAction, ChildStatus, EventKind, RecordStatus, RootStatus
from plugin_host.values import SandboxInfo

from .. import _messages as m
from .._base import log
from .._process.hardening import kill_group, process_alive
from .._process.identity import UserPool, readable_environment, refusal
from .._process.tree import kill_descendants, kill_tree, leads_group_below
from ..sandbox import SandboxActor
from .events import Events
from .filtering import Filtering
from .groups import Groups
from .nodes import Nodes, remote_packages
from .record import AdminPort, Done, SandboxRecord, Sources, not_found, scan
from .routing import Routing
from .versions import Versions

__all__ = ["LifecyclePort", "Sandboxes", "VANISHING", "check_sandbox_id"]

VANISHING = "plugin_host.vanishing"
"""Payload of the short wakeups that check killed processes are gone."""

_EVENT_OF = {
    RecordStatus.RUNNING: EventKind.STARTED,
    RecordStatus.FAILED: EventKind.FAILED,
    RecordStatus.LOST: EventKind.LOST,
}
"""The event a move into a status emits (none for STARTING and STOPPING)."""


class LifecyclePort(AdminPort, Protocol):
    """What the lifecycle needs of the actor beyond :class:`AdminPort`: its wakeups and its last child's process."""

    def wakeupAfter(self, timePeriod: timedelta, payload: object = None) -> None:  # noqa: N803 - Thespian's names
        """Be sent a ``WakeupMessage`` after ``timePeriod``."""
        ...

    def child_process(self) -> object:
        """The ``multiprocessing.Process`` of the child created last (None in-process)."""
        ...


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


def check_sandbox_id(sandbox_id: object) -> None:
    """Sandbox ids are 1-128 printable characters without path separators.

    Raises:
        BadRequestError: the id is not acceptable.
    """
    if not isinstance(sandbox_id, str) or not 1 <= len(sandbox_id) <= 128:
        raise BadRequestError(f"sandbox id must be a string of 1 to 128 characters, got {sandbox_id!r}")
    if not sandbox_id.isprintable() or "/" in sandbox_id or "\\" in sandbox_id or sandbox_id in (".", ".."):
        raise BadRequestError(f"sandbox id {sandbox_id!r} has control characters or path separators")


class Sandboxes:
    """Owns the records, the shutdown waiters and the processes of destroyed sandboxes not gone yet."""

    def __init__(
        self,
        port: LifecyclePort,
        config: Callable[[], HostConfig],
        tick: Callable[[], None],
        from_root: Callable[[SandboxRecord, ActorAddress], bool],
        events: Events,
        nodes: Nodes,
        versions: Versions,
        routing: Routing,
        records: dict[str, SandboxRecord],
        groups: Groups,
        filtering: Filtering,
    ) -> None:
        self.port = port
        self.config = config
        self.tick = tick
        self.from_root = from_root
        self.events = events
        self.nodes = nodes
        self.versions = versions
        self.routing = routing
        self.records = records
        """Every sandbox's record, by id: written here only (the other components were given it as a Mapping)."""
        self.groups = groups
        self.filtering = filtering
        self.shutdown_waiters: list[Done] = []
        self.vanishing: list[tuple[list[tuple[int, float]], Callable[[], None], float]] = []
        """Destroyed sandboxes' processes, killed and not gone yet, with what to do once they are."""
        self.users: UserPool | None = None
        """The uids of ``isolation="user"`` sandboxes (made at the first one's start)."""

    # -- the one writer of a record's status ---------------------------------------------------

    def move(
        self,
        sandbox_id: str,
        rec: SandboxRecord,
        to: RecordStatus,
        reason: str | None = None,
        *,
        answer: Callable[[], object] | None = None,
        quiet: bool = False,
    ) -> None:
        """Move ``rec`` to ``to``: set its status (STARTING clears its reason, FAILED and LOST set it to
        ``reason``), answer its waiters with what ``answer`` returns (called once the status is set), then
        emit the event that goes with ``to`` (see the module's table) unless ``quiet``."""
        rec.status = to
        if to == RecordStatus.STARTING:
            rec.reason = None
        elif to in (RecordStatus.FAILED, RecordStatus.LOST):
            rec.reason = reason
        if answer is not None:
            self.fire(rec, answer())
        kind = _EVENT_OF.get(to)
        if kind is not None and not quiet:
            self.events.emit(kind, sandbox_id, reason="" if kind == EventKind.STARTED else rec.reason or "")

    def fire(self, rec: SandboxRecord, result: object) -> None:
        """Answer everyone waiting on ``rec``'s start, stop or restart."""
        waiters, rec.waiters = rec.waiters, []
        for done in waiters:
            done(result)

    # -- create ---------------------------------------------------------------------------

    def create(self, req: CreateSandbox, done: Done) -> None:
        """Create a sandbox; ``done`` is answered once it runs (or failed to start)."""
        try:
            rec = self._new_record(req)
        except PluginHostError as exc:
            done(exc)
            return
        rec.waiters.append(done)
        self.records[req.sandbox_id] = rec
        self.start_root(req.sandbox_id, rec)

    def _new_record(self, req: CreateSandbox) -> SandboxRecord:
        check_sandbox_id(req.sandbox_id)
        if req.sandbox_id in self.records:
            raise SandboxExistsError(f"sandbox {req.sandbox_id!r} already exists", sandbox_id=req.sandbox_id)
        if req.sandbox_path is not None and not isinstance(req.sandbox_path, str):
            raise BadRequestError(f"sandbox_path must be a folder path, got {req.sandbox_path!r}")
        if not isinstance(req.supervisor, (str, Blob)):
            raise BadRequestError("supervisor must be 'module:Class', a dotted path or a Blob of a class")
        if req.security_profile is not None and req.security_profile not in SECURITY_PROFILES:
            raise BadRequestError(f"security_profile must be one of {SECURITY_PROFILES}")
        if not isinstance(req.restart_elsewhere, bool):
            raise BadRequestError(f"restart_elsewhere must be a bool, got {req.restart_elsewhere!r}")
        self._check_isolation(req)
        node = self.nodes.place(req.requirements)
        limits = self.config().limits if req.limits is None else ResourceLimits.from_mapping(req.limits)
        local = not node and self.port.multiprocess
        self.groups.check(limits, local)
        sources: Sources = {}
        if req.sandbox_path is not None:
            table = codeload.read_sandbox_folder(req.sandbox_path)
            codeload.check_syntax(table)
            sources = table.as_wire()
            # What is read here is what runs: the host's scan of the folder was earlier, maybe of other code.
            scan(req.sandbox_id, req.security_profile or self.config().security_profile, sources)
        group = self.groups.make(req.sandbox_id, limits) if local else None  # last: nothing fails after it
        return SandboxRecord(
            req,
            sources,
            self.versions.register_created(req.sandbox_id, sources),
            limits,
            time.time(),
            node=node,
            group=group,
        )

    def _check_isolation(self, req: CreateSandbox) -> None:
        """Raises ConfigError: a bad ``isolation``, or ``"user"`` where this admin cannot give a sandbox its own uid
        (never a silent fall back to the host's)."""
        isolation = check_isolation(req.isolation or self.config().isolation)
        if isolation != "user":
            return
        why = refusal()
        if not self.port.multiprocess:
            why = "isolation='user' needs multiprocTCPBase (under simpleSystemBase plugins run in the host's process)"
        elif self.nodes.place(req.requirements):
            why = "isolation='user' is for sandboxes on the host's own system, and its requirements place it elsewhere"
        if why:
            raise ConfigError(f"sandbox {req.sandbox_id!r}: {why}", field="isolation")

    def _take_user(self, sandbox_id: str, rec: SandboxRecord) -> bool:
        """Under ``isolation="user"``, the sandbox's own uid (taken at its first start, kept across restarts) and
        its environment's copy.  False: neither could be had, and its start failed (its record goes, unless it
        was a restart)."""
        if rec.isolation(self.config()) != "user":
            return True
        try:
            if rec.user is None:
                rec.user = self._new_user()
            readable_environment(rec.user, rec.request.environment)  # copied here, where a failure fails the start
        except OSError as exc:
            rec.error = SandboxStartError(f"cannot copy the sandbox's environment for its uid: {exc}")
        except PluginHostError as exc:
            rec.error = exc
        else:
            return True
        rec.action = AdminAction.START_FAILED
        self.root_gone(sandbox_id, rec)
        return False

    def _new_user(self) -> m.SandboxUser:
        """A uid from the pool (made at first use).

        Raises:
            ConfigError: the pool's folder is not root's alone.
            LimitExceededError: the range is used up.
        """
        if self.users is None:
            self.users = UserPool(*self.config().sandbox_uids)
        return self.users.take()

    def _release_user(self, rec: SandboxRecord) -> None:
        """Its record goes: so does its uid (its processes are gone or being killed)."""
        if rec.user is not None and self.users is not None:
            self.users.release(rec.user.uid)
            rec.user = None

    def start_root(self, sandbox_id: str, rec: SandboxRecord) -> None:
        """Start a root for the sandbox (a new incarnation, with a key of its own): -> STARTING."""
        if not self._take_user(sandbox_id, rec):
            return
        rec.principal = lowlevel.new_sandbox_principal(sandbox_id)
        if rec.node:  # Thespian places it: the pinned node's admin forks it there (and signs for its key)
            wanted = {
                **(rec.request.requirements or {}),
                NODE_CAPABILITY: rec.node,
                lowlevel.KID_REQUIREMENT: rec.principal.kid.hex(),
            }
            rec.root, rec.pid = self.port.createActor(SandboxActor, targetActorRequirements=wanted), None
        else:
            with _forking(rec.principal):  # the child takes the sandbox's key as it is forked
                rec.root = self.port.createActor(SandboxActor)
            rec.pid = getattr(self.port.child_process(), "pid", None)
            self._enter_group(rec)
        keys = lowlevel.process_keys()
        if keys is not None:  # everything to the root, queued or not, is signed with its incarnation's key
            keys.expect_child(rec.root, rec.principal)
        self.move(sandbox_id, rec, RecordStatus.STARTING)
        rec.children, rec.directory = (), {}
        rec.lost_reason = rec.ended_by = None
        cfg = self.config()
        rec.deadline = time.monotonic() + cfg.start_timeout
        context = m.SandboxContext(
            sandbox_id,
            rec.root,
            cfg.heartbeat_interval,
            cfg.hang_timeout,
            cfg.shutdown_timeout,
            rec.limits,
            rec.security_profile(cfg),
            rec.user,
        )
        self.port.send(
            rec.root,
            m.StartSandbox(
                context,
                rec.request.supervisor,
                rec.sources,
                rec.request.args,
                dict(rec.modules),
                rec.request.environment
                if rec.user is None
                else readable_environment(rec.user, rec.request.environment),
                codeload.wire_checksums(rec.sources),
                remote_packages(rec.node, rec.request.environment),
                rec.principal.kid,
                rec.group.paths() if rec.group is not None else None,
                self.filtering.mode(not rec.node),
            ),
        )
        self.tick()

    @staticmethod
    def _enter_group(rec: SandboxRecord) -> None:
        """Move the new root into the sandbox's group at once (it moves itself too, before any plugin code):
        a fresh incarnation, with no memory limit until its tree runs and a CPU count of its own."""
        if rec.group is None or rec.pid is None:
            return
        try:
            rec.group.set_memory_max(None)
            rec.group.reset_cpu()
            rec.group.join(rec.pid)
        except OSError as exc:  # the root's own join then fails its start, with the reason
            log.warning("sandbox root %s: cannot move it into its control group: %s", rec.pid, exc)

    # -- reports from sandbox roots ------------------------------------------------------

    def on_status(self, msg: m.SandboxStatus, sender: ActorAddress) -> None:
        """Mirror a sandbox's state and answer whoever waits on it."""
        rec = self.records.get(msg.sandbox_id)
        if rec is None or not self.from_root(rec, sender):
            # A stale root: one given up while it stopped, or created late on a member that was lost.
            with lowlevel.signing_for(sender, lowlevel.sender_principal()):
                self.port.send(sender, ActorExitRequest())
            return
        rec.children, rec.directory, rec.restart_count = msg.children, msg.directory, msg.restart_count
        rec.deaths, rec.crashes = msg.deaths, msg.crashes
        if rec.node:  # a local root's pid is known from its fork: a report cannot move it elsewhere
            rec.pid = msg.pid or rec.pid
        if msg.status == RootStatus.RUNNING and rec.status == RecordStatus.STARTING:
            rec.deadline = None
            if rec.group is not None:
                self.groups.started(rec.group, rec.limits)
            self.move(msg.sandbox_id, rec, RecordStatus.RUNNING, answer=lambda: self.info(msg.sandbox_id, rec))
        elif msg.status == RootStatus.FAILED and rec.status in (RecordStatus.RUNNING, RecordStatus.STARTING):
            self.move(msg.sandbox_id, rec, RecordStatus.FAILED, msg.reason)
        elif msg.status == RootStatus.START_FAILED:
            rec.error = msg.error or SandboxStartError(msg.reason or "the sandbox failed to start")
            if rec.action != AdminAction.DESTROY:
                self.stop_root(msg.sandbox_id, rec, AdminAction.START_FAILED)
        elif msg.status == RootStatus.STOPPED and rec.status == RecordStatus.STOPPING:
            if self._ours(rec):
                # Its actors are down: what still runs below it, the root a subreaper, is what its plugin
                # forked itself (a setsid or double-forked child included).  End that while the root still
                # holds it: once the root exits, it would go to init.  Its end is waited for with the rest.
                rec.stopping += kill_descendants(rec.pid)
            self.port.send(rec.root, ActorExitRequest())
        self.routing.retry_parked(time.monotonic())
        if rec.status == RecordStatus.RUNNING:
            self.versions.check_probation(msg.sandbox_id, rec)
        self.events.watch(msg.sandbox_id, rec)

    def root_exited(self, address: ActorAddress) -> None:
        """A child of the admin exited: if it was a sandbox's root, finish a stop or record a death."""
        for sandbox_id, rec in list(self.records.items()):
            if rec.root is not None and rec.root == address:
                self.root_gone(sandbox_id, rec)
                return

    def root_process_gone(self, msg: m.RootGone, sender: ActorAddress) -> None:
        """A member's monitor saw a sandbox root's process end (its exit notice may never come)."""
        rec = self.records.get(msg.sandbox_id)
        if rec is None or not rec.node or rec.root is None or rec.pid != msg.pid:
            return  # the host's own system tells root exits itself; or an older root
        if self.nodes.monitor_of(rec.node) == sender:
            rec.lost_reason = rec.lost_reason or f"its root process on {rec.node} is gone"
            self.root_gone(msg.sandbox_id, rec)

    def _kill_sandbox_group(self, rec: SandboxRecord) -> None:
        """SIGKILL the sandbox's processes, wherever they run (its node's monitor does it there): its whole tree
        while its root runs, else its process group (the root gone, its orphans went to init: only what
        stayed in its group is found), and, with a control group, everything in that, wherever it went."""
        if rec.node:
            self.nodes.kill_on_node(rec.node, rec.pid)
        elif self._ours(rec):
            kill_tree(rec.pid)
        else:
            kill_group(rec.pid)
        if rec.group is not None:  # everything in its control group, wherever it went and whoever reaped it
            rec.group.kill()

    @staticmethod
    def _ours(rec: SandboxRecord) -> bool:
        """Whether ``rec``'s root is a local process that runs, checked to be its root: it leads its own group,
        forked by this admin (then its pid cannot have been reused for someone else's)."""
        return not rec.node and rec.pid is not None and leads_group_below(rec.pid, os.getpid())

    def _remove_group(self, rec: SandboxRecord) -> None:
        """The record goes: so does its control group (what is left in it is killed first; a group the kill
        cannot empty is logged at error level and retried by the tick, see :meth:`Groups.remove`)."""
        if rec.group is not None:
            self.groups.remove(rec.group, repr(rec.request.sandbox_id))
            rec.group = None

    def _destroyed(self, sandbox_id: str, rec: SandboxRecord) -> None:
        self.fire(rec, rec.error if rec.action == AdminAction.START_FAILED else None)
        if rec.action == AdminAction.DESTROY:
            self.events.emit(EventKind.STOPPED, sandbox_id)
        self._check_shutdown_done()

    def _when_gone(self, pids: list[tuple[int, float]], then: Callable[[], None]) -> None:
        """Call ``then`` once none of ``pids`` (pid, create time) runs any more (checked every few ms, 2 s at most)."""
        self.vanishing.append((pids, then, time.monotonic() + 2.0))
        self.check_vanishing()

    def check_vanishing(self) -> None:
        """Go on with each destroy whose processes are gone (or past its 2 s); wake up again for the others."""
        now, waiting, self.vanishing = time.monotonic(), self.vanishing, []
        for pids, then, deadline in waiting:
            left = [(pid, started) for pid, started in pids if process_alive(pid, started)]
            if left and now < deadline:
                self.vanishing.append((left, then, deadline))
            else:
                then()
        if self.vanishing and self.port.multiprocess:
            self.port.wakeupAfter(timedelta(milliseconds=5), payload=VANISHING)

    def root_gone(self, sandbox_id: str, rec: SandboxRecord) -> None:
        """The sandbox's root is gone (exited, or given up): what that means depends on ``rec.action``."""
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
            self.start_root(sandbox_id, rec)
        elif rec.action == AdminAction.START_FAILED and rec.restarted:
            rec.action, rec.children = AdminAction.CREATE, ()
            self.move(sandbox_id, rec, RecordStatus.FAILED, str(rec.error), answer=lambda: rec.error, quiet=True)
        elif rec.action in (AdminAction.DESTROY, AdminAction.START_FAILED):
            del self.records[sandbox_id]
            self._release_user(rec)  # its processes are killed: a dying one keeps its uid out of the next take
            # Now, not once they are gone: the id is free at once, and a sandbox created again under it gets
            # the same group directories, which a late removal would empty under it.
            self._remove_group(rec)
            # Answered once its processes are gone (killed above, they end within milliseconds):
            # destroy_sandbox promises that no process of the sandbox runs when it returns.
            self._when_gone(pids, lambda: self._destroyed(sandbox_id, rec))
        elif rec.status == RecordStatus.STARTING and not rec.restarted:
            self._release_user(rec)
            del self.records[sandbox_id]  # died while starting: as a failed start, the id is free again
            self._remove_group(rec)
            self.fire(
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
            reason = rec.ended_by or "the sandbox root process exited unexpectedly"
            rec.children = tuple(attrs.evolve(c, pid=None, status=ChildStatus.STOPPED) for c in rec.children)
            self.move(sandbox_id, rec, RecordStatus.FAILED, reason, answer=lambda: SandboxStartError(reason))
        self.events.watch(sandbox_id, rec)

    def lost(self, sandbox_id: str, rec: SandboxRecord, reason: str) -> None:
        """Its system is lost: give the root up (it ends itself if it still runs, cut off)."""
        if rec.root is None:
            if rec.status in (RecordStatus.RUNNING, RecordStatus.STARTING):
                self._elsewhere(sandbox_id, rec, reason)
            return
        if rec.pid is None:
            # Never reported: maybe not even created yet there.  Thespian holds this until the address
            # resolves (nothing is pending towards the member), so a late creation ends at once.
            self.port.send(rec.root, ActorExitRequest())
        rec.lost_reason = reason  # else its process group is killed should the member answer again
        self.root_gone(sandbox_id, rec)

    def _elsewhere(self, sandbox_id: str, rec: SandboxRecord, reason: str) -> None:
        """A sandbox whose system was lost: start it on another capable one, or mark it ``lost``."""
        old_monitor = self.nodes.monitor_of(rec.node)
        if old_monitor is not None:  # its pids there mean nothing any more (and may be reused)
            self.port.send(old_monitor, m.Watch(sandbox_id, {}, rec.limits))
        self.versions.fail_reloads(sandbox_id, f"the sandbox was lost: {reason}")
        if rec.request.restart_elsewhere:
            try:
                node = self.nodes.place(rec.request.requirements, exclude=frozenset({rec.node}))
            except PluginHostError as exc:
                reason = f"{reason}; no other system can take it: {exc}"
            else:
                # An event without a status change: the sandbox goes on, STARTING on the other system.
                self.events.emit(EventKind.LOST, sandbox_id, reason=reason, restarting_on=node or self.nodes.node)
                rec.node, rec.restarted, rec.action = node, True, AdminAction.CREATE
                rec.next_incarnation()
                self.start_root(sandbox_id, rec)
                self.events.watch(sandbox_id, rec)
                return
        rec.action = AdminAction.CREATE
        error = SandboxStartError(f"sandbox {sandbox_id!r} is lost: {reason}", sandbox_id=sandbox_id)
        self.move(sandbox_id, rec, RecordStatus.LOST, reason, answer=lambda: error)

    def deadlines(self, now: float) -> None:
        """Give up the starts and stops past their deadline."""
        for sandbox_id, rec in list(self.records.items()):
            if rec.deadline is not None and now > rec.deadline:
                self._deadline_passed(sandbox_id, rec)

    def _deadline_passed(self, sandbox_id: str, rec: SandboxRecord) -> None:
        rec.deadline = None
        if rec.status == RecordStatus.STARTING:
            rec.error = SandboxStartError(
                f"sandbox {sandbox_id!r} did not start within {self.config().start_timeout} s (hung import or init?)"
            )
            rec.action = AdminAction.START_FAILED
        self._kill_sandbox_group(rec)  # a stop or start past its deadline: ChildActorExited follows
        if rec.node and rec.root is not None and rec.pid is None:
            # A remote root that never reported (its creation may have failed there): no exit will come.
            if self.nodes.monitor_of(rec.node) is not None:
                self.port.send(rec.root, ActorExitRequest())
            self.root_gone(sandbox_id, rec)

    # -- destroy / restart / shutdown -----------------------------------------------------

    def stop_root(self, sandbox_id: str, rec: SandboxRecord, action: AdminAction) -> None:
        """Tell the sandbox's root to stop, for ``action`` (destroy, restart, or a failed start): -> STOPPING."""
        rec.action = action
        if not rec.node:  # its processes as of now: the reports while it stops clear their pids
            rec.stopping = _with_start_times(rec.pid, *(c.pid for c in rec.children))
        if rec.root is None:
            self.root_gone(sandbox_id, rec)
            return
        self.move(sandbox_id, rec, RecordStatus.STOPPING)
        rec.deadline = time.monotonic() + 2 * self.config().shutdown_timeout + 1.0
        self.port.send(rec.root, m.Stop("shutdown"))
        self.tick()

    def destroy(self, sandbox_id: object, done: Done) -> None:
        """Stop a sandbox and forget it; ``done`` is answered once its processes are gone."""
        rec = self.records.get(sandbox_id) if isinstance(sandbox_id, str) else None
        if rec is None or not isinstance(sandbox_id, str):
            done(not_found(sandbox_id))
            return
        if rec.status == RecordStatus.STARTING and rec.action == AdminAction.CREATE:
            self.fire(
                rec, SandboxStartError(f"sandbox {sandbox_id!r} was destroyed before it started", sandbox_id=sandbox_id)
            )
        rec.waiters.append(done)
        if rec.action not in (AdminAction.DESTROY, AdminAction.START_FAILED):
            self.stop_root(sandbox_id, rec, AdminAction.DESTROY)

    def restart(self, sandbox_id: object, done: Done) -> None:
        """Stop the whole sandbox and start it again from its current code; ``done`` is answered once it runs."""
        rec = self.records.get(sandbox_id) if isinstance(sandbox_id, str) else None
        if rec is None or not isinstance(sandbox_id, str):
            done(not_found(sandbox_id))
            return
        if rec.action in (AdminAction.DESTROY, AdminAction.START_FAILED):
            done(SandboxNotFoundError(f"sandbox {sandbox_id!r} is being destroyed", sandbox_id=sandbox_id))
            return
        rec.waiters.append(done)
        if rec.action != AdminAction.RESTART:
            self.stop_root(sandbox_id, rec, AdminAction.RESTART)

    def shutdown(self, done: Done) -> None:
        """Destroy every sandbox, then answer ``done``."""
        self.shutdown_waiters.append(done)
        for sandbox_id in list(self.records):
            self.destroy(sandbox_id, lambda result: None)
        self._check_shutdown_done()

    def _check_shutdown_done(self) -> None:
        if self.shutdown_waiters and not self.records:
            waiters, self.shutdown_waiters = self.shutdown_waiters, []
            for done in waiters:
                done(None)

    def kill_local(self) -> None:
        """SIGKILL every sandbox on this system, each its whole tree (the host died without closing, or the
        admin exits: nothing of a sandbox may outlive it)."""
        for rec in self.records.values():
            if not rec.node:  # on another system, the monitor there ends it once the pings stop
                self._kill_sandbox_group(rec)
                self._remove_group(rec)

    def end_over_limit(self, sandbox_id: str, reason: str) -> None:
        """A limit of the whole sandbox is passed for good (its group's lifetime CPU): end every process of it;
        its root's exit then moves it to FAILED with ``reason``."""
        rec = self.records.get(sandbox_id)
        if rec is None or rec.group is None or rec.root is None or rec.action != AdminAction.CREATE:
            return
        used, maximum = rec.group.cpu_seconds(), rec.limits.max_cpu_seconds
        if used is None or maximum is None or used <= maximum:
            return  # a report about an earlier incarnation (a restart counts from zero): not this one's
        if rec.status == RecordStatus.RUNNING:
            rec.ended_by = reason
        elif rec.status == RecordStatus.STARTING and not rec.restarted:
            rec.lost_reason = reason  # over its budget in its modules' top-level code: the create fails with it
        else:
            return
        rec.group.kill()

    # -- queries ---------------------------------------------------------------------------

    def info(self, sandbox_id: str, rec: SandboxRecord) -> SandboxInfo:
        """What ``SandboxInfo`` says of the sandbox now."""
        supervisor = rec.request.supervisor
        label = supervisor if isinstance(supervisor, str) else (rec.request.supervisor_label or "<class>")
        return SandboxInfo(
            sandbox_id,
            rec.public_status(),
            label,
            rec.created_at,
            rec.earlier_restarts + rec.restart_count,
            list(rec.children),
            dict(rec.modules),
            rec.node or self.nodes.node,
            rec.reason,
            rec.pid,
            rec.security_profile(self.config()),
            rec.isolation(self.config()),
            None if rec.user is None else rec.user.uid,
            attrs.asdict(rec.limits),
        )
