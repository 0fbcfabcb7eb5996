"""The version store: numbering, dedupe, current/previous/failed, pruning, persistence, crash safety."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Callable, Iterator

import pytest

from plugin_host.errors import BadRequestError, PluginHostError, UnknownModuleError, VersionNotFoundError
from plugin_host.store import SCHEMA_VERSION, VersionStore, sha256_of

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """Where a test's store lives."""
    return tmp_path / "registry.sqlite"


@pytest.fixture
def store(db: Path) -> Iterator[VersionStore]:
    """An open store that keeps every version."""
    with VersionStore(db) as opened:
        yield opened


def load(store: VersionStore, sandbox: str, module: str, source: str, event: str = "reloaded") -> int:
    """Register ``source`` and make it current, as a successful reload does."""
    version, _ = store.register(sandbox, module, source)
    store.mark_current(sandbox, module, version, event=event)
    return version


def test_versions_are_numbered_from_one_per_sandbox_and_module(store: VersionStore) -> None:
    """Each (sandbox, module) counts 1, 2, 3 on its own."""
    assert [store.register("a", "m", f"x = {i}")[0] for i in range(3)] == [1, 2, 3]
    assert [store.register("a", "other", f"x = {i}")[0] for i in range(2)] == [1, 2]
    assert [store.register("b", "m", f"x = {i}")[0] for i in range(2)] == [1, 2]
    assert store.sandboxes() == ["a", "b"]


def test_identical_source_dedupes_to_the_stored_version(store: VersionStore) -> None:
    """Registering code already stored returns its number, is_new false, and mints nothing."""
    assert store.register("s", "m", "v = 1") == (1, True)
    assert store.register("s", "m", "v = 2") == (2, True)
    assert store.register("s", "m", "v = 1") == (1, False)
    assert store.register("s", "m", "v = 3", checksum=sha256_of("v = 3")) == (3, True)
    assert store.history("s", "m").total_versions == 3
    assert store.register("other", "m", "v = 1") == (1, True)  # dedupe never crosses sandboxes


def test_register_refuses_a_checksum_that_does_not_match_the_source(store: VersionStore) -> None:
    """A caller's sha256 is checked, so the store never records a wrong one."""
    with pytest.raises(BadRequestError, match="does not match"):
        store.register("s", "m", "v = 1", checksum=sha256_of("v = 2"))
    with pytest.raises(ValueError):
        store.register("s", "m", "bad \ud800 surrogate")
    assert store.sandboxes() == []


def test_a_registered_version_is_not_current_until_marked(store: VersionStore) -> None:
    """A new version is reported as previous (stored, not running) until mark_current."""
    store.register("s", "m", "v = 1")
    assert store.get("s", "m", 1).status == "previous"
    assert store.history("s", "m").current_version == 0
    assert store.modules("s") == {}
    with pytest.raises(UnknownModuleError):
        store.current_version("s", "m")


def test_mark_current_demotes_the_old_current_to_previous(store: VersionStore) -> None:
    """Exactly one version is current; the one it replaced becomes previous, with an event."""
    load(store, "s", "m", "v = 1", event="created")
    load(store, "s", "m", "v = 2")
    assert store.current_version("s", "m") == 2
    assert [v.status for v in store.versions("s", "m")] == ["current", "previous"]
    store.mark_current("s", "m", 1, event="rolled_back", details="operator asked")
    assert store.modules("s") == {"m": 1}
    assert [v.status for v in store.versions("s", "m")] == ["previous", "current"]
    last = store.events("s", "m", limit=1)[0]
    assert (last.from_version, last.to_version, last.kind, last.outcome) == (2, 1, "rolled_back", "ok")
    assert last.details == "operator asked"
    assert [e.kind for e in store.events("s")] == ["rolled_back", "reloaded", "created"]


def test_mark_failed_records_the_reason_and_keeps_the_current_version(store: VersionStore) -> None:
    """A failed reload leaves the current version alone and logs why."""
    load(store, "s", "m", "v = 1")
    bad, _ = store.register("s", "m", "v = 2")
    store.mark_failed("s", "m", bad, "code_change raised KeyError")
    assert store.current_version("s", "m") == 1
    assert store.get("s", "m", bad).status == "failed"
    event = store.events("s", "m")[0]
    assert (event.from_version, event.to_version, event.outcome) == (1, 2, "failed")
    assert event.details == "code_change raised KeyError"
    with pytest.raises(BadRequestError, match="is current"):
        store.mark_failed("s", "m", 1, "cannot fail the running version")


def test_a_probation_rollback_marks_the_bad_version_failed_in_one_step(store: VersionStore) -> None:
    """mark_current(old_failed=True) returns to a good version and fails the replaced one."""
    load(store, "s", "m", "v = 1")
    load(store, "s", "m", "v = 2")
    store.mark_current("s", "m", 1, event="rolled_back", details="crashed on probation", old_failed=True)
    assert [v.status for v in store.versions("s", "m")] == ["failed", "current"]


def test_history_lists_versions_newest_first_with_counts(store: VersionStore) -> None:
    """VersionHistory carries the current number, the count and each version's data."""
    for i in range(1, 4):
        load(store, "s", "m", f"v = {i}")
    history = store.history("s", "m")
    assert (history.current_version, history.total_versions) == (3, 3)
    assert [v.version for v in history.versions] == [3, 2, 1]
    assert history.versions[2].source == "v = 1" == store.source("s", "m", 1)
    assert history.versions[2].checksum == sha256_of("v = 1")
    assert history.versions[0].loaded_at >= history.versions[2].loaded_at


def test_history_survives_closing_and_reopening_the_file(db: Path) -> None:
    """A new store on the same file answers exactly as the old one did."""
    with VersionStore(db) as first:
        load(first, "s", "m", "v = 1")
        load(first, "s", "m", "v = 2")
        first.mark_current("s", "m", 1, event="rolled_back")
        before = (first.history("s", "m"), first.events("s"))
    with VersionStore(db) as second:
        assert (second.history("s", "m"), second.events("s")) == before
        assert second.integrity_check()


def test_numbering_continues_when_a_sandbox_id_is_used_again(db: Path) -> None:
    """A re-created sandbox with the same id gets the next number, never a reused one."""
    with VersionStore(db, max_versions=1) as store:
        load(store, "s", "m", "v = 1")
        load(store, "s", "m", "v = 2")
    with VersionStore(db, max_versions=1) as store:  # the host restarted; the sandbox is re-created
        assert store.register("s", "m", "v = 3") == (3, True)
        store.mark_current("s", "m", 3, event="created")
        assert store.register("s", "m", "v = 1") == (4, True)  # version 1 was pruned: a new number


def test_prune_keeps_the_current_version_even_when_it_is_the_oldest(db: Path) -> None:
    """max_versions keeps the newest N plus the current one, whatever its age."""
    with VersionStore(db, max_versions=2) as store:
        load(store, "s", "m", "v = 1")
        for i in range(2, 6):
            version, _ = store.register("s", "m", f"v = {i}")
            store.mark_failed("s", "m", version, "broken")
        assert [v.version for v in store.versions("s", "m")] == [5, 4, 1]
        assert store.current_version("s", "m") == 1
        assert store.prune("s", "m") == []


def test_unknown_modules_and_versions_raise_lookup_errors(store: VersionStore) -> None:
    """Reads of what was never stored raise our errors, which are also LookupErrors."""
    load(store, "s", "m", "v = 1")
    unknown_module: list[Callable[[], object]] = [
        lambda: store.current_version("s", "nope"),
        lambda: store.history("nope", "m"),
    ]
    for call in unknown_module:
        with pytest.raises(UnknownModuleError):
            call()
    unknown_version: list[Callable[[], object]] = [
        lambda: store.get("s", "m", 2),
        lambda: store.source("s", "nope", 1),
        lambda: store.mark_current("s", "m", 9),
        lambda: store.mark_failed("s", "m", 9, "x"),
    ]
    for call in unknown_version:
        with pytest.raises(VersionNotFoundError):
            call()
    with pytest.raises(LookupError):
        store.versions("s", "nope")
    with pytest.raises(BadRequestError):
        store.mark_current("s", "m", 1, event="teleported")


def test_odd_and_unicode_ids_are_stored_as_data_never_as_paths(tmp_path: Path, db: Path) -> None:
    """Slashes, dots, non-ASCII and very long ids round-trip and create no files."""
    odd = ["a/b", "..", "../../etc/passwd", "ü", "模块", "x" * 10_000, "", "nul\x00byte", "'; DROP TABLE x; --"]
    with VersionStore(db) as store:
        for ident in odd:
            assert load(store, ident, ident, f"# {ident}") == 1
        assert sorted(store.sandboxes()) == sorted(odd)
        assert all(store.modules(i) == {i: 1} and store.source(i, i, 1) == f"# {i}" for i in odd)
    allowed = {db.name, db.name + "-wal", db.name + "-shm"}
    assert {p.name for p in tmp_path.rglob("*")} <= allowed


def test_a_file_that_is_not_a_database_raises_the_base_error(tmp_path: Path) -> None:
    """Opening garbage fails with PluginHostError naming the file, not a raw sqlite error."""
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not sqlite " * 100)
    with pytest.raises(PluginHostError, match="junk.sqlite"):
        VersionStore(junk)


def test_a_store_written_by_a_newer_release_is_refused(db: Path) -> None:
    """A schema newer than this code is reported, never silently misread."""
    VersionStore(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(PluginHostError, match="newer"):
        VersionStore(db)


def test_a_closed_store_raises_the_base_error(db: Path) -> None:
    """Use after close is a PluginHostError, and close is idempotent."""
    store = VersionStore(db)
    store.close()
    store.close()
    with pytest.raises(PluginHostError):
        store.sandboxes()


def test_two_stores_on_one_file_see_each_others_writes(db: Path) -> None:
    """Two openers (as two processes would) share numbering and the current version."""
    with VersionStore(db) as one, VersionStore(db) as two:
        assert load(one, "s", "m", "v = 1") == 1
        assert two.register("s", "m", "v = 2") == (2, True)
        assert one.register("s", "m", "v = 2") == (2, False)
        two.mark_current("s", "m", 2)
        assert one.current_version("s", "m") == 2


# -- crash safety ---------------------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import os, random, signal, sys
    from plugin_host.store import VersionStore

    path, seed, kill_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    store = VersionStore(path, max_versions=None)
    statements = 0

    def trace(sql):
        # Die at the chosen statement: before a COMMIT, between two UPDATEs, anywhere.
        global statements
        statements += 1
        if statements == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    store._conn.set_trace_callback(trace)
    for i in range(10_000):
        sandbox, module = f"s{rng.randrange(3)}", f"m{rng.randrange(2)}"
        version, _ = store.register(sandbox, module, f"v = {rng.randrange(40)}")
        if rng.random() < 0.8:
            store.mark_current(sandbox, module, version, event=rng.choice(["reloaded", "rolled_back"]))
        else:
            try:
                store.mark_failed(sandbox, module, version, "boom")
            except Exception:
                pass  # it was the current one
        print(i, flush=True)
    """
)


def run_writer_and_kill(db: Path, seed: int) -> None:
    """Run WRITER until it SIGKILLs itself at a statement chosen by ``seed``."""
    kill_at = random.Random(seed).randrange(20, 1500)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-c", WRITER, str(db), str(seed), str(kill_at)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def assert_consistent(store: VersionStore) -> None:
    """Numbering is gapless, one version is current, and it is what the log says it is."""
    for sandbox in store.sandboxes():
        for module in ("m0", "m1"):
            try:
                history = store.history(sandbox, module)
            except UnknownModuleError:
                continue
            numbers = [v.version for v in history.versions]
            assert numbers == list(range(len(numbers), 0, -1))
            current = [v.version for v in history.versions if v.status == "current"]
            events = store.events(sandbox, module)
            assert all(e.to_version in numbers for e in events)
            made_current = [e.to_version for e in events if e.outcome == "ok"]
            assert current == made_current[:1]  # the newest successful event names the current one


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_a_writer_killed_mid_transaction_leaves_a_sound_consistent_store(db: Path, seed: int) -> None:
    """SIGKILL at a random statement never corrupts the file nor splits an operation."""
    run_writer_and_kill(db, seed)
    with VersionStore(db) as store:
        assert store.integrity_check()
        assert_consistent(store)
        sandbox = store.sandboxes()[0]
        module = next(iter(store.modules(sandbox) or {"m0": 0}))
        assert load(store, sandbox, module, "brand new = True") == store.history(sandbox, module).total_versions


def test_a_writer_killed_from_outside_leaves_a_sound_consistent_store(db: Path) -> None:
    """A SIGKILL from another process, at a point it does not choose, is just as harmless."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db), "7", "0"], env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    try:
        for _ in range(random.Random(7).randrange(50, 300)):  # the writer keeps going meanwhile
            assert proc.stdout.readline()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
    with VersionStore(db) as store:
        assert store.integrity_check()
        assert_consistent(store)


# -- properties -----------------------------------------------------------------------------------


def test_the_store_agrees_with_a_simple_model_for_any_sequence_of_operations() -> None:
    """Random register / mark_current / mark_failed sequences match an in-memory model."""
    hypothesis = pytest.importorskip("hypothesis")
    st = pytest.importorskip("hypothesis.strategies")
    operation = st.tuples(st.sampled_from(["register", "current", "failed"]), st.integers(0, 5))

    @hypothesis.settings(max_examples=40, deadline=None)
    @hypothesis.given(st.lists(operation, max_size=25), st.none() | st.integers(1, 3))
    def check(operations: list[tuple[str, int]], max_versions: int | None) -> None:
        with tempfile.TemporaryDirectory() as folder:
            with VersionStore(Path(folder) / "db", max_versions=max_versions) as store:
                model = Model(max_versions)
                for name, n in operations:
                    model.apply(store, name, n)
                model.compare(store)

    check()


class Model:
    """What the store should hold for one (sandbox, module), kept by hand."""

    def __init__(self, max_versions: int | None) -> None:
        self.max_versions = max_versions
        self.sources: dict[int, str] = {}
        self.status: dict[int, str] = {}
        self.current = 0
        self.last = 0

    def apply(self, store: VersionStore, name: str, n: int) -> None:
        """Apply one operation to both the store and the model, checking what comes back."""
        if name == "register":
            self._register(store, f"v = {n}")
        elif self.sources:
            version = sorted(self.sources)[n % len(self.sources)]
            if name == "current":
                store.mark_current("s", "m", version)
                if self.current and self.current != version:
                    self.status[self.current] = "previous"
                self.status[version], self.current = "current", version
            elif version != self.current:
                store.mark_failed("s", "m", version, "x")
                self.status[version] = "failed"

    def _register(self, store: VersionStore, source: str) -> None:
        known = [v for v, s in self.sources.items() if s == source]
        got = store.register("s", "m", source)
        if known:
            assert got == (known[0], False)
            return
        self.last += 1
        assert got == (self.last, True)
        self.sources[self.last], self.status[self.last] = source, "previous"
        if self.max_versions is not None:
            keep = set(sorted(self.sources)[-self.max_versions :]) | {self.current}
            self.sources = {v: s for v, s in self.sources.items() if v in keep}
            self.status = {v: s for v, s in self.status.items() if v in keep}

    def compare(self, store: VersionStore) -> None:
        """The store's history equals the model's."""
        if not self.last:
            return
        history = store.history("s", "m")
        assert history.current_version == self.current
        assert [(v.version, v.status, v.source) for v in history.versions] == [
            (v, self.status[v], self.sources[v]) for v in sorted(self.sources, reverse=True)
        ]
