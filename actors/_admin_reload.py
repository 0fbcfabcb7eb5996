"""The admin's side of versions: numbering, hot reload and rollback requests, probation.

Version numbers are assigned here from an in-memory copy of the registry (loaded from the
store the first time a sandbox id is seen), so a reload never waits on a disk write; the
registry actor records every step in the same order.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from typing import Any, Callable

import attrs

from plugin_host.codeload import CodeTable
from plugin_host.compiler import dependents
from plugin_host.errors import BadRequestError, HotReloadError, PluginHostError
from plugin_host.messages import (
    BatchHotReload,
    GetModuleVersion,
    GetVersionHistory,
    HotReload,
    ListModuleVersions,
    RollbackModule,
)
from plugin_host.store import VersionStore
from plugin_host.values import Artifact, ReloadResult

from . import _messages as m
from ._admin.record import Probation, SandboxRecord
from ._admin_nodes import remote_packages
from .registry import RecordOutcome, RecordVersions, RegistryQuery

__all__ = ["ModuleVersions", "VersionsAdmin"]

Done = Callable[[Any], None]
_reload_ids = itertools.count(1)


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
    changed: dict[str, tuple[str, str, bool]]
    checksums: dict[str, str]
    versions: dict[str, tuple[int, int]]
    event: str
    details: str
    probation: float
    deadline: float
    environment: str | None = None


def _checksum(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


class VersionsAdmin:
    """Mixed into the admin actor (needs ``sandboxes``, ``config``, ``registry``, ``reader``...)."""

    sandboxes: dict[str, SandboxRecord]
    config: Any
    registry: Any
    reader: VersionStore | None
    module_versions: dict[str, dict[str, ModuleVersions]]
    reloads: dict[str, _PendingReload]
    send: Callable[[Any, Any], None]  # provided by the admin actor
    reply: Callable[[Any, Any, str], None]
    _replier: Callable[[Any, str], Done]
    _batch: Callable[[int, Any, str, Callable[[int, Done], None]], None]
    not_found: Callable[[Any], PluginHostError]
    emit: Callable[..., None]
    from_root: Callable[[Any, Any], bool]

    # -- numbering -----------------------------------------------------------------------

    def versions_of(self, sandbox_id: str) -> dict[str, ModuleVersions]:
        """This sandbox's version table, read from the store the first time."""
        table = self.module_versions.get(sandbox_id)
        if table is None:
            known = self.reader.known(sandbox_id) if self.reader is not None else {}
            table = {name: ModuleVersions(last, current, dict(sums)) for name, (last, current, sums) in known.items()}
            self.module_versions[sandbox_id] = table
        return table

    def register_created(self, sandbox_id: str, sources: dict[str, tuple[str, str, bool]]) -> dict[str, int]:
        """Number the code a sandbox starts with (version 1, or the identical stored version)."""
        table, entries, current = self.versions_of(sandbox_id), [], {}
        for module, (_, source, _) in sorted(sources.items()):
            checksum = _checksum(source)
            info = table.setdefault(module, ModuleVersions())
            info.current = current[module] = info.assign(checksum)
            entries.append((module, source, checksum, info.current))
        if entries:
            self.send(self.registry, RecordVersions(sandbox_id, tuple(entries), "created"))
        return current

    # -- requests -------------------------------------------------------------------------

    def receiveMsg_HotReload(self, msg: HotReload, sender: Any) -> None:
        """Reload compiled artifacts into a sandbox."""
        probation = self.config.probation_seconds if msg.probation is None else msg.probation
        self.start_reload(
            msg.sandbox_id,
            msg.artifacts,
            msg.state_handler,
            msg.timeout,
            probation,
            msg.event,
            "",
            self._replier(sender, msg.corr),
            msg.environment,
        )

    def receiveMsg_RollbackModule(self, msg: RollbackModule, sender: Any) -> None:
        """Reload the stored code of an earlier (or later) version."""
        done = self._replier(sender, msg.corr)
        try:
            source = self.reader.source(msg.sandbox_id, msg.module, msg.version)  # type: ignore[union-attr]
        except PluginHostError as exc:
            done(exc)
            return
        rec = self.sandboxes.get(msg.sandbox_id)
        path = rec.sources.get(msg.module, (f"<{msg.module}>",))[0] if rec is not None else f"<{msg.module}>"
        artifact = Artifact(msg.module, path, _checksum(source), source)
        self.start_reload(
            msg.sandbox_id,
            [artifact],
            None,
            msg.timeout,
            0.0,
            "rolled_back",
            f"rollback to version {msg.version}",
            done,
        )

    def receiveMsg_BatchHotReload(self, msg: BatchHotReload, sender: Any) -> None:
        """The same code into many sandboxes; one failure never stops the others."""
        ids = list(msg.sandbox_ids) if isinstance(msg.sandbox_ids, (list, tuple)) else None
        if ids is None:
            self.reply(sender, BadRequestError("BatchHotReload.sandbox_ids must be a list"), msg.corr)
            return
        self._batch(
            len(ids),
            sender,
            msg.corr,
            lambda i, done: self.start_reload(
                ids[i], msg.artifacts, None, msg.timeout, self.config.probation_seconds, "reloaded", "", done
            ),
        )

    def _forward_query(self, msg: Any, sender: Any) -> None:
        if not (isinstance(msg.sandbox_id, str) and isinstance(msg.module, str)):
            self.reply(
                sender,
                BadRequestError(
                    f"{type(msg).__name__}: sandbox_id and module are strings, got "
                    f"{msg.sandbox_id!r} and {msg.module!r}"
                ),
                msg.corr,
            )
            return
        self.send(self.registry, RegistryQuery(msg, sender))

    def receiveMsg_GetModuleVersion(self, msg: GetModuleVersion, sender: Any) -> None:
        """The current version of a module: answered by the registry actor."""
        self._forward_query(msg, sender)

    def receiveMsg_ListModuleVersions(self, msg: ListModuleVersions, sender: Any) -> None:
        """Every stored version of a module: answered by the registry actor."""
        self._forward_query(msg, sender)

    def receiveMsg_GetVersionHistory(self, msg: GetVersionHistory, sender: Any) -> None:
        """A module's version history: answered by the registry actor."""
        self._forward_query(msg, sender)

    # -- the reload -----------------------------------------------------------------------

    def start_reload(
        self,
        sandbox_id: str,
        artifacts: Any,
        state_handler: Any,
        timeout: float,
        probation: float,
        event: str,
        details: str,
        done: Done,
        environment: str | None = None,
    ) -> None:
        """Validate, number and send a reload to the sandbox root; ``done`` gets the outcome.

        A new ``environment`` (changed requirements) re-executes every module of the sandbox.
        """
        try:
            rec, changed, checksums = self._changes(sandbox_id, artifacts)
        except PluginHostError as exc:
            done(exc)
            return
        new_environment = environment if environment and environment != rec.request.environment else None
        if not changed and new_environment is None:
            module = sorted(a.module for a in artifacts)[0]
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
        self.send(
            self.registry,
            RecordVersions(
                sandbox_id,
                tuple(
                    (module, changed[module][1], checksums[module], versions[module][1]) for module in sorted(changed)
                ),
            ),
        )
        reload_id = f"r{next(_reload_ids)}"
        self.reloads[reload_id] = _PendingReload(
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
        self.send(
            rec.root,
            m.ReloadSandbox(
                reload_id,
                changed,
                order,
                versions,
                handler,
                timeout,
                new_environment,
                {name: checksums[name] for name in changed},
                remote_packages(rec.node, new_environment),
            ),
        )

    def _changes(self, sandbox_id: str, artifacts: Any) -> tuple[Any, dict[str, tuple[str, str, bool]], dict[str, str]]:
        rec = self.sandboxes.get(sandbox_id) if isinstance(sandbox_id, str) else None
        if rec is None:
            raise self.not_found(sandbox_id)
        if rec.status != "running" or rec.root is None:
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
        changed, checksums = {}, {}
        for artifact in artifacts:
            if not isinstance(artifact.source, str) or _checksum(artifact.source) != artifact.checksum:
                raise BadRequestError(f"artifact {artifact.module!r}: the checksum does not match the source")
            checksums[artifact.module] = artifact.checksum
            old = rec.sources.get(artifact.module)
            if old is None or _checksum(old[1]) != artifact.checksum:
                is_package = old[2] if old else artifact.path.endswith("__init__.py")
                changed[artifact.module] = (artifact.path, artifact.source, is_package)
        for module, (_, source, _) in rec.sources.items():
            checksums.setdefault(module, _checksum(source))
        return rec, changed, checksums

    def receiveMsg_SandboxReloaded(self, msg: m.SandboxReloaded, sender: Any) -> None:
        """The root's verdict: record it and answer."""
        pending = self.reloads.get(msg.reload_id)
        if pending is None:
            return
        rec = self.sandboxes.get(pending.sandbox_id)
        if sender is not None and rec is not None and not self.from_root(rec, sender):
            return  # an old root's word: its sandbox was lost (and its reloads failed) since
        del self.reloads[msg.reload_id]
        table = self.versions_of(pending.sandbox_id)
        if not msg.ok:
            for module in sorted(pending.changed):
                new = pending.versions[module][1]
                if new != table[module].current:
                    self.send(
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
            self.send(
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
            pending.event,
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
        for reload_id, pending in list(self.reloads.items()):
            if pending.sandbox_id == sandbox_id:
                self.receiveMsg_SandboxReloaded(m.SandboxReloaded(reload_id, False, actor="root", cause=cause), None)

    def reload_deadlines(self, now: float) -> None:
        """Answer reloads whose root never did (it died, or hung in a plugin's import)."""
        for reload_id, pending in list(self.reloads.items()):
            if now > pending.deadline:
                del self.reloads[reload_id]
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

        def rolled_back(result: Any) -> None:
            if not isinstance(result, BaseException):
                for module, version in probation.new_versions.items():
                    self.send(self.registry, RecordOutcome(sandbox_id, module, version, False, "reloaded", reason))

        self.start_reload(
            sandbox_id, artifacts, None, self.config.reload_timeout, 0.0, "rolled_back", reason, rolled_back
        )


def _reload_order(sources: dict[str, tuple[str, str, bool]], changed: list[str]) -> list[str]:
    """The changed modules, then every module that imports one of them (dependency order)."""
    table = CodeTable.from_wire(sources)
    order: list[str] = []
    for module in changed:
        for name in dependents(table, module):
            if name not in order:
                order.append(name)
    return order
