"""What a process gives up before plugin code runs in it: hard rlimits, capabilities, ``no_new_privs``, the
right to be traced, and (:func:`install_syscall_filter`) the system calls a plugin never needs.

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

import contextlib
import ctypes
import errno
import math
import os
import platform
import resource
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .config import ResourceLimits

__all__ = [
    "CPU_SIGNAL_GRACE",
    "NAMESPACE_FLAGS",
    "REFUSED_SYSCALLS",
    "apply_rlimits",
    "drop_privileges",
    "install_syscall_filter",
    "load_syscall_library",
    "switch_user",
    "make_non_dumpable",
    "syscall_filter_support",
    "wanted_rlimits",
]

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


def switch_user(uid: int, gid: int) -> None:
    """Run as ``uid``/``gid`` for good (real, effective and saved), with no supplementary group; for the
    ``switch_user`` step of :func:`drop_privileges`.

    Raises:
        OSError: the kernel refused, or the ids did not all change.
    """
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid,) * 3 or os.getresgid() != (gid,) * 3 or os.getgroups():
        raise OSError(errno.EPERM, f"the switch to uid {uid} did not hold")


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


# -- the seccomp filter (see actors._process.syscalls for why and what) ----------------------------

REFUSED_SYSCALLS = (
    "unshare",
    "setns",
    "mount",
    "umount",
    "umount2",
    "pivot_root",
    "open_tree",
    "move_mount",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_getfd",
    "kcmp",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "keyctl",
    "add_key",
    "request_key",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "acct",
    "swapon",
    "swapoff",
    "reboot",
)
"""The system calls refused with ``EPERM`` whatever their arguments (one a libseccomp does not know is
left out: the kernel it was built for has no such call either)."""

NAMESPACE_FLAGS = {
    "CLONE_NEWTIME": 0x00000080,  # for clone() this bit is in the exit-signal byte: no valid signal has it
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
"""The ``clone`` flags that make a namespace: a ``clone`` with any of them is refused with ``EPERM``."""

_PR_SET_DUMPABLE = 4
_PR_GET_SECCOMP = 21
_FLAGS_ARG = {"x86_64": 0, "aarch64": 0}
"""Which argument of ``clone`` holds its flags, per machine the filter is made for (s390 has it second)."""


def load_syscall_library() -> None:
    """Import ``pyseccomp`` (and libseccomp) now, if it can be, building no filter: a process that installs the
    filter later and must have its imports done by then (the compile validator's module baseline)."""
    with contextlib.suppress(OSError):
        _library()


def _library() -> Any:
    """``pyseccomp``, which loads libseccomp as it is imported.

    Raises:
        OSError: no ``pyseccomp``, or no libseccomp for it to load.
    """
    try:
        import pyseccomp
    except (ImportError, RuntimeError, OSError) as exc:  # RuntimeError: "Unable to find libseccomp"
        raise OSError(errno.ENOSYS, f"cannot load libseccomp through pyseccomp ({exc})") from None
    return pyseccomp


def _build() -> Any:
    """The filter, built and not loaded.

    Raises:
        OSError: no libseccomp, a machine the filter is not made for, or libseccomp refused a rule.
    """
    machine = platform.machine()
    if machine not in _FLAGS_ARG:
        raise OSError(errno.ENOSYS, f"the syscall filter is not made for {machine!r} machines")
    seccomp = _library()
    deny = seccomp.ERRNO(errno.EPERM)
    built = seccomp.SyscallFilter(seccomp.ALLOW)
    if machine == "x86_64":  # the 32-bit ABIs reach the same kernel: the same rules for them
        for arch in (seccomp.Arch.X86, seccomp.Arch.X32):
            built.add_arch(arch)
    built.set_attr(seccomp.Attr.CTL_TSYNC, 1)  # every thread of the root, not only the calling one
    for name in REFUSED_SYSCALLS:
        number = seccomp.resolve_syscall(seccomp.Arch.NATIVE, name)
        if number != -1:  # -1: unknown to this libseccomp (a number below -1 is another ABI's call)
            built.add_rule(deny, number)
    for flag in NAMESPACE_FLAGS.values():
        built.add_rule(deny, "clone", seccomp.Arg(_FLAGS_ARG[machine], seccomp.MASKED_EQ, flag, flag))
    built.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    return built


def syscall_filter_support() -> str | None:
    """None where this process can install the filter, else why not (a sentence for the log)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_GET_SECCOMP, 0, 0, 0, 0) < 0:
        return f"the kernel has no seccomp ({errno.errorcode.get(ctypes.get_errno(), '?')})"
    try:
        _build()
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def install_syscall_filter() -> None:
    """Load the filter into this process (all its threads); every process forked from it from now on
    inherits it, for good.

    Raises:
        OSError: the filter cannot be built or the kernel refused it (nothing is loaded then).
    """
    _build().load()


def make_non_dumpable() -> None:
    """``PR_SET_DUMPABLE`` 0: no process of the same uid without ``CAP_SYS_PTRACE`` may read this one's memory,
    ``environ`` or open files, nor attach to it (inherited on fork, kept until an ``exec``).

    Raises:
        OSError: the kernel refused.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_DUMPABLE): {errno.errorcode.get(err, '?')}")
