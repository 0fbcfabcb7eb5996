"""The version store behind the registry actor: every version of every (sandbox, module), in sqlite.

A pure library module (no actors): the registry actor owns one :class:`VersionStore` and turns
its answers into replies.  What it keeps, per ``(sandbox_id, module)``:

* versions numbered 1, 2, 3…, each with its source, sha256, times and status.  A counter row per
  module hands out the numbers, so a number is never reused, even after pruning or after the
  sandbox is destroyed and re-created with the same id;
* an append-only event log of what was made current or failed, and why.

Statuses.  Internally a version is ``pending`` (recorded, not yet loaded), ``current``, ``previous``
or ``failed``.  :class:`~plugin_host.values.ModuleVersion` only knows the last three, so a
``pending`` version is reported as ``"previous"``: it is stored and can be rolled back to, but is
not running.  At most one version per module is ``current``; a partial unique index makes sqlite
itself refuse a second one.

``ModuleVersion.loaded_at`` is the last time the version was made current, or the time it was
recorded if it never was.

Crash safety.  Every logical operation is one ``BEGIN IMMEDIATE`` transaction in WAL mode, so a
``kill -9`` of the host at any instant leaves either all of an operation or none of it.  Ids and
module names are bound as SQL parameters and never become file names.

The file's layout, migrations and connection set-up live in :mod:`plugin_host._store.schema`;
the statements the operations are made of, in :mod:`plugin_host._store.sql`.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Iterator

import attrs

from ._store import sql
from ._store.schema import SCHEMA_VERSION, connect, sqlite_errors
from .errors import BadRequestError, UnknownModuleError
from .states import RegistryEvent, VersionStatus
from .values import ModuleVersion, VersionHistory

__all__ = ["EVENT_KINDS", "SCHEMA_VERSION", "VersionEvent", "VersionStore", "sha256_of"]

EVENT_KINDS = tuple(kind.value for kind in RegistryEvent)
"""Why a version was made current (or failed to be)."""


@attrs.frozen
class VersionEvent:
    """One row of the event log: a version made current, or a version that failed."""

    time: float
    """Unix time of the event."""
    sandbox_id: str
    module: str
    from_version: int | None
    """The version current before the event (``None`` when there was none)."""
    to_version: int
    """The version made current, or the one that failed."""
    kind: str
    """One of :data:`EVENT_KINDS`."""
    outcome: str
    """``"ok"`` (``to_version`` became current) or ``"failed"`` (it did not)."""
    details: str
    """Free text: the failure reason, or what the caller wanted recorded."""


def sha256_of(source: str) -> str:
    """Return the checksum the store uses: sha256 hex of the UTF-8 encoded source."""
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def _check_text(name: str, value: object) -> str:
    # Lone surrogates cannot be stored as UTF-8 text; say so instead of a raw UnicodeEncodeError.
    if not isinstance(value, str):
        raise BadRequestError(f"{name} must be a str, got {type(value).__name__}", field=name)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequestError(f"{name} is not valid Unicode text", field=name) from None
    return value


class VersionStore:
    """A sqlite file holding every version of every (sandbox, module) and the event log.

    One object serves one thread; several processes may open the same file at once (writers
    queue on sqlite's lock for up to ten seconds).  Use it as a context manager or call
    :meth:`close`.

    Args:
        path: the database file; its folder is created if missing.
        max_versions: versions kept per module (the current one is always kept too);
            ``None`` keeps all.

    Raises:
        PluginHostError: the file cannot be opened, is not a database, or was written by a
            newer plugin-host.
    """

    def __init__(self, path: str | Path, *, max_versions: int | None = None) -> None:
        if max_versions is not None and (isinstance(max_versions, bool) or max_versions < 1):
            raise BadRequestError(f"max_versions must be a positive int or None, got {max_versions!r}")
        self.path = Path(path)
        """Where the database lives."""
        self.max_versions = max_versions
        """Versions kept per module, or ``None`` for all."""
        self._conn = connect(self.path)

    # -- lifetime -------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the database; further calls raise :class:`PluginHostError`. Idempotent."""
        self._conn.close()

    def __enter__(self) -> VersionStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @contextmanager
    def _write(self, operation: str) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front: a deferred transaction that reads and then
        # writes can fail with SQLITE_BUSY without waiting when another process writes meanwhile.
        with sqlite_errors(self.path, operation):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    @contextmanager
    def _read(self, operation: str) -> Iterator[sqlite3.Connection]:
        # One read transaction, so a multi-query answer is one consistent snapshot.
        with sqlite_errors(self.path, operation):
            self._conn.execute("BEGIN")
            try:
                yield self._conn
            finally:
                self._conn.execute("COMMIT")

    def known(self, sandbox_id: str) -> dict[str, tuple[int, int, dict[str, int]]]:
        """Everything needed to number new versions of a sandbox's modules without a round trip.

        Returns:
            module -> (highest number ever handed out, current version or 0, checksum -> version).
        """
        with self._read("known") as conn:
            return sql.known(conn, sandbox_id)

    # -- writes ---------------------------------------------------------------------------------

    def register(self, sandbox_id: str, module: str, source: str, checksum: str | None = None) -> tuple[int, bool]:
        """Record ``source`` as a version of ``module``, or find the stored version identical to it.

        A new version gets the next number and stays out of service (reported as ``"previous"``)
        until :meth:`mark_current`.  Pruning runs afterwards when ``max_versions`` is set.

        Args:
            sandbox_id: the sandbox; ``sandbox_id`` and ``module`` may be any text (stored as data).
            module: the module name.
            source: the module's full source text.
            checksum: the caller's sha256 of ``source``, checked against :func:`sha256_of`.

        Returns:
            ``(version, is_new)``: ``is_new`` is false when identical source was already stored,
            and then ``version`` is that stored version's number.

        Raises:
            BadRequestError: an argument is not text, or ``checksum`` does not match ``source``.
        """
        _check_text("sandbox_id", sandbox_id)
        _check_text("module", module)
        digest = self._checksum(source, checksum)
        with self._write("register") as conn:
            found = sql.version_by_checksum(conn, sandbox_id, module, digest)
            if found is not None:
                return found, False
            version = sql.next_number(conn, sandbox_id, module)
            sql.insert_pending(conn, sandbox_id, module, version, digest, source, time.time())
            self._prune(conn, sandbox_id, module)  # same transaction: never a moment over the limit
        return version, True

    def _checksum(self, source: str, checksum: str | None) -> str:
        digest = sha256_of(_check_text("source", source))
        if checksum is not None and checksum.lower() != digest:
            raise BadRequestError(
                f"checksum {checksum} does not match the source (sha256 of its UTF-8 text is {digest})",
                field="checksum",
            )
        return digest

    def mark_current(
        self,
        sandbox_id: str,
        module: str,
        version: int,
        *,
        event: str = RegistryEvent.RELOADED,
        details: str = "",
        old_failed: bool = False,
    ) -> None:
        """Make ``version`` the current one, in one transaction with its event row.

        The version current until now becomes ``"previous"`` (or ``"failed"`` when
        ``old_failed`` is true: a probation rollback demotes the bad version in the same step).

        Args:
            sandbox_id, module: whose version.
            version: a stored version of that module.
            event: one of :data:`EVENT_KINDS`, recorded in the event log with ``details``.
            details: free text recorded with the event.
            old_failed: mark the replaced version failed instead of previous.

        Raises:
            VersionNotFoundError: no such version is stored (unknown module included).
            BadRequestError: ``event`` is not one of :data:`EVENT_KINDS`.
        """
        self._check_kind(event)
        with self._write("mark_current") as conn:
            sql.require(conn, sandbox_id, module, version)
            old = sql.current_version(conn, sandbox_id, module)
            if old is not None and old != version:
                sql.set_status(
                    conn, sandbox_id, module, old, VersionStatus.FAILED if old_failed else VersionStatus.PREVIOUS
                )
            now = time.time()
            sql.set_status(conn, sandbox_id, module, version, VersionStatus.CURRENT, loaded_at=now)
            sql.append_event(conn, now, sandbox_id, module, old, version, event, "ok", details)

    def mark_failed(
        self, sandbox_id: str, module: str, version: int, reason: str, *, event: str = RegistryEvent.RELOADED
    ) -> None:
        """Record that loading ``version`` failed; which version is current does not change.

        Args:
            sandbox_id, module: whose version.
            version: a stored, non-current version of that module.
            reason: why it failed, kept in the event log.
            event: what was being attempted, one of :data:`EVENT_KINDS`.

        Raises:
            VersionNotFoundError: no such version is stored.
            BadRequestError: ``version`` is the current one (make another current first, or use
                ``mark_current(..., old_failed=True)``), or ``event`` is unknown.
        """
        self._check_kind(event)
        with self._write("mark_failed") as conn:
            sql.require(conn, sandbox_id, module, version)
            current = sql.current_version(conn, sandbox_id, module)
            if current == version:
                raise BadRequestError(
                    f"version {version} of {module!r} in sandbox {sandbox_id!r} is current; "
                    "make another version current before marking it failed",
                    sandbox_id=sandbox_id,
                    module=module,
                    version=version,
                )
            sql.set_status(conn, sandbox_id, module, version, VersionStatus.FAILED)
            sql.append_event(conn, time.time(), sandbox_id, module, current, version, event, "failed", reason)

    @staticmethod
    def _check_kind(event: str) -> None:
        if event not in EVENT_KINDS:
            raise BadRequestError(f"event must be one of {', '.join(EVENT_KINDS)}, got {event!r}", field="event")

    def prune(self, sandbox_id: str, module: str) -> list[int]:
        """Drop versions beyond ``max_versions``: the newest N stay, and the current one always.

        Events keep referring to pruned numbers, and the numbers are never handed out again.

        Returns:
            The versions removed, oldest first (empty when ``max_versions`` is ``None``).
        """
        with self._write("prune") as conn:
            return self._prune(conn, sandbox_id, module)

    def _prune(self, conn: sqlite3.Connection, sandbox_id: str, module: str) -> list[int]:
        if self.max_versions is None:
            return []
        return sql.prune(conn, sandbox_id, module, self.max_versions)

    # -- reads ----------------------------------------------------------------------------------

    def current_version(self, sandbox_id: str, module: str) -> int:
        """Return the current version of ``module`` in ``sandbox_id``.

        Raises:
            UnknownModuleError: the module was never registered for this sandbox, or none of
                its versions has been made current.
        """
        with self._read("current_version") as conn:
            current = sql.current_version(conn, sandbox_id, module)
        if current is None:
            raise UnknownModuleError(
                f"sandbox {sandbox_id!r} has no current version of module {module!r}",
                sandbox_id=sandbox_id,
                module=module,
            )
        return current

    def get(self, sandbox_id: str, module: str, version: int) -> ModuleVersion:
        """Return one stored version.

        Raises:
            VersionNotFoundError: no such version is stored (unknown module included).
        """
        with self._read("get") as conn:
            row = sql.require(conn, sandbox_id, module, version)
        return sql.module_version(row)

    def source(self, sandbox_id: str, module: str, version: int) -> str:
        """Return the source text of one stored version (what a rollback reloads).

        Raises:
            VersionNotFoundError: no such version is stored.
        """
        return self.get(sandbox_id, module, version).source

    def versions(self, sandbox_id: str, module: str) -> list[ModuleVersion]:
        """Return every stored version of ``module``, newest first.

        Raises:
            UnknownModuleError: the module was never registered for this sandbox.
        """
        return self.history(sandbox_id, module).versions

    def history(self, sandbox_id: str, module: str) -> VersionHistory:
        """Return the version history of ``module``, newest first.

        ``current_version`` is 0 when no version has been made current yet, and
        ``total_versions`` counts the versions still stored (after pruning).

        Raises:
            UnknownModuleError: the module was never registered for this sandbox.
        """
        with self._read("history") as conn:
            return sql.version_history(conn, sandbox_id, module)

    def events(self, sandbox_id: str, module: str | None = None, limit: int | None = None) -> list[VersionEvent]:
        """Return the event log of a sandbox (or of one of its modules), newest first.

        Args:
            sandbox_id: the sandbox.
            module: only this module's events, or ``None`` for all.
            limit: at most this many (the newest), or ``None`` for all.
        """
        with self._read("events") as conn:
            rows = sql.event_rows(conn, sandbox_id, module, limit)
        return [VersionEvent(*row) for row in rows]

    def modules(self, sandbox_id: str) -> dict[str, int]:
        """Return module name → current version, for the modules of ``sandbox_id`` that have one."""
        with self._read("modules") as conn:
            return sql.current_versions(conn, sandbox_id)

    def sandboxes(self) -> list[str]:
        """Return every sandbox id the store has versions for, sorted (running or not)."""
        with self._read("sandboxes") as conn:
            return sql.sandbox_ids(conn)

    def integrity_check(self) -> bool:
        """Return whether sqlite's ``PRAGMA integrity_check`` finds the file sound."""
        with sqlite_errors(self.path, "integrity_check"):
            rows = self._conn.execute("PRAGMA integrity_check").fetchall()
        return [tuple(r) for r in rows] == [("ok",)]
