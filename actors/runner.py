"""The one-shot actor behind ``Host.run``: runs a function inside a sandbox, then exits.

It is forked from the sandbox root, so the function sees the sandbox's modules; a crash
or hang of the function costs only this process.
"""

from __future__ import annotations

from thespian.actors import ActorAddress, ActorExitRequest

from plugin_host.messages import Failed, Ok, Run, pack

from . import _messages as m
from ._base import HostActor, plugin_error

__all__ = ["RunnerActor"]


class RunnerActor(HostActor):
    """Runs one ``Run`` request and exits."""

    def receiveMsg_Run(self, msg: Run, sender: ActorAddress) -> None:
        """Call ``fn()`` and answer ``Ok(value)`` (a Blob unless plain data) or ``Failed(PluginError)``."""
        try:
            value = msg.fn.load()()
            reply: Ok | Failed = Ok(pack(value), msg.corr)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - the sandbox boundary
            reply = Failed(plugin_error(exc, "run"), msg.corr)
        self.send(msg.reply_to or sender, reply)
        self.send(sender, m.RunDone(msg.corr))
        self.send(self.myAddress, ActorExitRequest())
