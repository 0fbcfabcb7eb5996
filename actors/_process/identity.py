"""A sandbox as its own Unix user (``isolation="user"``): its uid, given out by the admin, taken by its root.

The admin's side is :class:`UserPool`.  It gives each such sandbox a uid (its gid is the same number)
from ``HostConfig.sandbox_uids``, as systemd's ``DynamicUser`` does: one no passwd or group entry
names, no running process holds (real, effective or saved), and no other host of the machine holds.
Hosts keep out of each other's way through :data:`USERS_DIR` (``/run/plugin-host``, root's, checked):
a sandbox holds ``uid-<uid>.lock`` there with a POSIX lock (``lockf``) for as long as it has the uid.
The kernel drops such a lock when the admin's process ends, however it ends, and a forked child
never inherits it (the admin's lock files are closed in every child it forks besides).  The uid goes
back to the pool when the sandbox is destroyed, its first start fails, or the host closes.

Each uid has a folder ``uid-<uid>/`` there, made afresh when the uid is given out (owner root, group
the sandbox's gid, ``0750``): ``scratch/`` in it is the sandbox's own (its ``HOME``, ``TMPDIR`` and
working directory), and ``env-*/`` are root-owned copies of its dependency environments, which live
under ``state_dir`` (``0700``, root's) where the sandbox cannot reach them.  Nothing of ``state_dir``
is loosened: the sandbox reads no file of the host (its code comes in its start message).

The sandbox's side is :func:`become`, which the root calls once, after it took its key and joined its
control group and before any plugin code (and after closing what it inherited from the admin, as every root does:
:mod:`actors._process.descriptors`): ``setgroups([])``, ``setgid``, ``setuid``; the capabilities go with the uid (see
:func:`actors._process.hardening.drop_privileges`).  What it reads of the host's installation later
(activating an environment) it reads before; a Python under a ``0700`` home it reads through the root's
mount namespace (:func:`plugin_host._namespace.reveal`).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import grp
import os
import pwd
import shutil
import signal
import stat
import sys
import tempfile
from pathlib import Path

import psutil

from plugin_host.deps import copy_readable, read_runtime_metadata
from plugin_host.errors import ConfigError, DependencyError, LimitExceededError
from plugin_host.lowlevel import confine

from .._messages import SandboxUser

__all__ = ["OUTPUT_NAME", "own_output", "USERS_DIR", "UserPool", "become", "readable_environment", "refusal"]

USERS_DIR = Path("/run/plugin-host")
"""Where the hosts of a machine lock the uids they gave out, and keep each sandbox's folders."""

_CAP_CHOWN = 0
_CAP_SETGID = 6
_CAP_SETUID = 7
_CAP_SYS_ADMIN = 21
_PR_SET_PDEATHSIG = 1


def refusal() -> str | None:
    """Why this process cannot run sandboxes as their own users, or None when it can.

    It needs to switch uids, hand a folder over and give the sandbox its own mount and IPC namespace (root, or
    ``CAP_SETUID``, ``CAP_SETGID``, ``CAP_CHOWN`` and ``CAP_SYS_ADMIN``), on Linux.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
    except OSError as exc:
        return f"cannot read /proc/self/status ({exc.strerror}): isolation='user' needs Linux"
    effective = int(fields.get("CapEff", "0").strip(), 16)
    missing = [name for cap, name in _NEEDED if not effective & (1 << cap)]
    if missing:
        return (
            f"isolation='user' needs root or {', '.join(n for _, n in _NEEDED)}; this host runs as uid "
            f"{os.geteuid()} without {', '.join(missing)}"
        )
    return None


_NEEDED = (
    (_CAP_SETUID, "CAP_SETUID"),
    (_CAP_SETGID, "CAP_SETGID"),
    (_CAP_CHOWN, "CAP_CHOWN"),
    (_CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),  # its own mount and IPC namespace (plugin_host._namespace)
)


class UserPool:
    """The admin's uids for sandboxes: one per sandbox from ``[first, last]``, locked machine-wide.

    Args:
        first, last: the range (``HostConfig.sandbox_uids``).
        folder: where lock files and sandbox folders go (:data:`USERS_DIR`).
    """

    def __init__(self, first: int, last: int, folder: Path = USERS_DIR) -> None:
        self.first, self.last, self.folder = first, last, folder
        self._held: dict[int, int] = {}
        """uid -> the fd of its locked file."""
        self._next = first
        os.register_at_fork(after_in_child=self._in_child)

    def _in_child(self) -> None:
        """A child forked from the admin holds no lock (POSIX locks are not inherited) and keeps no lock file;
        its other inherited descriptors are closed by the root (:mod:`actors._process.descriptors`)."""
        for fd in self._held.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._held = {}

    def take(self) -> SandboxUser:
        """A free uid, locked, with its folders made.

        Raises:
            ConfigError: :data:`USERS_DIR` is not root's alone, or cannot be made (``field="isolation"``).
            LimitExceededError: every uid of the range is taken (``limit="sandbox_uids"``).
        """
        self._check_folder()
        busy = _uids_in_use()
        size = self.last - self.first + 1
        for step in range(size):
            uid = self.first + (self._next - self.first + step) % size
            if uid in self._held or uid in busy or _named(uid):
                continue
            fd = self._lock(uid)
            if fd is None:
                continue
            self._held[uid] = fd
            self._next = uid + 1 if uid < self.last else self.first
            try:
                return self._prepare(uid)
            except OSError as exc:
                self.release(uid)
                raise ConfigError(
                    f"cannot make the folders of sandbox uid {uid} under {self.folder}: {exc}", field="isolation"
                ) from None
        raise LimitExceededError(
            f"every uid of HostConfig.sandbox_uids ({self.first}-{self.last}) is taken (by this host's "
            "sandboxes, other hosts, running processes or passwd entries)",
            limit="sandbox_uids",
        )

    def release(self, uid: int) -> None:
        """Give ``uid`` back: its folder goes, then its lock (a process still running as it keeps it out of
        the next :meth:`take` anyway)."""
        fd = self._held.pop(uid, None)
        if fd is None:
            return
        shutil.rmtree(self.folder / f"uid-{uid}", ignore_errors=True)
        os.close(fd)  # closing drops the lock; the file stays (removing it would race another host's lock)

    def held(self) -> list[int]:
        """The uids this pool holds now."""
        return sorted(self._held)

    def _check_folder(self) -> None:
        try:
            self.folder.mkdir(mode=0o755, parents=True, exist_ok=True)
            info = os.lstat(self.folder)
        except OSError as exc:
            raise ConfigError(f"cannot make {self.folder}: {exc.strerror}", field="isolation") from None
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o022:
            raise ConfigError(
                f"{self.folder} must be a folder of root's that no one else may write (uid {info.st_uid}, "
                f"mode {stat.filemode(info.st_mode)})",
                field="isolation",
            )
        if stat.S_IMODE(info.st_mode) != 0o755:  # made under the admin's umask (077): sandboxes go through it
            os.chmod(self.folder, 0o755)

    def _lock(self, uid: int) -> int | None:
        fd = os.open(self.folder / f"uid-{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                return None  # another host's
            raise
        return fd

    def _prepare(self, uid: int) -> SandboxUser:
        """The uid's folder, made afresh (a host that died may have left one)."""
        home = self.folder / f"uid-{uid}"
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(mode=0o750)
        os.chown(home, 0, uid)
        os.chmod(home, 0o750)
        scratch = home / "scratch"
        scratch.mkdir(mode=0o700)
        os.chown(scratch, uid, uid)
        return SandboxUser(uid, uid, str(home), str(scratch))


def readable_environment(user: SandboxUser, environment: str | None) -> str | None:
    """A copy of a dependency environment (under ``state_dir``, which the sandbox cannot read) in the
    sandbox's folder, root's and read-only to it; the same copy for the same environment."""
    if not environment:
        return environment
    copy = Path(user.home) / ("env-" + Path(environment).name)
    if not copy.exists():
        partial = Path(tempfile.mkdtemp(prefix=".env-", dir=user.home))
        copy_readable(environment, partial / "env")
        os.chmod(partial, 0o755)
        os.rename(partial / "env", copy)
        os.rmdir(partial)
    return str(copy)


def _uids_in_use() -> set[int]:
    """Every uid a running process holds (real, effective or saved)."""
    found: set[int] = set()
    for proc in psutil.process_iter(["uids"]):
        uids = proc.info.get("uids")
        if uids is not None:
            found.update(uids)
    return found


def _named(uid: int) -> bool:
    """Whether a passwd or group entry names ``uid`` (as a uid or a gid)."""
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(uid)
            return True
        except KeyError:
            pass
    return False


OUTPUT_NAME = "output.log"
"""The file in a user sandbox's folder (``USERS_DIR/uid-<uid>``) its processes' standard output and error go to."""


def own_output(user: SandboxUser) -> str:
    """Standard output and error (a plugin's prints, fault dumps) to :data:`OUTPUT_NAME` in the sandbox's own
    folder, appended; returns its path.  They were the host's launcher log, shared by every process of the
    host: a plugin of another uid could overwrite, truncate or fill it through them.  The file is root's
    (``0640``, group ``gid``) and goes with the folder when the uid is released.

    Raises:
        OSError: it cannot be opened.
    """
    path = os.path.join(user.home, OUTPUT_NAME)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o640)
    try:
        os.fchown(fd, 0, user.gid)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    finally:
        os.close(fd)
    return path


def become(user: SandboxUser) -> None:
    """Run as ``user`` from now on, for good, with no supplementary group (the root closed what it inherited
    from the admin before: :func:`actors._process.descriptors.close_inherited`).

    Called by a sandbox root between dropping its capability bounding set and emptying its capability
    sets (the uid change empties them anyway).

    Raises:
        OSError: the kernel refused, or the ids did not all change.
    """
    try:
        read_runtime_metadata()  # what activating an environment reads of the host's installation, while it may
    except DependencyError:
        pass  # no packaging library: only an environment needs it, and its activation says so then
    own_output(user)
    confine.switch_user(user.uid, user.gid)
    # A change of credentials clears the parent-death signal: set it again (and the parent may be gone).
    parent = os.getppid()
    if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:
        os._exit(70)
    os.chdir(user.scratch)
    os.environ.update(HOME=user.scratch, TMPDIR=user.scratch, USER=f"uid-{user.uid}", LOGNAME=f"uid-{user.uid}")
    tempfile.tempdir = user.scratch
