"""The admin's control groups: one per local sandbox (:class:`Groups`), made before its root starts.

The admin keeps its privileges, so it makes, limits, empties and removes the groups; a root only moves
itself in (before it drops its capabilities).  Every group of a host is below ``plugin-host-<key>``, the
key a digest of the host's ``state_dir`` (one host's alone, see :mod:`plugin_host._store.statedir`): two
hosts never share groups, and a host killed with SIGKILL leaves groups the next host on its ``state_dir``
empties and removes as it boots.

Limits, from the sandbox's :class:`~plugin_host.config.ResourceLimits` (see the README's limits paragraph):

* ``max_cpus``: the CPU quota (v1 ``cpu.cfs_quota_us``, v2 ``cpu.max``) = ``max_cpus`` x the 100 ms period;
* ``pids.max``: ``max_tasks``, else (``max_actors`` + 1) x :data:`TASKS_PER_PROCESS` when ``max_actors`` is
  set, else none;
* memory: no group limit until the tree runs, then the group's charge at that moment plus
  ``max_memory_mb`` plus :data:`MEMORY_SLACK_MB` (a backstop behind the monitor, which enforces
  ``max_memory_mb`` itself and reports the breach; the charge holds the runtime's own footprint, about
  10 MiB per process here, which ``max_memory_mb`` does not count); a kill of the kernel's OOM killer
  at it is the monitor's to report (``limit_breached``, from the group's v1 ``memory.oom_control`` or v2
  ``memory.events``);
* ``max_cpu_seconds``: the group's CPU time, dead processes included, is the monitor's to check.

A group the kill cannot empty (a process of it frozen in another v1 freezer group, or stuck in the kernel)
is not removed as if it were: :meth:`Groups.remove` logs its pids at error level and keeps it on a list
that :meth:`Groups.retry` (the admin's tick) empties and removes once it can.  The destroy or close that
let it go still returns (the sandbox's record is gone, its id free), but a sandbox created again under
that id while the group still holds those processes fails its create with ``ConfigError`` rather than
share the group.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from plugin_host.config import HostConfig, ResourceLimits
from plugin_host.errors import ConfigError
from plugin_host.lowlevel import cgroup

from .._base import log

__all__ = ["Groups", "MEMORY_SLACK_MB", "TASKS_PER_PROCESS", "host_key", "tasks_for"]

TASKS_PER_PROCESS = 64
"""Tasks (a process and its threads) allowed per process of a sandbox when ``pids.max`` is derived from
``max_actors``: the runtime uses 1 (a root) or 2 (a worker with a CPU budget watchdog) of them, the rest
are for the plugin's own threads."""

MEMORY_SLACK_MB = 64
"""MiB the group's memory limit leaves above the monitor's budget: what the monitor's measure (resident
growth) does not see, such as kernel memory and page cache, and a margin so the monitor (which names the
actor and reports the breach) acts first."""


def host_key(config: HostConfig) -> str:
    """The name part of a host's groups: a digest of its ``state_dir`` (resolved: one path, one host)."""
    return hashlib.sha256(str(Path(config.state_dir).resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:16]


def tasks_for(limits: ResourceLimits) -> int | None:
    """The sandbox's ``pids.max``: ``max_tasks``, else derived from ``max_actors`` (the root counted), else None."""
    if limits.max_tasks is not None:
        return limits.max_tasks
    if limits.max_actors is not None:
        return (limits.max_actors + 1) * TASKS_PER_PROCESS
    return None


class Groups:
    """Whether this host makes control groups, and making, limiting and ending them."""

    def __init__(self) -> None:
        self.support: cgroup.Support | None = None
        """Where groups go; None: this host makes none (off, unsupported, or not booted yet)."""
        self.key = ""
        self.reason = "control groups are not set up (the host has not booted)"
        """Why there are none (for a sandbox asking for a limit only a group applies)."""
        self.stuck: dict[str, cgroup.SandboxGroup] = {}
        """Groups whose processes the kill could not end, by :func:`_name`: retried on each tick."""

    def boot(self, config: HostConfig, multiprocess: bool) -> None:
        """Decide from ``config.control_groups``, empty what a killed host left, and warn once when falling back.

        Raises:
            ConfigError: ``"required"`` where groups cannot be made (``field="control_groups"``).
        """
        self.key = host_key(config)
        found = cgroup.support(config.cgroup_root) if multiprocess else "the actor system runs in one process"
        if config.control_groups == "off":
            self.reason = "control_groups is 'off'"
            return
        if isinstance(found, str):
            self.reason = f"control groups cannot be made here: {found}"
            if config.control_groups == "required":
                raise ConfigError(f"control_groups is 'required', but {found}", field="control_groups")
            log.warning("%s; sandboxes get rlimits and the monitor only", self.reason)
            return
        self.support = found
        self._remove_left_over()

    def _remove_left_over(self) -> None:
        """Empty and remove the groups an earlier host on this ``state_dir`` left (it was killed)."""
        assert self.support is not None
        names: set[str] = set()
        for base in self.support.bases.values():
            left = base / f"plugin-host-{self.key}"
            if left.is_dir():
                names.update(child.name for child in left.iterdir() if child.is_dir())
        for name in names:
            self.remove(cgroup.SandboxGroup.named(self.support, self.key, name), f"left by an earlier host ({name})")
        for base in self.support.bases.values():
            try:
                (base / f"plugin-host-{self.key}").rmdir()
            except OSError:
                pass

    def check(self, limits: ResourceLimits, local: bool) -> None:
        """Whether a sandbox with ``limits`` can have them here (``local``: its root runs on this system).

        Raises:
            ConfigError: ``max_cpus`` without a group (or a ``cpu`` hierarchy) to apply it.
        """
        if limits.max_cpus is None:
            return
        if not local:
            raise ConfigError("max_cpus needs a control group: a sandbox on another system has none", field="max_cpus")
        if self.support is None:
            raise ConfigError(f"max_cpus needs a control group: {self.reason}", field="max_cpus")
        if "cpu" not in self.support.controllers:
            raise ConfigError("max_cpus needs the 'cpu' controller, not available here", field="max_cpus")

    def make(self, sandbox_id: str, limits: ResourceLimits) -> cgroup.SandboxGroup | None:
        """The sandbox's group, made and limited (None: this host makes none).

        Raises:
            ConfigError: it cannot be made or limited; nothing is left behind.
        """
        if self.support is None:
            return None
        group = cgroup.SandboxGroup.create(self.support, self.key, sandbox_id)
        self.stuck.pop(_name(group), None)  # emptied after all: this sandbox's now, never removed by a retry
        try:
            group.set_pids_max(tasks_for(limits))
            if limits.max_cpus is not None:
                group.set_cpu_quota(limits.max_cpus)
        except OSError as exc:
            group.remove()
            raise ConfigError(
                f"cannot limit the control group of sandbox {sandbox_id!r}: {exc.strerror or exc}", field="limits"
            ) from None
        return group

    @staticmethod
    def started(group: cgroup.SandboxGroup, limits: ResourceLimits) -> None:
        """The sandbox's tree runs: its memory backstop is its charge now plus ``max_memory_mb`` plus the slack."""
        if limits.max_memory_mb is None:
            return
        charge = group.memory_bytes() / 2**20
        try:
            group.set_memory_max(charge + limits.max_memory_mb + MEMORY_SLACK_MB)
        except OSError as exc:  # the group is gone (the sandbox ended meanwhile): nothing to limit
            log.warning("cannot set the memory limit of a sandbox's control group: %s", exc)

    def remove(self, group: cgroup.SandboxGroup, label: str) -> None:
        """Empty and remove ``group`` (of ``label``, for the log); one the kill cannot empty is logged at error
        level with its pids and kept for :meth:`retry`."""
        left = group.remove()
        if not left:
            self.stuck.pop(_name(group), None)
            return
        if _name(group) not in self.stuck:
            log.error(
                "the control group of sandbox %s still holds processes %s after the kill: they live on; it is "
                "kept (%s) and killed again on each tick until it is empty",
                label,
                sorted(left),
                _name(group),
            )
        self.stuck[_name(group)] = group

    def retry(self) -> None:
        """Kill and remove again each group the kill could not empty (the admin's tick: one round each, so that
        a process stuck for long costs the admin a few system calls a tick); say when one is gone."""
        for name, group in list(self.stuck.items()):
            if not group.remove(rounds=1):
                del self.stuck[name]
                log.warning("the control group %s is empty at last and removed", name)


def _name(group: cgroup.SandboxGroup) -> str:
    """A group's key in :attr:`Groups.stuck`."""
    return group.label
