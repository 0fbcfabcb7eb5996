"""Installs a reload's new requirements on a member system, off its sandbox root's message loop.

pip may take seconds; a root blocked that long would starve its heartbeats (its workers would
be killed as hung).  The root forks this one-shot actor instead and goes on; it exits when done.
"""

from __future__ import annotations

from thespian.actors import ActorAddress, ActorExitRequest

from plugin_host.errors import PluginHostError

from .. import _messages as m
from .._base import HostActor
from .codeswap import local_environment

__all__ = ["EnvironmentActor"]


class EnvironmentActor(HostActor):
    """Runs ``pip`` for one reload, answers :class:`~actors._messages.EnvironmentReady`, then exits."""

    def receiveMsg_PrepareEnvironment(self, msg: m.PrepareEnvironment, sender: ActorAddress) -> None:
        """Install the packages under this system's ``state_dir`` (or reuse them)."""
        try:
            reply = m.EnvironmentReady(msg.reload_id, local_environment(None, msg.packages))
        except PluginHostError as exc:
            reply = m.EnvironmentReady(msg.reload_id, None, str(exc))
        self.send(sender, reply)
        self.send(self.myAddress, ActorExitRequest())
