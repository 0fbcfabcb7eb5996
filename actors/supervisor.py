"""Supervision: the ``Supervisor`` spec (re-exported) and the ``SupervisorActor`` that runs one.

Thespian only tells a parent *that* a child exited (``ChildActorExited``, no reason), so
supervision is ours: children say why before they exit on their own (``Exiting``), a
silent death is a crash, heartbeats find hung children and kill them by pid, and OTP
strategies and restart intensity decide what happens next.
"""

from __future__ import annotations

import gc
import os
import signal
import time
from collections import deque
from datetime import timedelta
from typing import Any

import attrs
import cloudpickle
from thespian.actors import ActorAddress, ActorExitRequest, ChildActorExited, WakeupMessage

from plugin_host.errors import BadRequestError
from plugin_host.messages import Call, Failed
from plugin_host.states import ChildStatus, SupervisorPhase

from . import _messages as m
from ._base import SandboxMember, describe_exception
from ._code.codeswap import Staged
from ._process import inflight
from ._process.limits import apply_rlimits
from ._spec import ChildSpec, Supervisor
from .worker import WorkerActor

__all__ = ["ChildSpec", "Supervisor", "SupervisorActor"]

_last_incarnation = 0


def _next_incarnation() -> int:
    """When this incarnation was spawned, in ns: unique per host, and ordered against reload commits."""
    global _last_incarnation
    _last_incarnation = max(time.time_ns(), _last_incarnation + 1)
    return _last_incarnation


@attrs.define
class _Child:
    """A supervisor's record of one child; :meth:`move` is the one writer of its ``status``."""

    spec: ChildSpec
    blob: bytes
    address: ActorAddress | None = None
    pid: int | None = None
    process: Any = None
    incarnation: int = 0
    status: ChildStatus = ChildStatus.NEW
    restarts: int = 0
    last_heard: float = 0.0
    stop_since: float = 0.0
    exit_reason: str | None = None
    normal_exit: bool = False
    slot: Any = None
    """Shared page where a worker notes the call it runs (see :mod:`actors._process.inflight`)."""
    last_call: str = ""
    messages: int = 0

    @property
    def alive(self) -> bool:
        """Whether the child has a process (or is being started)."""
        return self.address is not None

    def move(self, status: ChildStatus) -> None:
        """Enter ``status``.  Starting or running counts as hearing from the child; stopping starts its stop clock."""
        self.status = status
        if status in (ChildStatus.STARTING, ChildStatus.RUNNING):
            self.last_heard = time.monotonic()
        elif status == ChildStatus.STOPPING:
            self.stop_since = time.monotonic()


_GOING_DOWN = (SupervisorPhase.STOPPING, SupervisorPhase.ABORTING, SupervisorPhase.FAILING)
"""Phases that end once every child is down (:meth:`SupervisorActor.on_all_down`)."""


def _exit_description(process: Any) -> str:
    code = getattr(process, "exitcode", None)
    if code is None:
        return "exited unexpectedly"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


class SupervisorActor(SandboxMember):
    """Runs one ``Supervisor`` spec: starts children in order, restarts them per strategy."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spec: type[Supervisor] = Supervisor
        self.children: list[_Child] = []
        self._phase = SupervisorPhase.IDLE
        self.reason: str | None = None
        self._restart_times: deque[float] = deque()
        self._pending: list[_Child] = []
        self._ticking = False
        self._ping_seq = 0
        self._reported: dict[str, int] = {}

    @property
    def phase(self) -> SupervisorPhase:
        """Where this supervisor is in its life (set by :meth:`_set_phase` only)."""
        return self._phase

    def _set_phase(self, phase: SupervisorPhase) -> None:
        """The one writer of :attr:`phase`."""
        self._phase = phase

    # -- start ---------------------------------------------------------------------------

    def receiveMsg_StartChild(self, msg: m.StartChild, sender: ActorAddress) -> None:
        """Started as a nested supervisor by its parent."""
        self.context, self.parent = msg.context, sender
        self.actor_name, self.incarnation = msg.name, msg.incarnation
        self.directory = dict(msg.directory)
        if self.multiprocess:  # inherited from the root already; its own spec is plugin code
            apply_rlimits(msg.context.limits)
        try:
            self.claim_audit(msg.context)
            with self.plugin_code():  # unpickling the spec runs plugin code
                spec: ChildSpec = cloudpickle.loads(msg.spec)
        except Exception as exc:  # noqa: BLE001 - the sandbox boundary
            self.send(sender, m.StartFailed(self.actor_name, self.incarnation, describe_exception(exc)))
            self.send(self.myAddress, ActorExitRequest())
            return
        self.start_tree(spec.plugin)

    def start_tree(self, spec: type[Supervisor]) -> None:
        """Start every child of ``spec`` (all at once; each answers ``Started``)."""
        self.spec = spec
        self._set_phase(SupervisorPhase.STARTING)
        with self.plugin_code():  # the spec's children and their args are the plugin's objects
            self.children = [_Child(child, cloudpickle.dumps(child)) for child in spec.children]
        for child in self.children:
            self._spawn(child)
        self._tick()
        self._check_started()

    def _spawn(self, child: _Child) -> None:
        kind = SupervisorActor if child.spec.is_supervisor else WorkerActor
        child.incarnation = _next_incarnation()
        child.exit_reason, child.normal_exit = None, False
        child.slot = None if child.spec.is_supervisor else inflight.new_slot()
        gc.freeze()  # what the child inherits stays out of its collector: fewer copy-on-write pages
        try:
            child.address = self.createActor(kind)
        except Exception as exc:  # noqa: BLE001 - e.g. fork failure under a memory limit
            child.address = None
            child.move(ChildStatus.RESTARTING)
            self._crashed(child, f"could not start: {describe_exception(exc)}", normal=False)
            return
        inflight.take_slot()  # the fork has its copy; never hand this one to another child
        child.process = self.child_process()
        child.pid = getattr(child.process, "pid", None)
        child.move(ChildStatus.STARTING)
        self.send(
            child.address,
            m.StartChild(
                self.ctx,
                child.spec.name,
                child.incarnation,
                child.blob,
                dict(self.directory),
            ),
        )

    def _find(self, name: str, incarnation: int) -> _Child | None:
        for child in self.children:
            if child.spec.name == name and child.incarnation == incarnation:
                return child
        return None

    def receiveMsg_Started(self, msg: m.Started, sender: ActorAddress) -> None:
        """A child finished ``init``."""
        child = self._find(msg.name, msg.incarnation)
        if child is None or child.status != ChildStatus.STARTING:
            return
        child.move(ChildStatus.RUNNING)
        self.to_root(
            m.ChildUp(
                child.spec.name,
                child.incarnation,
                child.address,
                child.pid,
                self.actor_name,
                "supervisor" if child.spec.is_supervisor else "worker",
                child.spec.plugin.__module__,
                child.restarts,
            )
        )
        self._check_started()

    def _check_started(self) -> None:
        if self.phase == SupervisorPhase.STARTING and all(c.status == ChildStatus.RUNNING for c in self.children):
            self._set_phase(SupervisorPhase.RUNNING)
            self.on_started()

    def on_started(self) -> None:
        """Hook: every child runs.  A nested supervisor tells its parent."""
        self.send(self.parent, m.Started(self.actor_name, self.incarnation))

    def receiveMsg_StartFailed(self, msg: m.StartFailed, sender: ActorAddress) -> None:
        """A child's ``init`` raised; it exits next."""
        child = self._find(msg.name, msg.incarnation)
        if child is not None:
            child.exit_reason, child.normal_exit = msg.reason, False

    def receiveMsg_Exiting(self, msg: m.Exiting, sender: ActorAddress) -> None:
        """A child says why it is about to exit; it runs no plugin code any more.

        A crashed worker is replaced at once instead of after Thespian reports its exit:
        that saves the exit's latency, and the old process only answers "not me" now.
        """
        child = self._find(msg.name, msg.incarnation)
        if child is None:
            return
        child.exit_reason, child.normal_exit = msg.reason, msg.normal
        if child.alive and child.status in (ChildStatus.RUNNING, ChildStatus.STARTING) and not child.spec.is_supervisor:
            self._gone(child)
            self._crashed(child, msg.reason, msg.normal)

    def receiveMsg_SupervisorFailed(self, msg: m.SupervisorFailed, sender: ActorAddress) -> None:
        """A nested supervisor gave up; its exit counts as a crash."""
        for child in self.children:
            if child.spec.name == msg.name and child.alive:
                child.exit_reason, child.normal_exit = msg.reason, False

    # -- exits ---------------------------------------------------------------------------

    def receiveMsg_ChildActorExited(self, msg: ChildActorExited, sender: ActorAddress) -> None:
        """Thespian reports a child process gone: decide what to do about it."""
        child = next((c for c in self.children if c.alive and c.address == msg.childAddress), None)
        if child is None:
            self.on_other_exit(msg.childAddress)
            return
        reason = self._gone(child)
        if child.status == ChildStatus.STOPPING:
            child.move(ChildStatus.STOPPED)
            self._report_down(child, ChildStatus.STOPPED, "shutdown", restarting=child in self._pending)
            self._advance()
            return
        self._crashed(child, reason, child.normal_exit)

    def _gone(self, child: _Child) -> str:
        """Forget a child's process; return why it ended."""
        reason = child.exit_reason or _exit_description(child.process)
        child.last_call = inflight.read(child.slot)
        child.address = child.pid = child.process = child.slot = None
        return reason

    def on_other_exit(self, address: ActorAddress) -> None:
        """Hook: an actor that is not a supervised child exited."""

    def _crashed(self, child: _Child, reason: str, normal: bool) -> None:
        if self.phase == SupervisorPhase.STARTING:
            child.move(ChildStatus.FAILED)
            self._report_down(child, ChildStatus.FAILED, reason, restarting=False)
            self._shut_down_all(SupervisorPhase.ABORTING, f"child {child.spec.name!r} failed to start: {reason}")
            return
        if self.phase != SupervisorPhase.RUNNING:
            child.move(ChildStatus.STOPPED)
            self._report_down(child, ChildStatus.STOPPED, reason, restarting=False)
            self._advance()
            return
        restart = child.spec.restart == "permanent" or (child.spec.restart == "transient" and not normal)
        if not restart:
            child.move(ChildStatus.STOPPED)
            self._report_down(child, ChildStatus.STOPPED if normal else ChildStatus.CRASHED, reason, restarting=False)
            return
        if not self._allow_restart():
            child.move(ChildStatus.FAILED)
            self._report_down(child, ChildStatus.FAILED, reason, restarting=False)
            first_line = reason.strip().splitlines()[0] if reason.strip() else reason
            self._shut_down_all(
                SupervisorPhase.FAILING,
                f"reached max restart intensity ({self.spec.max_restarts} restarts "
                f"in {self.spec.max_seconds} s); last: {child.spec.name}: {first_line}",
            )
            return
        self._restart_group(child, reason)

    def _allow_restart(self) -> bool:
        now = time.monotonic()
        self._restart_times.append(now)
        while self._restart_times and now - self._restart_times[0] > self.spec.max_seconds:
            self._restart_times.popleft()
        return len(self._restart_times) <= self.spec.max_restarts

    def _restart_group(self, crashed: _Child, reason: str) -> None:
        index = self.children.index(crashed)
        group = {"one_for_one": [crashed], "one_for_all": list(self.children), "rest_for_one": self.children[index:]}[
            self.spec.strategy
        ]
        crashed.move(ChildStatus.RESTARTING)
        down = self._down(crashed, ChildStatus.CRASHED, reason, restarting=True)
        for child in group:
            if child is not crashed and child.alive and child.status != ChildStatus.STOPPING:
                self._stop_child(child)
            if child not in self._pending:
                self._pending.append(child)
        self._pending.sort(key=self.children.index)
        self._advance()  # fork the replacement first: the report travels while it boots
        self.to_root(down)

    def _stop_child(self, child: _Child) -> None:
        child.move(ChildStatus.STOPPING)
        self.send(child.address, m.Stop() if child.spec.is_supervisor else ActorExitRequest())

    def _advance(self) -> None:
        """Move on once every child we wait for is down."""
        if any(c.alive for c in self._pending):
            return
        if self.phase == SupervisorPhase.RUNNING and self._pending:
            group, self._pending = self._pending, []
            for child in group:
                if child.spec.restart == "temporary" and child.status == ChildStatus.STOPPED:
                    continue  # OTP: a temporary child stopped by a sibling's crash is not restarted
                child.restarts += 1
                self._spawn(child)
            return
        if self.phase in _GOING_DOWN and not any(c.alive for c in self.children):
            self._pending = []
            self.on_all_down()

    def _shut_down_all(self, phase: SupervisorPhase, reason: str) -> None:
        self.reason = reason
        self._set_phase(phase)
        for child in reversed(self.children):
            if child.alive and child.status != ChildStatus.STOPPING:
                self._stop_child(child)
        self._advance()

    def on_all_down(self) -> None:
        """Hook: every child is down after a stop, an aborted start or a give-up."""
        if self.phase == SupervisorPhase.STOPPING:
            self.send(self.parent, m.Exiting(self.actor_name, self.incarnation, "shutdown", True))
        elif self.phase == SupervisorPhase.ABORTING:
            self.send(self.parent, m.StartFailed(self.actor_name, self.incarnation, self.reason or ""))
        else:
            self.send(self.parent, m.SupervisorFailed(self.actor_name, self.reason or ""))
        self._set_phase(SupervisorPhase.STOPPED)
        self.send(self.myAddress, ActorExitRequest())

    def receiveMsg_Stop(self, msg: m.Stop, sender: ActorAddress) -> None:
        """Stop every child, last started first, then report."""
        self._shut_down_all(SupervisorPhase.STOPPING, msg.reason)

    def _report_down(self, child: _Child, status: ChildStatus, reason: str, restarting: bool) -> None:
        self.to_root(self._down(child, status, reason, restarting))

    @staticmethod
    def _down(child: _Child, status: ChildStatus, reason: str, restarting: bool) -> m.ChildDown:
        return m.ChildDown(child.spec.name, child.incarnation, status, reason, restarting, child.last_call)

    def to_root(self, message: Any) -> None:
        """Tell the sandbox root about the tree (handled at once when we are the root)."""
        root = self.ctx.root
        if root == self.myAddress:
            self.receiveMessage(message, self.myAddress)
        else:
            self.send(root, message)

    # -- heartbeats ----------------------------------------------------------------------

    def _tick(self) -> None:
        if not self._ticking and self.multiprocess and self.context is not None:
            self._ticking = True
            self.wakeupAfter(timedelta(seconds=self.context.heartbeat_interval), payload="heartbeat")

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: ActorAddress) -> None:
        """Heartbeat tick: kill children that stopped answering, ping the others."""
        if msg.payload != "heartbeat":
            self.on_wakeup(msg.payload)
            return
        self._ticking = False
        self.flush_audit()  # what plugin threads of this process did lately
        if self.phase == SupervisorPhase.STOPPED:
            return
        now, ctx = time.monotonic(), self.ctx  # heartbeats tick only once started
        self._ping_seq += 1
        for child in self.children:
            if not child.alive:
                continue
            if child.status == ChildStatus.STOPPING:
                if now - child.stop_since > ctx.shutdown_timeout:
                    self._kill(child, f"did not stop within {ctx.shutdown_timeout} s")
            elif now - child.last_heard > ctx.hang_timeout:
                self._kill(child, f"hung: no heartbeat for {ctx.hang_timeout} s")
            else:
                self.send(child.address, m.Ping(self._ping_seq))
        counts = {c.spec.name: c.messages for c in self.children if c.messages}
        if counts != self._reported:
            self._reported = counts
            self.to_root(m.Usage(counts))
        self._tick()

    def on_wakeup(self, payload: Any) -> None:
        """Hook: a wakeup that is not the heartbeat."""

    def _kill(self, child: _Child, reason: str) -> None:
        if child.pid is None:
            return
        if child.status != ChildStatus.STOPPING:
            child.exit_reason, child.normal_exit = reason, False
        try:
            os.kill(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def receiveMsg_Pong(self, msg: m.Pong, sender: ActorAddress) -> None:
        """A child answered a heartbeat."""
        child = self._find(msg.name, msg.incarnation)
        if child is not None:
            child.last_heard, child.messages = time.monotonic(), msg.messages

    def receiveMsg_Call(self, msg: Call, sender: ActorAddress) -> None:
        """Supervisors run no plugin code: a call to one is a caller's mistake."""
        self.send(
            msg.reply_to or sender,
            Failed(BadRequestError(f"{msg.name!r} is a supervisor; supervisors do not handle calls"), msg.corr),
        )

    def receiveMsg_LoadCode(self, msg: m.LoadCode, sender: ActorAddress) -> None:
        """A reload committed: children this supervisor restarts from now on run the new code."""
        try:
            if msg.environment:
                self.allow_reading(msg.environment)
            Staged(msg.sources, msg.order, msg.environment, self.plugin_code)  # top-level code audited
        except Exception as exc:  # noqa: BLE001 - plugin top-level code may raise anything
            self.send(sender, m.CodeLoaded(msg.reload_id, self.actor_name, False, describe_exception(exc)))
            return
        self.send(sender, m.CodeLoaded(msg.reload_id, self.actor_name, True))
