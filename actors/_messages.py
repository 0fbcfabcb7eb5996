"""Internal messages between the actors of a host (not API; may change any time)."""

from __future__ import annotations

from typing import Any

import attrs
from thespian.actors import ActorAddress

from plugin_host.config import ResourceLimits
from plugin_host.errors import PluginHostError
from plugin_host.messages import Blob, Call, Cast, Request
from plugin_host.values import AuditRecord, ChildInfo

__all__ = [
    "SandboxUser",
    "SandboxContext",
    "StartChild",
    "Started",
    "StartFailed",
    "Exiting",
    "Ping",
    "Pong",
    "Stop",
    "ChildUp",
    "ChildDown",
    "SupervisorFailed",
    "DirectoryUpdate",
    "Route",
    "StartSandbox",
    "SandboxStatus",
    "RunIn",
    "RunDone",
    "ReloadSandbox",
    "SandboxReloaded",
    "LoadCode",
    "CodeLoaded",
    "CommitCode",
    "AbortCode",
    "TreeEvent",
    "Usage",
    "CountMessages",
    "Watch",
    "Sample",
    "UsageQuery",
    "AuditRecords",
    "NodePing",
    "NodePong",
    "RootGone",
    "KillGroups",
    "PrepareEnvironment",
    "EnvironmentReady",
]


@attrs.frozen
class SandboxUser:
    """The uid a sandbox runs as (``isolation="user"``, see :mod:`actors._process.identity`), and its folders."""

    uid: int
    gid: int
    home: str
    """``USERS_DIR/uid-<uid>``: root's, group ``gid``, ``0750`` (the environment copies are in it)."""
    scratch: str
    """The sandbox's own writable folder (``HOME``, ``TMPDIR``, working directory)."""


@attrs.frozen
class SandboxContext:
    """What every actor of a sandbox needs to know about it."""

    sandbox_id: str
    root: ActorAddress
    """Address of the sandbox root (directory, routing)."""
    heartbeat_interval: float
    hang_timeout: float
    shutdown_timeout: float
    limits: ResourceLimits = ResourceLimits()
    security_profile: str = "standard"
    """``restricted``, ``standard`` or ``permissive``: what the runtime audit does."""
    user: SandboxUser | None = None
    """``isolation="user"``: the uid its root switches to before any plugin code (every process of the
    sandbox runs as it); None: the host's own uid."""


@attrs.frozen
class StartChild:
    """Supervisor -> new child: become ``name`` running ``spec`` (a cloudpickled ChildSpec)."""

    context: SandboxContext
    name: str
    incarnation: int
    spec: bytes
    directory: dict[str, ActorAddress] = attrs.field(factory=dict)
    """Known sibling addresses (name -> address)."""
    modules: dict[str, int] = attrs.field(factory=dict)
    """Current version of each sandbox module."""


@attrs.frozen
class Started:
    """Child -> supervisor: up and running (``init`` returned)."""

    name: str
    incarnation: int


@attrs.frozen
class StartFailed:
    """Child -> supervisor: ``init`` (or loading the spec) raised; the child exits."""

    name: str
    incarnation: int
    reason: str


@attrs.frozen
class Exiting:
    """Child -> supervisor, just before it exits on its own."""

    name: str
    incarnation: int
    reason: str
    normal: bool


@attrs.frozen
class Ping:
    """Supervisor -> child heartbeat."""

    seq: int


@attrs.frozen
class Pong:
    """Child -> supervisor heartbeat answer."""

    name: str
    incarnation: int
    seq: int
    messages: int = 0
    """Plugin messages handled so far (for resource usage)."""


@attrs.frozen
class Stop:
    """Parent -> supervisor: stop every child (reverse start order), then report and exit.

    A nested supervisor tells its parent with ``Exiting(normal=True)``; the sandbox root reports
    ``SandboxStatus("stopped")`` to the admin.
    """

    reason: str = "shutdown"


@attrs.frozen
class ChildUp:
    """Any supervisor -> sandbox root: a child (re)started at ``address``."""

    name: str
    incarnation: int
    address: ActorAddress
    pid: int | None
    supervisor: str
    kind: str
    module: str
    restarts: int


@attrs.frozen
class ChildDown:
    """Any supervisor -> sandbox root: a child stopped or crashed (``status`` says which)."""

    name: str
    incarnation: int
    status: str
    reason: str
    restarting: bool
    last_call: str = ""
    """Correlation id of the call the child was running when it went down, if any."""


@attrs.frozen
class SupervisorFailed:
    """Nested supervisor -> parent: restart intensity exceeded; it stops and exits."""

    name: str
    reason: str


@attrs.frozen
class DirectoryUpdate:
    """Sandbox root -> every actor of the sandbox: where named actors are now."""

    entries: dict[str, ActorAddress]


@attrs.frozen
class Route:
    """Actor -> sandbox root: deliver ``message`` to the actor named ``name``."""

    name: str
    message: Call | Cast


@attrs.frozen
class StartSandbox:
    """Admin -> sandbox root: load the code and start the tree."""

    context: SandboxContext
    supervisor: str | Blob
    """``module:Class`` / dotted path string, or a Blob of a class."""
    sources: dict[str, tuple[str, str, bool]]
    """Module name -> (path, source, is_package)."""
    args: Any
    """``CreateSandbox.args`` as the host sent it: the plugin's own value (a Blob of it, from a ``Host``)."""
    modules: dict[str, int]
    environment: str | None = None
    """The sandbox's dependency environment, put first on the import path before any plugin code."""
    checksums: dict[str, str] | None = None
    """sha256 of each source: the root refuses code that does not match (it may come from another machine)."""
    packages: tuple[str, ...] = ()
    """On another system than the host's: the environment's requirements, to install there (its
    ``state_dir``, ``find_links``, ``no_index``) instead of using the host's ``environment`` folder."""
    kid: bytes = b""
    """The key id of this incarnation of the sandbox: the root switches to its key before running plugin code."""
    group: dict[str, str] | None = None
    """The sandbox's control group (controller -> directory, made by the admin): the root moves itself in
    before it drops its capabilities and before any plugin code; None: the sandbox has none."""
    syscall_filter: str = "off"
    """The seccomp filter (``actors._process.syscalls.confine``): ``"required"`` (install it or fail the start),
    ``"auto"`` (where that system can), ``"off"``; the admin decides (``HostConfig.syscall_filter``)."""


@attrs.frozen
class SandboxStatus:
    """Sandbox root -> admin: state changes (``running``, ``failed``) and tree changes."""

    sandbox_id: str
    status: str
    reason: str | None = None
    children: tuple[ChildInfo, ...] = ()
    """ChildInfo values in start order."""
    restart_count: int = 0
    directory: dict[str, tuple[ActorAddress, int]] = attrs.field(factory=dict)
    """name -> (address, incarnation) of running actors."""
    pid: int | None = None
    error: PluginHostError | None = None
    """The PluginHostError behind a ``start_failed`` status."""
    deaths: dict[str, tuple[tuple[int, str], ...]] = attrs.field(factory=dict)
    """name -> recent (incarnation, last call) of its dead incarnations, newest last."""
    crashes: dict[str, int] = attrs.field(factory=dict)
    """name -> how many times it crashed (abnormal exits) since the sandbox started."""


@attrs.frozen
class RunIn:
    """Sandbox root -> its runner: run ``run`` under the sandbox's limits and security profile."""

    context: SandboxContext
    run: Any
    """The ``plugin_host.messages.Run`` request, its ``reply_to`` filled in."""


@attrs.frozen
class RunDone:
    """Runner -> sandbox root: a ``Host.run`` function finished (so the root can forget it)."""

    corr: str


@attrs.frozen
class ReloadSandbox:
    """Admin -> sandbox root: load new code into every actor, all or nothing."""

    reload_id: str
    sources: dict[str, tuple[str, str, bool]]
    """Changed modules: name -> (path, source, is_package)."""
    order: list[str]
    """Every module to re-execute: the changed ones, then their importers (dependency order)."""
    versions: dict[str, tuple[int, int]]
    """module -> (old version, new version), as ``code_change`` receives them."""
    state_handler: bytes | None
    timeout: float
    environment: str | None = None
    """A new dependency environment to put first on the import path before loading."""
    checksums: dict[str, str] | None = None
    """sha256 of each changed source: the root refuses code that does not match."""
    packages: tuple[str, ...] = ()
    """As ``StartSandbox.packages``, for a new environment."""


@attrs.frozen
class SandboxReloaded:
    """Sandbox root -> admin: the outcome of a ``ReloadSandbox``."""

    reload_id: str
    ok: bool
    actors_updated: tuple[str, ...] = ()
    actor: str = ""
    cause: str = ""


@attrs.frozen
class LoadCode:
    """Sandbox root -> actor: load new code; ``prepare`` holds it (and the actor's messages) until commit."""

    reload_id: str
    sources: dict[str, tuple[str, str, bool]]
    order: list[str]
    versions: dict[str, tuple[int, int]]
    state_handler: bytes | None
    prepare: bool
    timeout: float
    environment: str | None = None


@attrs.frozen
class CodeLoaded:
    """Actor -> sandbox root: the new code is loaded (prepared), or why not."""

    reload_id: str
    name: str
    ok: bool
    cause: str = ""
    updated: bool = False
    """Whether this actor's behaviour changed (its module was reloaded)."""


@attrs.frozen
class CommitCode:
    """Sandbox root -> prepared actor: switch to the new code, then handle the held messages."""

    reload_id: str


@attrs.frozen
class AbortCode:
    """Sandbox root -> prepared actor: drop the new code and keep the old code and state."""

    reload_id: str


@attrs.frozen
class TreeEvent:
    """Sandbox root -> admin: something happened to an actor (crashed, restarted, limit_breached)."""

    sandbox_id: str
    kind: str
    actor: str
    reason: str = ""
    details: dict[str, object] = attrs.field(factory=dict)


@attrs.frozen
class Usage:
    """Supervisor -> sandbox root (and root -> admin): messages handled per actor."""

    messages: dict[str, int]
    sandbox_id: str = ""
    """Set by the root when it reports to the admin."""
    corr: str = ""
    """Set when it answers a ``CountMessages``."""


@attrs.frozen
class CountMessages:
    """Admin -> sandbox root: ask every actor now, then answer ``Usage`` with this ``corr``."""

    corr: str


@attrs.frozen
class Watch:
    """Admin -> monitor: the processes of a sandbox and its limits (empty ``pids``: forget it)."""

    sandbox_id: str
    pids: dict[str, int]
    limits: ResourceLimits
    interval: float = 1.0
    """The monitor's sampling interval."""
    group: dict[str, str] | None = None
    """The sandbox's control group (controller -> directory): its CPU time, dead processes included, is
    what ``max_cpu_seconds`` is checked against; None: the sandbox has none (each process is checked)."""


@attrs.frozen
class Sample:
    """Monitor -> admin: a limit the monitor enforced by killing a process."""

    sandbox_id: str
    actor: str
    limit: str
    value: float
    maximum: float
    whole_sandbox: bool = False
    """The limit is the whole sandbox's and stays passed (its group's lifetime CPU): the admin ends the
    sandbox as ``failed``."""
    reason: str = ""
    """What the event says, where not the limit passed by the value (the kernel's OOM killer acted, say)."""


@attrs.frozen(kw_only=True)
class UsageQuery(Request):
    """Admin -> monitor: answer ``ResourceUsage`` for a sandbox to ``reply_to``."""

    sandbox_id: str
    messages: dict[str, int]
    restarts: dict[str, int]
    reply_to: ActorAddress


@attrs.frozen
class AuditRecords:
    """Worker -> sandbox root -> admin: what the runtime audit saw during a callback."""

    sandbox_id: str
    records: tuple[AuditRecord, ...]


@attrs.frozen
class NodePing:
    """Admin -> its monitor on another system of the convention: the admin lives.

    The monitor answers :class:`NodePong`; when no ping came for ``timeout`` seconds (its host
    is gone or cut off, and nobody else would stop them) it ends the host's sandboxes there.
    """

    timeout: float


@attrs.frozen
class NodePong:
    """A node's monitor -> admin: that system still answers."""


@attrs.frozen
class RootGone:
    """A monitor -> admin: the root process of a watched sandbox no longer runs.

    On another system Thespian forwards a root's exit through that system's admin; when that
    word is lost (the host was cut off at the time), this one still comes.
    """

    sandbox_id: str
    pid: int


@attrs.frozen
class KillGroups:
    """Admin -> a node's monitor: SIGKILL these sandboxes' process groups on that system.

    The monitor kills only the groups of sandbox roots it watches (a pid it never saw may have
    been reused since).
    """

    pgids: tuple[int, ...]


@attrs.frozen
class PrepareEnvironment:
    """Sandbox root -> its environment installer: install ``packages`` on this system for a reload."""

    reload_id: str
    packages: tuple[str, ...]


@attrs.frozen
class EnvironmentReady:
    """Environment installer -> sandbox root: the folder to use, or why pip failed."""

    reload_id: str
    path: str | None
    error: str | None = None
