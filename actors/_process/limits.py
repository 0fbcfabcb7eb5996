"""Resource limits inside a sandbox process: hard rlimits at start, and a CPU budget per callback.

Every process that runs plugin code (the sandbox root, which imports the plugin's modules,
its supervisors, its workers and the ``Host.run`` runner) calls :func:`apply_rlimits` before
any plugin code runs.  Each limit is set with soft = hard, so plugin code cannot lift it
(lowering a hard limit is final; raising one needs ``CAP_SYS_RESOURCE``, which the sandbox
root drops, see :mod:`actors._process.hardening`), and an inherited hard limit is never
raised: the smaller value wins.

``max_memory_mb`` becomes RLIMIT_AS: the process's size now plus the limit.  The root sets
it first, at its own size when it starts; everything else of the sandbox is forked from it
and inherits that hard limit, so the budget is one address-space ceiling measured from the
root's start: a worker's headroom is the limit minus what the root had grown by when it
forked (the plugin's module top-level code, run in the root, counts).  Past it an
allocation raises ``MemoryError`` in the plugin, which crashes the actor ("let it crash");
the monitor also kills a process whose resident memory grows past the limit.
:data:`MIN_MEMORY_MB` is the floor: below it a process could not take a message, start a
thread or fork, and ``create_sandbox`` fails with ``ConfigError``.

``max_cpu_seconds`` becomes RLIMIT_CPU: CPU used so far plus the limit, soft, and the hard
limit one second later.  At the soft limit the kernel sends SIGXCPU (made fatal at start, so
the crash names it); a plugin that ignores SIGXCPU is SIGKILLed by the kernel at the hard
limit.  It is lifetime CPU of each process, the runtime's own work in it (heartbeats,
routing) included, and a fork starts counting again (the kernel's rule; a sandbox-wide
budget needs a control group).

RLIMIT_CORE is 0 always: a core dump would hold the sandbox's key.

``call_cpu_budget_ms`` arms ITIMER_VIRTUAL around each callback: past the budget, the
callback gets ``LimitExceededError``; a callback that swallows it is killed.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import signal
from typing import Any, Iterator

from plugin_host.config import ResourceLimits
from plugin_host.errors import ConfigError, LimitExceededError

__all__ = ["CpuBudget", "MIN_MEMORY_MB", "apply_rlimits", "check_rlimits"]

MIN_MEMORY_MB = 32
"""The smallest ``max_memory_mb`` a sandbox may have: headroom for the runtime itself (a frame
received, a thread's stack, a fork), whatever the plugin does."""

_CPU_SIGNAL_GRACE = 1
"""Seconds of CPU between RLIMIT_CPU's soft limit (SIGXCPU, a named crash) and its hard one (SIGKILL)."""


def _vm_size() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _cpu_used() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _wanted(limits: ResourceLimits) -> dict[int, int]:
    """The hard limit each rlimit should get in this process (resource -> value)."""
    wanted = {resource.RLIMIT_CORE: 0}
    if limits.max_memory_mb is not None:
        wanted[resource.RLIMIT_AS] = _vm_size() + int(limits.max_memory_mb * 2**20)
    if limits.max_cpu_seconds is not None:
        wanted[resource.RLIMIT_CPU] = int(math.ceil(_cpu_used() + limits.max_cpu_seconds)) + _CPU_SIGNAL_GRACE
    return wanted


def check_rlimits(limits: ResourceLimits) -> None:
    """Raise ``ConfigError`` when ``limits`` cannot be applied in this process as asked.

    Called where a sandbox starts (its root), before :func:`apply_rlimits`: a limit above the
    hard limit this process already has (the host's own) would silently be that one instead;
    a memory limit under :data:`MIN_MEMORY_MB` would leave no room for the runtime.

    Raises:
        ConfigError: naming the limit (``field``) and the value.
    """
    if limits.max_memory_mb is not None and limits.max_memory_mb < MIN_MEMORY_MB:
        raise ConfigError(
            f"max_memory_mb must be at least {MIN_MEMORY_MB} (room for the runtime), got {limits.max_memory_mb!r}",
            field="max_memory_mb",
            value=limits.max_memory_mb,
        )
    names = {resource.RLIMIT_AS: "max_memory_mb", resource.RLIMIT_CPU: "max_cpu_seconds"}
    for which, value in _wanted(limits).items():
        _, hard = resource.getrlimit(which)
        if which in names and hard != resource.RLIM_INFINITY and value > hard:
            field = names[which]
            raise ConfigError(
                f"{field}={getattr(limits, field)!r} is above the host's own hard limit "
                f"({'RLIMIT_AS' if field == 'max_memory_mb' else 'RLIMIT_CPU'} {hard}), which a sandbox never raises",
                field=field,
                value=getattr(limits, field),
            )


def apply_rlimits(limits: ResourceLimits) -> None:
    """Set this process's memory, lifetime-CPU and core-dump limits as hard limits (see the module docstring).

    Never raises an inherited hard limit: a process forked from one that applied them
    keeps the smaller of the two.
    """
    for which, value in _wanted(limits).items():
        _, hard = resource.getrlimit(which)
        new_hard = value if hard == resource.RLIM_INFINITY else min(value, hard)
        soft = new_hard - _CPU_SIGNAL_GRACE if which == resource.RLIMIT_CPU and new_hard > 1 else new_hard
        resource.setrlimit(which, (soft, new_hard))


class CpuBudget:
    """Interrupts a callback that burns more than ``budget_ms`` of CPU time.

    Args:
        budget_ms: CPU milliseconds one callback may use; ``None`` for no budget.
        actor: the actor's name, for the error.
    """

    def __init__(self, budget_ms: float | None, actor: str) -> None:
        self.seconds = None if budget_ms is None else budget_ms / 1000.0
        self.actor = actor
        self._expired = False
        if self.seconds is not None:
            signal.signal(signal.SIGVTALRM, self._on_alarm)

    def _on_alarm(self, signum: int, frame: Any) -> None:
        if self._expired:  # it swallowed the first one and kept burning: no more chances
            os.kill(os.getpid(), signal.SIGKILL)
        self._expired = True
        signal.setitimer(signal.ITIMER_VIRTUAL, max(self.seconds or 0.0, 0.05))
        raise LimitExceededError(
            f"{self.actor}: a callback used more than {self.seconds * 1000:.0f} ms of CPU",  # type: ignore[operator]
            limit="call_cpu_budget_ms",
            actor=self.actor,
        )

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Arm the budget for one callback."""
        if self.seconds is None:
            yield
            return
        self._expired = False
        signal.setitimer(signal.ITIMER_VIRTUAL, self.seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_VIRTUAL, 0)
