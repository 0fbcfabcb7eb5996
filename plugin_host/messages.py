"""The admin protocol: one frozen request class per ``Host`` method, and the replies.

Send any request to the admin actor (global name ``"plugin_host.admin"``) from an actor or
another actor system; the answer is :class:`Ok` or :class:`Failed`, carrying the request's
``corr`` (correlation id) back.  A message the admin does not understand gets
``Failed(BadRequestError(...))``.

Thespian's transport is plain pickle, so values that may hold plugin-defined classes
(call requests and replies, ``run`` functions, sandbox ``args``) travel as :class:`Blob`:
cloudpickle bytes.  The class names here are API (Thespian dispatches on them).
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import attrs
import cloudpickle
from thespian.actors import ActorAddress

from .config import HostConfig, ResourceLimits
from .states import RegistryEvent
from .values import (
    Artifact,
    AuditRecord,
    Event,
    ModuleVersion,
    NodeInfo,
    ReloadResult,
    ResourceUsage,
    SandboxInfo,
    VersionHistory,
)

__all__ = [
    "ADMIN_GLOBAL_NAME",
    "ActorRef",
    "BatchCreate",
    "BatchDestroy",
    "BatchHotReload",
    "Blob",
    "Call",
    "Cast",
    "CreateSandbox",
    "DestroySandbox",
    "EventNotice",
    "Failed",
    "GetAuditLog",
    "GetModuleVersion",
    "GetResourceUsage",
    "GetSandboxInfo",
    "GetVersionHistory",
    "HotReload",
    "ListModuleVersions",
    "ListNodes",
    "ListSandboxes",
    "LookupActor",
    "Ok",
    "Request",
    "RestartSandbox",
    "RollbackModule",
    "Run",
    "Subscribe",
    "Unsubscribe",
    "pack",
    "unblob",
]

T = TypeVar("T", covariant=True)
"""What a request's ``Ok`` reply carries (``Request[T]``): typing only, nothing of it is pickled."""

ADMIN_GLOBAL_NAME = "plugin_host.admin"
"""The Thespian global name of the admin actor."""


@attrs.frozen
class Blob:
    """A value serialised with cloudpickle, so plugin-defined types survive plain pickle."""

    data: bytes

    @classmethod
    def dump(cls, value: object) -> Blob:
        """Serialise ``value`` (by value where its module is not importable)."""
        return cls(cloudpickle.dumps(value))

    def load(self) -> Any:
        """Deserialise; runs code, so only load blobs from your own host."""
        return cloudpickle.loads(self.data)


def unblob(value: object) -> Any:
    """Return ``value.load()`` for a :class:`Blob`, the value itself otherwise."""
    return value.load() if isinstance(value, Blob) else value


_PLAIN_TYPES = (str, int, float, bool, bytes, type(None))


def pack(value: object) -> object:
    """``value`` itself when plain pickle carries it anywhere (builtin scalars and containers of
    them, checked by exact type), else a :class:`Blob`; :func:`unblob` undoes either."""
    return value if _is_plain(value, 0) else Blob.dump(value)


def _is_plain(value: Any, depth: int) -> bool:
    kind = type(value)
    if kind in _PLAIN_TYPES:
        return True
    if depth > 4:
        return False
    if kind in (list, tuple, set, frozenset):
        return all(_is_plain(item, depth + 1) for item in value)
    if kind is dict:
        return all(type(key) in _PLAIN_TYPES and _is_plain(item, depth + 1) for key, item in value.items())
    return False


@attrs.frozen
class Ok:
    """A successful reply."""

    value: Any = None
    corr: str = ""


@attrs.frozen
class Failed:
    """A failed reply; ``error`` is a :class:`~plugin_host.errors.PluginHostError`."""

    error: BaseException
    corr: str = ""


@attrs.frozen
class ActorRef:
    """Where a named actor of a sandbox runs now (``incarnation`` changes on restart)."""

    sandbox_id: str
    name: str
    address: ActorAddress
    incarnation: int
    deaths: tuple[tuple[int, str], ...] = ()
    """Recent earlier incarnations that died, with the correlation id of the call each was running."""
    max_mailbox: int | None = None
    """The sandbox's ``max_mailbox`` limit: calls a host may have waiting on this actor."""
    kid: bytes = b""
    """The key id of the sandbox's current incarnation: frames to the actor are signed with its key."""


@attrs.frozen(kw_only=True)
class Request(Generic[T]):
    """Base of every admin request; ``corr`` is echoed in the reply.

    ``T`` is the type of the value its ``Ok`` reply carries (``GetSandboxInfo`` is a
    ``Request[SandboxInfo]``), so a client's typed ``request(req) -> T`` needs no cast.
    """

    corr: str = ""


@attrs.frozen(kw_only=True)
class CreateSandbox(Request[SandboxInfo]):
    """Create and start a sandbox; replies ``Ok(SandboxInfo)``."""

    sandbox_id: str
    supervisor: str | Blob
    """``"module:Class"`` (in ``sandbox_path``), a dotted path, or a :class:`Blob` of a class."""
    supervisor_label: str = ""
    """How ``SandboxInfo.supervisor`` shows a supervisor sent as a Blob."""
    environment: str | None = None
    """A prepared environment of the sandbox's requirements (``plugin_host.deps``), first on its import path."""
    sandbox_path: str | None = None
    args: Any = None
    """The plugin's own value for its ``init`` (a :class:`Blob` of it, from a ``Host``)."""
    limits: ResourceLimits | None = None
    """``None``: the host's ``HostConfig.limits``."""
    security_profile: str | None = None
    requirements: dict[str, object] | None = None
    """Capabilities the actor system running the sandbox must offer (Thespian's capability check)."""
    restart_elsewhere: bool = False
    """When its system is lost, start the sandbox again on another capable one."""
    isolation: str | None = None
    """``"process"`` or ``"user"`` (a uid of its own); ``None``: the host's ``HostConfig.isolation``."""


@attrs.frozen(kw_only=True)
class DestroySandbox(Request[None]):
    """Stop a sandbox and forget its processes; replies ``Ok(None)``."""

    sandbox_id: str


@attrs.frozen(kw_only=True)
class RestartSandbox(Request[SandboxInfo]):
    """Stop and start a sandbox again from its current code; replies ``Ok(SandboxInfo)``."""

    sandbox_id: str


@attrs.frozen(kw_only=True)
class ListSandboxes(Request[list[SandboxInfo]]):
    """Replies ``Ok(list[SandboxInfo])``."""


@attrs.frozen(kw_only=True)
class ListNodes(Request[list[NodeInfo]]):
    """Replies ``Ok(list[NodeInfo])``: this host's system and every member of its convention it knows."""


@attrs.frozen(kw_only=True)
class GetSandboxInfo(Request[SandboxInfo]):
    """Replies ``Ok(SandboxInfo)``."""

    sandbox_id: str


@attrs.frozen(kw_only=True)
class LookupActor(Request[ActorRef]):
    """Replies ``Ok(ActorRef)`` for a running actor of a sandbox."""

    sandbox_id: str
    name: str
    wait: float = 0.0
    """Seconds to wait for the actor to be running (e.g. while it restarts) before failing."""
    not_incarnation: int | None = None
    """An incarnation the caller knows is gone: wait for a newer one."""


@attrs.frozen(kw_only=True)
class Call(Request[Any]):
    """A request to a plugin actor; replies ``Ok(reply)`` or ``Failed(PluginError)``.

    ``request`` and the reply travel as themselves when plain data, else as a :class:`Blob`
    (see :func:`pack`); :func:`unblob` reads either.

    Sent to the admin it is routed to the actor; the ``Host`` sends it to the actor directly.
    """

    sandbox_id: str
    name: str
    request: Any
    """The request value, a :class:`Blob` or plain data."""
    incarnation: int | None = None
    """When set, an actor of another incarnation answers ``Failed(ActorNotFoundError)``."""
    reply_to: ActorAddress | None = None
    """Address the reply goes to (default: the sender)."""


@attrs.frozen(kw_only=True)
class Cast(Request[None]):
    """A one-way message to a plugin actor; no reply."""

    sandbox_id: str
    name: str
    message: Any
    incarnation: int | None = None


@attrs.frozen(kw_only=True)
class Run(Request[Any]):
    """Run ``fn()`` (a :class:`Blob`) inside the sandbox; replies ``Ok(value)`` (a Blob unless plain data)."""

    sandbox_id: str
    fn: Blob
    timeout: float = 10.0
    reply_to: ActorAddress | None = None


@attrs.frozen(kw_only=True)
class BatchCreate(Request[list[Ok | Failed]]):
    """Create many sandboxes; replies ``Ok(list[Ok | Failed])``, one per spec, in order."""

    specs: list[CreateSandbox]


@attrs.frozen(kw_only=True)
class BatchDestroy(Request[list[Ok | Failed]]):
    """Destroy many sandboxes; replies ``Ok(list[Ok | Failed])``, one per id, in order."""

    sandbox_ids: list[str]


@attrs.frozen(kw_only=True)
class HotReload(Request[ReloadResult]):
    """Swap new code into a running sandbox; replies ``Ok(ReloadResult)`` or ``Failed(HotReloadError)``.

    ``artifacts`` come from a compilation (``Host.compile_*``); modules that import a
    reloaded module are reloaded with it.  All or nothing across the sandbox.
    """

    sandbox_id: str
    artifacts: list[Artifact]
    """``Artifact`` values (module, path, checksum, source)."""
    state_handler: Blob | None = None
    """A Blob of ``fn(old_state, old_vsn, new_vsn) -> new_state`` used instead of ``code_change``."""
    timeout: float = 30.0
    probation: float | None = None
    """Seconds during which a crash of a reloaded actor rolls back by itself (default: the host's)."""
    event: RegistryEvent = RegistryEvent.RELOADED
    """How the registry records it (``rolled_back`` for a rollback)."""
    environment: str | None = None
    """A prepared environment for changed requirements (``plugin_host.deps``); ``None`` keeps the current one."""


@attrs.frozen(kw_only=True)
class RollbackModule(Request[ReloadResult]):
    """Hot-reload the stored code of ``version``; replies ``Ok(ReloadResult)``."""

    sandbox_id: str
    module: str
    version: int
    timeout: float = 30.0


@attrs.frozen(kw_only=True)
class BatchHotReload(Request[list[Ok | Failed]]):
    """The same artifacts into many sandboxes; replies ``Ok(list[Ok | Failed])`` in order."""

    sandbox_ids: list[str]
    artifacts: list[Artifact]
    timeout: float = 30.0


@attrs.frozen(kw_only=True)
class GetModuleVersion(Request[int]):
    """Replies ``Ok(int)``: the current version of a module of a sandbox."""

    sandbox_id: str
    module: str


@attrs.frozen(kw_only=True)
class ListModuleVersions(Request[list[ModuleVersion]]):
    """Replies ``Ok(list[ModuleVersion])``, newest first."""

    sandbox_id: str
    module: str


@attrs.frozen(kw_only=True)
class GetVersionHistory(Request[VersionHistory]):
    """Replies ``Ok(VersionHistory)``."""

    sandbox_id: str
    module: str


@attrs.frozen(kw_only=True)
class Subscribe(Request[None]):
    """Send this actor (or context) every sandbox :class:`~plugin_host.values.Event` as an ``EventNotice``."""


@attrs.frozen(kw_only=True)
class Unsubscribe(Request[None]):
    """Stop the ``EventNotice`` messages to the sender."""


@attrs.frozen
class EventNotice:
    """Admin -> subscriber: one sandbox event."""

    event: Event


@attrs.frozen(kw_only=True)
class GetResourceUsage(Request[ResourceUsage]):
    """Replies ``Ok(ResourceUsage)``: memory, CPU, messages and restarts per actor."""

    sandbox_id: str


@attrs.frozen(kw_only=True)
class GetAuditLog(Request[list[AuditRecord]]):
    """Replies ``Ok(list[AuditRecord])``, oldest first (a bounded log per sandbox)."""

    sandbox_id: str


# -- between a Host and its own admin (not for operators; outside __all__) ----------------------------


@attrs.frozen
class HostBoot:
    """Host -> admin: claim a fresh system (the token detects stale ones)."""

    token: str
    host_pid: int
    host_create_time: float
    config: HostConfig

    @property
    def corr(self) -> str:
        """The token doubles as the correlation id."""
        return self.token


@attrs.frozen
class HostBooted:
    """Admin -> host: the system is ours."""

    token: str
    admin_pid: int
    system_pid: int
    pgid: int

    @property
    def corr(self) -> str:
        """The token doubles as the correlation id."""
        return self.token


@attrs.frozen
class HostShutdown:
    """Host -> admin: stop every sandbox gracefully; answered with ``Ok(pids)``."""

    corr: str = ""


@attrs.frozen
class HostBreach:
    """Host -> admin: a limit the host enforced itself (``max_mailbox``), to announce as an event."""

    sandbox_id: str
    actor: str
    limit: str
    value: float
    maximum: float


@attrs.frozen(kw_only=True)
class GetSandboxCode(Request[dict[str, tuple[str, str, bool]]]):
    """Host -> admin: the sandbox's current module sources (name -> (path, source, is_package))."""

    sandbox_id: str
