"""What a sandbox root inherited from the admin's process, closed before any plugin code runs.

A local sandbox root is forked from the admin, so it starts with every descriptor the admin had open:
the registry's database (and its ``-wal``/``-shm``), its logs, the host's listening sockets and the
admin's connections, pipes (``multiprocessing``'s sentinels of other children), directories.  Every
process of the sandbox is forked from the root and would inherit them in turn, whatever its uid
(an open descriptor outlives a uid switch).

What the root needs was made after it was forked: its own Thespian transport (its listening socket, its
connections) and the runtime's own pipes.  So an at-fork hook notes every socket, pipe, directory or
other non-regular file open when this process was forked (by device and inode: a number freed since
may name one of the root's own now), and :func:`close_inherited` points each of those, and every
regular file past the write-only standard streams, at ``/dev/null`` (``dup2``, not ``close``: a stale
object of the admin's that closes its descriptor later closes ``/dev/null``).  The standard output and
error stay: they are the host's launcher log, write-only, where faults and a plugin's prints go.
"""

from __future__ import annotations

import fcntl
import os
import stat
from typing import Iterable

__all__ = ["close_inherited"]

_AT_FORK: set[tuple[int, int]] = set()
"""(device, inode) of each non-regular file open in this process when it was forked."""


def _open_non_regular() -> set[tuple[int, int]]:
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            info = os.fstat(int(name))
        except OSError:
            continue
        if not stat.S_ISREG(info.st_mode):
            found.add((info.st_dev, info.st_ino))
    return found


def _note_at_fork() -> None:
    _AT_FORK.clear()
    _AT_FORK.update(_open_non_regular())


os.register_at_fork(after_in_child=_note_at_fork)


def close_inherited(keep: Iterable[int] = ()) -> list[int]:
    """Point every descriptor this process inherited when it was forked, but the write-only standard streams,
    ``/dev/null`` and those in ``keep``, at ``/dev/null``; returns the descriptors so replaced."""
    kept = set(keep)
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    devnull = os.fstat(null)
    replaced = []
    try:
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd == null or fd in kept:
                continue
            try:
                info = os.fstat(fd)
                readable = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_WRONLY
            except OSError:
                continue  # the listing's own descriptor, closed by now
            if (info.st_dev, info.st_ino, info.st_rdev) == (devnull.st_dev, devnull.st_ino, devnull.st_rdev):
                continue
            if stat.S_ISREG(info.st_mode):
                inherited = fd > 2 or readable
            else:
                inherited = fd > 2 and (info.st_dev, info.st_ino) in _AT_FORK
            if inherited:
                os.dup2(null, fd, inheritable=os.get_inheritable(fd))
                replaced.append(fd)
    finally:
        os.close(null)
    return replaced
