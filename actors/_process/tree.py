"""A sandbox's process tree: the root as a child subreaper, orphans reaped, a whole tree killed.

A plugin can leave its sandbox's process group (``setsid``) and its parent (a double fork; a
``subprocess`` child skips the at-fork ``PR_SET_PDEATHSIG`` of :mod:`.hardening`).  With the root a
child subreaper (``PR_SET_CHILD_SUBREAPER``), such an orphan re-parents to the root instead of init,
so it stays below the root: counted by the monitor, and found when the sandbox ends.  Orphans that
exit under the root are the root's zombies to reap; the root's own actors are multiprocessing's
children, reaped by it (Thespian learns of their exits through it), so they are never waited for
here.  A cgroup (later work) would hold the processes even when the root itself dies first.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import time

import psutil

from .hardening import kill_group

__all__ = [
    "become_subreaper",
    "reap_orphans",
    "live_descendants",
    "identities",
    "kill_descendants",
    "kill_tree",
    "kill_known",
    "leads_group_below",
    "REAP_INTERVAL",
]

REAP_INTERVAL = 0.5
"""Seconds between a root's rounds of reaping the orphans that exited under it."""

_PR_SET_CHILD_SUBREAPER = 36
_QUIET_ROUNDS = 2
"""Scans in a row that find nothing below the root before it counts as empty."""
_KILL_ROUNDS = 1000
"""Rounds of killing a tree at most (each round kills what the last one's forks left): about a second."""
_STUCK_AFTER = 5
"""SIGKILLs a process outlives before :func:`kill_descendants` stops counting it as running (a process
with a SIGKILL pending forks no more, so the rounds after are for the others)."""


def become_subreaper() -> None:
    """Make this process (a sandbox root) a child subreaper: orphans of its descendants re-parent to it."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def reap_orphans() -> int:
    """Reap this process's exited children that multiprocessing does not own; return how many.

    ``multiprocessing.active_children()`` first lets multiprocessing reap its own (it keeps their exit
    codes, which Thespian reads); then each other zombie is waited for by its pid, never with
    ``waitpid(-1)``, which could take one of multiprocessing's children from it.  Two system calls when
    there is nothing to reap.
    """
    owned = {proc.pid for proc in multiprocessing.active_children()}
    reaped = 0
    while True:
        try:
            waitable = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)  # looks, reaps nothing
        except ChildProcessError:  # no children at all
            return reaped
        if waitable is None or waitable.si_pid in owned:
            return reaped  # none; or one of multiprocessing's that just ended (it reaps it): next round
        try:
            os.waitpid(waitable.si_pid, os.WNOHANG)
            reaped += 1
        except ChildProcessError:  # reaped meanwhile (by a plugin's own Popen in another thread, say)
            pass


def live_descendants(root: int | None) -> list[psutil.Process]:
    """Every process below ``root`` that runs (zombies are left out: they run nothing and hold no memory)."""
    if root is None:
        return []
    below: list[psutil.Process] = []
    for pid in _running_below(root):
        try:
            below.append(psutil.Process(pid))
        except psutil.Error:
            pass
    return below


def _running_below(root: int) -> list[int]:
    """Pids of the running processes below ``root``, from one pass over ``/proc`` (psutil's ``children``
    reads each process twice and asks for each one's status again: five times slower on a busy machine)."""
    children: dict[int, list[int]] = {}
    zombies: set[int] = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as stat:
                fields = stat.read().rpartition(b")")[2].split(maxsplit=2)  # the name may hold anything
        except OSError:
            continue  # gone meanwhile
        pid = int(name)
        children.setdefault(int(fields[1]), []).append(pid)
        if fields[0] == b"Z":
            zombies.add(pid)
    found, todo = [], list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, ()))
        if pid not in zombies:
            found.append(pid)
    return found


def identities(procs: list[psutil.Process]) -> list[tuple[int, float]]:
    """``(pid, create time)`` of each process, to find the same ones later (a pid alone may be reused)."""
    found = []
    for proc in procs:
        try:
            found.append((proc.pid, proc.create_time()))
        except psutil.Error:
            pass
    return found


def kill_descendants(root: int | None) -> list[tuple[int, float]]:
    """SIGKILL every process below ``root``, again and again until none runs; return ``(pid, create time)``
    of each one killed.

    One scan of ``/proc`` is far from atomic (a tenth of a second on a busy machine), and a plugin's
    processes may fork and exit faster than that: a scan alone can miss every one of them.  So the scan
    only starts the list; then each round kills every listed process that runs and adds the processes
    that appeared since the last round (new pids) whose parent is listed or is the root (as the root is a
    subreaper, an orphan of the tree re-parents to it): a few system calls a round.  It ends after
    rounds in a row with nothing running and nothing new.
    """
    if root is None:
        return []
    members = {pid: proc for pid in _running_below(root) if (proc := _process(pid)) is not None}
    known = _pids()
    killed: list[tuple[int, float]] = []
    signalled: dict[int, int] = {}
    quiet = 0
    for _ in range(_KILL_ROUNDS):
        running = 0
        for pid, proc in list(members.items()):
            try:
                if proc.status() == psutil.STATUS_ZOMBIE:
                    del members[pid]
                    continue
                proc.kill()  # psutil checks the create time: never a recycled pid
                signalled[pid] = signalled.get(pid, 0) + 1
                # one that outlives a few SIGKILLs is stuck (frozen by someone else, in the kernel): its
                # caller waits for it to end, rather than this loop spinning its rounds on it
                running += signalled[pid] <= _STUCK_AFTER
                killed.append((pid, proc.create_time()))
            except psutil.Error:
                del members[pid]
        time.sleep(0.001)  # let the kernel deliver the signals before looking again
        now = _pids()
        joined = _adopt(root, members, now - known)
        known = now  # a pid gone from the list and back later is a new process: read again then
        quiet = 0 if running or joined else quiet + 1
        if quiet == _QUIET_ROUNDS:
            break
    return list(dict(killed).items())


def _pids() -> set[int]:
    return {int(name) for name in os.listdir("/proc") if name.isdigit()}


def _adopt(root: int, members: dict[int, psutil.Process], new: set[int]) -> int:
    """Add to ``members`` each of the ``new`` pids below ``root`` or below a member; return how many."""
    parents: dict[int, int] = {}
    for pid in new:
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat:
                parents[pid] = int(stat.read().rpartition(b")")[2].split(maxsplit=2)[1])
        except (OSError, ValueError, IndexError):
            continue
    joined, grew = 0, True
    while grew:  # a new process's parent may be new too
        grew = False
        for pid, parent in list(parents.items()):
            if parent == root or parent in members:
                del parents[pid]
                proc = _process(pid)
                if proc is not None:
                    members[pid], joined, grew = proc, joined + 1, True
    return joined


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def kill_tree(root: int | None) -> list[tuple[int, float]]:
    """End a sandbox: every process below ``root`` (see :func:`kill_descendants`), then ``root``, then its
    process group (what left the tree but not the group); return the processes killed below the root.

    Only for a ``root`` that runs and was checked to be a sandbox root: a pid that is gone may have been
    reused, and what runs below it then is someone else's.
    """
    if not root:
        return []
    killed = kill_descendants(root)
    try:
        psutil.Process(root).kill()
    except psutil.Error:
        pass
    kill_group(root)
    return killed


def kill_known(procs: list[tuple[int, float]]) -> None:
    """SIGKILL each of ``procs`` (``pid, create time``) that is still the same process, and everything below it."""
    for pid, started in procs:
        try:
            proc = psutil.Process(pid)
            if proc.create_time() != started:
                continue  # recycled: someone else's now
        except psutil.Error:
            continue
        kill_descendants(pid)
        try:
            proc.kill()
        except psutil.Error:
            pass


def leads_group_below(pid: int, parent: int) -> bool:
    """Whether ``pid`` runs (not a zombie), leads its own process group, and is a child of ``parent``: a
    sandbox root as its parent sees it (a child not yet reaped keeps its pid: it cannot be someone else's)."""
    try:
        proc = psutil.Process(pid)
        return bool(proc.ppid() == parent and os.getpgid(pid) == pid and not _zombie(proc))
    except (OSError, psutil.Error):
        return False


def _zombie(proc: psutil.Process) -> bool:
    try:
        return bool(proc.status() == psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return True  # gone: runs nothing either
