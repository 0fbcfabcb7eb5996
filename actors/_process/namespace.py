"""A sandbox root's private mount and IPC namespace: entered once, before the root drops its capabilities.

Every process of the sandbox is forked from the root and shares the namespace; none of it can mount
anything once the capabilities are gone, and nothing propagates back to the host (``/`` is made
private).  What is done in it:

* the cgroup mounts made read-only (:func:`actors._process.cgroup.seal`, when the sandbox has a group);
* for a sandbox run as its own user, :func:`private_temporaries`: a fresh ``tmpfs`` on ``/tmp``,
  ``/var/tmp`` and ``/dev/shm``, and (with :func:`enter`'s ``ipc``) its own IPC namespace, so files,
  SysV objects and POSIX message queues it leaves die with it, instead of waiting in the host's for
  the next sandbox given the same (reused) uid, and two sandboxes do not see each other's;
* for such a sandbox, :func:`reveal`: a Python under a home its uid cannot pass (``/root``, ``0700``)
  made readable at its own paths: a ``tmpfs`` (``0755``) over the first such folder and, bound
  read-only into it, just the folders the interpreter needs; the rest of that home (the cookie, a
  ``state_dir`` there) is not even visible to the sandbox.

A sandbox of the host's own uid (``isolation="process"``) keeps the host's ``/tmp`` and IPC: it runs
as the host's user, and a plugin may hand files to the host there.
"""

from __future__ import annotations

import ctypes
import math
import os
import stat
from pathlib import Path

__all__ = ["enter", "private_temporaries", "reveal", "hidden_folders", "TEMPORARIES"]

TEMPORARIES = ("/tmp", "/var/tmp", "/dev/shm")
"""The shared scratch places a sandbox run as its own user gets afresh (the ones that exist)."""

_CLONE_NEWNS, _CLONE_NEWIPC = 0x00020000, 0x08000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV = 0x1, 0x2, 0x4
_MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 0x20, 0x1000, 0x4000, 0x40000


def enter(ipc: bool = False) -> None:
    """Into a mount namespace of this process's own (and an IPC namespace with ``ipc``), ``/`` private in it.

    Needs ``CAP_SYS_ADMIN``: call it before dropping capabilities.

    Raises:
        OSError: the kernel refused.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    _check(libc.unshare(_CLONE_NEWNS | (_CLONE_NEWIPC if ipc else 0)))
    _check(libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None))  # nothing propagates back to the host


def private_temporaries(size_mb: float) -> list[str]:
    """A fresh ``tmpfs`` (``1777``, ``nosuid``, ``nodev``, at most ``size_mb`` MiB each) on each of
    :data:`TEMPORARIES` that exists; returns where.  In :func:`enter`'s namespace only.

    Raises:
        OSError: the kernel refused a mount.
    """
    mounted = []
    for place in TEMPORARIES:
        if os.path.isdir(place) and not os.path.islink(place):
            _mount(b"tmpfs", place, b"tmpfs", _MS_NOSUID | _MS_NODEV, f"mode=1777,size={math.ceil(size_mb)}m")
            mounted.append(place)
    return mounted


def hidden_folders(paths: list[str]) -> dict[str, list[str]]:
    """For the folders of ``paths`` (the interpreter's) that a user neither owner nor in the group of their
    folders on the way could not reach: the first such folder on the way -> the folders to bring back under
    it (none below another)."""
    hidden: dict[str, list[str]] = {}
    for path in sorted({os.path.realpath(p) for p in paths if p and os.path.exists(p)}):
        barrier = _first_closed(Path(path))
        if barrier is None or barrier == Path(path):
            continue  # readable, or closed itself (no mount makes it readable to others)
        wanted = hidden.setdefault(str(barrier), [])
        if not any(path == w or path.startswith(w.rstrip("/") + "/") for w in wanted):
            wanted.append(path)
    return hidden


def reveal(paths: list[str]) -> list[str]:
    """Make ``paths`` readable at their own paths to any user, read-only, and hide the rest of each folder on
    their way that others could not pass (see the module docstring); returns the folders covered.  In
    :func:`enter`'s namespace only, while this process can still mount.

    Raises:
        OSError: the kernel refused a mount.
    """
    covered = []
    for barrier, wanted in hidden_folders(paths).items():
        originals = [os.open(w, os.O_PATH | os.O_CLOEXEC) for w in wanted]  # reachable once covered
        try:
            _mount(b"tmpfs", barrier, b"tmpfs", _MS_NOSUID | _MS_NODEV, "mode=0755,size=1m")
            for folder, original in zip(wanted, originals, strict=True):
                _make_way(Path(barrier), Path(folder), os.path.isdir(f"/proc/self/fd/{original}"))
                _mount(f"/proc/self/fd/{original}".encode(), folder, None, _MS_BIND | _MS_REC, None)
                _mount(None, folder, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV, None)
        finally:
            for original in originals:
                os.close(original)
        covered.append(barrier)
    return covered


def _make_way(barrier: Path, target: Path, folder: bool) -> None:
    """``target`` (a folder, or an empty file to bind one on) and the folders to it, below ``barrier`` in its
    fresh ``tmpfs``, passable by anyone (explicit modes: the root's umask is ``077``)."""
    for step in (*reversed(target.parents), target):
        if step == barrier or barrier not in step.parents or step.exists():
            continue
        if step == target and not folder:
            step.touch()
            os.chmod(step, 0o644)
        else:
            step.mkdir()
            os.chmod(step, 0o755)


def _first_closed(path: Path) -> Path | None:
    """The first folder from ``/`` down to ``path`` that others may not pass through (no ``o+x``)."""
    for folder in (*reversed(path.parents), path):
        try:
            info = os.stat(folder)
        except OSError:
            return folder
        if stat.S_ISDIR(info.st_mode) and not info.st_mode & stat.S_IXOTH:
            return folder
    return None


def _mount(source: bytes | None, target: str, fstype: bytes | None, flags: int, data: str | None) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    _check(libc.mount(source, target.encode(), fstype, flags, None if data is None else data.encode()))


def _check(result: int) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
