"""The registry actor: the one writer of the version store (sqlite under ``state_dir``).

The admin numbers versions itself (from an in-memory copy, so a reload never waits on a
disk write) and tells the registry what happened, in order; history queries go through the
same queue, so they always see every reload the admin has answered for.
"""

from __future__ import annotations

import logging

import attrs
from thespian.actors import ActorAddress, ActorExitRequest

from plugin_host.errors import PluginHostError
from plugin_host.messages import GetModuleVersion, GetVersionHistory, ListModuleVersions
from plugin_host.states import RegistryEvent
from plugin_host.store import VersionStore
from plugin_host.values import ModuleVersion, VersionHistory

from ._base import HostActor

__all__ = ["RegistryActor", "OpenRegistry", "RecordVersions", "RecordOutcome", "RegistryQuery"]

log = logging.getLogger("plugin_host.registry")


@attrs.frozen
class OpenRegistry:
    """Admin -> registry: open (or create) the store."""

    path: str
    max_versions: int | None


@attrs.frozen
class RecordVersions:
    """Admin -> registry: store these sources as versions; ``event`` set: make them current."""

    sandbox_id: str
    entries: tuple[tuple[str, str, str, int], ...]
    """(module, source, checksum, version the admin expects)."""
    event: RegistryEvent | None = None
    details: str = ""


@attrs.frozen
class RecordOutcome:
    """Admin -> registry: a reload's outcome for one module's version."""

    sandbox_id: str
    module: str
    version: int
    ok: bool
    event: RegistryEvent
    details: str = ""


@attrs.frozen
class RegistryQuery:
    """Admin -> registry: answer ``request`` to ``reply_to``."""

    request: GetModuleVersion | ListModuleVersions | GetVersionHistory
    reply_to: ActorAddress


class RegistryActor(HostActor):
    """Owns the :class:`~plugin_host.store.VersionStore` of a host."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.store: VersionStore | None = None

    def _opened(self) -> VersionStore:
        """The store; the admin opens it before it sends anything else."""
        if self.store is None:
            raise RuntimeError("the registry was asked before OpenRegistry")
        return self.store

    def receiveMsg_OpenRegistry(self, msg: OpenRegistry, sender: ActorAddress) -> None:
        """Open the store once."""
        if self.store is None:
            self.store = VersionStore(msg.path, max_versions=msg.max_versions)

    def receiveMsg_RecordVersions(self, msg: RecordVersions, sender: ActorAddress) -> None:
        """Register versions (deduplicated by checksum) and optionally make them current."""
        for module, source, checksum, expected in msg.entries:
            try:
                version, _ = self._opened().register(msg.sandbox_id, module, source, checksum)
                if version != expected:
                    log.warning(
                        "registry numbered %s/%s as %s, the admin expected %s (another host on this state_dir?)",
                        msg.sandbox_id,
                        module,
                        version,
                        expected,
                    )
                if msg.event:
                    self._opened().mark_current(
                        msg.sandbox_id,
                        module,
                        version,
                        event=msg.event,
                        details=msg.details,
                    )
            except PluginHostError:
                log.exception("registry: recording %s/%s failed", msg.sandbox_id, module)

    def receiveMsg_RecordOutcome(self, msg: RecordOutcome, sender: ActorAddress) -> None:
        """Mark a version current (with its event) or failed (with the reason)."""
        try:
            if msg.ok:
                self._opened().mark_current(
                    msg.sandbox_id,
                    msg.module,
                    msg.version,
                    event=msg.event,
                    details=msg.details,
                )
            else:
                self._opened().mark_failed(
                    msg.sandbox_id,
                    msg.module,
                    msg.version,
                    msg.details,
                    event=msg.event,
                )
        except PluginHostError:
            log.exception("registry: recording the outcome for %s/%s failed", msg.sandbox_id, msg.module)

    def receiveMsg_RegistryQuery(self, msg: RegistryQuery, sender: ActorAddress) -> None:
        """Answer a version query for the admin's caller."""
        request = msg.request
        value: int | list[ModuleVersion] | VersionHistory | PluginHostError
        try:
            if isinstance(request, GetModuleVersion):
                value = self._opened().current_version(request.sandbox_id, request.module)
            elif isinstance(request, ListModuleVersions):
                value = self._opened().versions(request.sandbox_id, request.module)
            elif isinstance(request, GetVersionHistory):
                value = self._opened().history(request.sandbox_id, request.module)
            else:
                raise PluginHostError(f"the registry does not answer {type(request).__name__}")
        except PluginHostError as exc:
            value = exc
        self.reply(msg.reply_to, value, request.corr)

    def receiveMsg_ActorExitRequest(self, msg: ActorExitRequest, sender: ActorAddress) -> None:
        """Close the store when the system shuts down."""
        if self.store is not None:
            self.store.close()
            self.store = None
