"""Registry durability at every kill point: a writer SIGKILLed at any statement of a reload's
registry writes leaves the history before or after each store operation, never in between.

A driver process runs one scenario (the store calls the registry actor makes for a reload, a
failed reload, a rollback...) to the end, counting its SQL statements and keeping the history
after each operation; then it forks one child per statement that SIGKILLs itself just before
that statement runs (so right after the one before it), each on its own copy of the same
starting file.  Every file is then reopened here and checked.  About 10 ms per kill point.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from plugin_host.store import VersionStore

ROOT = Path(__file__).resolve().parent.parent
MAX_VERSIONS = 3
"""Small enough that the pruning scenario prunes inside a register's transaction."""

SNAPSHOT_QUERIES = [
    "SELECT * FROM modules ORDER BY sandbox_id, module",
    "SELECT * FROM versions ORDER BY sandbox_id, module, version",
    "SELECT * FROM events ORDER BY id",
    "SELECT * FROM sqlite_sequence ORDER BY name",
]
"""Everything the store keeps: two files with equal answers hold the same history."""

HAD_CURRENT = [("s", "a"), ("s", "b"), ("other", "a")]
"""The (sandbox, module) pairs with a current version in the starting file."""

FAILED = "code_change raised KeyError"
PROBATION = "probation: c1 crashed after the reload"

# Each scenario is the sequence of store calls the registry actor makes (RecordVersions, then one
# RecordOutcome per module), as (method, args, kwargs).  The starting file: s/a has versions 1
# (previous) and 2 (current), s/b and other/a version 1 (current).
SCENARIOS: dict[str, list[tuple[str, list[Any], dict[str, Any]]]] = {
    "reload": [
        ("register", ["s", "a", "a = 3"], {}),
        ("mark_current", ["s", "a", 3], {"event": "reloaded"}),
    ],
    "reload of two modules": [
        ("register", ["s", "a", "a = 3"], {}),
        ("register", ["s", "b", "b = 2"], {}),
        ("mark_current", ["s", "a", 3], {"event": "reloaded"}),
        ("mark_current", ["s", "b", 2], {"event": "reloaded"}),
    ],
    "reloads past max_versions (pruning)": [
        ("register", ["s", "a", "a = 3"], {}),
        ("mark_current", ["s", "a", 3], {"event": "reloaded"}),
        ("register", ["s", "a", "a = 4"], {}),
        ("mark_current", ["s", "a", 4], {"event": "reloaded"}),
    ],
    "failed reload": [
        ("register", ["s", "a", "a = 3"], {}),
        ("mark_failed", ["s", "a", 3, FAILED], {"event": "reloaded"}),
    ],
    "rollback": [
        ("register", ["s", "a", "a = 1"], {}),  # identical to version 1: a read-only transaction
        ("mark_current", ["s", "a", 1], {"event": "rolled_back", "details": "operator asked"}),
    ],
    "probation rollback": [
        ("register", ["s", "a", "a = 1"], {}),
        ("mark_current", ["s", "a", 1], {"event": "rolled_back", "details": PROBATION}),
        ("mark_failed", ["s", "a", 2, PROBATION], {"event": "reloaded"}),
    ],
    "probation rollback in one step": [
        ("mark_current", ["s", "a", 1], {"event": "rolled_back", "details": PROBATION, "old_failed": True}),
    ],
    "first version of a new module": [
        ("register", ["s", "c", "c = 1"], {}),
        ("mark_current", ["s", "c", 1], {"event": "created"}),
    ],
}

DRIVER = textwrap.dedent(
    """
    import json, os, shutil, signal, sqlite3, sys, traceback, types
    from pathlib import Path

    import plugin_host.store as store_module
    from plugin_host.store import VersionStore

    base, out = Path(sys.argv[1]), Path(sys.argv[2])
    max_versions, operations, queries = (json.loads(a) for a in sys.argv[3:6])

    def snapshot(path):
        conn = sqlite3.connect(path)
        try:
            return [conn.execute(q).fetchall() for q in queries]
        finally:
            conn.close()

    def copy(name):
        path = out / name
        for suffix in ("", "-wal"):
            if Path(f"{base}{suffix}").exists():
                shutil.copyfile(f"{base}{suffix}", f"{path}{suffix}")
        return path

    def run(path, kill_at, after_each=None):
        # The same clock in every run, so that every run writes the same rows (were the store to
        # stop reading time.time through its module, times would differ and every check fail).
        ticks = iter(range(1_000_000, 2_000_000))
        store_module.time = types.SimpleNamespace(time=lambda: float(next(ticks)))
        store = VersionStore(path, max_versions=max_versions)
        count = 0

        def trace(statement):
            nonlocal count
            count += 1
            if count == kill_at:  # before statement number kill_at runs
                os.kill(os.getpid(), signal.SIGKILL)

        store._conn.set_trace_callback(trace)
        ends = []
        for method, args, kwargs in operations:
            getattr(store, method)(*args, **kwargs)
            ends.append(count)
            if after_each is not None:
                after_each()
        store.close()
        return count, ends

    complete = copy("complete.sqlite")
    snapshots = [snapshot(complete)]
    total, ends = run(complete, 0, lambda: snapshots.append(snapshot(complete)))
    exits = {}
    for kill_at in range(1, total + 1):
        path = copy(f"{kill_at}.sqlite")
        pid = os.fork()
        if pid == 0:
            try:
                run(path, kill_at)
            except BaseException:
                traceback.print_exc()
                os._exit(1)
            os._exit(0)  # the run never reached statement kill_at
        exits[kill_at] = os.waitpid(pid, 0)[1]
    print(json.dumps({"total": total, "ends": ends, "snapshots": snapshots, "exits": exits}))
    """
)


def prepare(path: Path) -> None:
    """Write the starting file every kill point begins from."""
    with VersionStore(path, max_versions=MAX_VERSIONS) as store:
        for sandbox, module, sources in [
            ("s", "a", ["a = 1", "a = 2"]),
            ("s", "b", ["b = 1"]),
            ("other", "a", ["a = 1"]),
        ]:
            for index, source in enumerate(sources):
                version, _ = store.register(sandbox, module, source)
                store.mark_current(sandbox, module, version, event="reloaded" if index else "created")


def snapshot(path: Path) -> list[Any]:
    """The answers to SNAPSHOT_QUERIES, as JSON would carry them."""
    conn = sqlite3.connect(path)
    try:
        found: list[Any] = json.loads(json.dumps([conn.execute(q).fetchall() for q in SNAPSHOT_QUERIES]))
        return found
    finally:
        conn.close()


def brief(row: list[Any]) -> list[Any]:
    """A row with long text (checksums) cut short, for failure messages."""
    return [f"{v[:8]}..." if isinstance(v, str) and len(v) > 11 else v for v in row]


def problems_in(path: Path, allowed: list[list[Any]]) -> list[str]:
    """What is wrong with the file a killed writer left, where ``allowed`` are the histories it may hold.

    ``allowed`` is the history after the operations that had returned, then the history after
    the one in flight (if any): the kill may have come after that one's COMMIT.
    """
    with VersionStore(path, max_versions=MAX_VERSIONS) as store:
        if not store.integrity_check():
            return ["integrity_check failed"]
    found = snapshot(path)
    problems = []
    for sandbox, module in HAD_CURRENT + [("s", "c")]:
        current = [row[2] for row in found[1] if row[:2] == [sandbox, module] and row[7] == "current"]
        if len(current) > 1 or ((sandbox, module) in HAD_CURRENT and not current):
            problems.append(f"{sandbox}/{module} has current versions {current}")
        ok_events = [row[5] for row in found[2] if row[2:4] == [sandbox, module] and row[7] == "ok"]
        if current != ok_events[-1:]:
            problems.append(f"{sandbox}/{module}: current {current}, but the log last made {ok_events[-1:]} current")
    if found not in allowed:
        for query, rows, wanted in zip(SNAPSHOT_QUERIES, found, allowed[-1], strict=True):
            extra = [brief(r) for r in rows if r not in wanted]
            missing = [brief(r) for r in wanted if r not in rows]
            if extra or missing:
                problems.append(f"{query.split()[3]}: rows {extra} where the operation ends with {missing}")
    last = next(row[2] for row in found[0] if row[:2] == ["s", "a"])
    if not problems and not resumes(path, last):
        problems.append("the next reload after the restart was not numbered or made current")
    return problems


def resumes(path: Path, last: int) -> bool:
    """A host started on the file can go on reloading: the next version of s/a is ``last + 1``."""
    with VersionStore(path, max_versions=MAX_VERSIONS) as store:
        version, is_new = store.register("s", "a", "after the kill = True")
        store.mark_current("s", "a", version)
        return is_new and version == last + 1 and store.current_version("s", "a") == version


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_a_writer_killed_at_any_statement_of_a_reload_leaves_the_history_before_or_after_each_operation(
    scenario: str, tmp_path: Path
) -> None:
    """SIGKILL before any statement of a reload's registry writes: the old history or the new one.

    Each store operation is all or nothing, so the file holds the history after the operations
    that had returned, or after the one in flight too, never something in between: each
    (sandbox, module) that had a current version still has exactly one, the event log names it,
    the file is sound, and numbering goes on after the restart.
    """
    base, out = tmp_path / "base.sqlite", tmp_path / "killed"
    out.mkdir()
    prepare(base)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    args = [json.dumps(a) for a in (MAX_VERSIONS, SCENARIOS[scenario], SNAPSHOT_QUERIES)]
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(base), str(out), *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    total, ends, snapshots = report["total"], report["ends"], report["snapshots"]
    steps = [end - start for start, end in zip([0, *ends[:-1]], ends, strict=True)]
    assert min(steps) >= 3, ends  # each operation ran BEGIN, a query and COMMIT at least
    assert ends[-1] == total and snapshots[0] == snapshot(base) != snapshots[-1]
    failures = {}
    for kill_at in range(1, total + 2):  # total + 1: the run that completed
        if kill_at <= total:
            status = report["exits"][str(kill_at)]
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (kill_at, status, proc.stderr)
        path = out / (f"{kill_at}.sqlite" if kill_at <= total else "complete.sqlite")
        returned = sum(1 for end in ends if end < kill_at)  # operations whose last statement had run
        problems = problems_in(path, snapshots[returned : returned + 2])
        if problems:
            failures[kill_at] = problems
    assert not failures, f"{len(failures)} of {total + 1} kill points fail: " + "; ".join(
        f"killed before statement {k}: {' / '.join(p)}" for k, p in list(failures.items())[:3]
    )
