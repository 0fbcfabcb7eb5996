"""Watch mode (``plugin-host run --watch``): the folder snapshot, and reloads driven by saves."""

from __future__ import annotations

import os
import queue
import textwrap
from pathlib import Path
from typing import Iterator

import pytest
from conftest import eventually

from plugin_host import Host
from plugin_host._cli.watch import FolderSnapshot, ReloadReport, Watcher
from plugin_host.errors import CompilationError, HotReloadError, SandboxNotFoundError

ROOT = """
from actors import ChildSpec, Supervisor
from counter import Counter

class Root(Supervisor):
    children = [ChildSpec("counter", Counter)]
"""


def counter(step: int = 1, tag: str = "v1", code_change: str = "return old_state") -> str:
    """Source of a counter plugin that says which version runs (``"tag"``) and counts by ``step``."""
    return textwrap.dedent(f'''
        from actors import Plugin

        class Counter(Plugin):
            def init(self, args):
                return {{"count": 0}}

            def handle_call(self, request, state):
                if request == "inc":
                    state = {{**state, "count": state["count"] + {step}}}
                    return state["count"], state
                if request == "tag":
                    return "{tag}", state
                return state["count"], state

            def code_change(self, old_state, old_vsn, new_vsn):
                {code_change}
    ''')


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A sandbox folder of two modules (root, counter), version 1."""
    path = tmp_path / "code"
    path.mkdir()
    (path / "root.py").write_text(ROOT)
    (path / "counter.py").write_text(counter())
    return path


@pytest.fixture
def reports() -> queue.Queue[ReloadReport]:
    """Where a watcher's reports arrive, to be awaited with ``get(timeout=...)``."""
    return queue.Queue()


@pytest.fixture
def watched(host: Host, folder: Path, reports: queue.Queue[ReloadReport]) -> Iterator[Host]:
    """A host running sandbox ``"w"`` from ``folder``, with a watcher on it (fast polling)."""
    watcher = Watcher(host, "w", folder, reports.put, interval=0.05, debounce=0.1)
    host.create_sandbox("w", "root:Root", sandbox_path=folder)
    with watcher:
        yield host


def test_snapshot_reports_changed_added_and_removed_files(folder: Path) -> None:
    """A scan names every file whose content changed, appeared or disappeared since the last one."""
    snapshot = FolderSnapshot(folder)
    assert snapshot.scan() == set()
    (folder / "counter.py").write_text(counter(step=2))
    (folder / "extra.py").write_text("X = 1\n")
    assert snapshot.scan() == {"counter.py", "extra.py"}
    (folder / "extra.py").unlink()
    assert snapshot.scan() == {"extra.py"}
    assert snapshot.scan() == set()


def test_snapshot_ignores_a_touch_and_an_identical_save(folder: Path) -> None:
    """Only content counts: a new mtime, or the same bytes written again, is no change."""
    snapshot = FolderSnapshot(folder)
    os.utime(folder / "root.py", ns=(1, 1))
    (folder / "counter.py").write_text(counter())
    assert snapshot.scan() == set()


def test_snapshot_sees_a_same_size_edit_within_the_clock_granularity(folder: Path) -> None:
    """Two writes of the same size with the same mtime still differ: recent files are hashed again."""
    snapshot = FolderSnapshot(folder)
    path = folder / "counter.py"
    stat = path.stat()
    path.write_text(counter(tag="v2"))  # same length as "v1"
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert snapshot.scan() == {"counter.py"}


def test_snapshot_skips_hidden_folders_and_bytecode_caches(folder: Path) -> None:
    """Files the compiler never reads (``__pycache__``, ``.git``...) never trigger a reload."""
    snapshot = FolderSnapshot(folder)
    for hidden in ("__pycache__", ".git"):
        (folder / hidden).mkdir()
        (folder / hidden / "junk.py").write_text("X = 1\n")
    assert snapshot.scan() == set()


def test_a_saved_change_is_hot_reloaded_and_the_state_kept(
    watched: Host, folder: Path, reports: queue.Queue[ReloadReport]
) -> None:
    """Saving new code reloads it into the running actor: new behaviour, same state, same process."""
    assert [watched.call("w", "counter", "inc") for _ in range(2)] == [1, 2]
    (folder / "counter.py").write_text(counter(step=10, tag="v2"))
    assert eventually(lambda: watched.call("w", "counter", "tag") == "v2", timeout=30)
    assert watched.call("w", "counter", "inc") == 12
    report = reports.get(timeout=30)
    assert report.error is None and report.files == ("counter.py",)
    assert report.versions == {"counter": (1, 2)} and report.actors_updated == ("counter",)
    assert report.running == {"counter": 2, "root": 1}


def test_a_broken_save_leaves_the_running_version_in_place(
    watched: Host, folder: Path, reports: queue.Queue[ReloadReport]
) -> None:
    """A syntax error, then a raising code_change: each is reported, and version 1 keeps answering."""
    watched.call("w", "counter", "inc")
    (folder / "counter.py").write_text(counter(tag="v2") + "def broken(:\n")
    report = reports.get(timeout=30)
    assert isinstance(report.error, CompilationError) and "counter.py" in str(report.error)
    assert report.running == {"counter": 1, "root": 1} and report.versions == {}
    (folder / "counter.py").write_text(counter(tag="v3", code_change='raise ValueError("no migration")'))
    report = reports.get(timeout=30)
    assert isinstance(report.error, HotReloadError) and "no migration" in str(report.error)
    assert report.running == {"counter": 1, "root": 1}
    assert watched.call("w", "counter", "tag") == "v1" and watched.call("w", "counter", "inc") == 2
    (folder / "counter.py").write_text(counter(tag="v4"))  # fixed: the watcher carries on
    report = reports.get(timeout=30)  # the reload's outcome, recorded before it is reported
    assert report.error is None
    assert watched.call("w", "counter", "tag") == "v4"
    statuses = {v.version: v.status for v in watched.get_version_history("w", "counter").versions}
    assert statuses == {1: "previous", 2: "failed", 3: "current"}


def test_a_report_for_a_sandbox_that_is_gone_carries_the_error(
    host: Host, folder: Path, reports: queue.Queue[ReloadReport]
) -> None:
    """Reloading a destroyed sandbox is reported as an error, and the watcher keeps running."""
    with Watcher(host, "gone", folder, reports.put, interval=0.05, debounce=0.1) as watcher:
        (folder / "counter.py").write_text(counter(tag="v2"))
        report = reports.get(timeout=30)
        assert isinstance(report.error, SandboxNotFoundError) and report.running == {}
        assert watcher.alive


def test_stop_raises_the_error_that_ended_the_watcher(host: Host, folder: Path) -> None:
    """An unexpected error in the watcher's thread is not swallowed: ``stop`` raises it."""

    def report(_: ReloadReport) -> None:
        raise RuntimeError("the report callback broke")

    watcher = Watcher(host, "gone", folder, report, interval=0.05, debounce=0.1)
    watcher.start()
    (folder / "counter.py").write_text(counter(tag="v2"))
    eventually(lambda: not watcher.alive, timeout=30)
    with pytest.raises(RuntimeError, match="the report callback broke"):
        watcher.stop()
