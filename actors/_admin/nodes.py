"""The admin's side of the convention: members, placement, heartbeats and lost sandboxes.

Thespian does the distribution: the admin registers for convention updates
(``notifyOnSystemRegistrationChanges``), places a sandbox root with
``createActor(..., targetActorRequirements=...)`` pinned to the chosen member's
``plugin_host.node`` capability, and Thespian forks it there (that member's admin nannies it
and forwards its exit).  What Thespian does not do fast enough is notice a member that died:
its convention drops a silent member only after minutes.  So the admin keeps one monitor
actor on each member (which also samples the processes there) and pings it every tick; a
member silent for ``node_timeout`` is lost, and so is every sandbox on it.
"""

from __future__ import annotations

import time
from typing import Callable, Mapping

import attrs
from thespian.actors import ActorAddress, ActorExitRequest, ActorSystemConventionUpdate

from plugin_host import deps
from plugin_host.config import (
    NODE_CAPABILITY,
    PYTHON_CAPABILITY,
    VERSION_CAPABILITY,
    HostConfig,
    node_name,
    system_capabilities,
)
from plugin_host.errors import BadRequestError, NoCapableNodeError, PluginHostError
from plugin_host.states import NodeStatus, RecordStatus
from plugin_host.values import NodeInfo

from .. import _messages as m
from ..monitor import MonitorActor
from .record import AdminPort, SandboxRecord

__all__ = ["Member", "Nodes", "remote_packages"]


@attrs.define
class Member:
    """Another actor system of the convention, as the admin knows it."""

    name: str
    address: ActorAddress
    capabilities: dict[str, object]
    status: NodeStatus = NodeStatus.UP
    """Written by :meth:`move` only."""
    monitor: ActorAddress | None = None
    last_heard: float = attrs.field(factory=time.monotonic)
    ping_at: float = 0.0
    """When the last ping went (the next one waits for its pong, or ``node_timeout``)."""
    doomed: set[int] = attrs.field(factory=set)
    """Process groups of sandboxes lost there, to kill should the member answer again."""
    monitor_started: float = 0.0
    """When its monitor was last (re)created."""
    monitor_due: bool = False
    """Its monitor exited too soon after the last one was made: make another on a later tick."""

    def move(self, to: NodeStatus) -> None:
        """The member is now ``to`` (up, or lost)."""
        self.status = to


_MONITOR_RETRY = 1.0
"""Seconds between two monitors made for one member: a member that is shutting down fails every
creation at once, and re-creating on each failure would flood both systems' admins."""


class Nodes:
    """Owns the members of the convention, this system's own monitor and the ping rounds."""

    def __init__(
        self,
        port: AdminPort,
        records: Mapping[str, SandboxRecord],
        config: Callable[[], HostConfig],
        watch: Callable[[str, SandboxRecord], None],
        on_lost: Callable[[str, SandboxRecord, str], None],
    ) -> None:
        self.port = port
        self.records = records
        """Every sandbox's record (read only: the lifecycle component writes it)."""
        self.config = config
        self.watch = watch
        self.on_lost = on_lost
        """Called for each sandbox of a member that is lost (the lifecycle marks it lost, or moves it)."""
        self.members: dict[str, Member] = {}
        self.local_monitor: ActorAddress | None = None
        """The monitor actor of this host's own system (made at boot)."""
        self.last_round = 0.0
        """When the members were last pinged."""

    def boot(self) -> None:
        """Make this system's monitor, and hear about every system that joins or leaves (once, at boot)."""
        self.local_monitor = self.port.createActor(MonitorActor)
        if self.port.multiprocess:
            self.port.notifyOnSystemRegistrationChanges(True)

    # -- membership ------------------------------------------------------------------------

    @property
    def node(self) -> str:
        """This host's own system's name in the convention."""
        config = self.config()
        return node_name(config.bind_address, config.admin_port or 0)

    def on_update(self, msg: ActorSystemConventionUpdate) -> None:
        """A system joined or left the convention."""
        caps = dict(msg.remoteCapabilities or {})
        name = str(caps.get(NODE_CAPABILITY) or msg.remoteAdminAddress)
        if name == self.node:
            return
        member = self.members.get(name)
        if msg.remoteAdded:
            if member is None or member.status == NodeStatus.LOST or member.address != msg.remoteAdminAddress:
                self._retire_monitor(member)
                member = self.members[name] = Member(name, msg.remoteAdminAddress, caps)
                if NODE_CAPABILITY in caps:  # a plugin-host node: keep a monitor there (and ping it)
                    member.monitor, member.monitor_started = self._new_monitor(name), time.monotonic()
            else:
                member.capabilities = caps
        elif member is not None:
            if member.status == NodeStatus.UP:
                self.node_lost(member, "it left the convention")
            self._retire_monitor(member)
            member.monitor = None

    def _new_monitor(self, node: str) -> ActorAddress:
        return self.port.createActor(MonitorActor, targetActorRequirements={NODE_CAPABILITY: node})

    def _retire_monitor(self, member: Member | None) -> None:
        if member is not None and member.monitor is not None:
            self.port.send(member.monitor, ActorExitRequest())

    def ping(self, now: float) -> None:
        """On each admin tick: ping every member's monitor; a member silent for ``node_timeout`` is lost.

        One ping at a time per member: Thespian keeps a send to a process that does not read
        (stopped, hung) pending for minutes, and past 20 pending sends the admin's every
        message waits.  A tick that comes late means this admin was busy and pongs may be
        waiting unread: nobody is judged on that tick.
        """
        timeout = self.config().node_timeout
        late = now - self.last_round > timeout / 2
        self.last_round = now
        for member in list(self.members.values()):
            if member.monitor is None:
                continue  # it left the convention
            if member.monitor_due and member.status == NodeStatus.UP and now - member.monitor_started >= _MONITOR_RETRY:
                self._replace_monitor(member)
            if member.status == NodeStatus.UP and now - member.last_heard > timeout and not late:
                self.node_lost(member, f"it did not answer for {timeout:g} s (node_timeout)")
            answered = member.last_heard >= member.ping_at
            if not answered and now - member.ping_at > timeout and member.status == NodeStatus.LOST:
                # Its monitor may have ended itself meanwhile (its own pings stopped): a new one.
                # The old one, pinged no more, ends the sandboxes it watched if it still runs.
                self._replace_monitor(member)
            elif answered or now - member.ping_at > timeout:
                member.ping_at = now
                self.port.send(member.monitor, m.NodePing(timeout))

    def on_pong(self, sender: ActorAddress) -> None:
        """A member's monitor answered: that system is alive (again, if it was lost)."""
        for member in self.members.values():
            if member.monitor == sender:
                member.last_heard = time.monotonic()
                if member.status == NodeStatus.LOST:  # it was only cut off or stopped for a while
                    if member.doomed:  # its lost sandboxes run elsewhere now, or nowhere: end them there
                        self.port.send(member.monitor, m.KillGroups(tuple(sorted(member.doomed))))
                        member.doomed.clear()
                    member.move(NodeStatus.UP)
                return

    def _replace_monitor(self, member: Member) -> None:
        member.monitor, member.monitor_started, member.monitor_due = (
            self._new_monitor(member.name),
            time.monotonic(),
            False,
        )
        member.ping_at, member.last_heard = 0.0, time.monotonic()
        if member.status == NodeStatus.UP:  # the new one knows nothing yet: what runs there, with what limits
            for sandbox_id, rec in list(self.records.items()):
                if rec.node == member.name:
                    self.watch(sandbox_id, rec)

    def monitor_exited(self, address: ActorAddress) -> bool:
        """A member's monitor exited: start another while the member is up.  Whether it was one.

        Not while it is lost: a creation on a member Thespian has dropped fails at once and
        reports the exit again, so this would loop; ``ping`` tries once per node_timeout.
        Nor more than once a second for a member that is up (it may be shutting down).
        """
        for member in self.members.values():
            if member.monitor == address:
                if member.status == NodeStatus.UP and time.monotonic() - member.monitor_started >= _MONITOR_RETRY:
                    self._replace_monitor(member)
                elif member.status == NodeStatus.UP:
                    member.monitor_due = True  # made again on a later tick, not in a loop of failures
                return True
        return False

    def monitor_of(self, node: str) -> ActorAddress | None:
        """The monitor actor of the system named ``node`` ("" is this one); ``None`` unless it is up.

        Nothing but the ping goes to a lost member: a send to a process that does not read
        stays pending for minutes, and a few dozen of them stall every send of the admin.
        """
        if not node:
            return self.local_monitor
        member = self.members.get(node)
        return member.monitor if member is not None and member.status == NodeStatus.UP else None

    def kill_on_node(self, node: str, pgid: int | None) -> None:
        """SIGKILL a sandbox's process group on a member (now, or when a lost member answers again)."""
        member = self.members.get(node)
        if not pgid or member is None or member.monitor is None:
            return
        if member.status == NodeStatus.UP:
            self.port.send(member.monitor, m.KillGroups((pgid,)))
        else:
            member.doomed.add(pgid)

    def node_lost(self, member: Member, why: str) -> None:
        """A member died, left or fell silent: it takes no new sandboxes, and its sandboxes are lost.

        Its monitor is kept (and pinged): a member that was only cut off comes back ``up``, and
        the monitor there has ended the lost sandboxes by then (its own pings stopped too) or
        ends them on the kill requests queued for it.
        """
        member.move(NodeStatus.LOST)
        for sandbox_id, rec in list(self.records.items()):
            if rec.node == member.name:
                self.on_lost(sandbox_id, rec, f"its node {member.name} was lost: {why}")

    def member_up(self, node: str) -> bool:
        """Whether the member named ``node`` is known and up."""
        member = self.members.get(node)
        return member is not None and member.status == NodeStatus.UP

    # -- placement -------------------------------------------------------------------------

    def place(self, requirements: object, exclude: frozenset[str] = frozenset()) -> str:
        """The system to start a sandbox on: ``""`` (this one) if it offers ``requirements``, else a member.

        Among capable members, the one running the fewest of this host's sandboxes.  Members
        running another plugin-host version or another Python are not capable: messages carry
        cloudpickled functions (state handlers, ``run``), only safe between equal versions.

        Raises:
            NoCapableNodeError: no system matches (the error names what each one lacks).
            BadRequestError: ``requirements`` is not a mapping of capability name to value.
        """
        if not requirements:
            return ""
        if not isinstance(requirements, dict) or not all(isinstance(k, str) for k in requirements):
            raise BadRequestError("requirements must be a mapping of capability name to value")
        config = self.config()
        mine = system_capabilities(config, config.admin_port or 0)
        if self.node not in exclude and _lacks(mine, requirements) == {}:
            return ""
        capable, why_not = [], {self.node: _describe(_lacks(mine, requirements))}
        for name, member in sorted(self.members.items()):
            lacks = _lacks(member.capabilities, requirements)
            mismatch = {
                k: member.capabilities.get(k)
                for k in (VERSION_CAPABILITY, PYTHON_CAPABILITY)
                if member.capabilities.get(k) != mine[k]
            }
            if member.status != NodeStatus.UP or name in exclude:
                why_not[name] = member.status if member.status != NodeStatus.UP else "excluded"
            elif lacks:
                why_not[name] = _describe(lacks)
            elif mismatch:
                why_not[name] = (
                    f"runs {_pairs(mismatch)}, unlike this host ({VERSION_CAPABILITY}="
                    f"{mine[VERSION_CAPABILITY]!r}, {PYTHON_CAPABILITY}={mine[PYTHON_CAPABILITY]!r})"
                )
            else:
                capable.append(name)
        if not capable:
            detail = "; ".join(f"{name}: {why}" for name, why in why_not.items())
            raise NoCapableNodeError(
                f"no actor system of the convention offers {requirements} ({detail})", requirements=dict(requirements)
            )
        load = {name: 0 for name in capable}
        for rec in self.records.values():
            if rec.node in load and rec.status != RecordStatus.LOST:
                load[rec.node] += 1
        return min(capable, key=lambda name: (load[name], name))

    # -- queries ---------------------------------------------------------------------------

    def list_nodes(self, rejected_frames: int, denied: int) -> list[NodeInfo]:
        """This system (with the counts given) and every member known, each with this host's sandboxes on it."""
        on: dict[str, list[str]] = {}
        for sandbox_id, rec in sorted(self.records.items()):
            if rec.status != RecordStatus.LOST:  # a lost sandbox runs nowhere
                on.setdefault(rec.node, []).append(sandbox_id)
        nodes = [
            NodeInfo(
                self.node,
                system_capabilities(self.config(), self.config().admin_port or 0),
                NodeStatus.UP,
                True,
                on.get("", []),
                rejected_frames,
                denied,
            )
        ]
        nodes += [
            NodeInfo(name, dict(member.capabilities), member.status, False, on.get(name, []))
            for name, member in sorted(self.members.items())
        ]
        return nodes


def _lacks(capabilities: Mapping[str, object], requirements: Mapping[str, object]) -> dict[str, object]:
    """The required capabilities a system does not offer (as required)."""
    return {k: v for k, v in requirements.items() if capabilities.get(k) != v}


def _describe(lacks: Mapping[str, object]) -> str:
    return f"lacks {_pairs(lacks)}" if lacks else "capable"


def _pairs(values: Mapping[str, object]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in values.items())


def remote_packages(node: str, environment: str | None) -> tuple[str, ...]:
    """What a root on another system installs there instead of using the host's ``environment`` folder."""
    if not node or not environment:
        return ()
    try:
        return tuple(deps.environment_requirements(environment))
    except PluginHostError:
        return ()  # the host's folder is gone: the root reports the missing environment itself
