"""Per-process hardening run at the start of every actor process of a host, and what a
sandbox root gives up before plugin code runs.

Thespian installs log-only Python handlers for SIGSEGV & co., which turn a segfault into
a process spinning at 100% CPU that is never reported dead; a SIGKILLed parent leaves its
whole subtree running.  See THESPIAN_NOTES.md §2.2 and §2.6.

:func:`drop_privileges` runs once in each sandbox root, before its first plugin code; every
process of the sandbox is forked from the root and inherits it.  It empties the capability
sets (bounding, ambient, then effective, permitted and inheritable, as container runtimes
do), so a host running as root keeps no ``CAP_SYS_RESOURCE`` (a hard rlimit holds),
``CAP_KILL``, ``CAP_DAC_OVERRIDE``, ``CAP_SYS_PTRACE`` ... in its sandboxes, and an empty
bounding set means no ``exec`` gives them back.  It also sets ``no_new_privs``: no ``exec``
of a setuid or file-capability binary raises privileges (this matters for a host not run as
root too: ``sudo``, ``su`` and the like are dead ends).  The host's own processes keep
their capabilities (they create control groups and switch uids for sandboxes).

What this does not buy while the sandbox runs as uid 0: a process without capabilities but
uid 0 still owns every root-owned file (it opens and writes them by ordinary permission
bits) and may signal every other uid-0 process, the host's included.  A separate uid per
sandbox (``isolation="user"``) is what closes that.
"""

from __future__ import annotations

import ctypes
import faulthandler
import os
import signal
import sys

import psutil

from plugin_host.lowlevel import confine

__all__ = [
    "drop_privileges",
    "harden_process",
    "new_process_group",
    "in_actor_process",
    "kill_group",
    "process_alive",
]

_PR_SET_PDEATHSIG = 1
_FATAL_SIGNALS = (signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGABRT)
_hardened_pid: int | None = None
_libc: ctypes.CDLL | None = None
_forking_parent: int | None = None


def in_actor_process() -> bool:
    """Whether this process runs a Thespian multiproc actor (not the host application)."""
    return _hardened_pid == os.getpid()


def harden_process() -> None:
    """Make fatal signals fatal, dump Python stacks on faults, and die with the parent.

    Safe to call more than once; does nothing the second time in the same process.
    """
    global _hardened_pid
    if _hardened_pid == os.getpid():
        return
    for signum in _FATAL_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    # SIGXCPU (soft CPU limit) must kill, not be logged by Thespian's handler.
    signal.signal(signal.SIGXCPU, signal.SIG_DFL)
    if not faulthandler.is_enabled():
        faulthandler.enable(file=sys.__stderr__ or sys.stderr)
    global _libc
    parent = os.getppid()
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        # Children die with this process from the instant they are forked, not only once they
        # have handled their first message: a root ending while it starts workers leaves none behind.
        os.register_at_fork(before=_before_fork, after_in_child=_die_with_parent)
    if _libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(70)
    _hardened_pid = os.getpid()


def _before_fork() -> None:
    global _forking_parent
    _forking_parent = os.getpid()


def _die_with_parent() -> None:
    """In a child just forked by an actor process: SIGKILL when the parent dies (or now, if it did)."""
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != _forking_parent:
        os._exit(70)


drop_privileges = confine.drop_privileges
"""Set ``no_new_privs`` and empty every capability set, for good (:func:`plugin_host.lowlevel.confine.drop_privileges`,
shared with the compile validator).  ``switch_user`` (a sandbox with a uid of its own,
:func:`actors._process.identity.become`) runs once the bounding set is empty."""


def new_process_group() -> int:
    """Put this process in a process group of its own (a sandbox root); return its pgid."""
    try:
        os.setpgid(0, 0)
    except PermissionError:  # already a group/session leader
        pass
    return os.getpgid(0)


def kill_group(pgid: int | None) -> None:
    """SIGKILL a process group (a sandbox's); never this process's own, nor init's; gone already is fine."""
    if not pgid or pgid <= 1 or pgid == os.getpgid(0):
        return
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def process_alive(pid: int, create_time: float | None = None) -> bool:
    """Whether ``pid`` still runs (not a zombie), and, given ``create_time``, the process created then (not a
    recycled pid)."""
    try:
        proc = psutil.Process(pid)
        same = create_time is None or abs(proc.create_time() - create_time) < 1.0
        return bool(same and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False
