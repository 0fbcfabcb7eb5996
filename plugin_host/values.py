"""The value types the host returns: frozen attrs classes, plain data, picklable.

They live in a stable module that is never hot-reloaded, so they can cross actor
boundaries with Thespian's plain pickle transport.
"""

from __future__ import annotations

from typing import Any

import attrs

from .states import ChildStatus, EventKind, NodeStatus, SandboxStatus, VersionStatus

__all__ = [
    "ActorUsage",
    "Artifact",
    "AuditRecord",
    "ChildInfo",
    "CompileInfo",
    "Event",
    "ModuleVersion",
    "NodeInfo",
    "ReloadResult",
    "ResourceUsage",
    "SandboxInfo",
    "VersionHistory",
    "SANDBOX_STATUSES",
]

SANDBOX_STATUSES = tuple(str(status) for status in SandboxStatus)
"""Every value ``SandboxInfo.status`` can take."""


@attrs.frozen
class ChildInfo:
    """One actor of a sandbox's tree, as its supervisor last saw it."""

    name: str
    """Unique name within the sandbox."""
    pid: int | None
    """OS process id, or ``None`` while (re)starting."""
    restarts: int
    """How many times the supervisor restarted it."""
    module: str
    """Module its behaviour comes from."""
    version: int | None
    """Version of that module it runs (``None`` when not tracked by the registry)."""
    status: ChildStatus
    """``running``, ``restarting``, ``stopping``, ``stopped``, ``failed`` or ``crashed`` (see :class:`ChildStatus`)."""
    supervisor: str = ""
    """Name of its supervisor (``""`` for the sandbox root)."""
    kind: str = "worker"
    """``worker`` or ``supervisor``."""


@attrs.frozen
class SandboxInfo:
    """A snapshot of one sandbox."""

    id: str
    status: SandboxStatus
    """One of :data:`SANDBOX_STATUSES` (a :class:`SandboxStatus`, equal to its plain string)."""
    supervisor: str
    """The root supervisor spec it was created from (``module:Class``)."""
    created_at: float
    """Unix time of creation."""
    restart_count: int
    """Restarts since creation, never reset: of its actors by their supervisors, and of the whole
    sandbox (``restart_sandbox``, or a start on another system after its own was lost)."""
    children: list[ChildInfo] = attrs.field(factory=list)
    """Every actor of the tree, in start order (nested supervisors included)."""
    modules: dict[str, int] = attrs.field(factory=dict)
    """Module name to current version."""
    node: str = ""
    """The actor system the sandbox runs on."""
    reason: str | None = None
    """Why the sandbox failed or was lost, if it did."""
    pid: int | None = None
    """Process id of the sandbox root (its process group id too)."""
    security_profile: str = "standard"
    """The profile it runs under (its own, else the host's default): every create, reload and rollback
    of its code is scanned with it."""
    isolation: str = "process"
    """``"process"`` (the host's uid) or ``"user"`` (its own uid): its own, else the host's default."""
    uid: int | None = None
    """The uid every process of the sandbox runs as under ``isolation="user"``; None under ``"process"``."""
    limits: dict[str, float | None] = attrs.field(factory=dict)
    """Its resource limits (``ResourceLimits`` as a mapping, ``None`` for unlimited): the compile of a reload
    validates under its memory and CPU limits."""


@attrs.frozen
class NodeInfo:
    """One actor system of the convention, as this host's admin sees it."""

    name: str
    """``host:port`` of its admin (its ``plugin_host.node`` capability)."""
    capabilities: dict[str, Any]
    """What it offers (the ``plugin_host.*`` ones included)."""
    status: NodeStatus
    """``up``, or ``lost`` (left the convention or stopped answering)."""
    local: bool
    """Whether it is this host's own actor system."""
    sandboxes: list[str] = attrs.field(factory=list)
    """Ids of this host's sandboxes that run there."""
    rejected_frames: int | None = None
    """Frames its processes dropped since the host started: unauthenticated (no key of the host's
    signed them) or refused (a sandbox sent what it may not); ``None`` for a member."""
    denied_requests: int | None = None
    """Requests the admin refused to sandboxes since the host started; ``None`` for a member."""


@attrs.frozen
class Artifact:
    """One compiled module."""

    module: str
    path: str
    checksum: str
    """sha256 of the source, hex."""
    source: str


@attrs.frozen
class CompileInfo:
    """The outcome of a compilation."""

    artifacts: list[Artifact]
    output: str
    """Compiler, validator and security-scan text (warnings included)."""
    compilation_time: float
    """Milliseconds."""
    cached: bool


@attrs.frozen
class ReloadResult:
    """The outcome of a hot reload or rollback."""

    sandbox_id: str
    module: str
    old_version: int
    new_version: int
    actors_updated: list[str]


@attrs.frozen
class ModuleVersion:
    """One stored version of a module."""

    version: int
    checksum: str
    loaded_at: float
    status: VersionStatus
    """``current``, ``previous`` or ``failed``."""
    source: str


@attrs.frozen
class VersionHistory:
    """Every stored version of a module, newest first."""

    current_version: int
    total_versions: int
    versions: list[ModuleVersion]


@attrs.frozen
class ActorUsage:
    """Resource figures of one actor process."""

    name: str
    pid: int | None
    rss_bytes: int
    cpu_seconds: float
    messages: int
    restarts: int
    open_files: int = 0
    """File descriptors the process has open (0 where the host may not count them: a host not run as root
    lacks ``CAP_SYS_PTRACE``, which a sandbox's non-dumpable processes ask of who lists their files)."""
    threads: int = 0


@attrs.frozen
class ResourceUsage:
    """Resource figures of one sandbox: ``actors`` and the ``total_*`` figures are of its processes running
    now (psutil); the ``group_*`` figures, when it has a control group, are its group's."""

    sandbox_id: str
    actors: list[ActorUsage]
    total_rss_bytes: int
    total_cpu_seconds: float
    history: list[tuple[float, int, float]] = attrs.field(factory=list)
    """The monitor's recent samples: (unix time, total rss bytes, total cpu seconds), oldest first."""
    group_cpu_seconds: float | None = None
    """CPU seconds of the sandbox's control group: every process it had since its root started, dead ones
    included (what ``max_cpu_seconds`` is checked against there); None: the sandbox has no group, and only
    ``total_cpu_seconds`` (its processes running now) is known."""
    group_memory_bytes: int | None = None
    """Memory charged to the sandbox's control group (pages its processes touched, page cache and the
    runtime's own included; pages shared with the host's processes are not); None: no group."""


@attrs.frozen
class Event:
    """Something that happened to a sandbox, as delivered to ``Host.subscribe`` callbacks."""

    kind: EventKind
    """``started``, ``crashed``, ``restarted``, ``failed``, ``limit_breached``, ``reloaded``,
    ``rolled_back``, ``stopped``, ``lost``, ``denied`` or ``frame_rejected`` (see :class:`EventKind`)."""
    sandbox_id: str
    actor: str = ""
    reason: str = ""
    time: float = 0.0
    details: dict[str, Any] = attrs.field(factory=dict, hash=False)


@attrs.frozen
class AuditRecord:
    """One operation a plugin performed that the runtime audit watches (PEP 578 audit hooks)."""

    sandbox_id: str
    actor: str
    event: str
    """The audit event: ``open``, ``subprocess.Popen``, ``os.system``, ``os.exec``, ``socket.connect``..."""
    detail: str
    """A short description of the arguments (a path, an address, a command)."""
    time: float
    blocked: bool
    """Whether the ``restricted`` profile refused it (the plugin got ``PermissionError``)."""
