"""Every lifecycle state of plugin-host, named: the one place their values are spelt.

Each is a :class:`enum.StrEnum`, so a state is also the plain string it was before (``==``, ``str()``,
f-strings, JSON and the CLI show ``"running"``), while mypy catches a misspelt member.  The public value
types (:mod:`plugin_host.values`) carry them; the actors' records move between them through one
transition function each.  Members cross the wire between a host's processes, so this module is on the
restricted decoder's list of what a sandbox may send.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "AdminAction",
    "ChildStatus",
    "EventKind",
    "NodeStatus",
    "RecordStatus",
    "RegistryEvent",
    "RootStatus",
    "SandboxStatus",
    "SupervisorPhase",
    "VersionStatus",
]


class _State(StrEnum):
    """A state: shown as its plain string by ``str``, ``format`` and ``repr`` alike (a value type's repr
    reads ``status='running'`` as before)."""

    def __repr__(self) -> str:
        return repr(self.value)


class SandboxStatus(_State):
    """What ``SandboxInfo.status`` says of a sandbox."""

    STARTING = "starting"
    RUNNING = "running"
    FAILED = "failed"
    """Gave up (restart intensity), or its root died."""
    STOPPED = "stopped"
    LOST = "lost"
    """Its actor system was lost and no other could take it."""


class RecordStatus(_State):
    """The admin's own view of a sandbox: :class:`SandboxStatus` plus the moment it is being stopped."""

    STARTING = "starting"
    RUNNING = "running"
    FAILED = "failed"
    STOPPING = "stopping"
    LOST = "lost"


class RootStatus(_State):
    """What a sandbox root reports of its tree (``SandboxStatus`` messages to the admin)."""

    STARTING = "starting"
    RUNNING = "running"
    FAILED = "failed"
    STOPPED = "stopped"
    START_FAILED = "start_failed"


class AdminAction(_State):
    """What the admin is doing to a sandbox, so it knows what a root's exit means."""

    CREATE = "create"
    DESTROY = "destroy"
    RESTART = "restart"
    START_FAILED = "start_failed"


class SupervisorPhase(_State):
    """Where a supervisor (a sandbox root included) is in its life."""

    IDLE = "idle"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    ABORTING = "aborting"
    """A child failed to start: stopping the rest, then reporting a failed start."""
    FAILING = "failing"
    """Restart intensity passed: stopping the rest, then reporting failure."""
    FAILED = "failed"
    STOPPED = "stopped"


class ChildStatus(_State):
    """What ``ChildInfo.status`` says of one actor of a tree (and its supervisor's record of it)."""

    NEW = "new"
    """Not started yet (a supervisor's record only)."""
    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"
    CRASHED = "crashed"
    """Ended abnormally and will not be restarted (``temporary``, or its supervisor is going)."""


class NodeStatus(_State):
    """What ``NodeInfo.status`` says of an actor system of the convention."""

    UP = "up"
    LOST = "lost"


class EventKind(_State):
    """``Event.kind``: what happened."""

    STARTED = "started"
    CRASHED = "crashed"
    RESTARTED = "restarted"
    FAILED = "failed"
    LIMIT_BREACHED = "limit_breached"
    RELOADED = "reloaded"
    ROLLED_BACK = "rolled_back"
    STOPPED = "stopped"
    LOST = "lost"
    DENIED = "denied"
    FRAME_REJECTED = "frame_rejected"


class RegistryEvent(_State):
    """``VersionEvent.kind``: how the version registry's history says a version came (or failed) to be current."""

    CREATED = "created"
    RELOADED = "reloaded"
    ROLLED_BACK = "rolled_back"


class VersionStatus(_State):
    """``ModuleVersion.status``: a stored version's place in its module's history."""

    CURRENT = "current"
    PREVIOUS = "previous"
    FAILED = "failed"
    PENDING = "pending"
    """Registered, not (yet) current."""
