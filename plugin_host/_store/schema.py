"""The version store's file: its layout (DDL), migrations, and how a connection is set up.

:func:`connect` opens the sqlite file for :class:`~plugin_host.store.VersionStore`: WAL mode,
``synchronous = FULL``, foreign keys on, and the schema created (or checked) in one
``BEGIN IMMEDIATE`` transaction, so two processes creating the same file at once agree.
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import PluginHostError

__all__ = ["SCHEMA_VERSION", "connect", "sqlite_errors"]

SCHEMA_VERSION = 1
"""Layout version, kept in ``PRAGMA user_version``; a later release migrates from it."""

_BUSY_TIMEOUT_MS = 10_000
# Another process (a second host, the CLI reading history) may hold the write lock briefly.

_SCHEMA = """
CREATE TABLE modules (
    sandbox_id   TEXT NOT NULL,
    module       TEXT NOT NULL,
    last_version INTEGER NOT NULL,  -- highest number ever handed out, kept after pruning
    PRIMARY KEY (sandbox_id, module)
) WITHOUT ROWID;
CREATE TABLE versions (
    sandbox_id  TEXT NOT NULL,
    module      TEXT NOT NULL,
    version     INTEGER NOT NULL,
    checksum    TEXT NOT NULL,
    source      TEXT NOT NULL,
    recorded_at REAL NOT NULL,
    loaded_at   REAL,               -- last time it was made current, NULL if never
    status      TEXT NOT NULL CHECK (status IN ('pending', 'current', 'previous', 'failed')),
    PRIMARY KEY (sandbox_id, module, version),
    FOREIGN KEY (sandbox_id, module) REFERENCES modules (sandbox_id, module)
);
CREATE INDEX versions_by_checksum ON versions (sandbox_id, module, checksum);
CREATE UNIQUE INDEX one_current_version ON versions (sandbox_id, module) WHERE status = 'current';
CREATE TABLE events (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    time         REAL NOT NULL,
    sandbox_id   TEXT NOT NULL,
    module       TEXT NOT NULL,
    from_version INTEGER,
    to_version   INTEGER NOT NULL,
    kind         TEXT NOT NULL,
    outcome      TEXT NOT NULL,     -- 'ok' or 'failed'
    details      TEXT NOT NULL
);
CREATE INDEX events_by_module ON events (sandbox_id, module, id);
"""


@contextmanager
def sqlite_errors(path: Path, operation: str) -> Iterator[None]:
    """Turn sqlite errors (locked past the timeout, corrupt file, closed store) into our base class.

    Args:
        path: the database file, named in the message and the error's ``path``.
        operation: what was being done, e.g. ``"register"``.

    Raises:
        PluginHostError: ``version store {path}: {operation} failed: ...``, chained to the
            :class:`sqlite3.Error`.
    """
    try:
        yield
    except sqlite3.Error as exc:
        raise PluginHostError(f"version store {path}: {operation} failed: {exc}", path=str(path)) from exc


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) the version store at ``path``, configured and migrated.

    The folder of ``path`` is created if missing.  The connection has ``isolation_level=None``:
    the store issues ``BEGIN`` itself, so each operation is exactly one transaction.

    Raises:
        PluginHostError: the file cannot be opened, is not a database, or was written by a
            newer plugin-host.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN ourselves, so each operation is exactly one
        # transaction and its boundaries are visible here rather than implied by the driver.
        conn = sqlite3.connect(path, isolation_level=None, timeout=_BUSY_TIMEOUT_MS / 1000)
    except (OSError, sqlite3.Error) as exc:
        raise PluginHostError(f"cannot open version store {path}: {exc}", path=str(path)) from None
    try:
        _configure(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def _configure(conn: sqlite3.Connection, path: Path) -> None:
    with sqlite_errors(path, "open"):
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        # FULL rather than NORMAL: in WAL mode both survive a kill -9 of the host mid-write
        # without corruption (an interrupted transaction is simply not in the log), but FULL
        # also keeps the last committed reload across a power loss, and one fsync per commit
        # is nothing next to a reload (a compile in a subprocess plus a round of messages).
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        _migrate(conn, path)


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    conn.execute("BEGIN IMMEDIATE")  # two processes creating the file at once: one wins
    try:
        found = conn.execute("PRAGMA user_version").fetchone()[0]
        if found == 0:
            for statement in _statements(_SCHEMA):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        elif found > SCHEMA_VERSION:
            raise PluginHostError(
                f"version store {path} has schema {found}, newer than this plugin-host "
                f"understands ({SCHEMA_VERSION}); upgrade plugin-host",
                path=str(path),
            )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _statements(script: str) -> Iterator[str]:
    # executescript() would COMMIT first and escape our transaction, so run one statement at a time.
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending
            pending = ""
