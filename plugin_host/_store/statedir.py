"""A private ``state_dir``: its checks, the credential file, the one-host lock and the runtime files.

Everything a host keeps (registry, logs, caches, environments, its credential) lives under
``state_dir``, so another user who can write there, or plant a symlink there, could make the
host run their code or write where they choose.  As OpenSSH refuses a loose key, the host
refuses a ``state_dir`` owned by another user or writable by group or others (and one below
such a folder, unless that folder is sticky, as ``/tmp`` is, or reached through another user's
symlink).  A ``state_dir`` the host creates is ``0700``; one that exists keeps its mode (it may be
shared on purpose: the host's folders in it are tightened to ``0700`` and its files are created
``0600``, opened without following symlinks).

Runtime files (``run/<port>.json``: pid, port, version) let operator commands find a running
host without ``--port``; the lock (``host.lock``) keeps a second host off the same folder.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import stat
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError, HostStartError, StateDirInUseError

__all__ = [
    "HostLock",
    "cookie",
    "open_private",
    "prepare",
    "private_folder",
    "read_runtime",
    "running_hosts",
    "write_runtime",
]

_COOKIE_BYTES = 32


def _owner_problem(path: Path, info: os.stat_result, own: bool) -> str | None:
    uid = os.getuid()
    if own and info.st_uid != uid:
        return f"it is owned by uid {info.st_uid}, not by this user (uid {uid})"
    if info.st_uid not in (uid, 0):
        return f"it is owned by uid {info.st_uid}"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not (not own and info.st_mode & stat.S_ISVTX):
        return (
            f"it is writable by {'group and others' if info.st_mode & stat.S_IWOTH else 'its group'} "
            f"(mode {stat.S_IMODE(info.st_mode):04o})"
        )
    return None


def prepare(state_dir: Path) -> Path:
    """Create ``state_dir`` (``0700``) if needed, check that only this user controls it, and return
    its real path (use that from then on: a symlink on the way could be changed later).

    Raises:
        ConfigError: it, a folder above it, or a symlink on the way to it is owned by another user,
            or a folder on the way is writable by others.
    """
    path = Path(state_dir).expanduser().absolute()
    _check_way(path, path)  # the way as given, and where each symlink on it leads, before anything is made
    created = not os.path.lexists(path)
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        real = path.resolve(strict=True)
    except OSError as exc:
        raise ConfigError(f"state_dir {path} cannot be created: {exc.strerror}", field="state_dir") from None
    for parent in {*path.parents, *real.parents}:  # and where it leads
        problem = _owner_problem(parent, os.stat(parent), own=False)
        if problem:
            raise ConfigError(
                f"refusing state_dir {path}: the folder {parent} above it is not safe ({problem}); "
                "another user could replace it",
                field="state_dir",
            )
    private_folder(real, field="state_dir", tighten=created)
    return real


def _check_way(way: Path, state_dir: Path, followed: list[int] | None = None) -> None:
    """Refuse ``state_dir`` if a symlink on ``way`` (followed to its target, and so on) is another user's,
    or if ``..`` comes after a folder that does not exist yet (mkdir would make the folder, then ``..``
    from it leads to names these checks never saw).

    Like the kernel, at most 40 symlinks are followed in all (counted across targets, so links
    that lead through each other cost linear time, not exponential)."""
    followed = [0] if followed is None else followed
    current = Path(way.anchor)
    for index, part in enumerate(way.parts[1:], start=1):
        step = current / part
        try:
            link = os.lstat(step)
            target = os.readlink(step) if stat.S_ISLNK(link.st_mode) else None
        except (FileNotFoundError, NotADirectoryError):
            if ".." in way.parts[index + 1 :]:
                raise ConfigError(
                    f"refusing state_dir {state_dir}: '..' after a folder that does not exist yet", field="state_dir"
                ) from None
            return  # not made yet: it will be ours
        except OSError as exc:
            raise ConfigError(
                f"state_dir {state_dir} cannot be checked: {step}: {exc.strerror}", field="state_dir"
            ) from None
        if target is None:
            current = step
            continue
        if link.st_uid not in (os.getuid(), 0):
            raise ConfigError(
                f"refusing state_dir {state_dir}: {step} is a symlink owned by uid {link.st_uid}, who "
                "chooses where it points",
                field="state_dir",
            )
        followed[0] += 1
        if followed[0] > 40:
            raise ConfigError(f"refusing state_dir {state_dir}: too many levels of symlinks", field="state_dir")
        _check_way(Path(os.path.join(current, target)), state_dir, followed)
        current = Path(os.path.realpath(step))


def private_folder(path: Path, field: str = "state_dir", tighten: bool = True) -> Path:
    """Make ``path`` a folder only this user can enter (``0700``), or refuse it.

    ``tighten=False`` leaves the mode of a folder of ours that others may read (the ``state_dir``
    a user chose, which may be a folder they share on purpose; what the host keeps in it is
    private anyway).

    Raises:
        ConfigError: it is a symlink, not a folder, owned by another user or writable by others.
    """
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(f"{path} cannot be created: {exc.strerror}", field=field) from None
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"refusing {path}: it is not a folder (a symlink?)", field=field)
    problem = _owner_problem(path, info, own=True)
    if problem:
        raise ConfigError(
            f"refusing {path}: {problem}; make it yours and mode 0700, or choose another state_dir", field=field
        )
    if tighten and stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, 0o700)  # ours and readable by others: private from now on
    return path


def open_private(path: Path, flags: int = os.O_WRONLY | os.O_APPEND | os.O_CREAT) -> int:
    """Open a file of a private folder (``0600`` when created) without following a symlink.

    A symlink found at ``path`` is removed, not followed (inside a private folder only this
    user, or a plugin running as this user, could have put it there).
    """
    flags |= os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, flags, 0o600)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
    os.unlink(path)
    return os.open(path, flags, 0o600)


def cookie(path: Path, create: bool) -> bytes:
    """The credential in ``path``: made (random, ``0600``) when missing and ``create``; else read and checked.

    Raises:
        ConfigError: it is not a regular file of this user's, others may read it, or it is too short.
        HostStartError: it is missing and ``create`` is false (no host made it here).
    """
    path = Path(path)
    if create and not path.exists():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            pass  # made meanwhile by another process: read that one
        else:
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(_COOKIE_BYTES) + "\n")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise HostStartError(
            f"no credential file {path}: is a host running with this state_dir "
            "(or pass the convention's --cookie-file)?"
        ) from None
    except PermissionError:
        raise HostStartError(f"cannot read the credential file {path}: permission denied") from None
    except OSError as exc:
        raise ConfigError(
            f"refusing the credential file {path}: {exc.strerror} (a symlink?)", field="cookie_file"
        ) from None
    with os.fdopen(fd, "rb") as source:
        info = os.fstat(source.fileno())
        problem = None if stat.S_ISREG(info.st_mode) else "it is not a regular file"
        problem = problem or _owner_problem(path, info, own=True)
        if problem is None and info.st_mode & 0o077:
            problem = f"others may read it (mode {stat.S_IMODE(info.st_mode):04o}; it must be 0600 or 0400)"
        if problem:
            raise ConfigError(f"refusing the credential file {path}: {problem}", field="cookie_file")
        secret = source.read().strip()
    if len(secret) < 16:
        raise ConfigError(
            f"the credential file {path} holds {len(secret)} bytes; at least 16 are needed", field="cookie_file"
        )
    return secret


class HostLock:
    """Held for a host's life: a second host on the same ``state_dir`` is refused.

    An ``flock`` on ``state_dir/host.lock``: the kernel drops it when its holder dies, so the
    lock of a killed host is taken over by the next one without any clean-up.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / "host.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock and write this process's pid in it.

        Raises:
            StateDirInUseError: another live host holds it.
        """
        fd = open_private(self.path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StateDirInUseError(
                f"another host (pid {holder}) already runs with state_dir "
                f"{self.path.parent}; one host per state_dir (choose another one)",
                state_dir=str(self.path.parent),
                pid=holder,
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the descriptor releases the flock


def _runtime_folder(state_dir: Path) -> Path:
    return private_folder(Path(state_dir) / "run")


def write_runtime(state_dir: Path, port: int, bind: str, extra: dict[str, Any] | None = None) -> Path:
    """Record a running host (pid, port, address, version) for operator commands; returns the file."""
    from .. import __version__

    info = {
        "pid": os.getpid(),
        "port": port,
        "bind": bind,
        "version": __version__,
        "started": time.time(),
        **(extra or {}),
    }
    path = _runtime_folder(state_dir) / f"{port}.json"
    fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    with os.fdopen(fd, "w") as out:
        json.dump(info, out)
    return path


def read_runtime(path: Path) -> dict[str, Any] | None:
    """A runtime file's content, or ``None`` when it is unreadable or its host is gone."""
    try:
        fd = open_private(path, os.O_RDONLY)
        with os.fdopen(fd) as source:
            info = json.load(source)
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return info if isinstance(info, dict) else None


def running_hosts(state_dir: Path) -> list[dict[str, Any]]:
    """The hosts recorded under ``state_dir`` whose process still runs (stale files are removed)."""
    folder = Path(state_dir) / "run"
    found = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        info = read_runtime(path)
        if info is None:
            try:
                path.unlink()
            except OSError:
                pass
            continue
        found.append(info)
    return found
