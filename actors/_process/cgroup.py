"""A control group per sandbox: limits for the whole sandbox, and every process of it found and ended.

The host's side (the admin's process, which keeps its privileges) creates a sandbox's group with
:meth:`SandboxGroup.create` before the sandbox's root starts; the root moves itself in with
:meth:`SandboxGroup.join` before any plugin code runs, so every process forked below it is in the
group too, including one a plugin detaches with ``setsid`` or a double fork.  The group's memory
limit is for the whole sandbox (the kernel's OOM killer ends its largest process past it), its
pids limit stops a fork bomb, and :meth:`SandboxGroup.kill` ends every process in it, freezing the
group first where a freezer is mounted so that a process forking in a loop cannot outrun it, and
says which processes it could not end (:meth:`SandboxGroup.remove` then keeps the group: the admin
logs them at error level and tries again on each tick, see :mod:`actors._admin.groups`).

This is cgroup v1 with its ``memory`` and ``pids`` hierarchies (``cpu``, ``cpuacct`` and
``freezer`` are used when mounted), as on this project's machines; cgroup v2 needs a delegated
subtree (systemd's ``Delegate=``) and is not supported yet.  :func:`support` says where groups go, or
why they cannot be made (not root, a read-only ``/sys/fs/cgroup``, a hierarchy missing); the caller
then falls back to rlimits and the monitor and says so once.

A group alone does not stop a process running as uid 0 from writing its pid into another group's
``cgroup.procs`` (the files belong to uid 0, and dropping capabilities does not change that): it
could leave its own group (for the host's root group, say) or write another group's limit files
(checked here: a process with no capabilities left, as a sandbox's are, lowered another group's
``pids.max`` and moved itself into the root group).  So the root, once in its group and before it
drops its capabilities, calls :func:`seal` in its mount namespace of its own
(:mod:`actors._process.namespace`): every cgroup mount read-only there, inherited by every process
of the sandbox, which can no longer mount or
remount anything.  Where that fails (no ``CAP_SYS_ADMIN``, a seccomp filter), the root logs why and
the sandbox runs unsealed.  The admin (:mod:`actors._admin.groups`) decides the limits written here.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import signal
import time
from pathlib import Path

import attrs

from plugin_host.errors import ConfigError

__all__ = ["Support", "SandboxGroup", "support", "seal", "CPU_PERIOD_US"]

CPU_PERIOD_US = 100_000
"""The CPU quota's period (the kernel's default)."""

_ROOT = Path("/sys/fs/cgroup")
_REQUIRED = ("memory", "pids")
_OPTIONAL = ("cpu", "cpuacct", "freezer")
_KILL_ROUNDS = 200
"""Rounds of "kill every pid in the group" before :meth:`SandboxGroup.kill` gives up (each round ends
every process the round before saw; only a group forking faster than it is killed needs more)."""


@attrs.frozen
class Support:
    """Where sandbox groups go on this machine (from :func:`support`)."""

    bases: dict[str, Path]
    """Controller -> the directory of this process's own group in that hierarchy (groups are made below)."""


def support(root: Path = _ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> Support | str:
    """Where this process can make sandbox groups, or why it cannot (a sentence for the log)."""
    if os.geteuid() != 0:
        return f"control groups need root (the host runs as uid {os.geteuid()})"
    try:
        own = _own_groups(proc_cgroup.read_text(encoding="ascii"))
    except OSError as exc:
        return f"cannot read {proc_cgroup}: {exc.strerror}"
    bases = {}
    for controller in _REQUIRED + _OPTIONAL:
        base = root / controller / own.get(controller, "/").lstrip("/")
        if controller in own and (base / "cgroup.procs").exists() and os.access(base, os.W_OK):
            bases[controller] = base
        elif controller in _REQUIRED:
            if (root / "cgroup.controllers").exists() or (root / "unified" / "cgroup.controllers").exists():
                return f"no writable cgroup v1 {controller!r} hierarchy (cgroup v2 delegation is not supported yet)"
            return f"no writable cgroup v1 {controller!r} hierarchy under {root}"
    return Support(bases)


def _own_groups(text: str) -> dict[str, str]:
    """Controller -> this process's group path, from ``/proc/self/cgroup``."""
    groups = {}
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            if controller:
                groups[controller] = path
    return groups


@attrs.define
class SandboxGroup:
    """One sandbox's control group: a directory in each controller's hierarchy."""

    dirs: dict[str, Path]
    """Controller -> this group's directory."""

    @classmethod
    def create(cls, support: Support, host: str, sandbox_id: str) -> SandboxGroup:
        """Make the group of ``sandbox_id`` (under the host's group ``plugin-host-<host>``), empty and unlimited.

        The directory name is a digest of the id (ids are free text).  A group left by a host that
        died is emptied, its limits lifted, and reused.

        Raises:
            ConfigError: the group cannot be made (``field="limits"``); nothing is left behind.  Or a group
                left under this id still holds processes :meth:`kill` cannot end; it is left as it was.
        """
        group = cls.existing(support, host, sandbox_id)
        try:
            for directory in group.dirs.values():
                directory.mkdir(parents=True, exist_ok=True)
            left = group.kill()
            group.set_memory_max(None)
            group.set_pids_max(None)
            if "cpu" in group.dirs:
                group.set_cpu_quota(None)
        except OSError as exc:
            group.remove()
            raise ConfigError(
                f"cannot make the control group of sandbox {sandbox_id!r}: {exc.strerror or exc} ({exc.filename})",
                field="limits",
            ) from None
        if left:  # an earlier sandbox's processes the kill cannot end: not this sandbox's group to share
            raise ConfigError(
                f"the control group of sandbox {sandbox_id!r} still holds processes {sorted(left)} of an earlier "
                "sandbox under this id that cannot be killed",
                field="limits",
            )
        return group

    def paths(self) -> dict[str, str]:
        """Controller -> directory, as strings (what travels in a message)."""
        return {controller: str(directory) for controller, directory in self.dirs.items()}

    @classmethod
    def at(cls, paths: dict[str, str]) -> SandboxGroup:
        """The group whose directories :meth:`paths` gave."""
        return cls({controller: Path(directory) for controller, directory in paths.items()})

    @classmethod
    def existing(cls, support: Support, host: str, sandbox_id: str) -> SandboxGroup:
        """The group :meth:`create` makes for ``sandbox_id``, made or not (to empty and remove it)."""
        name = "sb-" + hashlib.sha256(sandbox_id.encode("utf-8", "surrogatepass")).hexdigest()[:24]
        return cls({c: base / f"plugin-host-{host}" / name for c, base in support.bases.items()})

    def set_memory_max(self, megabytes: float | None) -> None:
        """At most ``megabytes`` MiB charged to the whole group (its processes together); None: no limit."""
        value = "-1" if megabytes is None else str(int(megabytes * 2**20))
        memory = self.dirs["memory"] / "memory.limit_in_bytes"
        swap = self.dirs["memory"] / "memory.memsw.limit_in_bytes"
        if not swap.exists():
            memory.write_text(value)
            return
        # With swap accounting, no swap past the limit either.  The kernel keeps memory <= memory+swap at
        # every step: raising, memory+swap goes first; lowering, memory does.
        try:
            memory.write_text(value)
            swap.write_text(value)
        except OSError:
            swap.write_text(value)
            memory.write_text(value)

    def set_pids_max(self, maximum: int | None) -> None:
        """At most ``maximum`` tasks (processes and threads) in the group at once; None: no limit."""
        (self.dirs["pids"] / "pids.max").write_text("max" if maximum is None else str(maximum))

    def set_cpu_quota(self, cpus: float | None) -> None:
        """At most ``cpus`` CPUs' worth of time per period for the whole group; None: no quota.

        Raises:
            OSError: no ``cpu`` hierarchy on this machine.
        """
        if "cpu" not in self.dirs:
            raise FileNotFoundError(2, "no cgroup v1 cpu hierarchy", "cpu")
        quota = -1 if cpus is None else max(1000, int(cpus * CPU_PERIOD_US))
        (self.dirs["cpu"] / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
        (self.dirs["cpu"] / "cpu.cfs_quota_us").write_text(str(quota))

    def join(self, pid: int = 0) -> None:
        """Move ``pid`` (0: this process) into the group, in every hierarchy."""
        for directory in self.dirs.values():
            (directory / "cgroup.procs").write_text(str(pid or os.getpid()))

    def pids(self) -> set[int]:
        """Every process in the group now (an empty set once it is gone)."""
        found: set[int] = set()
        for directory in self.dirs.values():
            try:
                found.update(int(p) for p in (directory / "cgroup.procs").read_text(encoding="ascii").split())
            except OSError:
                pass
        return found

    def memory_bytes(self) -> int:
        """Memory charged to the group now (resident pages and page cache)."""
        return _read_int(self.dirs["memory"] / "memory.usage_in_bytes")

    def memory_limit_bytes(self) -> int:
        """The group's memory limit now (the kernel's "no limit" is a huge number)."""
        return _read_int(self.dirs["memory"] / "memory.limit_in_bytes")

    def cpu_seconds(self) -> float | None:
        """CPU time the group's processes have used, the dead ones included (None: no ``cpuacct``)."""
        if "cpuacct" not in self.dirs:
            return None
        return _read_int(self.dirs["cpuacct"] / "cpuacct.usage") / 1e9

    def reset_cpu(self) -> None:
        """Count the group's CPU time from zero again (a new incarnation of the sandbox: a budget of its own)."""
        if "cpuacct" in self.dirs:
            (self.dirs["cpuacct"] / "cpuacct.usage").write_text("0")

    def oom_kills(self) -> int:
        """Processes the kernel has killed in this group for its memory limit."""
        try:
            text = (self.dirs["memory"] / "memory.oom_control").read_text(encoding="ascii")
        except OSError:
            return 0
        fields = dict(line.split() for line in text.splitlines() if len(line.split()) == 2)
        return int(fields.get("oom_kill", 0))

    def kill(self, rounds: int = _KILL_ROUNDS) -> set[int]:
        """SIGKILL every process in the group until none is left (frozen first where a freezer is mounted,
        so that a process forking in a loop cannot outrun the kill); returns the pids still in it after
        ``rounds`` rounds (empty: the group is empty; not: a process the kill cannot end, such
        as one frozen in another freezer group, or one in uninterruptible sleep).

        Each round reads the group's pids again and signals each through a pidfd opened before a second
        read: a pid that ended and was reused by a process outside the group between the reads is not
        listed by the second, and one reused after its pidfd was opened is not the pidfd's process.  So a
        kill never hits a process outside the group, with or without a freezer."""
        for _ in range(rounds):
            pids = self.pids()
            if not pids:
                return set()
            frozen = self._freeze("FROZEN")
            self._kill_listed(pids)
            if frozen:
                self._freeze("THAWED")  # a frozen process dies once thawed
            time.sleep(0.001)  # let the kernel take them off the list
        return self.pids()

    def _kill_listed(self, pids: set[int]) -> None:
        """SIGKILL those of ``pids`` still in the group once a pidfd holds each (see :meth:`kill`)."""
        handles = {}
        for pid in pids:
            try:
                handles[pid] = os.pidfd_open(pid)
            except OSError:  # gone already
                pass
        try:
            still = self.pids()
            for pid, handle in handles.items():
                if pid not in still:
                    continue
                try:
                    signal.pidfd_send_signal(handle, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        finally:
            for handle in handles.values():
                os.close(handle)

    def _freeze(self, state: str) -> bool:
        freezer = self.dirs.get("freezer")
        if freezer is None:
            return False
        try:
            (freezer / "freezer.state").write_text(state)
        except OSError:
            return False
        return True

    def remove(self, rounds: int = _KILL_ROUNDS) -> set[int]:
        """Kill what is left (``rounds`` of :meth:`kill`) and remove the group's directories (and the host's,
        once empty); returns the pids the kill could not end (empty: removed).  A group that still holds
        processes is left in place, directories and all, for the caller to report and to try again."""
        left = self.kill(rounds)
        if left:
            return left
        for directory in self.dirs.values():
            for path in (directory, directory.parent):
                try:
                    path.rmdir()
                except OSError:
                    break  # still holds other sandboxes' groups, or gone already
        return set()


_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
_MS_REMOUNT, _MS_BIND = 0x20, 0x1000


def seal() -> list[str]:
    """Make every cgroup mount read-only for this process and all it forks from now on; returns the mount
    points made read-only.

    Call it in the sandbox root's private mount namespace (:func:`actors._process.namespace.enter`: the
    host's mounts are untouched), before dropping capabilities (it needs ``CAP_SYS_ADMIN``).

    Raises:
        OSError: the kernel refused the namespace or a remount.
    """
    libc = ctypes.CDLL(None, use_errno=True)
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
        _check(libc.mount(None, _unescape(point).encode(), None, flags, None))
        sealed.append(point)
    return sealed


def _unescape(point: str) -> str:
    """A mount point as ``/proc/self/mountinfo`` writes it (octal escapes for blanks) -> the path."""
    return point.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def _check(result: int) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text(encoding="ascii").split()[0])
    except (OSError, ValueError, IndexError):
        return 0
