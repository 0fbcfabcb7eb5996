"""The version store: numbering, dedupe, current/previous/failed, pruning, persistence, crash safety."""

from __future__ import annotations

import itertools
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import types
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from plugin_host import store as store_module
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
    with pytest.raises(PluginHostError, match="junk.sqlite: open failed") as caught:
        VersionStore(junk)
    assert getattr(caught.value, "path", None) == str(junk)
    with pytest.raises(PluginHostError, match="cannot open version store") as caught:
        VersionStore(tmp_path)  # a folder
    assert getattr(caught.value, "path", None) == str(tmp_path)


def test_a_store_written_by_a_newer_release_is_refused(db: Path) -> None:
    """A schema newer than this code is reported, never silently misread."""
    VersionStore(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(PluginHostError, match="newer") as caught:
        VersionStore(db)
    assert getattr(caught.value, "path", None) == str(db)


def test_a_closed_store_raises_the_base_error_naming_the_file_and_the_operation(db: Path) -> None:
    """Use after close is a PluginHostError saying which operation failed on which file; close is idempotent."""
    store = VersionStore(db)
    store.close()
    store.close()
    calls: dict[str, Callable[[], object]] = {
        "register": lambda: store.register("s", "m", "v = 1"),
        "mark_current": lambda: store.mark_current("s", "m", 1),
        "mark_failed": lambda: store.mark_failed("s", "m", 1, "x"),
        "prune": lambda: store.prune("s", "m"),
        "known": lambda: store.known("s"),
        "current_version": lambda: store.current_version("s", "m"),
        "get": lambda: store.get("s", "m", 1),
        "history": lambda: store.history("s", "m"),
        "events": lambda: store.events("s"),
        "modules": lambda: store.modules("s"),
        "sandboxes": store.sandboxes,
        "integrity_check": store.integrity_check,
    }
    for operation, call in calls.items():
        with pytest.raises(PluginHostError, match=f": {operation} failed: ") as caught:
            call()
        assert getattr(caught.value, "path", None) == str(db)


def test_refusals_carry_the_field_or_the_version_they_are_about(store: VersionStore) -> None:
    """Each refusal names, as attributes, the argument at fault or the (sandbox, module, version) it is about."""
    load(store, "s", "m", "v = 1")
    cases: list[tuple[Callable[[], object], str, dict[str, Any]]] = [
        (lambda: store.register(7, "m", "x"), "sandbox_id must be a str, got int", {"field": "sandbox_id"}),  # type: ignore[arg-type]
        (lambda: store.register("s", None, "x"), "module must be a str", {"field": "module"}),  # type: ignore[arg-type]
        (lambda: store.register("s", "m", "\ud800"), "source is not valid Unicode", {"field": "source"}),
        (lambda: store.register("s", "m", "x", checksum="0" * 64), "does not match", {"field": "checksum"}),
        (
            lambda: store.mark_current("s", "m", 1, event="x"),
            "one of created, reloaded, rolled_back, got 'x'",
            {"field": "event"},
        ),
        (
            lambda: store.mark_current("s", "m", 9),
            "has no stored version 9 of module 'm'",
            {"sandbox_id": "s", "module": "m", "version": 9},
        ),
        (
            lambda: store.mark_failed("s", "m", 1, "x"),
            "make another version current before marking it failed",
            {"sandbox_id": "s", "module": "m", "version": 1},
        ),
        (
            lambda: store.current_version("s", "n"),
            "sandbox 's' has no current version of module 'n'",
            {"sandbox_id": "s", "module": "n"},
        ),
        (lambda: store.history("s", "n"), "sandbox 's' has no module 'n'", {"sandbox_id": "s", "module": "n"}),
    ]
    for call, message, attributes in cases:
        with pytest.raises(PluginHostError, match=message) as caught:
            call()
        assert {name: getattr(caught.value, name, None) for name in attributes} == attributes, message


@pytest.mark.parametrize("bad", [0, -1, True])
def test_max_versions_must_be_a_positive_int_or_none(db: Path, bad: int) -> None:
    """A store that would keep no version (or a bool taken for a number) is refused up front."""
    with pytest.raises(BadRequestError, match="max_versions must be a positive int or None"):
        VersionStore(db, max_versions=bad)


def test_a_store_in_a_folder_that_does_not_exist_yet_creates_the_folder(tmp_path: Path) -> None:
    """The folders on the way to the file are made, and the history is there when reopened."""
    path = tmp_path / "a" / "b" / "registry.sqlite"
    with VersionStore(path) as store:
        load(store, "s", "m", "v = 1")
    with VersionStore(path) as store:
        assert store.current_version("s", "m") == 1


def test_loaded_at_is_the_last_time_a_version_was_made_current(
    store: VersionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rollback moves loaded_at to the rollback's time; a version never loaded reports when it was recorded."""
    ticks = itertools.count(1)  # a clock that always moves, however fast the calls
    monkeypatch.setattr(store_module, "time", types.SimpleNamespace(time=lambda: float(next(ticks))))
    load(store, "s", "m", "v = 1")
    load(store, "s", "m", "v = 2")
    store.mark_current("s", "m", 1, event="rolled_back")
    store.register("s", "m", "v = 3")
    v3, v2, v1 = store.versions("s", "m")
    rollback, reload, first = store.events("s", "m")
    assert (v1.loaded_at, v2.loaded_at) == (rollback.time, reload.time)
    assert first.time < reload.time < rollback.time < v3.loaded_at
    assert [e.details for e in (rollback, reload, first)] == ["", "", ""]


def test_events_limit_keeps_the_newest(store: VersionStore) -> None:
    """events(limit=n) is the newest n of the log, for the sandbox or one of its modules."""
    for i in range(4):
        load(store, "s", "m", f"v = {i}")
    load(store, "s", "other", "x = 1")
    everything = store.events("s")
    assert len(everything) == 5 and everything[0].module == "other"
    assert store.events("s", limit=2) == everything[:2]
    assert store.events("s", "m", limit=3) == everything[1:4]
    assert store.events("s", "m", limit=0) == []


def test_prune_drops_what_a_smaller_max_versions_no_longer_keeps(db: Path) -> None:
    """Reopened with a lower max_versions, prune() drops the oldest versions of that module only."""
    with VersionStore(db) as store:
        for i in range(1, 5):
            load(store, "s", "m", f"v = {i}")
            load(store, "t", "m", f"v = {i}")
    with VersionStore(db, max_versions=2) as store:
        assert store.prune("s", "m") == [1, 2]
        assert [v.version for v in store.versions("s", "m")] == [4, 3]
        assert store.prune("s", "m") == []
        assert len(store.versions("t", "m")) == 4


def test_known_gives_what_numbering_needs_after_a_restart(db: Path) -> None:
    """Per module: the highest number ever handed out (pruned ones too), the current one (0: none), checksums."""
    with VersionStore(db, max_versions=2) as store:
        for i in range(1, 4):
            load(store, "s", "m", f"v = {i}")  # version 1 is pruned when 3 is registered
        store.mark_current("s", "m", 2, event="rolled_back")  # the current one is not the newest
        store.mark_failed("s", "m", store.register("s", "m", "v = 4")[0], "broken")
        store.register("s", "new", "x = 1")
        load(store, "other", "m", "v = 9")
        assert store.known("s") == {
            "m": (4, 2, {sha256_of(f"v = {i}"): i for i in (2, 3, 4)}),
            "new": (1, 0, {sha256_of("x = 1"): 1}),
        }
        assert store.known("nobody") == {}


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
