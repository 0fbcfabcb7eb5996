"""What a process gives up before plugin code runs in it: hard rlimits, capabilities, ``no_new_privs``.

Shared by the sandbox processes of :mod:`actors` (through :mod:`plugin_host.lowlevel`, as the runtime
audit is) and the compile validator (:mod:`plugin_host._compile.worker`), which imports plugin modules
too.  The policy (which limits, when, the uid switch) stays with each caller: see
``actors._process.limits`` and ``actors._process.hardening`` for the sandbox's.

:func:`apply_rlimits` sets each limit with soft = hard (RLIMIT_CPU: hard one second above soft, so
SIGXCPU names the crash first), never raising an inherited hard limit: ``max_memory_mb`` becomes
RLIMIT_AS at this process's size now plus the limit, ``max_cpu_seconds`` RLIMIT_CPU at the CPU used so
far plus the limit, and RLIMIT_CORE is 0 (a core dump would hold secrets).

:func:`drop_privileges` sets ``no_new_privs`` and empties every capability set (bounding, ambient, then
effective, permitted and inheritable, as container runtimes do), so a process of a host running as root
keeps no ``CAP_SYS_RESOURCE`` (a hard rlimit holds), ``CAP_KILL``, ``CAP_DAC_OVERRIDE`` ... and no
``exec`` gives them back.
"""

from __future__ import annotations

import ctypes
import math
import resource
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from .config import ResourceLimits

__all__ = ["CPU_SIGNAL_GRACE", "apply_rlimits", "drop_privileges", "wanted_rlimits"]

CPU_SIGNAL_GRACE = 1
"""Seconds of CPU between RLIMIT_CPU's soft limit (SIGXCPU, a named crash) and its hard one (SIGKILL)."""

_PR_SET_NO_NEW_PRIVS = 38
_PR_CAPBSET_DROP = 24
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_CAP_SETPCAP = 8
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def _vm_size() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _cpu_used() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def wanted_rlimits(limits: ResourceLimits) -> dict[int, int]:
    """The hard limit each rlimit should get in this process (resource -> value)."""
    wanted = {resource.RLIMIT_CORE: 0}
    if limits.max_memory_mb is not None:
        wanted[resource.RLIMIT_AS] = _vm_size() + int(limits.max_memory_mb * 2**20)
    if limits.max_cpu_seconds is not None:
        wanted[resource.RLIMIT_CPU] = int(math.ceil(_cpu_used() + limits.max_cpu_seconds)) + CPU_SIGNAL_GRACE
    return wanted


def apply_rlimits(limits: ResourceLimits) -> None:
    """Set this process's memory, lifetime-CPU and core-dump limits as hard limits (see the module docstring).

    Never raises an inherited hard limit: a process forked from one that applied them
    keeps the smaller of the two.
    """
    for which, value in wanted_rlimits(limits).items():
        _, hard = resource.getrlimit(which)
        new_hard = value if hard == resource.RLIM_INFINITY else min(value, hard)
        soft = new_hard - CPU_SIGNAL_GRACE if which == resource.RLIMIT_CPU and new_hard > 1 else new_hard
        resource.setrlimit(which, (soft, new_hard))


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _status_mask(field: str) -> int:
    """A capability mask of this process from /proc/self/status (``CapEff``, ``CapBnd`` ...)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1], 16)
    return 0


def _prctl(libc: ctypes.CDLL, what: str, *args: int) -> None:
    if libc.prctl(*args, *(0,) * (5 - len(args))) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({what}) failed")


def drop_privileges(switch_user: Callable[[], None] | None = None) -> None:
    """Set ``no_new_privs`` and empty every capability set of this process, for good (see the module docstring).

    ``switch_user`` (a uid change) runs once the bounding set is empty and before the other sets are: it
    still holds ``CAP_SETUID`` then, and the uid change empties them too.

    Raises:
        OSError: the kernel refused; the caller must not run plugin code then.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    _prctl(libc, "PR_SET_NO_NEW_PRIVS", _PR_SET_NO_NEW_PRIVS, 1)
    if _status_mask("CapEff") & (1 << _CAP_SETPCAP):  # dropping from the bounding set needs CAP_SETPCAP
        with open("/proc/sys/kernel/cap_last_cap", encoding="ascii") as last:
            cap_last_cap = int(last.read())
        for cap in range(cap_last_cap + 1):
            _prctl(libc, "PR_CAPBSET_DROP", _PR_CAPBSET_DROP, cap)
    _prctl(libc, "PR_CAP_AMBIENT_CLEAR_ALL", _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL)
    if switch_user is not None:
        switch_user()
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()  # version 3: two 32-bit halves, all zero
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")
    if _status_mask("CapEff") or _status_mask("CapPrm"):
        raise OSError(0, "capabilities remain after capset")
