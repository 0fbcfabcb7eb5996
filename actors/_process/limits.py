"""Resource limits inside a plugin process: rlimits at start, and a CPU budget per callback.

``max_memory_mb`` becomes RLIMIT_AS at the process's size now plus the limit (a fork starts
with its parent's size), so an allocation beyond it raises ``MemoryError`` in the plugin,
which crashes the actor ("let it crash"); the monitor also kills a process whose resident
memory grows past it.  ``max_cpu_seconds`` becomes RLIMIT_CPU (SIGXCPU, made fatal at start,
ends the process).  ``call_cpu_budget_ms`` arms ITIMER_VIRTUAL around each callback: past the
budget, the callback gets ``LimitExceededError``; a callback that swallows it is killed.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import signal
from typing import Any, Iterator

from plugin_host.config import ResourceLimits
from plugin_host.errors import LimitExceededError

__all__ = ["CpuBudget", "apply_rlimits"]


def _vm_size() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def apply_rlimits(limits: ResourceLimits) -> None:
    """Set this process's memory and lifetime-CPU limits (soft limits; hard ones never rise)."""
    if limits.max_memory_mb is not None:
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        soft = _vm_size() + int(limits.max_memory_mb * 2**20)
        resource.setrlimit(resource.RLIMIT_AS, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
    if limits.max_cpu_seconds is not None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        soft = int(math.ceil(usage.ru_utime + usage.ru_stime + limits.max_cpu_seconds))
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        new_hard = soft + 1 if hard == resource.RLIM_INFINITY else min(soft + 1, hard)
        resource.setrlimit(resource.RLIMIT_CPU, (min(soft, new_hard), new_hard))


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
