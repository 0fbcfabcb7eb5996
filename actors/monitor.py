"""The monitor actor: samples every sandbox process with psutil and enforces memory and CPU limits.

Every ``monitor_interval`` it reads each watched process's resident memory and CPU time,
keeps a short rolling history per sandbox, and kills (by pid) a plugin process whose
resident memory grew past ``max_memory_mb`` since it started (forked from its supervisor's
process, it started no bigger than that one), or whose CPU time passed
``max_cpu_seconds`` (before the kernel's RLIMIT_CPU backstop does); the admin turns each such
kill into a ``limit_breached`` event.  It also answers resource-usage queries.
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
from plugin_host.values import ActorUsage, ResourceUsage

from . import _messages as m
from ._base import HostActor, log
from ._process.hardening import kill_group, process_alive
from ._process.orphan import ORPHAN_CHECK, OrphanWatch

__all__ = ["MonitorActor", "HISTORY"]

HISTORY = 60
"""Samples kept per sandbox: (time, total rss bytes, total cpu seconds)."""

_MiB = 2**20


@attrs.define
class _Watched:
    pids: dict[str, int]
    limits: ResourceLimits
    baseline: dict[int, int] = attrs.field(factory=dict)
    history: deque[tuple[float, int, float]] = attrs.field(factory=lambda: deque(maxlen=HISTORY))


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
        entry.pids, entry.limits = pids, msg.limits
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
            if isinstance(pgid, int) and (pgid in roots or _is_root_here(pgid)):
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
            if "(root)" in figures and figures["(root)"] is None:
                # The root is gone: end what a plugin may have forked in its group, say so (on another
                # system this may be the only word of it that reaches the admin), and stop watching
                # pids that may be reused.
                root = entry.pids["(root)"]
                if root in self._roots:  # only a group checked to be a sandbox root's while it ran
                    self._roots.discard(root)
                    kill_group(root)
                    self._gone_roots.append(root)
                self.send(self.admin, m.RootGone(sandbox_id, root))
                del self.watched[sandbox_id]
                continue
            live = {name: f for name, f in figures.items() if f is not None}
            entry.history.append((now, sum(f.rss for f in live.values()), sum(f.cpu for f in live.values())))
            self._enforce(sandbox_id, entry, live)
        self._procs = {pid: proc for pid, proc in self._procs.items() if _alive(proc)}
        if self.watched:
            self._ticking = True
            self.wakeupAfter(timedelta(seconds=self.interval))

    def _sample(self, pid: int) -> _Figures | None:
        proc = self._procs.get(pid)
        try:
            if proc is None:
                proc = self._procs[pid] = psutil.Process(pid)
            with proc.oneshot():
                times = proc.cpu_times()
                return _Figures(proc.memory_info().rss, times.user + times.system, proc.num_fds(), proc.num_threads())
        except psutil.Error:
            return None

    def _enforce(self, sandbox_id: str, entry: _Watched, live: dict[str, _Figures]) -> None:
        limits = entry.limits
        if limits.max_actors is not None:
            self._enforce_processes(sandbox_id, entry, limits.max_actors)
        if limits.max_memory_mb is None and limits.max_cpu_seconds is None:
            return
        tree = {proc.pid for proc in _descendants(entry.pids.get("(root)"))}
        for name, figures in live.items():
            pid = entry.pids[name]
            if name == "(root)" or pid not in tree:
                continue  # the root runs our code, not the plugin's; never a process outside the sandbox
            start = entry.baseline.get(pid)
            if start is None:
                start = entry.baseline[pid] = self._start_rss(pid, figures.rss)
            grown_mb = (figures.rss - start) / _MiB
            if limits.max_memory_mb is not None and grown_mb > limits.max_memory_mb:
                self._kill(sandbox_id, name, pid, "max_memory_mb", grown_mb, limits.max_memory_mb)
            elif limits.max_cpu_seconds is not None and figures.cpu > limits.max_cpu_seconds:
                self._kill(sandbox_id, name, pid, "max_cpu_seconds", figures.cpu, limits.max_cpu_seconds)

    def _start_rss(self, pid: int, rss: int) -> int:
        """Resident memory a plugin process had at its start, as near as can be known now.

        It is forked from its supervisor's process, so it started no bigger than that one is: the
        first sample alone would count nothing a plugin took before it (in ``init``, say).
        """
        try:
            parent = self._sample(psutil.Process(pid).ppid())
        except psutil.Error:
            parent = None
        return min(rss, parent.rss) if parent is not None else rss

    def _enforce_processes(self, sandbox_id: str, entry: _Watched, maximum: int) -> None:
        """Processes a plugin forked itself count against ``max_actors``: past it, they are ended."""
        tree = _descendants(entry.pids.get("(root)"))
        known = set(entry.pids.values())
        strays = [proc for proc in tree if proc.pid not in known]
        if strays and len(tree) > maximum:
            owner = {pid: name for name, pid in entry.pids.items()}
            for proc in strays:
                name = owner.get(_parent_pid(proc), "")
                self._kill(sandbox_id, name, proc.pid, "max_actors", len(tree), maximum)

    def _kill(self, sandbox_id: str, name: str, pid: int, limit: str, value: float, maximum: float) -> None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        self.send(self.admin, m.Sample(sandbox_id, name, limit, round(value, 3), maximum))

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
        usage = ResourceUsage(
            msg.sandbox_id,
            actors,
            sum(a.rss_bytes for a in actors),
            sum(a.cpu_seconds for a in actors),
            list(entry.history) if entry else [],
        )
        self.reply(msg.reply_to, usage, msg.corr)


def _descendants(root: int | None) -> list[psutil.Process]:
    """Every process below a root, as of now (none for an unknown root)."""
    try:
        return psutil.Process(root).children(recursive=True) if root is not None else []
    except psutil.Error:
        return []


def _is_root_here(pid: int) -> bool:
    """Whether ``pid`` is a sandbox root of this system: it leads its own group, under our admin."""
    try:
        return os.getpgid(pid) == pid and psutil.Process(pid).ppid() == os.getppid()
    except (OSError, psutil.Error):
        return False


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
