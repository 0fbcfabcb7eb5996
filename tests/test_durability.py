"""Registry durability: a host killed with SIGKILL in the middle of reloads leaves a sound, consistent history."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import eventually, pid_alive

from plugin_host import Host, HostConfig
from plugin_host.store import VersionStore

ROOT = """
from actors import ChildSpec, Supervisor
from counter import Counter

class Root(Supervisor):
    children = [ChildSpec("c1", Counter), ChildSpec("c2", Counter)]
"""

COUNTER = """
from actors import Plugin

class Counter(Plugin):
    def init(self, args):
        return {{"count": 0}}

    def handle_call(self, request, state):
        return "{tag}", state
"""

APP = """
import sys
from plugin_host import Host

counter, pids, done = sys.argv[1:4]
host = Host(state_dir=sys.argv[4], heartbeat_interval=0.2, hang_timeout=1.0)
host.create_sandbox("s", "root:Root", sandbox_path=sys.argv[5])
with open(pids, "w") as out:
    out.write(" ".join(str(p.pid) for p in host._system.process_tree()))
with open(done, "a", buffering=1) as out:
    for index in range(2, 10_000):
        tag = ("even" if index % 2 == 0 else "odd") + str(index)  # two behaviours, every source new
        result = host.hot_reload_source("s", counter.format(tag=tag), module="counter")
        out.write(f"{result.new_version}\\n")
"""


def read_versions(path: Path) -> list[int]:
    """Versions the app reported as reloaded (a torn last line is not a report)."""
    if not path.exists():
        return []
    text = path.read_text()
    return [int(line) for line in text.split("\n")[:-1] if line]


def kill_host_during_reloads(tmp_path: Path, state_dir: Path, folder: Path, rng: random.Random) -> list[int]:
    """Run the app, SIGKILL it after a seeded number of reloads; wait until its actors are gone."""
    script, pids_file, done = tmp_path / "app.py", tmp_path / "pids.txt", tmp_path / "done.txt"
    script.write_text(APP)
    argv = [sys.executable, str(script), COUNTER, str(pids_file), str(done), str(state_dir), str(folder)]
    with open(tmp_path / "app.log", "wb") as log:
        app = subprocess.Popen(argv, stdout=log, stderr=log)
    reloads = rng.randint(3, 10)
    try:
        eventually(lambda: len(read_versions(done)) >= reloads or app.poll() is not None, timeout=90)
        time.sleep(rng.uniform(0.0, 0.1))  # somewhere inside a reload (each takes tens of ms)
        os.kill(app.pid, signal.SIGKILL)
    finally:
        app.kill()
        app.wait()
    assert app.returncode == -signal.SIGKILL, (tmp_path / "app.log").read_text()
    pids = [int(p) for p in pids_file.read_text().split()]
    eventually(lambda: not any(pid_alive(p) for p in pids), timeout=15)
    return read_versions(done)


def raw_history(path: Path) -> tuple[dict[int, str], int]:
    """(version -> status, last number handed out) of s/counter, straight from the sqlite file."""
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT version, status FROM versions WHERE sandbox_id = 's' AND module = 'counter'")
        statuses = {int(v): s for v, s in rows}
        last = conn.execute("SELECT last_version FROM modules WHERE sandbox_id = 's' AND module = 'counter'").fetchone()
    conn.close()
    return statuses, int(last[0])


@pytest.mark.parametrize("seed", [11, 22, 33])
def test_history_stays_consistent_when_the_host_is_killed_during_reloads(
    seed: int, tmp_path: Path, state_dir: Path, config: HostConfig
) -> None:
    """kill -9 mid-reload: sqlite is sound, each reload is fully recorded or absent, numbering goes on."""
    rng = random.Random(seed)
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "root.py").write_text(ROOT)
    (folder / "counter.py").write_text(COUNTER.format(tag="start"))
    reported = kill_host_during_reloads(tmp_path, state_dir, folder, rng)
    assert len(reported) >= 3 and reported == list(range(2, len(reported) + 2)), reported
    path = state_dir / "registry.sqlite3"
    with VersionStore(path) as store:
        assert store.integrity_check()
    statuses, last = raw_history(path)
    in_flight = reported[-1] + 1
    assert sorted(statuses) == list(range(1, last + 1)), statuses  # no gap
    assert last in (reported[-1], in_flight), (last, reported)
    assert [v for v, s in statuses.items() if s == "current"] in ([reported[-1]], [in_flight]), statuses
    assert all(
        s in ("current", "previous", "failed") or (s == "pending" and v == in_flight) for v, s in statuses.items()
    ), statuses
    with Host(config) as host:
        history = host.get_version_history("s", "counter")
        assert history.current_version in (reported[-1], in_flight)
        assert history.total_versions == last
        assert all(v.status in ("current", "previous", "failed") for v in history.versions)
        assert [v.version for v in history.versions if v.status == "current"] == [history.current_version]
        (folder / "counter.py").write_text(COUNTER.format(tag="after"))
        info = host.create_sandbox("s", "root:Root", sandbox_path=str(folder))
        assert info.modules["counter"] == last + 1
        assert host.get_module_version("s", "counter") == last + 1
        assert host.call("s", "c1", "tag") == "after"
