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
from datetime import timedelta
from pathlib import Path
from typing import Callable

from thespian.actors import (
    ActorAddress,
    ActorExitRequest,
    ActorSystemConventionUpdate,
    ChildActorExited,
    WakeupMessage,
)

from plugin_host import lowlevel
from plugin_host.config import HostConfig
from plugin_host.errors import AccessDeniedError, BadRequestError, ConfigError, HostStartError
from plugin_host.messages import (
    BatchCreate,
    BatchDestroy,
    BatchHotReload,
    Call,
    Cast,
    CreateSandbox,
    DestroySandbox,
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

from . import _messages as m
from ._admin.events import Events
from ._admin.filtering import Filtering
from ._admin.groups import Groups
from ._admin.lifecycle import VANISHING, Sandboxes, check_sandbox_id
from ._admin.nodes import Nodes
from ._admin.record import Done, SandboxRecord, batch
from ._admin.routing import Routing
from ._admin.versions import Versions
from ._base import Admission, HostActor, log
from ._process.hardening import process_alive

__all__ = ["AdminActor", "check_sandbox_id"]

_SANDBOX_REQUESTS = (GetSandboxInfo, LookupActor, Call, Cast, Subscribe, Unsubscribe)
"""What a sandbox's process may ask the admin, about its own sandbox only (its info and events,
its own actors); everything else is the host's."""
_SANDBOX_REPORTS = (m.SandboxStatus, m.TreeEvent, m.Usage, m.AuditRecords, m.SandboxReloaded)
"""What a sandbox's root reports, about its own sandbox only."""


class AdminActor(HostActor):
    """Front door of a host's actor system (and its view of the convention, see :class:`actors._admin.nodes.Nodes`).

    Its state lives in five components (``actors._admin``): ``lifecycle`` (the sandboxes' records, and
    every move between their states), ``events``, ``routing``, ``versions`` and ``nodes``.  Thespian
    dispatches each message to a ``receiveMsg_<Class>`` method of the actor class: every one is here,
    handing the message to the component that owns what it is about.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.config = HostConfig()
        self.token: str | None = None
        self.host: tuple[int, float] | None = None
        self._ticking = False
        # One records dict, written by the lifecycle only, read by the others.  The cycles (Events and
        # Nodes, Nodes and the lifecycle) are closed with lambdas.
        records: dict[str, SandboxRecord] = {}
        config = self._config  # read when used: the config arrives with HostBoot
        self.events = Events(self, records, config, lambda node: self.nodes.monitor_of(node), self.from_root)
        self.routing = Routing(self, records, lambda i, rec: self.lifecycle.info(i, rec), self._tick)
        self.versions = Versions(self, records, config, self.events.emit, self.from_root)
        self.nodes = Nodes(
            self, records, config, self.events.watch, lambda i, rec, why: self.lifecycle.lost(i, rec, why)
        )
        self.groups = Groups()
        self.filtering = Filtering()
        self.lifecycle = Sandboxes(
            self,
            config,
            self._tick,
            self.from_root,
            self.events,
            self.nodes,
            self.versions,
            self.routing,
            records,
            self.groups,
            self.filtering,
        )

    def _config(self) -> HostConfig:
        return self.config

    def _replier(self, target: ActorAddress, corr: str) -> Done:
        return lambda result: self.reply(target, result, corr)

    def _batch(self, count: int, sender: ActorAddress, corr: str, start: Callable[[int, Done], None]) -> None:
        batch(count, lambda results: self.reply(sender, results, corr), start)

    # -- who may ask what -------------------------------------------------------------------

    def admit(self, message: object, principal: lowlevel.Principal) -> Admission:
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
        rec = self.lifecycle.records.get(principal.sandbox_id or "")
        if rec is None or rec.principal != principal:
            return "refused"  # an ended incarnation, or another host's sandbox (hosts sharing a cookie)
        return "request" if isinstance(message, _SANDBOX_REQUESTS) else "refused"

    def refuse(self, message: object, sender: ActorAddress, principal: lowlevel.Principal) -> AccessDeniedError:
        """Refuse, answer, and record a ``denied`` event for the sandbox that asked."""
        error = super().refuse(message, sender, principal)
        self.events.refused(message, principal, error)
        return error

    def from_root(self, rec: SandboxRecord, sender: ActorAddress) -> bool:
        """Whether a report comes from ``rec``'s current root: signed with its incarnation's key (or, from
        the host's own processes, sent from its address)."""
        principal = lowlevel.sender_principal()
        if not principal.is_host:
            return principal == rec.principal
        return rec.root is not None and rec.root == sender

    # -- boot and the host watchdog ----------------------------------------------------

    def receiveMsg_HostBoot(self, msg: HostBoot, sender: ActorAddress) -> None:
        """Claim this system for a host; a second, different claim means it is stale."""
        if self.token is not None and self.token != msg.token:
            owner = self.host[0] if self.host else "?"
            self.reply(
                sender, HostStartError(f"this actor system already belongs to another host (pid {owner})"), msg.corr
            )
            return
        if self.token is None:  # the first claim: this host's control groups (a killed one's left emptied)
            try:
                self.groups.boot(msg.config, self.multiprocess)
                self.filtering.boot(msg.config, self.multiprocess)
            except ConfigError as exc:
                self.reply(sender, exc, msg.corr)
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

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: ActorAddress) -> None:
        """Tick: host still alive? sandboxes past their start or stop deadline?"""
        if msg.payload == VANISHING:
            self.lifecycle.check_vanishing()
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
                lambda: self.lifecycle.deadlines(now),
                lambda: self.routing.retry_parked(now),
                lambda: self.versions.deadlines(now),
                lambda: self.events.count_deadlines(now),
                lambda: self.nodes.ping(now),
                self.events.report_rejections,
                self.groups.retry,
            ):
                try:
                    duty()
                except Exception:  # noqa: BLE001
                    log.exception("the admin's tick failed in one of its duties")
        finally:
            self._tick()

    def receiveMsg_ActorExitRequest(self, msg: ActorExitRequest, sender: ActorAddress) -> None:
        """The actor system shuts down (``Host.close``, after its shutdown request, or in its place if that
        timed out): end every local sandbox's whole tree before the roots are told to exit, so that nothing a
        plugin forked (``setsid`` and double-forked children included) is left to init."""
        self.lifecycle.kill_local()

    def _emergency_stop(self) -> None:
        """The host died without closing: take every process of this system down."""
        self.lifecycle.kill_local()
        os.killpg(os.getpgid(0), signal.SIGKILL)

    # -- sandboxes: create, reports from roots, destroy, restart, shutdown (Sandboxes) --------------

    def receiveMsg_CreateSandbox(self, msg: CreateSandbox, sender: ActorAddress) -> None:
        """Create a sandbox; the reply comes once it runs (or failed to start)."""
        self.lifecycle.create(msg, self._replier(sender, msg.corr))

    def receiveMsg_SandboxStatus(self, msg: m.SandboxStatus, sender: ActorAddress) -> None:
        """Mirror a sandbox's state and answer whoever waits on it."""
        self.lifecycle.on_status(msg, sender)

    def receiveMsg_ChildActorExited(self, msg: ChildActorExited, sender: ActorAddress) -> None:
        """A member's monitor, or a sandbox root, exited: finish a stop, or record an unexpected death."""
        if not self.nodes.monitor_exited(msg.childAddress):
            self.lifecycle.root_exited(msg.childAddress)

    def receiveMsg_RootGone(self, msg: m.RootGone, sender: ActorAddress) -> None:
        """A member's monitor saw a sandbox root's process end (its exit notice may never come)."""
        self.lifecycle.root_process_gone(msg, sender)

    def receiveMsg_DestroySandbox(self, msg: DestroySandbox, sender: ActorAddress) -> None:
        """Stop a sandbox (``terminate`` runs in every actor) and forget it."""
        self.lifecycle.destroy(msg.sandbox_id, self._replier(sender, msg.corr))

    def receiveMsg_RestartSandbox(self, msg: RestartSandbox, sender: ActorAddress) -> None:
        """Stop the whole sandbox and start it again from its current code."""
        self.lifecycle.restart(msg.sandbox_id, self._replier(sender, msg.corr))

    def receiveMsg_HostShutdown(self, msg: HostShutdown, sender: ActorAddress) -> None:
        """Destroy every sandbox, then answer (the host shuts the system down next)."""
        self.lifecycle.shutdown(self._replier(sender, msg.corr))

    def receiveMsg_BatchCreate(self, msg: BatchCreate, sender: ActorAddress) -> None:
        """Create many sandboxes at once; one bad spec never fails the others."""
        specs = msg.specs if isinstance(msg.specs, (list, tuple)) else None
        if specs is None or not all(isinstance(s, CreateSandbox) for s in specs):
            self.reply(sender, BadRequestError("BatchCreate.specs must be a list of CreateSandbox"), msg.corr)
            return
        self._batch(len(specs), sender, msg.corr, lambda i, done: self.lifecycle.create(specs[i], done))

    def receiveMsg_BatchDestroy(self, msg: BatchDestroy, sender: ActorAddress) -> None:
        """Destroy many sandboxes at once."""
        ids = list(msg.sandbox_ids) if isinstance(msg.sandbox_ids, (list, tuple)) else None
        if ids is None:
            self.reply(sender, BadRequestError("BatchDestroy.sandbox_ids must be a list"), msg.corr)
            return
        self._batch(len(ids), sender, msg.corr, lambda i, done: self.lifecycle.destroy(ids[i], done))

    # -- events, monitoring, audit (Events) ------------------------------------------------

    def receiveMsg_Subscribe(self, msg: Subscribe, sender: ActorAddress) -> None:
        """Push every event to the sender from now on (a sandbox: its own events only, a few subscriptions)."""
        self.events.subscribe(msg, sender)

    def receiveMsg_Unsubscribe(self, msg: Unsubscribe, sender: ActorAddress) -> None:
        """Stop pushing events to the sender."""
        self.events.unsubscribe(msg, sender)

    def receiveMsg_TreeEvent(self, msg: m.TreeEvent, sender: ActorAddress) -> None:
        """Crashes, restarts and limit breaches reported by a sandbox root."""
        self.events.tree_event(msg, sender)

    def receiveMsg_Sample(self, msg: m.Sample, sender: ActorAddress) -> None:
        """The monitor killed a process over a limit (over one of the whole sandbox's: it ends the sandbox)."""
        self.events.sample(msg)
        if msg.whole_sandbox:
            self.lifecycle.end_over_limit(msg.sandbox_id, f"{msg.limit}: {msg.value} over {msg.maximum}")

    def receiveMsg_HostBreach(self, msg: HostBreach, sender: ActorAddress) -> None:
        """A host refused a call past ``max_mailbox``."""
        self.events.host_breach(msg)

    def receiveMsg_Usage(self, msg: m.Usage, sender: ActorAddress) -> None:
        """Message counts from a sandbox root: after a heartbeat, or asked for by a usage query."""
        self.events.usage(msg, sender)

    def receiveMsg_GetResourceUsage(self, msg: GetResourceUsage, sender: ActorAddress) -> None:
        """Memory, CPU, messages and restarts per actor: counts asked of the root now, figures sampled now."""
        self.events.resource_usage(msg, sender)

    def receiveMsg_AuditRecords(self, msg: m.AuditRecords, sender: ActorAddress) -> None:
        """Audit records of a sandbox, from its root."""
        self.events.audit_records(msg, sender)

    def receiveMsg_GetAuditLog(self, msg: GetAuditLog, sender: ActorAddress) -> None:
        """The sandbox's recent audit records, oldest first."""
        self.events.audit_log(msg, sender)

    # -- queries and routing (Routing) -------------------------------------------------------

    def receiveMsg_ListSandboxes(self, msg: ListSandboxes, sender: ActorAddress) -> None:
        """Every sandbox, by id."""
        self.routing.list_sandboxes(msg, sender)

    def receiveMsg_GetSandboxCode(self, msg: GetSandboxCode, sender: ActorAddress) -> None:
        """The sandbox's current sources (for compiling a new version against them)."""
        self.routing.sandbox_code(msg, sender)

    def receiveMsg_GetSandboxInfo(self, msg: GetSandboxInfo, sender: ActorAddress) -> None:
        """One sandbox."""
        self.routing.sandbox_info(msg, sender)

    def receiveMsg_LookupActor(self, msg: LookupActor, sender: ActorAddress) -> None:
        """Where a named actor runs now; with ``wait``, answered once it runs again."""
        self.routing.lookup(msg, sender)

    def receiveMsg_Call(self, msg: Call, sender: ActorAddress) -> None:
        """Route a call to its actor; the actor answers the caller directly."""
        self.routing.call(msg, sender)

    def receiveMsg_Cast(self, msg: Cast, sender: ActorAddress) -> None:
        """Route a cast; unknown sandboxes and actors drop it (casts are never answered)."""
        self.routing.cast(msg)

    def receiveMsg_Run(self, msg: Run, sender: ActorAddress) -> None:
        """Run a function in a fresh process of the sandbox."""
        self.routing.run(msg, sender)

    # -- versions: reloads, rollbacks, queries (Versions) -------------------------------------

    def receiveMsg_HotReload(self, msg: HotReload, sender: ActorAddress) -> None:
        """Reload compiled artifacts into a sandbox."""
        self.versions.hot_reload(msg, self._replier(sender, msg.corr))

    def receiveMsg_RollbackModule(self, msg: RollbackModule, sender: ActorAddress) -> None:
        """Reload the stored code of an earlier (or later) version."""
        self.versions.rollback(msg, self._replier(sender, msg.corr))

    def receiveMsg_BatchHotReload(self, msg: BatchHotReload, sender: ActorAddress) -> None:
        """The same code into many sandboxes; one failure never stops the others."""
        ids = list(msg.sandbox_ids) if isinstance(msg.sandbox_ids, (list, tuple)) else None
        if ids is None:
            self.reply(sender, BadRequestError("BatchHotReload.sandbox_ids must be a list"), msg.corr)
            return
        self._batch(len(ids), sender, msg.corr, lambda i, done: self.versions.batch_item(msg, ids[i], done))

    def receiveMsg_SandboxReloaded(self, msg: m.SandboxReloaded, sender: ActorAddress) -> None:
        """The root's verdict on a reload: record it and answer."""
        self.versions.on_reloaded(msg, sender)

    def receiveMsg_GetModuleVersion(self, msg: GetModuleVersion, sender: ActorAddress) -> None:
        """The current version of a module: answered by the registry actor."""
        self.versions.forward_query(msg, sender)

    def receiveMsg_ListModuleVersions(self, msg: ListModuleVersions, sender: ActorAddress) -> None:
        """Every stored version of a module: answered by the registry actor."""
        self.versions.forward_query(msg, sender)

    def receiveMsg_GetVersionHistory(self, msg: GetVersionHistory, sender: ActorAddress) -> None:
        """A module's version history: answered by the registry actor."""
        self.versions.forward_query(msg, sender)

    # -- the convention (Nodes) -------------------------------------------------------------

    def receiveMsg_ActorSystemConventionUpdate(self, msg: ActorSystemConventionUpdate, sender: ActorAddress) -> None:
        """A system joined or left the convention."""
        self.nodes.on_update(msg)

    def receiveMsg_NodePong(self, msg: m.NodePong, sender: ActorAddress) -> None:
        """A member's monitor answered: that system is alive (again, if it was lost)."""
        self.nodes.on_pong(sender)

    def receiveMsg_ListNodes(self, msg: ListNodes, sender: ActorAddress) -> None:
        """This system and every member known, each with this host's sandboxes on it."""
        self.reply(sender, self.nodes.list_nodes(self.events.rejected_frames(), self.events.denied), msg.corr)
