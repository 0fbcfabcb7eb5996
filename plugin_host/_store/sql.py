"""The version store's SQL: the lookups behind its answers and the row writes its operations make.

Every function takes the connection of a transaction the caller has begun (``BEGIN`` for a read,
``BEGIN IMMEDIATE`` for a write) and runs plain statements in it; which ones make up an operation,
and the transaction around them, stay with :class:`~plugin_host.store.VersionStore`.  Ids and
module names are always bound as SQL parameters.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from ..errors import UnknownModuleError, VersionNotFoundError
from ..states import VersionStatus
from ..values import ModuleVersion, VersionHistory

__all__ = [
    "append_event",
    "current_version",
    "current_versions",
    "event_rows",
    "insert_pending",
    "is_registered",
    "known",
    "module_version",
    "next_number",
    "prune",
    "require",
    "sandbox_ids",
    "set_status",
    "version_by_checksum",
    "version_history",
]

# -- reads ----------------------------------------------------------------------------------------

_VERSION_COLUMNS = "version, checksum, source, recorded_at, loaded_at, status"
"""What :func:`module_version` unpacks, in this order."""


def known(conn: sqlite3.Connection, sandbox_id: str) -> dict[str, tuple[int, int, dict[str, int]]]:
    """Return module -> (highest number ever handed out, current version or 0, checksum -> version)."""
    rows = conn.execute(
        "SELECT m.module, m.last_version, v.version, v.checksum, v.status FROM modules m "
        "LEFT JOIN versions v ON v.sandbox_id = m.sandbox_id AND v.module = m.module "
        "WHERE m.sandbox_id = ?",
        (sandbox_id,),
    ).fetchall()
    result: dict[str, tuple[int, int, dict[str, int]]] = {}
    for module, last, version, checksum, status in rows:
        _, current, by_checksum = result.setdefault(module, (last, 0, {}))
        if version is not None:
            by_checksum.setdefault(checksum, version)
            if status == VersionStatus.CURRENT:
                result[module] = (last, version, by_checksum)
    return result


def version_by_checksum(conn: sqlite3.Connection, sandbox_id: str, module: str, digest: str) -> int | None:
    """Return the newest stored version of ``module`` whose checksum is ``digest``, if any."""
    row = conn.execute(
        "SELECT version FROM versions WHERE sandbox_id = ? AND module = ? AND checksum = ?"
        " ORDER BY version DESC LIMIT 1",
        (sandbox_id, module, digest),
    ).fetchone()
    return None if row is None else int(row[0])


def current_version(conn: sqlite3.Connection, sandbox_id: str, module: str) -> int | None:
    """Return the current version of ``module``, or ``None`` when none is current."""
    row = conn.execute(
        "SELECT version FROM versions WHERE sandbox_id = ? AND module = ? AND status = 'current'",
        (sandbox_id, module),
    ).fetchone()
    return None if row is None else int(row[0])


def is_registered(conn: sqlite3.Connection, sandbox_id: str, module: str) -> bool:
    """Return whether ``module`` was ever registered for ``sandbox_id`` (its counter row exists)."""
    row = conn.execute("SELECT 1 FROM modules WHERE sandbox_id = ? AND module = ?", (sandbox_id, module)).fetchone()
    return row is not None


def require(conn: sqlite3.Connection, sandbox_id: str, module: str, version: int) -> tuple[Any, ...]:
    """Return the row of one stored version, for :func:`module_version`.

    Raises:
        VersionNotFoundError: no such version is stored (unknown module included).
    """
    row = conn.execute(
        f"SELECT {_VERSION_COLUMNS} FROM versions WHERE sandbox_id = ? AND module = ? AND version = ?",
        (sandbox_id, module, version),
    ).fetchone()
    if row is None:
        raise VersionNotFoundError(
            f"sandbox {sandbox_id!r} has no stored version {version} of module {module!r}",
            sandbox_id=sandbox_id,
            module=module,
            version=version,
        )
    return tuple(row)


def version_history(conn: sqlite3.Connection, sandbox_id: str, module: str) -> VersionHistory:
    """Return every stored version of ``module``, newest first, and which one is current (0: none).

    Raises:
        UnknownModuleError: the module was never registered for this sandbox.
    """
    if not is_registered(conn, sandbox_id, module):
        raise UnknownModuleError(
            f"sandbox {sandbox_id!r} has no module {module!r}", sandbox_id=sandbox_id, module=module
        )
    rows = conn.execute(
        f"SELECT {_VERSION_COLUMNS} FROM versions WHERE sandbox_id = ? AND module = ? ORDER BY version DESC",
        (sandbox_id, module),
    ).fetchall()
    versions = [module_version(r) for r in rows]
    current = next((v.version for v in versions if v.status == VersionStatus.CURRENT), 0)
    return VersionHistory(current_version=current, total_versions=len(versions), versions=versions)


def event_rows(conn: sqlite3.Connection, sandbox_id: str, module: str | None, limit: int | None) -> list[Any]:
    """Return event-log rows, newest first, in :class:`~plugin_host.store.VersionEvent` field order."""
    query = "SELECT time, sandbox_id, module, from_version, to_version, kind, outcome, details FROM events"
    query += " WHERE sandbox_id = ?" + ("" if module is None else " AND module = ?")
    params: list[Any] = [sandbox_id] + ([] if module is None else [module])
    query += " ORDER BY id DESC LIMIT ?"
    params.append(-1 if limit is None else limit)  # LIMIT -1: no limit
    return conn.execute(query, params).fetchall()


def current_versions(conn: sqlite3.Connection, sandbox_id: str) -> dict[str, int]:
    """Return module name → current version, for the modules of ``sandbox_id`` that have one."""
    rows = conn.execute(
        "SELECT module, version FROM versions WHERE sandbox_id = ? AND status = 'current' ORDER BY module",
        (sandbox_id,),
    ).fetchall()
    return {str(m): int(v) for m, v in rows}


def sandbox_ids(conn: sqlite3.Connection) -> list[str]:
    """Return every sandbox id that has registered modules, sorted."""
    rows = conn.execute("SELECT DISTINCT sandbox_id FROM modules ORDER BY sandbox_id").fetchall()
    return [str(r[0]) for r in rows]


def module_version(row: tuple[Any, ...]) -> ModuleVersion:
    """Turn a row of ``_VERSION_COLUMNS`` into a :class:`ModuleVersion` (``pending`` reads as ``previous``)."""
    version, checksum, source, recorded_at, loaded_at, status = row
    return ModuleVersion(
        version=int(version),
        checksum=checksum,
        loaded_at=recorded_at if loaded_at is None else loaded_at,
        status=VersionStatus.PREVIOUS if status == VersionStatus.PENDING else VersionStatus(status),
        source=source,
    )


# -- writes ---------------------------------------------------------------------------------------


def next_number(conn: sqlite3.Connection, sandbox_id: str, module: str) -> int:
    """Hand out the next version number of ``module`` (1 for a new one); numbers are never reused."""
    conn.execute(
        "INSERT INTO modules (sandbox_id, module, last_version) VALUES (?, ?, 1)"
        " ON CONFLICT (sandbox_id, module) DO UPDATE SET last_version = last_version + 1",
        (sandbox_id, module),
    )
    row = conn.execute(
        "SELECT last_version FROM modules WHERE sandbox_id = ? AND module = ?", (sandbox_id, module)
    ).fetchone()
    return int(row[0])


def insert_pending(
    conn: sqlite3.Connection, sandbox_id: str, module: str, version: int, digest: str, source: str, recorded_at: float
) -> None:
    """Store a new version with status ``pending`` (recorded, not yet loaded)."""
    conn.execute(
        "INSERT INTO versions (sandbox_id, module, version, checksum, source, recorded_at, status)"
        " VALUES (?, ?, ?, ?, ?, ?, 'pending')",
        (sandbox_id, module, version, digest, source, recorded_at),
    )


def set_status(
    conn: sqlite3.Connection,
    sandbox_id: str,
    module: str,
    version: int,
    status: VersionStatus,
    *,
    loaded_at: float | None = None,
) -> None:
    """Set the status of one version, and its ``loaded_at`` when one is given."""
    conn.execute(
        "UPDATE versions SET status = ?, loaded_at = coalesce(?, loaded_at)"
        " WHERE sandbox_id = ? AND module = ? AND version = ?",
        (status, loaded_at, sandbox_id, module, version),
    )


def append_event(conn: sqlite3.Connection, *row: object) -> None:
    """Append one row to the event log, in :class:`~plugin_host.store.VersionEvent` field order."""
    conn.execute(
        "INSERT INTO events (time, sandbox_id, module, from_version, to_version, kind, outcome, details)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        row,
    )


def prune(conn: sqlite3.Connection, sandbox_id: str, module: str, keep: int) -> list[int]:
    """Delete the versions of ``module`` beyond the newest ``keep`` (never the current one).

    Returns:
        The versions removed, oldest first.
    """
    rows = conn.execute(
        "SELECT version FROM versions WHERE sandbox_id = ? AND module = ? AND status != 'current'"
        " AND version NOT IN (SELECT version FROM versions WHERE sandbox_id = ? AND module = ?"
        " ORDER BY version DESC LIMIT ?) ORDER BY version",
        (sandbox_id, module, sandbox_id, module, keep),
    ).fetchall()
    removed = [int(r[0]) for r in rows]
    conn.executemany(
        "DELETE FROM versions WHERE sandbox_id = ? AND module = ? AND version = ?",
        [(sandbox_id, module, v) for v in removed],
    )
    return removed
