"""A sandbox's control group (plugin_host/_cgroup.py), on this machine's real cgroup v1 hierarchies.

The group holds a memory limit for all its processes together, keeps processes that detach
(``setsid``, a double fork) inside, ends everything in it (a process forking in a loop too), and
leaves nothing behind when it cannot be made or is removed.  Skipped where groups cannot be made
(not root), with the reason :func:`support` gives.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from actors._admin.groups import Groups
from actors._process.tree import kill_descendants
from plugin_host._cgroup import SandboxGroup, Support, support
from plugin_host.errors import ConfigError, PluginHostError
from tests.conftest import DETACHED_GRANDCHILD, cgroup_v1_only, eventually, processes_naming

SUPPORT = support()
pytestmark = cgroup_v1_only(SUPPORT)


@pytest.fixture
def group(tmp_path: Path) -> Iterator[SandboxGroup]:
    """A group of its own for the test, removed (everything in it killed) afterwards."""
    assert isinstance(SUPPORT, Support)
    made = SandboxGroup.create(SUPPORT, f"test-{tmp_path.name}", "sandbox")
    try:
        made.set_memory_max(64)
        yield made
    finally:
        made.remove()


def _start(group: SandboxGroup, tmp_path: Path, code: str) -> subprocess.Popen[str]:
    """A python process, moved into ``group``, that runs ``code`` once told to (a line on its stdin).

    Its command line names ``tmp_path``, so the suite's leak guard sees anything it leaves.
    """
    script = "import sys\nsys.stdin.readline()\n" + textwrap.dedent(code)
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    group.join(proc.pid)
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    return proc


def test_the_memory_limit_holds_for_the_processes_together(group: SandboxGroup, tmp_path: Path) -> None:
    """Two processes of 40 MiB each fit a single 64 MiB limit only one at a time: the second is
    killed by the kernel, and the group counts the kill."""
    holder = _start(group, tmp_path, "block = b'x' * (40 * 2**20)\nprint('held', flush=True)\nsys.stdin.readline()")
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    second = _start(group, tmp_path, "block = b'x' * (40 * 2**20)\nprint('held', flush=True)")
    try:
        second.wait(timeout=30)
        assert eventually(lambda: group.oom_kills() >= 1)
        # The kernel ends the group's largest process: either may be the one.
        assert -9 in (second.returncode, holder.poll())
    finally:
        group.kill()
        holder.wait(timeout=10)


def test_detached_descendants_stay_in_the_group_and_die_with_it(group: SandboxGroup, tmp_path: Path) -> None:
    """A grandchild that calls ``setsid`` after a double fork leaves the process tree and group of its
    parent, but not the control group: ``kill`` ends it."""
    proc = _start(group, tmp_path, DETACHED_GRANDCHILD)
    assert proc.stdout is not None
    escaped = int(proc.stdout.readline())
    assert psutil.Process(escaped).ppid() != proc.pid
    assert {proc.pid, escaped} <= group.pids()
    group.kill()
    assert proc.wait(timeout=10) == -9
    assert eventually(lambda: not processes_naming(str(tmp_path)))
    assert group.pids() == set()


def test_a_process_forking_in_a_loop_is_ended_completely(group: SandboxGroup, tmp_path: Path) -> None:
    """Every process of a group whose members keep forking is gone after one ``kill``."""
    code = """
        import os, time
        print("forking", flush=True)
        while True:
            try:
                os.fork()
            except OSError:
                time.sleep(0.01)
            time.sleep(0.005)
    """
    group.set_pids_max(200)  # the loop doubles: keep it from filling the machine's pid table
    proc = _start(group, tmp_path, code)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "forking"
    assert eventually(lambda: len(group.pids()) > 20)
    group.kill()
    assert group.pids() == set()
    assert proc.wait(timeout=10) == -9
    assert eventually(lambda: not processes_naming(str(tmp_path)))


def test_cpu_time_of_dead_processes_still_counts(group: SandboxGroup, tmp_path: Path) -> None:
    """The group's CPU time includes a process that has exited (a fork starts no fresh budget)."""
    if group.cpu_seconds() is None:
        pytest.skip("no cpuacct hierarchy")
    burn = "import time\nend = time.process_time() + 0.2\nwhile time.process_time() < end: pass"
    proc = _start(group, tmp_path, burn)
    assert proc.wait(timeout=30) == 0
    assert (group.cpu_seconds() or 0.0) >= 0.15


def test_a_group_that_cannot_be_made_is_a_config_error_leaving_nothing(tmp_path: Path) -> None:
    """A hierarchy where no directory can be made fails ``create`` with ``ConfigError`` (a
    ``PluginHostError``) naming the sandbox, and the directories made before it are removed."""
    assert isinstance(SUPPORT, Support)
    broken = Support({"memory": SUPPORT.bases["memory"], "pids": Path("/proc/self/no-such-hierarchy")})
    host = f"test-{tmp_path.name}"
    made = SUPPORT.bases["memory"] / f"plugin-host-{host}"
    try:
        with pytest.raises(ConfigError, match="'broken'") as caught:
            SandboxGroup.create(broken, host, "broken")
        assert isinstance(caught.value, PluginHostError)
        assert not made.exists()
    finally:  # what a failing create would leave (cgroup directories go with rmdir only)
        for directory in [*made.glob("*/"), made] if made.exists() else []:
            directory.rmdir()


def test_remove_leaves_no_directory(tmp_path: Path) -> None:
    """``remove`` deletes the sandbox's directories and the host's once it holds no other sandbox."""
    assert isinstance(SUPPORT, Support)
    host = f"test-{tmp_path.name}"
    first = SandboxGroup.create(SUPPORT, host, "a")
    second = SandboxGroup.create(SUPPORT, host, "b")
    first.remove()
    assert all(not d.exists() for d in first.dirs.values())
    assert all(d.parent.exists() for d in second.dirs.values())
    second.remove()
    assert all(not d.parent.exists() for d in second.dirs.values())


def test_support_names_what_is_missing(tmp_path: Path) -> None:
    """Without the hierarchies, ``support`` says which one is missing instead of failing later."""
    found = support(root=tmp_path)
    assert isinstance(found, str) and "'memory'" in found


def test_a_group_the_kill_cannot_empty_is_reported_kept_and_retried(
    group: SandboxGroup, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A process of the group the kill cannot end (this test's own, frozen in a trap freezer group of its
    own, where SIGKILL waits until it is thawed) is named by ``kill`` and ``remove``, which keep the group;
    the admin logs its pids at error level, refuses to make the group again for the same id while it holds
    them, and removes it on a later ``retry`` once the process is gone."""
    assert isinstance(SUPPORT, Support)
    if "freezer" not in SUPPORT.bases:
        pytest.skip("no freezer hierarchy to trap a process in")
    trap = SUPPORT.bases["freezer"] / f"trap-{tmp_path.name}"
    trap.mkdir()
    proc = _start(group, tmp_path, "print('ready', flush=True)\nsys.stdin.readline()")
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        (trap / "cgroup.procs").write_text(str(proc.pid))  # out of the group's freezer dir only
        (trap / "freezer.state").write_text("FROZEN")
        assert eventually(lambda: (trap / "freezer.state").read_text().strip() == "FROZEN")
        assert group.kill() == {proc.pid}
        assert group.remove() == {proc.pid}
        assert all(d.exists() for d in group.dirs.values())
        groups = Groups()
        groups.support, groups.key = SUPPORT, f"test-{tmp_path.name}"
        with caplog.at_level(logging.ERROR):
            groups.remove(group, "'sandbox'")
        assert any(r.levelno == logging.ERROR and str(proc.pid) in r.getMessage() for r in caplog.records)
        with pytest.raises(ConfigError, match=str(proc.pid)):
            SandboxGroup.create(SUPPORT, groups.key, "sandbox")
        (trap / "freezer.state").write_text("THAWED")  # the pending SIGKILL ends it
        assert proc.wait(timeout=10) == -9
        groups.retry()
        assert not groups.stuck
        assert all(not d.exists() for d in group.dirs.values())
    finally:
        (trap / "freezer.state").write_text("THAWED")
        proc.kill()
        proc.wait(timeout=10)
        trap.rmdir()


def test_killing_a_tree_stops_counting_a_process_that_outlives_its_sigkills(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``kill_descendants`` (destroy's kill of a sandbox's tree, in the admin) signals a process that cannot
    die (this test's own, frozen in a trap freezer group of its own) a few times and then returns, rather
    than spin its thousand rounds on it and hold the admin up for a second per such process."""
    assert isinstance(SUPPORT, Support)
    if "freezer" not in SUPPORT.bases:
        pytest.skip("no freezer hierarchy to trap a process in")
    trap = SUPPORT.bases["freezer"] / f"trap-{tmp_path.name}"
    trap.mkdir()
    child = (
        "import subprocess, sys\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)', sys.argv[1]])\n"
        "print(p.pid, flush=True)\n"
        "p.wait()"
    )
    parent = subprocess.Popen([sys.executable, "-c", child, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    signalled: list[int] = []
    real_kill = psutil.Process.kill

    def counting_kill(proc: psutil.Process) -> None:
        signalled.append(proc.pid)
        real_kill(proc)

    try:
        assert parent.stdout is not None
        stuck = int(parent.stdout.readline())
        (trap / "cgroup.procs").write_text(str(stuck))
        (trap / "freezer.state").write_text("FROZEN")
        assert eventually(lambda: (trap / "freezer.state").read_text().strip() == "FROZEN")
        monkeypatch.setattr(psutil.Process, "kill", counting_kill)
        killed = kill_descendants(parent.pid)
        assert stuck in dict(killed)
        assert 1 <= signalled.count(stuck) <= 10, signalled.count(stuck)
    finally:
        monkeypatch.undo()
        (trap / "freezer.state").write_text("THAWED")  # a pending SIGKILL ends it
        parent.kill()
        parent.wait(timeout=10)
        assert eventually(lambda: not (trap / "cgroup.procs").read_text().split())
        trap.rmdir()
