"""The admin's side of versions (:class:`Versions`): numbering, hot reload and rollback requests, probation.

Version numbers are assigned here from an in-memory copy of the registry (loaded from the
store the first time a sandbox id is seen), so a reload never waits on a disk write; the
registry actor records every step in the same order.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from typing import Callable, Mapping, Sequence

import attrs
from thespian.actors import ActorAddress

from plugin_host.codeload import CodeTable, dependents
from plugin_host.config import HostConfig
from plugin_host.errors import BadRequestError, HotReloadError, PluginHostError
from plugin_host.messages import (
    BatchHotReload,
    Blob,
    GetModuleVersion,
    GetVersionHistory,
    HotReload,
    ListModuleVersions,
    RollbackModule,
)
from plugin_host.states import EventKind, RecordStatus, RegistryEvent
from plugin_host.store import VersionStore
from plugin_host.values import Artifact, ReloadResult

from .. import _messages as m
from .._process.identity import readable_environment
from ..registry import OpenRegistry, RecordOutcome, RecordVersions, RegistryActor, RegistryQuery
from .nodes import remote_packages
from .record import AdminPort, Done, Emit, Probation, SandboxRecord, Sources, not_found, scan

__all__ = ["ModuleVersions", "Versions"]

_reload_ids = itertools.count(1)

VersionQuery = GetModuleVersion | ListModuleVersions | GetVersionHistory
"""The version queries the registry actor answers."""


@attrs.define
class ModuleVersions:
    """What the admin knows of one module's versions in one sandbox."""

    last: int = 0
    current: int = 0
    by_checksum: dict[str, int] = attrs.field(factory=dict)

    def assign(self, checksum: str) -> int:
        """The stored version with this checksum, or the next number."""
        version = self.by_checksum.get(checksum)
        if version is None:
            self.last += 1
            version = self.by_checksum[checksum] = self.last
        return version


@attrs.define
class _PendingReload:
    sandbox_id: str
    done: Done
    changed: Sources
    checksums: dict[str, str]
    versions: dict[str, tuple[int, int]]
    event: RegistryEvent
    details: str
    probation: float
    deadline: float
    environment: str | None = None


def _checksum(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


_EVENT_OF = {RegistryEvent.RELOADED: EventKind.RELOADED, RegistryEvent.ROLLED_BACK: EventKind.ROLLED_BACK}
"""The event a committed reload emits, by how the registry records it (a reload is never ``created``)."""


class Versions:
    """Owns the version tables, the reloads in progress, the store reader and the registry actor's address."""

    def __init__(
        self,
        port: AdminPort,
        records: Mapping[str, SandboxRecord],
        config: Callable[[], HostConfig],
        emit: Emit,
        from_root: Callable[[SandboxRecord, ActorAddress], bool],
    ) -> None:
        self.port = port
        self.records = records
        """Every sandbox's record (read only, but for what a committed reload changes: its code, its
        module versions, its environment and its probation)."""
        self.config = config
        self.emit = emit
        self.from_root = from_root
        self.tables: dict[str, dict[str, ModuleVersions]] = {}
        """Sandbox id -> module -> what is known of its versions."""
        self.pending: dict[str, _PendingReload] = {}
        """Reloads sent to a root and not answered yet, by reload id."""
        self.reader: VersionStore | None = None
        self.registry: ActorAddress | None = None
        """The registry actor (it writes the store)."""

    def open(self, path: str, max_versions: int | None) -> None:
        """Open the store at ``path``: read here, written by a registry actor made now (once, at boot)."""
        self.reader = VersionStore(path, max_versions=max_versions)
        self.registry = self.port.createActor(RegistryActor)
        self.port.send(self.registry, OpenRegistry(path, max_versions))

    def sandbox_of(self, reload_id: str) -> str | None:
        """The sandbox a reload in progress is for."""
        pending = self.pending.get(reload_id)
        return pending.sandbox_id if pending is not None else None

    # -- numbering -----------------------------------------------------------------------

    def versions_of(self, sandbox_id: str) -> dict[str, ModuleVersions]:
        """This sandbox's version table, read from the store the first time."""
        table = self.tables.get(sandbox_id)
        if table is None:
            known = self.reader.known(sandbox_id) if self.reader is not None else {}
            table = {name: ModuleVersions(last, current, dict(sums)) for name, (last, current, sums) in known.items()}
            self.tables[sandbox_id] = table
        return table

    def register_created(self, sandbox_id: str, sources: Sources) -> dict[str, int]:
        """Number the code a sandbox starts with (version 1, or the identical stored version)."""
        table, entries, current = self.versions_of(sandbox_id), [], {}
        for module, (_, source, _) in sorted(sources.items()):
            checksum = _checksum(source)
            info = table.setdefault(module, ModuleVersions())
            info.current = current[module] = info.assign(checksum)
            entries.append((module, source, checksum, info.current))
        if entries:
            self.port.send(self.registry, RecordVersions(sandbox_id, tuple(entries), RegistryEvent.CREATED))
        return current

    # -- requests -------------------------------------------------------------------------

    def hot_reload(self, msg: HotReload, done: Done) -> None:
        """Reload compiled artifacts into a sandbox."""
        if not isinstance(msg.event, str) or msg.event not in _EVENT_OF:  # "created" (or anything else) names no reload
            kinds = ", ".join(_EVENT_OF)
            done(BadRequestError(f"event must be one of {kinds}, got {msg.event!r}", field="event"))
            return
        probation = self.config().probation_seconds if msg.probation is None else msg.probation
        self.start_reload(
            msg.sandbox_id,
            msg.artifacts,
            msg.state_handler,
            msg.timeout,
            probation,
            msg.event,
            "",
            done,
            msg.environment,
        )

    def rollback(self, msg: RollbackModule, done: Done) -> None:
        """Reload the stored code of an earlier (or later) version."""
        reader = self.reader
        if reader is None:  # the host boots the admin before it asks anything
            raise RuntimeError("the version store is not open yet")
        try:
            source = reader.source(msg.sandbox_id, msg.module, msg.version)
        except PluginHostError as exc:
            done(exc)
            return
        rec = self.records.get(msg.sandbox_id)
        path = rec.sources.get(msg.module, (f"<{msg.module}>",))[0] if rec is not None else f"<{msg.module}>"
        artifact = Artifact(msg.module, path, _checksum(source), source)
        self.start_reload(
            msg.sandbox_id,
            [artifact],
            None,
            msg.timeout,
            0.0,
            RegistryEvent.ROLLED_BACK,
            f"rollback to version {msg.version}",
            done,
        )

    def batch_item(self, msg: BatchHotReload, sandbox_id: str, done: Done) -> None:
        """One sandbox of a ``BatchHotReload``."""
        self.start_reload(
            sandbox_id,
            msg.artifacts,
            None,
            msg.timeout,
            self.config().probation_seconds,
            RegistryEvent.RELOADED,
            "",
            done,
        )

    def forward_query(self, msg: VersionQuery, sender: ActorAddress) -> None:
        """A version query: answered by the registry actor."""
        if not (isinstance(msg.sandbox_id, str) and isinstance(msg.module, str)):
            self.port.reply(
                sender,
                BadRequestError(
                    f"{type(msg).__name__}: sandbox_id and module are strings, got "
                    f"{msg.sandbox_id!r} and {msg.module!r}"
                ),
                msg.corr,
            )
            return
        self.port.send(self.registry, RegistryQuery(msg, sender))

    # -- the reload -----------------------------------------------------------------------

    def start_reload(
        self,
        sandbox_id: str,
        artifacts: object,
        state_handler: Blob | None,
        timeout: float,
        probation: float,
        event: RegistryEvent,
        details: str,
        done: Done,
        environment: str | None = None,
    ) -> None:
        """Validate, number and send a reload to the sandbox root; ``done`` gets the outcome.

        A new ``environment`` (changed requirements) re-executes every module of the sandbox.
        """
        try:
            rec, changed, checksums, valid = self._changes(sandbox_id, artifacts)
        except PluginHostError as exc:
            done(exc)
            return
        new_environment = environment if environment and environment != rec.request.environment else None
        if not changed and new_environment is None:
            module = sorted(a.module for a in valid)[0]
            current = self.versions_of(sandbox_id).get(module, ModuleVersions()).current
            done(ReloadResult(sandbox_id, module, current, current, []))
            return
        sources = {**rec.sources, **changed}
        order = _reload_order(sources, sorted(changed))
        if new_environment is not None:
            order += [module for module in sorted(sources) if module not in order]
        table = self.versions_of(sandbox_id)
        versions = {}
        for module in order:
            info = table.setdefault(module, ModuleVersions())
            new = info.assign(checksums[module]) if module in changed else info.current
            versions[module] = (info.current, new)
        self.port.send(
            self.registry,
            RecordVersions(
                sandbox_id,
                tuple(
                    (module, changed[module][1], checksums[module], versions[module][1]) for module in sorted(changed)
                ),
            ),
        )
        reload_id = f"r{next(_reload_ids)}"
        self.pending[reload_id] = _PendingReload(
            sandbox_id,
            done,
            changed,
            checksums,
            versions,
            event,
            details,
            probation,
            time.monotonic() + timeout + 5.0,
            new_environment,
        )
        handler = state_handler.data if state_handler is not None else None
        self.port.send(
            rec.root,
            m.ReloadSandbox(
                reload_id,
                changed,
                order,
                versions,
                handler,
                timeout,
                new_environment if rec.user is None else readable_environment(rec.user, new_environment),
                {name: checksums[name] for name in changed},
                remote_packages(rec.node, new_environment),
            ),
        )

    def _changes(
        self, sandbox_id: object, artifacts: object
    ) -> tuple[SandboxRecord, Sources, dict[str, str], Sequence[Artifact]]:
        rec = self.records.get(sandbox_id) if isinstance(sandbox_id, str) else None
        if rec is None:
            raise not_found(sandbox_id)
        if rec.status != RecordStatus.RUNNING or rec.root is None:
            raise HotReloadError(
                f"sandbox {sandbox_id!r} is {rec.status}; only a running sandbox can be reloaded",
                actor="",
                cause=rec.status,
            )
        if (
            not isinstance(artifacts, (list, tuple))
            or not artifacts
            or not all(isinstance(a, Artifact) for a in artifacts)
        ):
            raise BadRequestError("a reload needs a non-empty list of Artifact values")
        valid: Sequence[Artifact] = artifacts
        changed, checksums = {}, {}
        for artifact in valid:
            if not isinstance(artifact.source, str) or _checksum(artifact.source) != artifact.checksum:
                raise BadRequestError(f"artifact {artifact.module!r}: the checksum does not match the source")
            checksums[artifact.module] = artifact.checksum
            old = rec.sources.get(artifact.module)
            if old is None or _checksum(old[1]) != artifact.checksum:
                is_package = old[2] if old else artifact.path.endswith("__init__.py")
                changed[artifact.module] = (artifact.path, artifact.source, is_package)
        for module, (_, source, _) in rec.sources.items():
            checksums.setdefault(module, _checksum(source))
        # Every reload, rollback and probation crosses here: scan what changed, with the sandbox's profile.
        scan(rec.request.sandbox_id, rec.security_profile(self.config()), changed)
        return rec, changed, checksums, valid

    def on_reloaded(self, msg: m.SandboxReloaded, sender: ActorAddress | None) -> None:
        """The root's verdict (``sender`` None: the admin's own, for a lost root): record it and answer."""
        pending = self.pending.get(msg.reload_id)
        if pending is None:
            return
        rec = self.records.get(pending.sandbox_id)
        if sender is not None and rec is not None and not self.from_root(rec, sender):
            return  # an old root's word: its sandbox was lost (and its reloads failed) since
        del self.pending[msg.reload_id]
        table = self.versions_of(pending.sandbox_id)
        if not msg.ok:
            for module in sorted(pending.changed):
                new = pending.versions[module][1]
                if new != table[module].current:
                    self.port.send(
                        self.registry,
                        RecordOutcome(
                            pending.sandbox_id, module, new, False, pending.event, f"{msg.actor}: {msg.cause}"
                        ),
                    )
            pending.done(
                HotReloadError(
                    f"hot reload of {pending.sandbox_id!r} failed in {msg.actor}: {msg.cause}; "
                    "the old code and state were kept",
                    actor=msg.actor,
                    cause=msg.cause,
                )
            )
            return
        if rec is not None and pending.environment is not None:
            rec.request = attrs.evolve(rec.request, environment=pending.environment)  # restarts use it too
        old_sources = {}
        for module in sorted(pending.changed):
            old, new = pending.versions[module]
            table[module].current = new
            self.port.send(
                self.registry, RecordOutcome(pending.sandbox_id, module, new, True, pending.event, pending.details)
            )
            if rec is not None:
                if module in rec.sources:
                    old_sources[module] = rec.sources[module]
                rec.sources[module] = pending.changed[module]
                rec.modules[module] = new
        first = sorted(pending.changed or pending.versions)[0]
        old, new = pending.versions[first]
        pending.done(ReloadResult(pending.sandbox_id, first, old, new, list(msg.actors_updated)))
        self.emit(
            _EVENT_OF[pending.event],
            pending.sandbox_id,
            reason=pending.details,
            module=first,
            old_version=old,
            new_version=new,
            actors=list(msg.actors_updated),
        )
        if rec is not None and pending.probation > 0 and old_sources:
            rec.probation = Probation(
                time.monotonic() + pending.probation,
                frozenset(msg.actors_updated),
                dict(rec.crashes),
                old_sources,
                {module: pending.versions[module][1] for module in pending.changed},
            )

    def fail_reloads(self, sandbox_id: str, cause: str) -> None:
        """Fail every reload of a sandbox whose root is gone for good (its system was lost)."""
        for reload_id, pending in list(self.pending.items()):
            if pending.sandbox_id == sandbox_id:
                self.on_reloaded(m.SandboxReloaded(reload_id, False, actor="root", cause=cause), None)

    def deadlines(self, now: float) -> None:
        """Answer reloads whose root never did (it died, or hung in a plugin's import)."""
        for reload_id, pending in list(self.pending.items()):
            if now > pending.deadline:
                del self.pending[reload_id]
                pending.done(
                    HotReloadError(
                        f"hot reload of {pending.sandbox_id!r} got no answer in time", actor="root", cause="timeout"
                    )
                )

    # -- probation ------------------------------------------------------------------------

    def check_probation(self, sandbox_id: str, rec: SandboxRecord) -> None:
        """A reloaded actor crashed inside its probation window: roll back on our own."""
        probation = rec.probation
        if probation is None:
            return
        if time.monotonic() > probation.deadline:
            rec.probation = None
            return
        crashed = sorted(
            name for name in probation.actors if rec.crashes.get(name, 0) > probation.baseline.get(name, 0)
        )
        if not crashed:
            return
        rec.probation = None
        artifacts = [
            Artifact(module, path, _checksum(source), source)
            for module, (path, source, _) in probation.old_sources.items()
        ]
        reason = f"probation: {crashed[0]} crashed after the reload"

        def rolled_back(result: object) -> None:
            if not isinstance(result, BaseException):
                for module, version in probation.new_versions.items():
                    self.port.send(
                        self.registry, RecordOutcome(sandbox_id, module, version, False, RegistryEvent.RELOADED, reason)
                    )

        self.start_reload(
            sandbox_id,
            artifacts,
            None,
            self.config().reload_timeout,
            0.0,
            RegistryEvent.ROLLED_BACK,
            reason,
            rolled_back,
        )


def _reload_order(sources: Sources, changed: list[str]) -> list[str]:
    """The changed modules, then every module that imports one of them (dependency order)."""
    table = CodeTable.from_wire(sources)
    order: list[str] = []
    for module in changed:
        for name in dependents(table, module):
            if name not in order:
                order.append(name)
    return order
