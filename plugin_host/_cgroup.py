"""A control group per sandbox (and per compile validation: :class:`CompileGroups`): limits for the whole
sandbox, and every process of it found and ended.  Shared by :mod:`actors` (the admin, its monitor, the
sandbox roots) and the compile validator, through :mod:`plugin_host.lowlevel`.

The host's side (the admin's process, which keeps its privileges) creates a sandbox's group with
:meth:`SandboxGroup.create` before the sandbox's root starts; the root moves itself in with
:meth:`SandboxGroup.join` before any plugin code runs, so every process forked below it is in the
group too, including one a plugin detaches with ``setsid`` or a double fork.  The group's memory
limit is for the whole sandbox (the kernel's OOM killer ends its largest process past it), its
pids limit stops a fork bomb, and :meth:`SandboxGroup.kill` ends every process in it (at once through
v2's ``cgroup.kill``, else freezing the group first where a freezer is, so that a process forking in a
loop cannot outrun it), and
says which processes it could not end (:meth:`SandboxGroup.remove` then keeps the group: the admin
logs them at error level and tries again on each tick, see :mod:`actors._admin.groups`).

Two kinds, one interface (:class:`SandboxGroup`), chosen by :func:`support`:

* cgroup v1 (:class:`V1Group`), with its ``memory`` and ``pids`` hierarchies (``cpu``, ``cpuacct`` and
  ``freezer`` are used when mounted): a directory in each, below this process's own group there.  A
  hybrid machine (v1 controllers, an empty v2 hierarchy at ``/sys/fs/cgroup/unified``) is v1.
* cgroup v2 (:class:`V2Group`), where ``/sys/fs/cgroup`` is the v2 hierarchy (``cgroup.controllers`` at
  its root): ``plugin-host-<host>`` directly under the root (the one cgroup the "no internal processes"
  rule exempts: as root, no delegated subtree is needed), holding no process and enabling ``memory``,
  ``pids`` (and ``cpu`` where offered) for its children, and one leaf ``sb-<digest>`` per sandbox.  Its
  CPU count cannot be reset: a baseline taken at each start of the root travels with the group.

:func:`support` says where groups go, or why they cannot be made (not root, a read-only
``/sys/fs/cgroup``, a hierarchy or controller missing, a v2 root that holds processes); the caller then
falls back to rlimits and the monitor and says so once.

A group alone does not stop a process running as uid 0 from writing its pid into another group's
``cgroup.procs`` (the files belong to uid 0, and dropping capabilities does not change that): it
could leave its own group (for the host's root group, say) or write another group's limit files
(checked here: a process with no capabilities left, as a sandbox's are, lowered another group's
``pids.max`` and moved itself into the root group).  So the root, once in its group and before it
drops its capabilities, calls :func:`seal` in its mount namespace of its own
(:mod:`plugin_host._namespace`; the compile validator does the same): every cgroup mount
read-only there, inherited by every process of the sandbox, which can no longer mount or remount
anything.  Where that fails (no ``CAP_SYS_ADMIN``, a seccomp filter), the root logs why and
the sandbox runs unsealed.  The admin (:mod:`actors._admin.groups`) decides the limits written here.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

import attrs

from . import _namespace
from .errors import ConfigError

__all__ = [
    "kill_still_listed",
    "Support",
    "SandboxGroup",
    "V1Group",
    "V2Group",
    "CompileGroups",
    "support",
    "seal",
    "CPU_PERIOD_US",
    "UNIFIED",
    "CPU_BASE",
    "COMPILE_HOST",
    "COMPILE_TASKS",
    "COMPILE_MEMORY_SLACK_MB",
]

CPU_PERIOD_US = 100_000
"""The CPU quota's period (the kernel's default)."""

_ROOT = Path("/sys/fs/cgroup")
_REQUIRED = ("memory", "pids")
_OPTIONAL = ("cpu", "cpuacct", "freezer")
_V2_CONTROLLERS = ("memory", "pids", "cpu")
"""The cgroup v2 controllers a host enables for its groups (``cpu`` where offered: for ``max_cpus``)."""

UNIFIED = "unified"
"""The key of a cgroup v2 group's one directory in :attr:`SandboxGroup.dirs` and :meth:`SandboxGroup.paths`
(what marks a group as v2 in a message)."""
CPU_BASE = "cpu_base_usec"
"""The key of a v2 group's CPU baseline in :meth:`SandboxGroup.paths` (see :attr:`V2Group.cpu_base_usec`)."""
_KILL_ROUNDS = 200
"""Rounds of "kill every pid in the group" before :meth:`SandboxGroup.kill` gives up (each round ends
every process the round before saw; only a group forking faster than it is killed needs more)."""


@attrs.frozen
class Support:
    """Where sandbox groups go on this machine (from :func:`support`), and with which controllers."""

    bases: dict[str, Path]
    """cgroup v1: controller -> the directory of this process's own group in that hierarchy; cgroup v2:
    ``{"unified": the hierarchy's root}``.  Groups are made below, in ``plugin-host-<host>``."""
    controllers: frozenset[str] = attrs.field()
    """The controllers the groups have (v1: the hierarchies in :attr:`bases`; v2: those enabled for them)."""

    @controllers.default
    def _hierarchies(self) -> frozenset[str]:
        return frozenset(self.bases)

    @property
    def version(self) -> int:
        """1 or 2: the cgroup version the groups are made in."""
        return 2 if UNIFIED in self.bases else 1


def support(root: Path = _ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> Support | str:
    """Where this process can make sandbox groups, or why it cannot (a sentence for the log).

    A pure cgroup v2 machine (``cgroup.controllers`` at ``root``) gets v2 groups; any other, a hybrid one
    with an empty v2 hierarchy at ``root/unified`` included, v1 groups."""
    if os.geteuid() != 0:
        return f"control groups need root (the host runs as uid {os.geteuid()})"
    try:
        text = proc_cgroup.read_text(encoding="ascii")
    except OSError as exc:
        return f"cannot read {proc_cgroup}: {exc.strerror}"
    if (root / "cgroup.controllers").exists():
        return _support_v2(root, text)
    own = _own_groups(text)
    bases = {}
    for controller in _REQUIRED + _OPTIONAL:
        base = root / controller / own.get(controller, "/").lstrip("/")
        if controller in own and (base / "cgroup.procs").exists() and os.access(base, os.W_OK):
            bases[controller] = base
        elif controller in _REQUIRED:
            return f"no writable cgroup v1 {controller!r} hierarchy under {root}"
    return Support(bases)


def _support_v2(root: Path, proc_cgroup: str) -> Support | str:
    """Groups directly under the v2 root (exempt from the "no internal processes" rule), with ``memory``
    and ``pids`` (``cpu`` where offered) enabled for its children; or why not."""
    own = next((line[3:] for line in proc_cgroup.splitlines() if line.startswith("0::")), None)
    if own is None:
        return f"this process is in no cgroup v2 group, though {root} is a cgroup v2 hierarchy"
    offered = (root / "cgroup.controllers").read_text(encoding="ascii").split()
    missing = [controller for controller in _REQUIRED if controller not in offered]
    if missing:
        return f"the cgroup v2 hierarchy at {root} offers no {' nor '.join(map(repr, missing))} controller"
    if not os.access(root, os.W_OK):
        return f"the cgroup v2 hierarchy at {root} is not writable"
    wanted = [c for c in _V2_CONTROLLERS if c in offered]
    try:
        _enable(root, wanted)
    except OSError as exc:  # EBUSY: a namespace's root that holds processes (the host's own group is {own})
        return (
            f"cannot enable the {'/'.join(wanted)} controllers for the children of {root} ({exc.strerror}; this "
            f"process is in {own}: the cgroup v2 root of a cgroup namespace that holds processes cannot have them)"
        )
    return Support({UNIFIED: root}, frozenset(wanted))


def _enable(parent: Path, controllers: list[str]) -> None:
    """Enable ``controllers`` for the children of ``parent`` (cgroup v2), those not enabled yet."""
    subtree = parent / "cgroup.subtree_control"
    enabled = {name.lstrip("+") for name in subtree.read_text(encoding="ascii").split()}
    wanted = [controller for controller in controllers if controller not in enabled]
    if wanted:
        subtree.write_text(" ".join(f"+{controller}" for controller in wanted))


def _own_groups(text: str) -> dict[str, str]:
    """Controller -> this process's group path, from ``/proc/self/cgroup`` (cgroup v1 lines)."""
    groups = {}
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            if controller:
                groups[controller] = path
    return groups


def kill_still_listed(pids: Iterable[int], listing: Callable[[], set[int]]) -> None:
    """SIGKILL those of ``pids`` that ``listing()`` still names once a pidfd holds each: a pid that ended and
    was reused by another process between the two readings is not named by the second, and one reused after
    its pidfd was opened is not the pidfd's process; so the kill never hits a process ``listing`` did not
    name (a group's members, a process's children).  One gone meanwhile, or not ours to signal, is skipped."""
    handles = {}
    for pid in pids:
        with contextlib.suppress(OSError):  # gone already
            handles[pid] = os.pidfd_open(pid)
    try:
        still = listing()
        for pid, handle in handles.items():
            if pid in still:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    signal.pidfd_send_signal(handle, signal.SIGKILL)
    finally:
        for handle in handles.values():
            os.close(handle)


@attrs.define
class SandboxGroup(abc.ABC):
    """One sandbox's control group: what callers use, whichever cgroup version it lives in
    (:class:`V1Group`, :class:`V2Group`, chosen by :class:`Support` or by what :meth:`paths` gave)."""

    dirs: dict[str, Path]
    """v1: controller -> this group's directory in its hierarchy; v2: ``{"unified": its one directory}``."""

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
            group._make(support.controllers)
            left = group.kill()
            if "memory" in support.controllers:
                group.set_memory_max(None)
            if "pids" in support.controllers:
                group.set_pids_max(None)
            if "cpu" in support.controllers:
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
        """Controller -> directory, as strings (what travels in a message; :meth:`at` reads it back)."""
        return {controller: str(directory) for controller, directory in self.dirs.items()}

    @classmethod
    def at(cls, paths: dict[str, str]) -> SandboxGroup:
        """The group whose directories :meth:`paths` gave (a ``"unified"`` key: a cgroup v2 group)."""
        if UNIFIED in paths:
            return V2Group({UNIFIED: Path(paths[UNIFIED])}, int(paths.get(CPU_BASE, "0")))
        return V1Group({controller: Path(directory) for controller, directory in paths.items()})

    @classmethod
    def existing(cls, support: Support, host: str, sandbox_id: str) -> SandboxGroup:
        """The group :meth:`create` makes for ``sandbox_id``, made or not (to empty and remove it)."""
        return cls.named(
            support, host, "sb-" + hashlib.sha256(sandbox_id.encode("utf-8", "surrogatepass")).hexdigest()[:24]
        )

    @classmethod
    def named(cls, support: Support, host: str, name: str) -> SandboxGroup:
        """The group directory ``name`` below the host's group (one a host that died left, say)."""
        dirs = {c: base / f"plugin-host-{host}" / name for c, base in support.bases.items()}
        return V2Group(dirs) if support.version == 2 else V1Group(dirs)

    @property
    def label(self) -> str:
        """One directory that names the group (for the log and as a key)."""
        return str(self.dirs.get("memory") or self.dirs[UNIFIED])

    @abc.abstractmethod
    def _make(self, controllers: frozenset[str]) -> None:
        """Make the group's directories (and the host's above them)."""

    @abc.abstractmethod
    def set_memory_max(self, megabytes: float | None) -> None:
        """At most ``megabytes`` MiB charged to the whole group (its processes together), no swap past it;
        None: no limit."""

    @abc.abstractmethod
    def set_pids_max(self, maximum: int | None) -> None:
        """At most ``maximum`` tasks (processes and threads) in the group at once; None: no limit."""

    @abc.abstractmethod
    def set_cpu_quota(self, cpus: float | None) -> None:
        """At most ``cpus`` CPUs' worth of time per period for the whole group; None: no quota.

        Raises:
            OSError: no ``cpu`` controller for the group on this machine.
        """

    @abc.abstractmethod
    def memory_bytes(self) -> int:
        """Memory charged to the group now (resident pages and page cache)."""

    @abc.abstractmethod
    def memory_limit_bytes(self) -> int:
        """The group's memory limit now (no limit: a huge number)."""

    @abc.abstractmethod
    def cpu_seconds(self) -> float | None:
        """CPU time the group's processes have used since :meth:`reset_cpu`, the dead ones included (None: not
        counted here)."""

    @abc.abstractmethod
    def reset_cpu(self) -> None:
        """Count the group's CPU time from zero again (a new incarnation of the sandbox: a budget of its own)."""

    @abc.abstractmethod
    def oom_kills(self) -> int:
        """Processes the kernel has killed in this group for its memory limit."""

    @abc.abstractmethod
    def _kill_round(self, pids: set[int]) -> None:
        """One round of :meth:`kill`: end ``pids`` (listed in the group just now) and what forks meanwhile."""

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

    def kill(self, rounds: int = _KILL_ROUNDS) -> set[int]:
        """SIGKILL every process in the group until none is left (at once with v2's ``cgroup.kill``, else
        frozen first where a freezer is, so that a process forking in a loop cannot outrun the kill); returns
        the pids still in it after ``rounds`` rounds (empty: the group is empty; not: a process the kill
        cannot end, such as one frozen in another v1 freezer group, or one in uninterruptible sleep).

        A pid is signalled only through a pidfd opened before a second read of the group (see
        :meth:`_kill_listed`): a kill never hits a process outside the group, with or without a freezer."""
        for _ in range(rounds):
            pids = self.pids()
            if not pids:
                return set()
            self._kill_round(pids)
            time.sleep(0.001)  # let the kernel take them off the list
        return self.pids()

    def _kill_listed(self, pids: set[int]) -> None:
        """SIGKILL those of ``pids`` still in the group (see :func:`kill_still_listed`)."""
        kill_still_listed(pids, self.pids)

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


@attrs.define
class V1Group(SandboxGroup):
    """A sandbox's group in cgroup v1: a directory in each controller's hierarchy (``memory`` and ``pids``;
    ``cpu``, ``cpuacct`` and ``freezer`` where mounted)."""

    def _make(self, controllers: frozenset[str]) -> None:
        for directory in self.dirs.values():
            directory.mkdir(parents=True, exist_ok=True)

    def set_memory_max(self, megabytes: float | None) -> None:
        """``memory.limit_in_bytes`` and, with swap accounting, ``memory.memsw.limit_in_bytes`` (see the base)."""
        value = "-1" if megabytes is None else str(int(megabytes * 2**20))
        memory = self.dirs["memory"] / "memory.limit_in_bytes"
        swap = self.dirs["memory"] / "memory.memsw.limit_in_bytes"
        if not swap.exists():
            memory.write_text(value)
            return
        # The kernel keeps memory <= memory+swap at every step: raising, memory+swap goes first; lowering, memory does.
        try:
            memory.write_text(value)
            swap.write_text(value)
        except OSError:
            swap.write_text(value)
            memory.write_text(value)

    def set_pids_max(self, maximum: int | None) -> None:
        """``pids.max`` (see the base)."""
        (self.dirs["pids"] / "pids.max").write_text("max" if maximum is None else str(maximum))

    def set_cpu_quota(self, cpus: float | None) -> None:
        """``cpu.cfs_period_us`` and ``cpu.cfs_quota_us`` (see the base)."""
        if "cpu" not in self.dirs:
            raise FileNotFoundError(2, "no cgroup v1 cpu hierarchy", "cpu")
        quota = -1 if cpus is None else _quota_us(cpus)
        (self.dirs["cpu"] / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
        (self.dirs["cpu"] / "cpu.cfs_quota_us").write_text(str(quota))

    def memory_bytes(self) -> int:
        """``memory.usage_in_bytes``."""
        return _read_int(self.dirs["memory"] / "memory.usage_in_bytes")

    def memory_limit_bytes(self) -> int:
        """``memory.limit_in_bytes``."""
        return _read_int(self.dirs["memory"] / "memory.limit_in_bytes")

    def cpu_seconds(self) -> float | None:
        """``cpuacct.usage`` (None: no ``cpuacct`` hierarchy)."""
        if "cpuacct" not in self.dirs:
            return None
        return _read_int(self.dirs["cpuacct"] / "cpuacct.usage") / 1e9

    def reset_cpu(self) -> None:
        """``cpuacct.usage`` set to 0."""
        if "cpuacct" in self.dirs:
            (self.dirs["cpuacct"] / "cpuacct.usage").write_text("0")

    def oom_kills(self) -> int:
        """``oom_kill`` of ``memory.oom_control``."""
        return _read_field(self.dirs["memory"] / "memory.oom_control", "oom_kill") or 0

    def _kill_round(self, pids: set[int]) -> None:
        frozen = self._freeze("FROZEN")
        self._kill_listed(pids)
        if frozen:
            self._freeze("THAWED")  # a frozen process dies once thawed

    def _freeze(self, state: str) -> bool:
        freezer = self.dirs.get("freezer")
        if freezer is None:
            return False
        try:
            (freezer / "freezer.state").write_text(state)
        except OSError:
            return False
        return True


@attrs.define
class V2Group(SandboxGroup):
    """A sandbox's group in cgroup v2: one leaf directory (processes only in leaves: "no internal processes"),
    below the host's ``plugin-host-<host>``, which holds none and enables the controllers for it."""

    cpu_base_usec: int = 0
    """``usage_usec`` of ``cpu.stat`` at the last :meth:`reset_cpu` (v2's count cannot be reset): travels in
    :meth:`paths`, so the monitor counts from the same point as the admin."""

    @property
    def directory(self) -> Path:
        """The group's one directory."""
        return self.dirs[UNIFIED]

    def paths(self) -> dict[str, str]:
        """``{"unified": directory, "cpu_base_usec": the baseline}`` (see the base)."""
        return {UNIFIED: str(self.directory), CPU_BASE: str(self.cpu_base_usec)}

    def _make(self, controllers: frozenset[str]) -> None:
        self.directory.parent.mkdir(exist_ok=True)
        _enable(self.directory.parent, [c for c in _V2_CONTROLLERS if c in controllers])
        self.directory.mkdir(exist_ok=True)

    def set_memory_max(self, megabytes: float | None) -> None:
        """``memory.max`` and, with swap accounting, ``memory.swap.max`` 0: no swap (see the base)."""
        (self.directory / "memory.max").write_text("max" if megabytes is None else str(int(megabytes * 2**20)))
        swap = self.directory / "memory.swap.max"
        if swap.exists():
            swap.write_text("max" if megabytes is None else "0")

    def set_pids_max(self, maximum: int | None) -> None:
        """``pids.max`` (see the base)."""
        (self.directory / "pids.max").write_text("max" if maximum is None else str(maximum))

    def set_cpu_quota(self, cpus: float | None) -> None:
        """``cpu.max``: ``"<quota> <period>"`` or ``"max <period>"`` (see the base)."""
        limit = self.directory / "cpu.max"
        if not limit.exists():
            raise FileNotFoundError(2, "no cgroup v2 cpu controller for the group", str(limit))
        limit.write_text(f"{'max' if cpus is None else _quota_us(cpus)} {CPU_PERIOD_US}")

    def memory_bytes(self) -> int:
        """``memory.current``."""
        return _read_int(self.directory / "memory.current")

    def memory_limit_bytes(self) -> int:
        """``memory.max`` (``max``: :data:`sys.maxsize`)."""
        try:
            text = (self.directory / "memory.max").read_text(encoding="ascii").strip()
        except OSError:
            return 0
        return sys.maxsize if text == "max" else _read_int(self.directory / "memory.max")

    def cpu_seconds(self) -> float | None:
        """``usage_usec`` of ``cpu.stat`` past :attr:`cpu_base_usec` (None: unreadable)."""
        usage = _read_field(self.directory / "cpu.stat", "usage_usec")
        return None if usage is None else max(usage - self.cpu_base_usec, 0) / 1e6

    def reset_cpu(self) -> None:
        """:attr:`cpu_base_usec` set to ``usage_usec`` now."""
        self.cpu_base_usec = _read_field(self.directory / "cpu.stat", "usage_usec") or 0

    def oom_kills(self) -> int:
        """``oom_kill`` of ``memory.events``."""
        return _read_field(self.directory / "memory.events", "oom_kill") or 0

    def _kill_round(self, pids: set[int]) -> None:
        kill = self.directory / "cgroup.kill"
        if kill.exists():  # kernel >= 5.14: every process of the group, forking or not, at once
            kill.write_text("1")
            return
        freeze = self.directory / "cgroup.freeze"
        frozen = freeze.exists()
        if frozen:
            freeze.write_text("1")
        self._kill_listed(pids)
        if frozen:
            freeze.write_text("0")  # a frozen process dies once thawed


def _quota_us(cpus: float) -> int:
    """The CPU quota per :data:`CPU_PERIOD_US` for ``cpus`` CPUs (the kernel's least is 1 ms)."""
    return max(1000, int(cpus * CPU_PERIOD_US))


COMPILE_HOST = "compile"
"""The host part of the validations' parent group, ``plugin-host-compile`` (shared by every process that compiles)."""
COMPILE_TASKS = 64
"""A validation's ``pids.max`` when the sandbox sets no ``max_tasks``: what one sandbox process may have where
``pids.max`` derives from ``max_actors`` (``TASKS_PER_PROCESS`` of :mod:`actors._admin.groups`).  A validation
needs 2 (the process the host knows and pid 1 of its namespace); the rest is for top-level code's own threads
and children, far below what a fork loop would start."""
COMPILE_MEMORY_SLACK_MB = 64
"""MiB a validation's group allows above the sandbox's ``max_memory_mb`` (as a sandbox's group does: the
interpreter's own footprint, kernel memory, page cache)."""

_MAKE_ATTEMPTS = 3
"""Tries at making a validation's directories: the shared parent may be removed, once empty, by another
process's compile between this one's making the parent and the group below it."""


@attrs.frozen
class CompileGroups:
    """Where validations get a control group each (see :mod:`plugin_host._compile.validator`): below
    ``plugin-host-compile``, named ``compile-<pid>-<token>`` after the process that made it, so that the next one
    to make a group removes those whose maker is gone (a host killed mid-compile)."""

    support: Support

    @classmethod
    def decide(cls, mode: str, root: Path) -> CompileGroups | None:
        """Validation groups under ``root`` for ``control_groups`` ``mode`` (``"auto"``, ``"off"``, ``"required"``);
        None where there are none (off, or this machine cannot make them: validations then run as before).

        Raises:
            ConfigError: ``"required"`` where groups cannot be made (``field="control_groups"``).
        """
        if mode == "off":
            return None
        found = support(root)
        if isinstance(found, str):
            if mode == "required":
                raise ConfigError(f"control_groups is 'required', but {found}", field="control_groups")
            return None
        return cls(found)

    def make(self, max_tasks: int | None, max_memory_mb: float | None) -> SandboxGroup:
        """A new validation's group, limited: ``pids.max`` ``max_tasks`` (else :data:`COMPILE_TASKS`), memory
        ``max_memory_mb`` plus :data:`COMPILE_MEMORY_SLACK_MB` when given; groups of gone makers removed first.

        Raises:
            ConfigError: it cannot be made or limited (``field="control_groups"``); nothing is left behind.
        """
        self.remove_left_over()
        group = SandboxGroup.named(self.support, COMPILE_HOST, f"compile-{os.getpid()}-{os.urandom(6).hex()}")
        try:
            for attempt in range(_MAKE_ATTEMPTS):
                try:
                    group._make(self.support.controllers)
                    break
                except FileNotFoundError:  # another process removed the empty parent as this one made it
                    if attempt == _MAKE_ATTEMPTS - 1:
                        raise
            group.set_pids_max(max_tasks or COMPILE_TASKS)
            if max_memory_mb is not None:
                group.set_memory_max(max_memory_mb + COMPILE_MEMORY_SLACK_MB)
        except OSError as exc:
            group.remove()
            raise ConfigError(
                f"cannot make the control group of a validation: {exc.strerror or exc} ({exc.filename})",
                field="control_groups",
            ) from None
        return group

    def remove_left_over(self) -> None:
        """Kill and remove the validation groups whose maker process is gone."""
        names: set[str] = set()
        for base in self.support.bases.values():
            with contextlib.suppress(OSError):
                names.update(child.name for child in (base / f"plugin-host-{COMPILE_HOST}").iterdir())
        for name in names:
            maker = name.split("-")[1] if name.count("-") == 2 and name.startswith("compile-") else ""
            if maker.isdigit() and not _alive(int(maker)):
                SandboxGroup.named(self.support, COMPILE_HOST, name).remove()


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a reused pid counts as alive: its group is left for later, never killed)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


seal = _namespace.seal
"""Make every cgroup mount read-only for this process and all it forks (in its own mount namespace, before
dropping capabilities; shared with the compile validator: :mod:`plugin_host._namespace`)."""


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text(encoding="ascii").split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _read_field(path: Path, key: str) -> int | None:
    """The value of ``key`` in a flat keyed file (``key value`` lines: ``cpu.stat``, ``memory.events``); None:
    unreadable or not there."""
    try:
        text = path.read_text(encoding="ascii")
    except OSError:
        return None
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0] == key and fields[1].isdigit():
            return int(fields[1])
    return None
