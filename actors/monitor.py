"""The monitor actor: samples every sandbox process with psutil and enforces memory and CPU limits.

Every ``monitor_interval`` it reads each watched process's resident memory and CPU time,
keeps a short rolling history per sandbox, and, for a sandbox with limits, reads the whole tree
below its root (the root is a subreaper: a plugin's ``setsid`` or double-forked processes stay
in it, see ``_process.tree``).  Every running process there counts against ``max_actors``
(past it, the ones the sandbox did not report are killed); ``max_memory_mb`` is the sandbox's
budget for the resident memory its processes grew since their start (forked from their
supervisor's process, each started no bigger than that one), and past it the one that grew most
is killed, then the next; a process whose CPU time passed ``max_cpu_seconds`` is killed (before
the kernel's RLIMIT_CPU backstop does), or, for a sandbox with a control group, the whole sandbox's
CPU time (the group's, dead processes included) is checked against it: past it the process that
burned most is killed and the admin ends the sandbox.  The admin turns each kill into a ``limit_breached``
event, and so each kill of the kernel's OOM killer in a sandbox's control group (its memory backstop).
It also answers resource-usage queries.
"""

from __future__ import annotations

import os
import signal
import time
from collections import deque
from datetime import timedelta
from typing import Any

import attrs
import psutil
from thespian.actors import ActorAddress, ActorExitRequest, WakeupMessage

from plugin_host.config import ResourceLimits
from plugin_host.lowlevel import cgroup
from plugin_host.values import ActorUsage, ResourceUsage

from . import _messages as m
from ._base import HostActor, log
from ._process.hardening import kill_group, process_alive
from ._process.orphan import ORPHAN_CHECK, OrphanWatch
from ._process.tree import identities, kill_known, kill_tree, live_descendants

__all__ = ["MonitorActor", "HISTORY", "STRAY", "STRAY_GRACE"]

HISTORY = 60
"""Samples kept per sandbox: (time, total rss bytes, total cpu seconds)."""

STRAY = "(stray)"
"""``ActorUsage.name`` of a process a plugin forked itself (kept below the root, see ``_process.tree``)."""

STRAY_GRACE = 1.0
"""Seconds a process below a root that its sandbox has not reported is left out of the memory and CPU checks:
an actor just started is reported within milliseconds; a process a plugin forked itself never is."""

_MiB = 2**20


@attrs.define
class _Watched:
    pids: dict[str, int]
    limits: ResourceLimits
    baseline: dict[int, int] = attrs.field(factory=dict)
    """Resident memory of each process at its start (see ``MonitorActor._start_rss``), by pid."""
    seen: list[tuple[int, float]] = attrs.field(factory=list)
    """``(pid, create time)`` of every process the last round found below the root."""
    first_seen: dict[int, float] = attrs.field(factory=dict)
    """When each process not reported by the sandbox was first seen below its root (monotonic), by pid."""
    programs: set[int] = attrs.field(factory=set)
    """Strays checked for running a program of their own (then their baseline is nothing), by pid."""
    killed: set[int] = attrs.field(factory=set)
    """Pids killed and still below the root (dying, or zombies not reaped yet): never killed nor reported again."""
    history: deque[tuple[float, int, float]] = attrs.field(factory=lambda: deque(maxlen=HISTORY))
    group: cgroup.SandboxGroup | None = None
    """The sandbox's control group: its lifetime CPU is what ``max_cpu_seconds`` is checked against."""
    over: bool = False
    """Its whole-sandbox CPU budget is spent and was reported (once: the admin ends the sandbox)."""
    oom_kills: int | None = None
    """The group's count of the kernel's OOM kills when last read (None: not read yet for this root)."""


@attrs.frozen
class _Figures:
    rss: int
    cpu: float
    fds: int = 0
    threads: int = 0


class MonitorActor(HostActor):
    """Watches the processes of every sandbox of a host on one actor system.

    The admin keeps one on its own system and one on each member of the convention that
    runs its sandboxes (pids are only meaningful where the processes run); those answer the
    admin's pings, which is how it knows the member is alive.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.watched: dict[str, _Watched] = {}
        self.interval = 1.0
        self._procs: dict[int, psutil.Process] = {}
        self._ticking = False
        self.admin: ActorAddress | None = None
        self._gone_roots: deque[int] = deque(maxlen=256)
        self._roots: set[int] = set()
        """Pids checked to be sandbox roots of this system while they ran (only their groups are killed)."""
        self.orphans = OrphanWatch(self.wakeupAfter)

    def receiveMsg_Watch(self, msg: m.Watch, sender: ActorAddress) -> None:
        """Start, update or stop watching a sandbox.

        The pids come from the sandbox's own reports: the root must be a sandbox root of this
        system, and only its descendants are ever killed, so a sandbox cannot point the monitor
        at another process.
        """
        self.admin, self.interval = sender, msg.interval
        if not msg.pids:
            self.watched.pop(msg.sandbox_id, None)
            return
        pids = dict(msg.pids)
        root = pids.get("(root)")
        if root is not None and root not in self._roots:
            if _is_root_here(root):
                self._roots.add(root)
            elif process_alive(root):
                log.warning(
                    "sandbox %s: pid %s is not a sandbox root of this system; not watched", msg.sandbox_id, root
                )
                del pids["(root)"]
            # a root already gone stays: the next round reports it (RootGone), and kills no group for it
        entry = self.watched.setdefault(msg.sandbox_id, _Watched(pids, msg.limits))
        new_root = entry.pids.get("(root)") != pids.get("(root)")
        if new_root:
            entry.over = False  # a new root: its group's CPU counts from zero again
        entry.pids, entry.limits = pids, msg.limits
        entry.group = cgroup.SandboxGroup.at(msg.group) if msg.group else None
        if new_root or entry.oom_kills is None:  # the group outlives a restart: count this root's kills only
            entry.oom_kills = entry.group.oom_kills() if entry.group is not None else None
        if self.multiprocess and not self._ticking:
            self._ticking = True
            self.wakeupAfter(timedelta(seconds=self.interval))

    def receiveMsg_NodePing(self, msg: m.NodePing, sender: ActorAddress) -> None:
        """The admin checks this system is alive (and tells this monitor the host is)."""
        self.orphans.note_admin(msg.timeout)
        self.send(sender, m.NodePong())

    def _end_orphans(self) -> None:
        """The host is gone or cut off: end its sandboxes here (each root leads its group), then this monitor."""
        for sandbox_id, entry in self.watched.items():
            root = entry.pids.get("(root)")
            if root in self._roots:
                log.warning("sandbox %s: no word from its host for %.1f s; ending it", sandbox_id, self.orphans.timeout)
                if _is_root_here(root):  # it runs: its whole tree, what hid from its group included
                    kill_tree(root)
                else:
                    kill_known(entry.seen)
                    kill_group(root)
        self.watched.clear()
        self.send(self.myAddress, ActorExitRequest())

    def receiveMsg_KillGroups(self, msg: m.KillGroups, sender: ActorAddress) -> None:
        """End sandboxes' process groups on this system (a stop past its deadline, stragglers, lost ones).

        Only groups of sandbox roots: ones this monitor watches or saw end, or a process that
        leads its own group under this system's admin (a root an earlier monitor watched).
        """
        roots = self._roots | set(self._gone_roots)  # checked while they ran: a report cannot name another group
        for pgid in msg.pgids:
            if not isinstance(pgid, int):
                continue
            if _is_root_here(pgid):  # it runs: its whole tree, what hid from its group included
                kill_tree(pgid)
            elif pgid in roots:
                kill_group(pgid)

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: ActorAddress) -> None:
        """Sample everything, enforce limits, schedule the next round."""
        if msg.payload == ORPHAN_CHECK:
            if self.orphans.orphaned():
                self._end_orphans()
            return
        self._ticking = False
        now = time.time()
        for sandbox_id, entry in list(self.watched.items()):
            figures = {name: self._sample(pid) for name, pid in entry.pids.items()}
            self._report_oom_kills(sandbox_id, entry, figures)
            if "(root)" in figures and figures["(root)"] is None:
                self._root_gone(sandbox_id, entry)
                continue
            tree = live_descendants(entry.pids.get("(root)")) if _limited(entry.limits) else []
            entry.seen = identities(tree)
            samples = {entry.pids[name]: f for name, f in figures.items() if f is not None}
            for proc in tree:  # the processes a plugin forked itself, wherever they went below the root
                stray = samples.get(proc.pid) or self._sample(proc.pid)
                if stray is not None:
                    samples[proc.pid] = stray
            entry.history.append((now, sum(f.rss for f in samples.values()), sum(f.cpu for f in samples.values())))
            self._enforce(sandbox_id, entry, tree, samples)
        self._procs = {pid: proc for pid, proc in self._procs.items() if _alive(proc)}
        if self.watched:
            self._ticking = True
            self.wakeupAfter(timedelta(seconds=self.interval))

    def _report_oom_kills(self, sandbox_id: str, entry: _Watched, figures: dict[str, _Figures | None]) -> None:
        """The kernel's OOM killer ended processes of the sandbox at its group's memory limit (the backstop
        behind ``max_memory_mb``, hit before this monitor saw the growth): one ``limit_breached`` for
        ``max_memory_mb`` saying so, naming an actor gone since (else none: a process the plugin forked).
        The process is gone already; its supervisor handles an actor's end as any crash."""
        if entry.group is None or entry.oom_kills is None:
            return
        count = entry.group.oom_kills()
        killed, entry.oom_kills = count - entry.oom_kills, count
        if killed <= 0:
            return
        limit_mb = round(entry.group.memory_limit_bytes() / _MiB, 1)
        gone = sorted(name for name, sample in figures.items() if sample is None)
        reason = (
            f"max_memory_mb: the kernel's OOM killer ended {killed} process(es) of the sandbox at its control "
            f"group's memory limit of {limit_mb} MiB (max_memory_mb {entry.limits.max_memory_mb} plus the "
            "runtime's charge and slack)"
        )
        maximum = entry.limits.max_memory_mb or 0.0
        self.send(
            self.admin, m.Sample(sandbox_id, gone[0] if gone else "", "max_memory_mb", limit_mb, maximum, reason=reason)
        )

    def _root_gone(self, sandbox_id: str, entry: _Watched) -> None:
        """The root is gone: end what its plugin may have forked, say so (on another system this may be the
        only word of it that reaches the admin), and stop watching pids that may be reused.

        The root was a subreaper, but once it is gone its orphans went to init: the processes the last round
        saw below it (a sandbox with limits is read whole each round) are still found (by pid and start time)
        and ended with theirs, and so is what stayed in its group; one forked since that left the group is
        not (a cgroup, later work, would hold it).
        """
        root = entry.pids["(root)"]
        kill_known(entry.seen)
        if root in self._roots:  # only a group checked to be a sandbox root's while it ran
            self._roots.discard(root)
            kill_group(root)
            self._gone_roots.append(root)
        self.send(self.admin, m.RootGone(sandbox_id, root))
        del self.watched[sandbox_id]

    def _sample(self, pid: int) -> _Figures | None:
        proc = self._procs.get(pid)
        try:
            if proc is None:
                proc = self._procs[pid] = psutil.Process(pid)
            with proc.oneshot():
                times = proc.cpu_times()
                return _Figures(proc.memory_info().rss, times.user + times.system, _fds(proc), proc.num_threads())
        except psutil.Error:
            return None

    def _enforce(
        self, sandbox_id: str, entry: _Watched, tree: list[psutil.Process], samples: dict[int, _Figures]
    ) -> None:
        """Hold the sandbox's processes (``tree``: every one running below its root, sampled in ``samples``
        by pid) to its limits: a plugin's own processes count as much as its actors."""
        limits = entry.limits
        entry.killed &= {proc.pid for proc in tree}  # a pid killed and gone may come back as another process
        owner = {pid: name for name, pid in entry.pids.items()}
        if limits.max_actors is not None and len(tree) > limits.max_actors:
            for proc in tree:
                if proc.pid not in owner:
                    name = owner.get(_parent_pid(proc), "")
                    self._kill(entry, sandbox_id, name, proc.pid, "max_actors", len(tree), limits.max_actors)
        if limits.max_memory_mb is None and limits.max_cpu_seconds is None:
            return
        sandbox_cpu = entry.group.cpu_seconds() if entry.group is not None else None
        if sandbox_cpu is not None and limits.max_cpu_seconds is not None:
            self._enforce_sandbox_cpu(sandbox_id, entry, tree, samples, sandbox_cpu, limits.max_cpu_seconds)
        growth: dict[int, float] = {}
        now = time.monotonic()
        in_tree = {proc.pid for proc in tree}
        entry.baseline = {pid: rss for pid, rss in entry.baseline.items() if pid in in_tree}
        entry.first_seen = {pid: at for pid, at in entry.first_seen.items() if pid in in_tree}
        entry.programs &= in_tree
        for proc in tree:  # the root runs our code (and plugin modules' top level): not counted here
            sample = samples.get(proc.pid)
            if sample is None or proc.pid in entry.killed:
                continue
            start = entry.baseline.get(proc.pid)
            if start is None:
                start = entry.baseline[proc.pid] = self._start_rss(proc.pid, sample.rss)
            if proc.pid not in owner:
                if now - entry.first_seen.setdefault(proc.pid, now) < STRAY_GRACE:
                    continue  # maybe an actor its sandbox has not reported yet: judged (and named) once it has
                if proc.pid not in entry.programs:
                    entry.programs.add(proc.pid)
                    if _runs_another_program(proc):  # started from nothing: all of its memory is the plugin's
                        start = entry.baseline[proc.pid] = 0
            name = owner.get(proc.pid) or owner.get(_parent_pid(proc), "")
            growth[proc.pid] = max(sample.rss - start, 0) / _MiB
            if sandbox_cpu is None and limits.max_cpu_seconds is not None and sample.cpu > limits.max_cpu_seconds:
                self._kill(entry, sandbox_id, name, proc.pid, "max_cpu_seconds", sample.cpu, limits.max_cpu_seconds)
                growth.pop(proc.pid)
        if limits.max_memory_mb is not None:
            self._enforce_memory(sandbox_id, entry, tree, growth, limits.max_memory_mb)

    def _enforce_sandbox_cpu(
        self,
        sandbox_id: str,
        entry: _Watched,
        tree: list[psutil.Process],
        samples: dict[int, _Figures],
        used: float,
        maximum: float,
    ) -> None:
        """``max_cpu_seconds`` is the whole sandbox's, read from its control group (every process it ever had,
        dead ones included: a fork starts no fresh budget).  Past it, the process that burned most is killed
        and named in the one ``limit_breached`` event, and the admin ends the sandbox (``failed``): the budget
        stays spent."""
        if entry.over or used <= maximum:
            return
        entry.over = True
        owner = {pid: name for name, pid in entry.pids.items()}
        burners = [proc for proc in tree if proc.pid in samples and proc.pid not in entry.killed]
        if not burners:  # the root alone (its plugin's module code): the admin ends it with the rest
            self.send(self.admin, m.Sample(sandbox_id, "(root)", "max_cpu_seconds", round(used, 3), maximum, True))
            return
        top = max(burners, key=lambda proc: samples[proc.pid].cpu)
        name = owner.get(top.pid) or owner.get(_parent_pid(top), "")
        self._kill(entry, sandbox_id, name, top.pid, "max_cpu_seconds", used, maximum, whole_sandbox=True)

    def _enforce_memory(
        self, sandbox_id: str, entry: _Watched, tree: list[psutil.Process], growth: dict[int, float], maximum: float
    ) -> None:
        """``max_memory_mb`` is the whole sandbox's: past it, the process that grew most is killed, then the
        next, until the rest fit (as the kernel's OOM killer picks the largest)."""
        total = sum(growth.values())
        if total <= maximum:
            return
        owner = {pid: name for name, pid in entry.pids.items()}
        parents = {proc.pid: _parent_pid(proc) for proc in tree}
        for pid in sorted(growth, key=growth.__getitem__, reverse=True):
            name = owner.get(pid) or owner.get(parents.get(pid, 0), "")
            self._kill(entry, sandbox_id, name, pid, "max_memory_mb", total, maximum)
            total -= growth[pid]
            if total <= maximum:
                return

    def _start_rss(self, pid: int, rss: int) -> int:
        """Resident memory a plugin process had at its start, as near as can be known now.

        It is forked from its parent's process, so it started no bigger than that one is: the
        first sample alone would count nothing a plugin took before it (in ``init``, say).
        """
        try:
            parent = self._sample(psutil.Process(pid).ppid())
        except psutil.Error:
            parent = None
        return min(rss, parent.rss) if parent is not None else rss

    def _kill(
        self,
        entry: _Watched,
        sandbox_id: str,
        name: str,
        pid: int,
        limit: str,
        value: float,
        maximum: float,
        *,
        whole_sandbox: bool = False,
    ) -> None:
        """SIGKILL one process of the sandbox and report it, once: it may take a moment to die, and then a
        zombie may stay below the root until reaped, both never reported again."""
        if pid in entry.killed:
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        entry.killed.add(pid)
        self.send(self.admin, m.Sample(sandbox_id, name, limit, round(value, 3), maximum, whole_sandbox))

    def receiveMsg_UsageQuery(self, msg: m.UsageQuery, sender: ActorAddress) -> None:
        """Sample one sandbox now and answer ``ResourceUsage``."""
        entry = self.watched.get(msg.sandbox_id)
        actors = []
        for name, pid in sorted((entry.pids if entry else {}).items()):
            figures = self._sample(pid)
            actors.append(
                ActorUsage(
                    name,
                    pid,
                    figures.rss if figures else 0,
                    figures.cpu if figures else 0.0,
                    msg.messages.get(name, 0),
                    msg.restarts.get(name, 0),
                    figures.fds if figures else 0,
                    figures.threads if figures else 0,
                )
            )
        known = {actor.pid for actor in actors}
        for proc in live_descendants(entry.pids.get("(root)") if entry else None):
            figures = None if proc.pid in known else self._sample(proc.pid)
            if figures is not None:  # a process the plugin forked itself: its memory is the sandbox's too
                actors.append(ActorUsage(STRAY, proc.pid, figures.rss, figures.cpu, 0, 0, figures.fds, figures.threads))
        group = entry.group if entry else None
        usage = ResourceUsage(
            msg.sandbox_id,
            actors,
            sum(a.rss_bytes for a in actors),
            sum(a.cpu_seconds for a in actors),
            list(entry.history) if entry else [],
            group.cpu_seconds() if group is not None else None,
            group.memory_bytes() if group is not None else None,
        )
        self.reply(msg.reply_to, usage, msg.corr)


def _limited(limits: ResourceLimits) -> bool:
    """Whether the monitor enforces any of ``limits``: only then is a sandbox's whole tree read each round (one
    pass over ``/proc``; ``resource_usage`` reads it when asked)."""
    return any(value is not None for value in (limits.max_actors, limits.max_memory_mb, limits.max_cpu_seconds))


def _is_root_here(pid: int) -> bool:
    """Whether ``pid`` is a sandbox root of this system: it leads its own group, under our admin."""
    try:
        return os.getpgid(pid) == pid and psutil.Process(pid).ppid() == os.getppid()
    except (OSError, psutil.Error):
        return False


def _runs_another_program(proc: psutil.Process) -> bool:
    """Whether ``proc`` runs another program than its parent (its command line differs): it exec'd one."""
    try:
        return bool(proc.cmdline() != psutil.Process(proc.ppid()).cmdline())
    except psutil.Error:
        return False


def _fds(proc: psutil.Process) -> int:
    """Open files of ``proc``, 0 where they cannot be counted: a sandbox's processes are non-dumpable (see
    ``actors._process.syscalls``), so only a monitor with ``CAP_SYS_PTRACE`` (a host run as root) may list
    ``/proc/<pid>/fd``; memory, CPU and threads need no such access."""
    try:
        return int(proc.num_fds())
    except psutil.AccessDenied:
        return 0


def _alive(proc: psutil.Process) -> bool:
    try:
        return bool(proc.is_running())
    except psutil.Error:
        return False


def _parent_pid(proc: psutil.Process) -> int:
    try:
        return int(proc.ppid())
    except psutil.Error:
        return 0
