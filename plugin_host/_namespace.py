"""A mount and IPC namespace of a process's own, for the processes that run plugin code as root or as a uid of
their own: a sandbox root (``actors.sandbox``) and the compile validator.

Entered once, before the process drops its capabilities (mounting needs ``CAP_SYS_ADMIN``); every process it
forks shares it, none of them can mount anything once the capabilities are gone (and the seccomp filter
refuses ``mount``/``unshare``), and nothing propagates back to the host (``/`` is made private).  In it:

* :func:`seal`: every cgroup mount read-only, so a process running as uid 0 without capabilities cannot
  write another group's limits or ``cgroup.procs``;
* for a process run as its own user, :func:`private_temporaries`: a fresh ``tmpfs`` (``1777``, ``nosuid``,
  ``nodev``) on each of :data:`TEMPORARIES` that is a folder others may write, and a fresh ``mqueue``
  instance on each of :data:`QUEUES` that exists (:func:`private_queues`; with :func:`enter`'s ``ipc``,
  SysV objects are the new IPC namespace's too), so what it leaves there dies with it instead of waiting
  for the next sandbox given the same (reused) uid.  The list is fixed, not a scan of the machine: these
  are the sticky, world-writable places of the FHS and of systemd hosts; another world-writable folder an
  administrator made stays shared (it is theirs to avoid);
* for such a process, :func:`reveal`: the folders it needs to import (:func:`import_folders`) readable, at
  their own paths and read-only, where they live under a home its uid cannot pass (pyenv under ``/root``,
  ``0700``: a ``tmpfs`` covers that home and only these folders are bound back into it) or under one of
  the fresh temporaries (a virtualenv or a checkout under ``/tmp``: bound back into the fresh ``tmpfs``).
  The rest of the home or of the host's ``/tmp`` is not even visible.

What a sandbox needs to import (:func:`import_folders`) is the interpreter's and the runtime's, never the
application's: ``sys.prefix``, ``sys.exec_prefix`` and their ``base_`` forms; ``sysconfig``'s ``stdlib``,
``platstdlib``, ``purelib`` and ``platlib`` of the environment and of its base; the site-packages folders and
the folders their ``.pth`` files add; and the folder holding each of the runtime's top-level packages
(:data:`RUNTIME_PACKAGES`) and each distribution plugin-host requires (its metadata, transitively).  Not
``sys.path[0]``, the working folder, ``PYTHONPATH`` entries or any other folder of the application (its
``.env``, its configuration): those stay hidden wherever a barrier or a temporary hides them.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import math
import os
import re
import site
import stat
import sys
import sysconfig
from pathlib import Path
from typing import Iterable

__all__ = [
    "QUEUES",
    "RUNTIME_PACKAGES",
    "TEMPORARIES",
    "TEMPORARY_MB",
    "enter",
    "hidden_folders",
    "import_folders",
    "private_for_user",
    "private_queues",
    "private_temporaries",
    "reveal",
    "seal",
    "temporaries",
]

TEMPORARIES = ("/tmp", "/var/tmp", "/dev/shm", "/run/shm", "/run/lock", "/var/lock", "/var/crash")
"""The shared scratch places a process run as its own user gets afresh (each that is a folder others may
write, symbolic links followed, once each)."""
QUEUES = ("/dev/mqueue",)
"""Where POSIX message queues are mounted on systemd hosts: a fresh ``mqueue`` instance of the new IPC
namespace goes there."""
RUNTIME_PACKAGES = ("actors", "plugin_host", "thespian", "pyseccomp")
"""The runtime's own top-level packages, whose folders a sandbox needs to import from."""

_DISTRIBUTION = "plugin-host"
_CLONE_NEWNS, _CLONE_NEWIPC = 0x00020000, 0x08000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
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


def seal() -> list[str]:
    """Make every cgroup mount read-only for this process and all it forks from now on; returns the mount
    points made read-only.  In :func:`enter`'s namespace only (the host's mounts are untouched), before
    dropping capabilities.

    Raises:
        OSError: the kernel refused a remount.
    """
    sealed = []
    for line in Path("/proc/self/mountinfo").read_text(encoding="utf-8", errors="replace").splitlines():
        fields = line.split()
        fstype = fields[fields.index("-") + 1]
        if fstype not in ("cgroup", "cgroup2"):
            continue
        point, options = fields[4], fields[5].split(",")
        flags = _MS_BIND | _MS_REMOUNT | _MS_RDONLY  # this mount only, not the hierarchy's other mounts
        for name, bit in (("nosuid", _MS_NOSUID), ("nodev", _MS_NODEV), ("noexec", _MS_NOEXEC)):
            flags |= bit if name in options else 0
        _mount(None, _unescape(point), None, flags, None)
        sealed.append(point)
    return sealed


def temporaries() -> list[str]:
    """The places of :data:`TEMPORARIES` on this machine that others may write (resolved, once each)."""
    found: list[str] = []
    for place in TEMPORARIES:
        real = os.path.realpath(place)
        try:
            info = os.stat(real)
        except OSError:
            continue
        if stat.S_ISDIR(info.st_mode) and info.st_mode & stat.S_IWOTH and real not in found:
            found.append(real)
    return found


def private_temporaries(size_mb: float, keep: Iterable[str] = ()) -> list[str]:
    """A fresh ``tmpfs`` (``1777``, ``nosuid``, ``nodev``, at most ``size_mb`` MiB each) on each of
    :func:`temporaries`, with the folders of ``keep`` below it bound back read-only at their own paths;
    returns where.  In :func:`enter`'s namespace only.

    Raises:
        OSError: the kernel refused a mount.
    """
    kept = _outermost(keep)
    mounted = []
    for place in temporaries():
        below = [folder for folder in kept if _below(folder, place)]
        _cover(place, below, f"mode=1777,size={math.ceil(size_mb)}m")
        mounted.append(place)
    return mounted


TEMPORARY_MB = 256
"""Size bound of each fresh temporary without ``max_memory_mb`` (their files are memory: with one, that is
each one's bound, and a control group charges them to it)."""


def private_for_user(size_mb: float | None, extra: Iterable[str] = ()) -> list[str]:
    """What a process run as a uid of its own gets in :func:`enter`'s namespace (with ``ipc``): fresh
    temporaries (at most ``size_mb``, else :data:`TEMPORARY_MB`, MiB each) and POSIX queues, and the folders it
    imports from (:func:`import_folders`, and ``extra``) bound back under them and revealed where a home it
    cannot pass holds them; returns the fresh temporaries.

    Raises:
        OSError: the kernel refused a mount.
    """
    needed = import_folders(extra)  # before the mounts hide any of them
    fresh = private_temporaries(size_mb or TEMPORARY_MB, keep=needed)
    private_queues()
    reveal(needed)
    return fresh


def private_queues(points: Iterable[str] = QUEUES) -> list[str]:
    """A fresh ``mqueue`` instance (the current IPC namespace's) on each of ``points`` that is a folder; returns
    where.  After :func:`enter` with ``ipc``.

    Raises:
        OSError: the kernel refused a mount.
    """
    mounted = []
    for point in points:
        if os.path.isdir(point) and not os.path.islink(point):
            _mount(b"mqueue", point, b"mqueue", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, None)
            mounted.append(point)
    return mounted


def import_folders(extra: Iterable[str] = ()) -> list[str]:
    """The folders a sandbox needs to import from (see the module docstring), and ``extra``: existing
    folders, resolved, sorted."""
    wanted = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *extra}
    base = {"base": sys.base_prefix, "platbase": sys.base_exec_prefix}
    base |= {"installed_base": sys.base_prefix, "installed_platbase": sys.base_exec_prefix}
    for scheme_vars in (None, base):
        paths = sysconfig.get_paths(vars=scheme_vars)
        wanted |= {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    for site_dir in _site_dirs():
        wanted |= {site_dir, *_pth_folders(site_dir)}
    for name in RUNTIME_PACKAGES:
        wanted |= set(_holding(name))
    wanted |= set(_distribution_folders())
    return sorted({os.path.realpath(p) for p in wanted if p and os.path.isdir(p)})


def hidden_folders(paths: Iterable[str]) -> dict[str, list[str]]:
    """For the folders of ``paths`` that a user neither owner nor in the group of their folders on the way could
    not reach: the first such folder on the way -> the folders to bring back under it (none below another)."""
    hidden: dict[str, list[str]] = {}
    for path in _outermost(paths):
        barrier = _first_closed(Path(path))
        if barrier is None or barrier == Path(path):
            continue  # readable, or closed itself (no mount makes it readable to others)
        hidden.setdefault(str(barrier), []).append(path)
    return hidden


def reveal(paths: Iterable[str]) -> list[str]:
    """Make ``paths`` readable at their own paths to any user, read-only, and hide the rest of each folder on
    their way that others could not pass (see the module docstring); returns the folders covered.  In
    :func:`enter`'s namespace only, while this process can still mount (after :func:`private_temporaries`).

    Raises:
        OSError: the kernel refused a mount.
    """
    covered = []
    for barrier, wanted in hidden_folders(paths).items():
        _cover(barrier, wanted, "mode=0755,size=1m")
        covered.append(barrier)
    return covered


def _cover(point: str, wanted: list[str], options: str) -> None:
    """A fresh ``tmpfs`` on ``point`` (``options``), with each of ``wanted`` (below it) bound back read-only at
    its own path: opened before the mount hides it, reachable through its descriptor after."""
    originals = [os.open(w, os.O_PATH | os.O_CLOEXEC) for w in wanted]
    try:
        _mount(b"tmpfs", point, b"tmpfs", _MS_NOSUID | _MS_NODEV, options)
        for folder, original in zip(wanted, originals, strict=True):
            _make_way(Path(point), Path(folder), os.path.isdir(f"/proc/self/fd/{original}"))
            # Not recursive: the read-only remount below holds for this mount only, so no mount under the
            # folder comes along (writable as it was).
            _mount(f"/proc/self/fd/{original}".encode(), folder, None, _MS_BIND, None)
            _mount(None, folder, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV, None)
    finally:
        for original in originals:
            os.close(original)


def _outermost(paths: Iterable[str]) -> list[str]:
    """The existing ones of ``paths``, resolved, none below another."""
    kept: list[str] = []
    for path in sorted({os.path.realpath(p) for p in paths if p and os.path.exists(p)}):
        if not any(path == k or _below(path, k) for k in kept):
            kept.append(path)
    return kept


def _below(path: str, folder: str) -> bool:
    return path.startswith(folder.rstrip("/") + "/")


def _site_dirs() -> list[str]:
    """The interpreter's site-packages folders (the user's too, where ``site`` enables it)."""
    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return dirs


def _pth_folders(site_dir: str) -> list[str]:
    """The folders the ``.pth`` files of ``site_dir`` add to the import path (``site``'s rule: a line that is not
    a comment or an ``import`` names a folder, relative to ``site_dir``)."""
    try:
        names = sorted(n for n in os.listdir(site_dir) if n.endswith(".pth"))
    except OSError:
        return []
    found = []
    for name in names:
        try:
            lines = Path(site_dir, name).read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            line = line.rstrip()
            if line and not line.startswith(("#", "import ", "import\t")):
                found.append(os.path.join(site_dir, line))
    return found


def _holding(name: str) -> list[str]:
    """The folder(s) holding top-level package or module ``name``, where it can be found (not imported)."""
    module = sys.modules.get(name)
    spec = getattr(module, "__spec__", None)
    if spec is None:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            return []
    if spec is None:
        return []
    if spec.submodule_search_locations:
        return [os.path.dirname(p) for p in spec.submodule_search_locations]
    return [os.path.dirname(spec.origin)] if spec.origin and os.path.isabs(spec.origin) else []


def _distribution_folders() -> list[str]:
    """The folders holding plugin-host's distribution and every one it requires, transitively (their metadata;
    extras left out)."""
    folders, seen, todo = [], set(), [_DISTRIBUTION]
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        folders.append(str(dist.locate_file("")))
        for requirement in dist.requires or ():
            found = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
            if found and "extra" not in requirement.partition(";")[2]:
                todo.append(found.group(1))
    return folders


def _make_way(top: Path, target: Path, folder: bool) -> None:
    """``target`` (a folder, or an empty file to bind one on) and the folders to it, below ``top`` in its fresh
    ``tmpfs``, passable by anyone (explicit modes: the root's umask is ``077``)."""
    for step in (*reversed(target.parents), target):
        if step == top or top not in step.parents or step.exists():
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


def _unescape(point: str) -> str:
    """A mount point as ``/proc/self/mountinfo`` writes it (octal escapes for blanks) -> the path."""
    return point.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def _mount(source: bytes | None, target: str, fstype: bytes | None, flags: int, data: str | None) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    _check(libc.mount(source, target.encode(), fstype, flags, None if data is None else data.encode()))


def _check(result: int) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
