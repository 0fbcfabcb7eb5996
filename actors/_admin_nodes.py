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
from typing import Any, Callable

import attrs
from thespian.actors import ActorExitRequest, ActorSystemConventionUpdate

from plugin_host import deps
from plugin_host.config import NODE_CAPABILITY, PYTHON_CAPABILITY, VERSION_CAPABILITY, node_name, system_capabilities
from plugin_host.errors import BadRequestError, NoCapableNodeError, PluginHostError
from plugin_host.messages import ListNodes
from plugin_host.states import NodeStatus
from plugin_host.values import NodeInfo

from . import _messages as m
from ._admin.record import SandboxRecord
from .monitor import MonitorActor

__all__ = ["NodesAdmin", "Member", "remote_packages"]


@attrs.define
class Member:
    """Another actor system of the convention, as the admin knows it."""

    name: str
    address: Any
    capabilities: dict[str, Any]
    status: str = "up"
    monitor: Any = None
    last_heard: float = attrs.field(factory=time.monotonic)
    ping_at: float = 0.0
    """When the last ping went (the next one waits for its pong, or ``node_timeout``)."""
    doomed: set[int] = attrs.field(factory=set)
    """Process groups of sandboxes lost there, to kill should the member answer again."""
    monitor_started: float = 0.0
    """When its monitor was last (re)created."""
    monitor_due: bool = False
    """Its monitor exited too soon after the last one was made: make another on a later tick."""


_MONITOR_RETRY = 1.0
"""Seconds between two monitors made for one member: a member that is shutting down fails every
creation at once, and re-creating on each failure would flood both systems' admins."""


class NodesAdmin:
    """Mixed into the admin actor (needs ``sandboxes``, ``config``, ``monitor``, ``send``, ``emit``...)."""

    sandboxes: dict[str, SandboxRecord]
    config: Any
    monitor: Any
    multiprocess: bool
    members: dict[str, Member]
    send: Callable[[Any, Any], None]
    reply: Callable[[Any, Any, str], None]
    createActor: Callable[..., Any]
    notifyOnSystemRegistrationChanges: Callable[[bool], None]
    emit: Callable[..., None]
    watch: Callable[[str, Any], None]
    _info: Callable[[str, Any], Any]

    # -- membership ------------------------------------------------------------------------

    def join_convention(self) -> None:
        """Hear about every system that joins or leaves the convention (once, at boot)."""
        if self.multiprocess:
            self.notifyOnSystemRegistrationChanges(True)

    @property
    def node(self) -> str:
        """This host's own system's name in the convention."""
        return node_name(self.config.bind_address, self.config.admin_port or 0)

    def receiveMsg_ActorSystemConventionUpdate(self, msg: ActorSystemConventionUpdate, sender: Any) -> None:
        """A system joined or left the convention."""
        caps = dict(msg.remoteCapabilities or {})
        name = str(caps.get(NODE_CAPABILITY) or msg.remoteAdminAddress)
        if name == self.node:
            return
        member = self.members.get(name)
        if msg.remoteAdded:
            if member is None or member.status == "lost" or member.address != msg.remoteAdminAddress:
                self._retire_monitor(member)
                member = self.members[name] = Member(name, msg.remoteAdminAddress, caps)
                if NODE_CAPABILITY in caps:  # a plugin-host node: keep a monitor there (and ping it)
                    member.monitor, member.monitor_started = self._new_monitor(name), time.monotonic()
            else:
                member.capabilities = caps
        elif member is not None:
            if member.status == "up":
                self.node_lost(member, "it left the convention")
            self._retire_monitor(member)
            member.monitor = None

    def _new_monitor(self, node: str) -> Any:
        return self.createActor(MonitorActor, targetActorRequirements={NODE_CAPABILITY: node})

    def _retire_monitor(self, member: Member | None) -> None:
        if member is not None and member.monitor is not None:
            self.send(member.monitor, ActorExitRequest())

    def ping_members(self, now: float) -> None:
        """On each admin tick: ping every member's monitor; a member silent for ``node_timeout`` is lost.

        One ping at a time per member: Thespian keeps a send to a process that does not read
        (stopped, hung) pending for minutes, and past 20 pending sends the admin's every
        message waits.  A tick that comes late means this admin was busy and pongs may be
        waiting unread: nobody is judged on that tick.
        """
        late = now - self._last_round > self.config.node_timeout / 2
        self._last_round = now
        timeout = self.config.node_timeout
        for member in list(self.members.values()):
            if member.monitor is None:
                continue  # it left the convention
            if member.monitor_due and member.status == "up" and now - member.monitor_started >= _MONITOR_RETRY:
                self._replace_monitor(member)
            if member.status == "up" and now - member.last_heard > timeout and not late:
                self.node_lost(member, f"it did not answer for {timeout:g} s (node_timeout)")
            answered = member.last_heard >= member.ping_at
            if not answered and now - member.ping_at > timeout and member.status == "lost":
                # Its monitor may have ended itself meanwhile (its own pings stopped): a new one.
                # The old one, pinged no more, ends the sandboxes it watched if it still runs.
                self._replace_monitor(member)
            elif answered or now - member.ping_at > timeout:
                member.ping_at = now
                self.send(member.monitor, m.NodePing(timeout))

    _last_round = 0.0

    def receiveMsg_NodePong(self, msg: m.NodePong, sender: Any) -> None:
        """A member's monitor answered: that system is alive (again, if it was lost)."""
        for member in self.members.values():
            if member.monitor == sender:
                member.last_heard = time.monotonic()
                if member.status == "lost":  # it was only cut off or stopped for a while
                    if member.doomed:  # its lost sandboxes run elsewhere now, or nowhere: end them there
                        self.send(member.monitor, m.KillGroups(tuple(sorted(member.doomed))))
                        member.doomed.clear()
                    member.status = "up"
                return

    def _replace_monitor(self, member: Member) -> None:
        member.monitor, member.monitor_started, member.monitor_due = (
            self._new_monitor(member.name),
            time.monotonic(),
            False,
        )
        member.ping_at, member.last_heard = 0.0, time.monotonic()
        if member.status == "up":  # the new one knows nothing yet: what runs there, with what limits
            for sandbox_id, rec in list(self.sandboxes.items()):
                if rec.node == member.name:
                    self.watch(sandbox_id, rec)

    def monitor_exited(self, address: Any) -> bool:
        """A member's monitor exited: start another while the member is up.  Whether it was one.

        Not while it is lost: a creation on a member Thespian has dropped fails at once and
        reports the exit again, so this would loop; ``ping_members`` tries once per node_timeout.
        Nor more than once a second for a member that is up (it may be shutting down).
        """
        for member in self.members.values():
            if member.monitor == address:
                if member.status == "up" and time.monotonic() - member.monitor_started >= _MONITOR_RETRY:
                    self._replace_monitor(member)
                elif member.status == "up":
                    member.monitor_due = True  # made again on a later tick, not in a loop of failures
                return True
        return False

    def monitor_of(self, node: str) -> Any:
        """The monitor actor of the system named ``node`` ("" is this one); ``None`` unless it is up.

        Nothing but the ping goes to a lost member: a send to a process that does not read
        stays pending for minutes, and a few dozen of them stall every send of the admin.
        """
        if not node:
            return self.monitor
        member = self.members.get(node)
        return member.monitor if member is not None and member.status == "up" else None

    def kill_on_node(self, node: str, pgid: int | None) -> None:
        """SIGKILL a sandbox's process group on a member (now, or when a lost member answers again)."""
        member = self.members.get(node)
        if not pgid or member is None or member.monitor is None:
            return
        if member.status == "up":
            self.send(member.monitor, m.KillGroups((pgid,)))
        else:
            member.doomed.add(pgid)

    def node_lost(self, member: Member, why: str) -> None:
        """A member died, left or fell silent: it takes no new sandboxes, and its sandboxes are lost.

        Its monitor is kept (and pinged): a member that was only cut off comes back ``up``, and
        the monitor there has ended the lost sandboxes by then (its own pings stopped too) or
        ends them on the kill requests queued for it.
        """
        member.status = "lost"
        for sandbox_id, rec in list(self.sandboxes.items()):
            if rec.node == member.name:
                self.sandbox_lost(sandbox_id, rec, f"its node {member.name} was lost: {why}")

    def sandbox_lost(self, sandbox_id: str, rec: SandboxRecord, reason: str) -> None:  # pragma: no cover - the admin's
        """Hook (the admin): mark one sandbox lost, or start it elsewhere."""
        raise NotImplementedError

    # -- placement -------------------------------------------------------------------------

    def place(self, requirements: Any, exclude: frozenset[str] = frozenset()) -> str:
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
        mine = system_capabilities(self.config, self.config.admin_port or 0)
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
            if member.status != "up" or name in exclude:
                why_not[name] = member.status if member.status != "up" else "excluded"
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
        for rec in self.sandboxes.values():
            if rec.node in load and rec.status != "lost":
                load[rec.node] += 1
        return min(capable, key=lambda name: (load[name], name))

    # -- queries ---------------------------------------------------------------------------

    denied: Callable[[], int]
    rejected_frames: Callable[[], int]

    def receiveMsg_ListNodes(self, msg: ListNodes, sender: Any) -> None:
        """This system and every member known, each with this host's sandboxes on it."""
        on: dict[str, list[str]] = {}
        for sandbox_id, rec in sorted(self.sandboxes.items()):
            if rec.status != "lost":  # a lost sandbox runs nowhere
                on.setdefault(rec.node, []).append(sandbox_id)
        nodes = [
            NodeInfo(
                self.node,
                system_capabilities(self.config, self.config.admin_port or 0),
                NodeStatus.UP,
                True,
                on.get("", []),
                self.rejected_frames(),
                self.denied(),
            )
        ]
        nodes += [
            NodeInfo(name, dict(member.capabilities), NodeStatus(member.status), False, on.get(name, []))
            for name, member in sorted(self.members.items())
        ]
        self.reply(sender, nodes, msg.corr)


def _lacks(capabilities: dict[str, Any], requirements: dict[str, Any]) -> dict[str, Any]:
    """The required capabilities a system does not offer (as required)."""
    return {k: v for k, v in requirements.items() if capabilities.get(k) != v}


def _describe(lacks: dict[str, Any]) -> str:
    return f"lacks {_pairs(lacks)}" if lacks else "capable"


def _pairs(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in values.items())


def remote_packages(node: str, environment: str | None) -> tuple[str, ...]:
    """What a root on another system installs there instead of using the host's ``environment`` folder."""
    if not node or not environment:
        return ()
    try:
        return tuple(deps.environment_requirements(environment))
    except PluginHostError:
        return ()  # the host's folder is gone: the root reports the missing environment itself
