"""A seccomp filter in every process of a sandbox: the system calls a plugin never needs are refused.

A sandbox's root has no capabilities left, but a process may still create a user namespace, and in it
it holds every capability over what that namespace owns: with a mount and a cgroup namespace of its own
it could mount the cgroup v1 hierarchies again, writable, and lift its own ``pids.max``, memory limit or
CPU quota, or move out of its group (the read-only mounts of :func:`actors._process.cgroup.seal` hold
only in the mount namespace they were made in).  So the root, once its namespaces, limits and
privileges are set up and before any plugin code runs, loads the filter built here (libseccomp through
``pyseccomp``); every process of the sandbox is forked from the root and inherits it, and no process
can remove it.  It allows everything but:

* namespaces: ``unshare``, ``setns``, and ``clone`` with any ``CLONE_NEW*`` flag (a masked comparison on
  its flags, arg 0 on x86_64, i386 and aarch64); ``clone3`` gets ``ENOSYS``, since its flags are in memory
  a filter cannot read: the C library then falls back to ``clone`` (as Docker's default profile does);
* mounts: ``mount``, ``umount``/``umount2``, ``pivot_root`` and the new mount API;
* what container runtimes refuse by default: tracing (``ptrace``, ``process_vm_readv``/``writev``,
  ``kcmp``), ``bpf``, ``perf_event_open``, ``userfaultfd``, the kernel keyring, kernel modules,
  ``kexec``, ``acct``, swap and ``reboot``;

each refused with ``EPERM``.  ``fork``, threads, ``vfork``/``posix_spawn`` (``subprocess``) and
Thespian's own child start-up are plain ``clone`` calls and pass.  The filter covers the 32-bit ABIs of
an x86_64 kernel too (i386 ``int 0x80``, x32), as Docker's does; on aarch64 it covers the native ABI only
(a 32-bit ARM program run there is killed at its first system call, libseccomp's default for another ABI).

The root also makes itself non-dumpable, filter or not (``PR_SET_DUMPABLE`` 0, inherited on fork,
kept until an ``exec``): a process of the same uid without ``CAP_SYS_PTRACE`` (another sandbox, under
``isolation="process"``) cannot read its ``/proc/<pid>/mem``, ``environ`` or open files, nor attach to it.
The host's monitor keeps reading what it needs (``/proc/<pid>/stat``, ``statm``, ``status``): those need no
ptrace access.

Whether a host filters is ``HostConfig.syscall_filter``; :func:`support` says whether this machine can
(the admin asks once, at boot), :func:`confine` is the root's one call.
"""

from __future__ import annotations

import ctypes
import errno
import platform
from typing import Any

from plugin_host.errors import SandboxStartError

from .._base import log

__all__ = ["REFUSED", "NAMESPACE_FLAGS", "support", "install", "confine"]

REFUSED = (
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
    "kcmp",
    "bpf",
    "perf_event_open",
    "userfaultfd",
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
    for name in REFUSED:
        number = seccomp.resolve_syscall(seccomp.Arch.NATIVE, name)
        if number != -1:  # -1: unknown to this libseccomp (a number below -1 is another ABI's call)
            built.add_rule(deny, number)
    for flag in NAMESPACE_FLAGS.values():
        built.add_rule(deny, "clone", seccomp.Arg(_FLAGS_ARG[machine], seccomp.MASKED_EQ, flag, flag))
    built.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    return built


def support() -> str | None:
    """None where this process can install the filter, else why not (a sentence for the log)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_GET_SECCOMP, 0, 0, 0, 0) < 0:
        return f"the kernel has no seccomp ({errno.errorcode.get(ctypes.get_errno(), '?')})"
    try:
        _build()
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def install() -> None:
    """Load the filter into this process (all its threads); every process forked from it from now on
    inherits it, for good.

    Raises:
        OSError: the filter cannot be built or the kernel refused it (nothing is loaded then).
    """
    _build().load()


def _non_dumpable() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_DUMPABLE): {errno.errorcode.get(err, '?')}")


def confine(mode: str, sandbox_id: str) -> None:
    """The root's one call, after its privileges are gone and before its first plugin code: non-dumpable
    always, and the filter as the admin decided for this sandbox (``StartSandbox.syscall_filter``):
    ``"required"``, or fail the start; ``"auto"``, where this machine can, else say why in the log;
    ``"off"``, none.

    Raises:
        SandboxStartError: the dump flag cannot be cleared, or ``"required"`` and no filter.
    """
    try:
        _non_dumpable()
    except OSError as exc:
        raise SandboxStartError(f"cannot make the sandbox's processes non-dumpable: {exc.strerror}") from None
    if mode == "off":
        return
    try:
        install()
    except OSError as exc:
        if mode == "required":
            raise SandboxStartError(f"cannot install the syscall filter: {exc.strerror or exc}") from None
        log.warning("sandbox %s runs without a syscall filter: %s", sandbox_id, exc.strerror or exc)
