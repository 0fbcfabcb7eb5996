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
routing) included: an idle root spent about 2 ms a second here, so a root under
``max_cpu_seconds=60`` ends (and its sandbox fails) after some eight idle hours; a sandbox
meant to run for days needs a budget to match.  A fork starts counting again (the kernel's
rule): the sandbox-wide budget is its control group's, checked by the monitor (``actors._admin.groups``).

RLIMIT_CORE is 0 always: a core dump would hold the sandbox's key.

``call_cpu_budget_ms`` is enforced by :class:`CpuBudget` from a watchdog thread, outside
the callback's thread: see there.
"""

from __future__ import annotations

import contextlib
import resource
import signal
import threading
import time
from typing import Any, Iterator

from plugin_host.config import ResourceLimits
from plugin_host.errors import ConfigError, LimitExceededError
from plugin_host.lowlevel import confine

__all__ = ["CpuBudget", "MIN_MEMORY_MB", "WATCHDOG_THREAD", "apply_rlimits", "check_rlimits"]

MIN_MEMORY_MB = 32
"""The smallest ``max_memory_mb`` a sandbox may have: headroom for the runtime itself (a frame
received, a thread's stack, a fork), whatever the plugin does."""

WATCHDOG_THREAD = "plugin-host-cpu-budget"
"""Name of the runtime thread that enforces ``call_cpu_budget_ms`` (never plugin code)."""


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


apply_rlimits = confine.apply_rlimits
"""Set this process's memory, lifetime-CPU and core-dump limits as hard limits (see the module docstring;
shared with the compile validator: :func:`plugin_host.lowlevel.confine.apply_rlimits`)."""
_wanted = confine.wanted_rlimits


class CpuBudget:
    """Interrupts a callback that burns more than ``budget_ms`` of CPU time, from outside its thread.

    A watchdog thread (named :data:`WATCHDOG_THREAD`, started only when a budget is set)
    reads the callback thread's CPU clock and sleeps wall time equal to the budget left (CPU
    time never runs faster than wall time, so it never polls).  Past the budget it sends the
    callback's thread SIGVTALRM, whose handler raises ``LimitExceededError`` in the callback;
    a callback still burning CPU a grace later (``max(budget, 50 ms)``: it swallowed the
    error, ignored the signal or replaced the handler) is ended with SIGKILL.  Nothing the
    plugin can do with ``signal.setitimer`` or ``signal.signal`` disarms it.  Without a
    budget, :meth:`running` costs one attribute check.

    What it cannot stop: C code that holds the GIL without end (the watchdog cannot run
    Python); a hung callback is then the heartbeat's (``hang_timeout``) and RLIMIT_CPU's.

    Args:
        budget_ms: CPU milliseconds one callback may use; ``None`` for no budget.
        actor: the actor's name, for the error.
    """

    def __init__(self, budget_ms: float | None, actor: str) -> None:
        self.seconds = None if budget_ms is None else budget_ms / 1000.0
        self.actor = actor
        self._watchdog: _Watchdog | None = None
        if self.seconds is not None:
            self._watchdog = _Watchdog(self.seconds, actor)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Hold the budget over one callback, run in the calling thread."""
        watchdog = self._watchdog
        if watchdog is None:
            yield
            return
        watchdog.begin()
        try:
            yield
        finally:
            watchdog.end()


class _Watchdog:
    """The thread behind :class:`CpuBudget`; its functions are bound at start, so patching the
    ``signal`` or ``time`` modules from plugin code does not reach them."""

    def __init__(self, seconds: float, actor: str) -> None:
        self.seconds = seconds
        self.grace = max(seconds, 0.05)
        self.actor = actor
        self.thread = threading.get_ident()
        self.clock = time.pthread_getcpuclockid(self.thread)
        self.current: tuple[int, float] | None = None
        """(serial, CPU clock at its start) of the callback running, or None; one assignment, so read whole."""
        self.serial = 0
        self.fired = 0
        """Serial of the callback the signal was sent for: the handler raises only in that one."""
        self.idle = True
        self.wake = threading.Event()
        signal.signal(signal.SIGVTALRM, self._on_signal)
        threading.Thread(target=self._watch, name=WATCHDOG_THREAD, daemon=True).start()

    def begin(self, _now: Any = time.clock_gettime) -> None:
        self.serial += 1
        self.current = (self.serial, _now(self.clock))
        if self.idle:
            self.idle = False
            self.wake.set()

    def end(self) -> None:
        self.current = None

    def _on_signal(self, signum: int, frame: Any) -> None:
        current = self.current
        if current is None or current[0] != self.fired:
            return  # the callback it was sent for has ended: nothing to interrupt
        raise LimitExceededError(
            f"{self.actor}: a callback used more than {self.seconds * 1000:.0f} ms of CPU",
            limit="call_cpu_budget_ms",
            actor=self.actor,
        )

    def _watch(
        self,
        _now: Any = time.clock_gettime,
        _sleep: Any = time.sleep,
        _kill: Any = signal.pthread_kill,
        _alarm: int = signal.SIGVTALRM,
        _fatal: int = signal.SIGKILL,
    ) -> None:
        # Runtime code only: no file, no socket, nothing the audit would take for the plugin's.
        while True:
            self.wake.wait()
            self.wake.clear()
            quiet = 0
            while quiet < 2:  # two looks without a callback: wait for the next one
                current = self.current
                if current is None:
                    quiet += 1
                    _sleep(self.seconds)
                    continue
                quiet = 0
                serial, started = current
                used = _now(self.clock) - started
                limit = self.seconds if self.fired != serial else self.seconds + self.grace
                if used < limit:
                    _sleep(max(limit - used, 0.001))
                    continue
                if self.current is not current:
                    continue
                if self.fired != serial:
                    self.fired = serial
                    _kill(self.thread, _alarm)
                else:
                    _kill(self.thread, _fatal)  # swallowed, ignored or replaced: end the process
            self.idle = True
            if self.current is not None:  # one began as we went idle, without waking us
                self.idle = False
                self.wake.set()
