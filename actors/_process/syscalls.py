"""A seccomp filter in every process of a sandbox: the system calls a plugin never needs are refused.

A sandbox's root has no capabilities left, but a process may still create a user namespace, and in it
it holds every capability over what that namespace owns: with a mount and a cgroup namespace of its own
it could mount the cgroup v1 hierarchies again, writable, and lift its own ``pids.max``, memory limit or
CPU quota, or move out of its group (the read-only mounts of :func:`plugin_host._namespace.seal` hold
only in the mount namespace they were made in).  So the root, once its namespaces, limits and
privileges are set up and before any plugin code runs, loads the filter built here (libseccomp through
``pyseccomp``); every process of the sandbox is forked from the root and inherits it, and no process
can remove it.  It allows everything but:

* namespaces: ``unshare``, ``setns``, and ``clone`` with any ``CLONE_NEW*`` flag (a masked comparison on
  its flags, arg 0 on x86_64, i386 and aarch64); ``clone3`` gets ``ENOSYS``, since its flags are in memory
  a filter cannot read: the C library then falls back to ``clone`` (as Docker's default profile does);
* mounts: ``mount``, ``umount``/``umount2``, ``pivot_root`` and the new mount API;
* what container runtimes refuse by default: tracing (``ptrace``, ``process_vm_readv``/``writev``,
  ``pidfd_getfd``, ``kcmp``), ``bpf``, ``perf_event_open``, ``userfaultfd``, ``io_uring`` (a large kernel
  surface; none of its operations is a refused call, so it is no way around the list), the kernel
  keyring, kernel modules, ``kexec``, ``acct``, swap and ``reboot``;

each refused with ``EPERM``.  ``fork``, threads, ``vfork``/``posix_spawn`` (``subprocess``) and
Thespian's own child start-up are plain ``clone`` calls and pass.  The filter covers the 32-bit ABIs of
an x86_64 kernel too (i386 ``int 0x80``, x32), as Docker's does; on aarch64 it covers the native ABI only
(a 32-bit ARM program run there is killed at its first system call, libseccomp's default for another ABI).

The root also makes itself non-dumpable, filter or not, first of all (``PR_SET_DUMPABLE`` 0, inherited on
fork, kept until an ``exec``: see ``actors.sandbox``): a process of the same uid without ``CAP_SYS_PTRACE``
(another sandbox, under ``isolation="process"``) cannot read its ``/proc/<pid>/mem``, ``environ`` or open
files, nor attach to it.
The host's monitor keeps reading what it needs (``/proc/<pid>/stat``, ``statm``, ``status``): those need no
ptrace access.

The filter is built in :mod:`plugin_host._confine` (shared with the compile validator).  Whether a host
filters is ``HostConfig.syscall_filter``; ``syscall_filter_support`` there says whether this machine can (the
admin asks once, at boot), :func:`confine` is the root's one call.
"""

from __future__ import annotations

from plugin_host.errors import SandboxStartError
from plugin_host.lowlevel import confine as _shared

from .._base import log

__all__ = ["confine"]


def confine(mode: str, sandbox_id: str) -> None:
    """The root's one call, after its privileges are gone and before its first plugin code: the filter as
    the admin decided for this sandbox (``StartSandbox.syscall_filter``): ``"required"``, or fail the start;
    ``"auto"``, where this machine can, else say why in the log; ``"off"``, none.  (The root made itself
    non-dumpable first of all, see ``actors.sandbox``.)

    Raises:
        SandboxStartError: ``"required"`` and no filter.
    """
    if mode == "off":
        return
    try:
        _shared.install_syscall_filter()
    except OSError as exc:
        if mode == "required":
            raise SandboxStartError(f"cannot install the syscall filter: {exc.strerror or exc}") from None
        log.warning("sandbox %s runs without a syscall filter: %s", sandbox_id, exc.strerror or exc)
