"""The one-shot actor behind ``Host.run``: runs a function inside a sandbox, then exits.

It is forked from the sandbox root, so the function sees the sandbox's modules; a crash
or hang of the function costs only this process.  The root sends the sandbox's context
with the request: the function runs under the sandbox's rlimits (inherited from the root
and applied again), its ``call_cpu_budget_ms``, and the runtime audit of its security
profile, whose records join the sandbox's audit log as a worker's do.
"""

from __future__ import annotations

from typing import Any, Callable

from thespian.actors import ActorAddress, ActorExitRequest

from plugin_host.messages import Failed, Ok, Run, pack
from plugin_host.values import AuditRecord

from . import _messages as m
from ._base import HostActor, audit_process, plugin_error
from ._process.limits import CpuBudget, apply_rlimits

__all__ = ["RunnerActor", "RUN_ACTOR"]

RUN_ACTOR = "run"
"""The actor name ``Host.run``'s function is audited (and its errors are reported) under."""


class RunnerActor(HostActor):
    """Runs one ``Run`` request (sent by its root in a :class:`~actors._messages.RunIn`) and exits."""

    def receiveMsg_RunIn(self, msg: m.RunIn, sender: ActorAddress) -> None:
        """Call ``fn()`` under the sandbox's limits and profile; answer ``Ok(value)`` (a Blob unless plain
        data) or ``Failed(PluginError)``."""
        run: Run = msg.run
        records: list[AuditRecord] = []
        try:
            reply: Ok | Failed = Ok(self._call(msg.context, run, records.append), run.corr)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - the sandbox boundary
            reply = Failed(plugin_error(exc, RUN_ACTOR), run.corr)
        if records:
            self.send(msg.context.root, m.AuditRecords(msg.context.sandbox_id, tuple(records)))
        self.send(run.reply_to or sender, reply)
        self.send(sender, m.RunDone(run.corr))
        self.send(self.myAddress, ActorExitRequest())

    def _call(self, context: m.SandboxContext, run: Run, emit: Callable[[AuditRecord], None]) -> Any:
        """``fn()``, packed for the reply (its pickling may run plugin code too)."""
        if not self.multiprocess:  # the host's own process (simpleSystemBase): no limits, no audit
            return pack(run.fn.load()())
        apply_rlimits(context.limits)
        budget = CpuBudget(context.limits.call_cpu_budget_ms, RUN_ACTOR)
        control = audit_process(context, emit)
        with budget.running(), control.plugin_code(RUN_ACTOR):
            return pack(run.fn.load()())
