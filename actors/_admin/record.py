"""The admin's record of one sandbox, and what every admin component shares.

:class:`SandboxRecord` is the admin's mirror of a sandbox; each field's docstring names the component that
writes it (``lifecycle`` is :mod:`actors._admin.lifecycle`, and so on).  :class:`AdminPort` is the little of
the actor a component may use; everything else it needs comes as a callable at construction.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Mapping, Protocol

import attrs
from thespian.actors import ActorAddress

from plugin_host import lowlevel
from plugin_host.config import HostConfig, ResourceLimits
from plugin_host.errors import BadRequestError, PluginHostError, SandboxNotFoundError
from plugin_host.messages import CreateSandbox, Failed, Ok
from plugin_host.scanning import check_sources, format_findings
from plugin_host.states import AdminAction, EventKind, RecordStatus, SandboxStatus
from plugin_host.values import AuditRecord, ChildInfo

from .. import _messages as m
from .._base import log

__all__ = [
    "AUDIT_LOG",
    "AdminPort",
    "Done",
    "Emit",
    "Probation",
    "Sources",
    "SandboxRecord",
    "batch",
    "find",
    "not_found",
    "scan",
]

Done = Callable[[object], None]
"""Called with the result (a value, or a PluginHostError) of an admin operation."""

Sources = dict[str, tuple[str, str, bool]]
"""Module name -> (path, source, is a package): a sandbox's code as it crosses the wire."""

AUDIT_LOG = 1000
"""Audit records kept per sandbox."""


class AdminPort(Protocol):
    """What the admin's components may do as the actor: send, answer, create actors, wake up."""

    @property
    def multiprocess(self) -> bool:
        """Whether the actor system forks (a simpleSystemBase does not)."""
        ...

    def send(self, target: ActorAddress, message: object) -> None:
        """Send ``message`` to ``target``."""
        ...

    def reply(self, target: ActorAddress, value: object, corr: str) -> None:
        """Send ``Ok(value)`` (or ``Failed`` when ``value`` is an error) to ``target``."""
        ...

    def createActor(self, actorClass: type, targetActorRequirements: dict[str, object] | None = None) -> ActorAddress:  # noqa: N803 - Thespian's names
        """Create a child actor (on the system offering ``targetActorRequirements``)."""
        ...

    def notifyOnSystemRegistrationChanges(self, on: bool) -> None:
        """Hear (or stop hearing) about systems joining and leaving the convention."""
        ...


class Emit(Protocol):
    """Record an event and push it to its subscribers (:meth:`actors._admin.events.Events.emit`)."""

    def __call__(
        self, kind: EventKind, sandbox_id: str, actor: str = "", reason: str = "", **details: object
    ) -> None: ...


@attrs.define
class Probation:
    """A reload's probation: its actors crashing before ``deadline`` roll the reload back."""

    deadline: float
    actors: frozenset[str]
    baseline: dict[str, int]
    """Crashes per actor when the reload committed."""
    old_sources: Sources
    new_versions: dict[str, int]


def _audit_log() -> deque[AuditRecord]:
    return deque(maxlen=AUDIT_LOG)


@attrs.define
class SandboxRecord:
    """The admin's mirror of one sandbox."""

    request: CreateSandbox
    """What created it (versions replaces its ``environment`` after a reload that changed it)."""
    sources: Sources
    """Its current code (versions, on each committed reload)."""
    modules: dict[str, int]
    """Module -> current version (versions)."""
    limits: ResourceLimits
    created_at: float
    root: ActorAddress | None = None
    """Its root's address while one runs (lifecycle)."""
    pid: int | None = None
    """Its root's pid (lifecycle; a member's root reports its own)."""
    status: RecordStatus = RecordStatus.STARTING
    """Written by :meth:`actors._admin.lifecycle.Sandboxes.move` only."""
    reason: str | None = None
    """Why it failed or was lost (lifecycle)."""
    restart_count: int = 0
    """Actor restarts in the current incarnation (the root's own count)."""
    earlier_restarts: int = 0
    """Restarts of earlier incarnations, each whole-sandbox restart counted too: the reported count only grows."""
    children: tuple[ChildInfo, ...] = ()
    """Its tree as its root last reported it (lifecycle)."""
    directory: dict[str, tuple[ActorAddress, int]] = attrs.field(factory=dict)
    """Actor name -> (address, incarnation), as its root last reported it (lifecycle)."""
    deaths: dict[str, tuple[tuple[int, str], ...]] = attrs.field(factory=dict)
    action: AdminAction = AdminAction.CREATE
    """What the admin is doing to it, so a root's exit means the right thing (lifecycle)."""
    deadline: float | None = None
    """When a start or stop in progress is given up (lifecycle)."""
    waiters: list[Done] = attrs.field(factory=list)
    """Who waits for the start, stop or restart in progress (lifecycle)."""
    error: PluginHostError | None = None
    """Why a start failed; answered once the root is gone."""
    restarted: bool = False
    """Whether the current start is a ``restart_sandbox`` (a failure then keeps the record)."""
    crashes: dict[str, int] = attrs.field(factory=dict)
    """Crashes per actor name (probation watches them)."""
    probation: Probation | None = None
    """The last reload's probation, while it lasts (versions)."""
    messages: dict[str, int] = attrs.field(factory=dict)
    """Messages per actor, as its root last counted them (events)."""
    audit: deque[AuditRecord] = attrs.field(factory=_audit_log)
    """Its recent audit records, bounded (events)."""
    node: str = ""
    """The member of the convention its root runs on; ``""`` for the host's own system."""
    lost_reason: str | None = None
    """Set when the admin gave the root up as lost (its system died, left or fell silent)."""
    principal: lowlevel.Principal | None = None
    """The key identity of the current root's incarnation (a new one each start)."""
    user: m.SandboxUser | None = None
    """Its own uid under ``isolation="user"`` (lifecycle: taken at its first start, kept across restarts,
    given back when the record goes); None: the host's uid."""
    stopping: list[tuple[int, float]] = attrs.field(factory=list)
    """Its local processes when it was told to stop (pid, create time): a destroy answers once they end."""
    group: lowlevel.cgroup.SandboxGroup | None = None
    """Its control group (lifecycle: made with the record, removed with it); None: it has none."""
    ended_by: str | None = None
    """Why the admin ended it itself (a whole-sandbox limit passed): the reason its ``failed`` status gives."""

    def isolation(self, config: HostConfig) -> str:
        """How it is isolated: its own ``isolation``, else the host's default."""
        return self.request.isolation or config.isolation

    def security_profile(self, config: HostConfig) -> str:
        """The profile it runs under: its own, else the host's default."""
        return self.request.security_profile or config.security_profile

    def public_status(self) -> SandboxStatus:
        """What ``SandboxInfo.status`` says of it: a restarting sandbox is starting, a stopping one stopped."""
        if self.action == AdminAction.RESTART:
            return SandboxStatus.STARTING
        if self.status == RecordStatus.STOPPING:
            return SandboxStatus.STOPPED
        return SandboxStatus(self.status)

    def next_incarnation(self) -> None:
        """The sandbox starts again as a whole: its restarts so far, and this one, carry over."""
        self.earlier_restarts += self.restart_count + 1
        self.restart_count = 0


def find(
    records: Mapping[str, SandboxRecord], port: AdminPort, sandbox_id: object, sender: ActorAddress, corr: str
) -> SandboxRecord | None:
    """The record of ``sandbox_id``; if there is none, answer ``sender`` that it was not found."""
    rec = records.get(sandbox_id) if isinstance(sandbox_id, str) else None
    if rec is None:
        port.reply(sender, not_found(sandbox_id), corr)
    return rec


def scan(sandbox_id: str, profile: str, sources: Sources) -> None:
    """Scan code bound for a sandbox with its own profile: every path that brings code in crosses here.

    Raises:
        SecurityViolationError: under ``restricted``, naming each finding's file and line (the
            ``standard`` findings are logged as warnings; ``permissive`` scans nothing).
        CompilationError: a source is not valid Python.
    """
    what = f"sandbox {sandbox_id!r} runs under the restricted profile, which refuses this code:"
    findings = check_sources(((path, source) for path, source, _ in sources.values()), profile, what=what)
    if findings:
        log.warning("code for sandbox %r:\n%s", sandbox_id, format_findings(findings, "security warning"))


def not_found(sandbox_id: object) -> PluginHostError:
    """The error for an unknown (or malformed) sandbox id."""
    if not isinstance(sandbox_id, str):
        return BadRequestError(f"a sandbox id is a string, got {sandbox_id!r}")
    return SandboxNotFoundError(f"no sandbox {sandbox_id!r}", sandbox_id=sandbox_id)


def batch(count: int, answer: Callable[[list[Ok | Failed]], None], start: Callable[[int, Done], None]) -> None:
    """Start ``count`` operations; once every one is done, ``answer`` gets their outcomes in order."""
    results: list[Any] = [None] * count
    left = [count]

    def slot(index: int) -> Done:
        def done(result: object) -> None:
            results[index] = Failed(result) if isinstance(result, BaseException) else Ok(result)
            left[0] -= 1
            if left[0] == 0:
                answer(results)

        return done

    if count == 0:
        answer([])
    for index in range(count):
        start(index, slot(index))
