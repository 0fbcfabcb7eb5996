"""The node actor (global name ``"plugin_host.node"``) of a ``plugin-host node`` system.

A node only offers capacity to a convention: hosts elsewhere place sandbox roots on it.
This actor tells the ``node`` command which processes to end at shutdown, confirms that the
convention leader registered the node, and watches the command: if it dies without shutting the
system down (SIGKILL), the actor ends every process of the system.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta

import attrs
import psutil
from thespian.actors import ActorAddress, ActorSystemConventionUpdate, WakeupMessage

from plugin_host.errors import HostStartError
from plugin_host.messages import Failed

from ._base import HostActor
from ._process.hardening import process_alive

__all__ = ["NODE_GLOBAL_NAME", "NodeActor", "NodeBoot", "NodeBooted"]

NODE_GLOBAL_NAME = "plugin_host.node"
"""Global name of the node actor in a node's actor system."""

_WATCH_INTERVAL = timedelta(seconds=0.5)


@attrs.frozen
class NodeBoot:
    """Node command -> node actor: claim the system; answer once the leader knows it, or after ``join_timeout``."""

    token: str
    command_pid: int
    command_create_time: float
    join_timeout: float

    @property
    def corr(self) -> str:
        """The token doubles as the correlation id."""
        return self.token


@attrs.frozen
class NodeBooted:
    """Node actor -> node command: the system's processes, and whether the convention leader registered it."""

    token: str
    system_pid: int
    """The Thespian admin (parent of every actor of the system)."""
    pgid: int
    """Process group of the admin, the logger and this actor."""
    joined: bool
    """Whether the leader answered the node's registration within the boot's ``join_timeout``."""

    @property
    def corr(self) -> str:
        """The token doubles as the correlation id."""
        return self.token


class NodeActor(HostActor):
    """Claims a node's system for its command, reports joining, and ends the system if the command dies."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.command: tuple[int, float] | None = None
        self.token: str | None = None
        self._pending: tuple[str, ActorAddress, float] | None = None
        """The boot to answer: token, requester, join deadline (monotonic)."""
        self._ticking = False

    def receiveMsg_NodeBoot(self, msg: NodeBoot, sender: ActorAddress) -> None:
        """Claim the system, start the watchdog, and wait for the leader's registration."""
        if self.token is not None and self.token != msg.token:
            pid = self.command[0] if self.command else "?"
            self.send(
                sender,
                Failed(
                    HostStartError(f"this actor system already belongs to another node command (pid {pid})"), msg.token
                ),
            )
            return
        self.token, self.command = msg.token, (msg.command_pid, msg.command_create_time)
        self._pending = (msg.token, sender, time.monotonic() + msg.join_timeout)
        self._tick()
        # Thespian replays the systems the admin knows at once, then reports each new one.  A
        # member only ever hears from its leader, which registers itself here when it answers
        # (and so after it has recorded) the member's registration.
        self.notifyOnSystemRegistrationChanges(True)

    def receiveMsg_ActorSystemConventionUpdate(
        self,
        msg: ActorSystemConventionUpdate,
        sender: ActorAddress,
    ) -> None:
        """The leader registered with this system: the node has joined."""
        if msg.remoteAdded:
            self._answer_boot(joined=True)

    def _answer_boot(self, joined: bool) -> None:
        if self._pending is None:
            return
        token, requester, _ = self._pending
        self._pending = None
        self.send(requester, NodeBooted(token, os.getppid(), os.getpgid(0), joined))
        self.notifyOnSystemRegistrationChanges(False)

    def _tick(self) -> None:
        if not self._ticking and self.multiprocess and self.command is not None:
            self._ticking = True
            self.wakeupAfter(_WATCH_INTERVAL)

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: ActorAddress) -> None:
        """Tick: is the node command still alive?  Has the join waited long enough?"""
        self._ticking = False
        if self.command is not None and not process_alive(*self.command):
            _emergency_stop()
            return
        if self._pending is not None and time.monotonic() > self._pending[2]:
            self._answer_boot(joined=False)
        self._tick()


def _emergency_stop() -> None:
    """The command died without shutting the system down: end every process of the system.

    Sandbox roots placed here lead process groups of their own, so the admin's other
    descendants are killed one by one before this actor's group (admin, logger, itself).
    """
    group = os.getpgid(0)
    try:
        others = psutil.Process(os.getppid()).children(recursive=True)
    except psutil.Error:
        others = []
    for proc in others:
        try:
            if os.getpgid(proc.pid) != group:
                proc.kill()
        except (psutil.Error, OSError):
            pass
    os.killpg(group, signal.SIGKILL)
