"""Control groups on cgroup v2 (plugin_host/_cgroup.py ``V2Group``), in two halves.

The limits, the detection and the bookkeeping are checked against a simulated v2 hierarchy under
``tmp_path`` (a folder with the files the kernel makes), since this project's machine is cgroup v1 with an
empty v2 hierarchy (no ``memory``, ``pids`` or ``cpu`` controller can be enabled there): which file gets
which value for each limit, the CPU baseline that stands in for v2's unresettable count, the OOM kills
read from ``memory.events``, and v2 chosen only where ``cgroup.controllers`` is at the root.

The core of a group, which needs no controller, is checked on the kernel's own v2 hierarchy where one is
mounted (``/sys/fs/cgroup/unified`` on a hybrid machine, ``/sys/fs/cgroup`` on a pure v2 one): a leaf
group is made, holds a process and what it detaches, counts the CPU of the dead, is emptied at once
through ``cgroup.kill`` (or a freeze) and removed.  Those tests are skipped, with the reason, where no v2
hierarchy is writable (not root).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Iterator

import attrs
import pytest

from actors._admin.groups import MEMORY_SLACK_MB, Groups, host_key
from plugin_host import Host, HostConfig, ResourceLimits
from plugin_host._cgroup import CPU_BASE, UNIFIED, SandboxGroup, Support, V2Group, support
from plugin_host.errors import ConfigError
from tests.conftest import DETACHED_GRANDCHILD, eventually, kill_every_process_naming, processes_naming

CGROUP = os.path.join(os.path.dirname(__file__), "plugins", "cgroup")

_LEAF_FILES = {
    "cgroup.procs": "",
    "cgroup.events": "populated 0\nfrozen 0\n",
    "cgroup.freeze": "",
    "cgroup.kill": "",
    "cgroup.subtree_control": "",
    "memory.max": "max\n",
    "memory.swap.max": "max\n",
    "memory.current": str(10 * 2**20) + "\n",
    "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
    "pids.max": "max\n",
    "cpu.max": "max 100000\n",
    "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\n",
}
"""A v2 group's files as the kernel makes them with ``memory``, ``pids`` and ``cpu`` enabled (writes to them in
a simulated hierarchy replace their text, as a read of the kernel's would show it)."""


def simulated_root(tmp_path: Path, offered: str = "cpuset cpu io memory hugetlb pids") -> Path:
    """A simulated cgroup v2 root offering ``offered`` controllers."""
    root = tmp_path / "cgroup2"
    root.mkdir()
    (root / "cgroup.controllers").write_text(offered + "\n")
    (root / "cgroup.subtree_control").write_text("\n")
    (root / "cgroup.procs").write_text("1\n")
    return root


def own_group(tmp_path: Path, text: str = "0::/\n") -> Path:
    """A simulated ``/proc/self/cgroup``."""
    path = tmp_path / "self-cgroup"
    path.write_text(text)
    return path


def kernel_made(directory: Path, *missing: str) -> Path:
    """Make ``directory`` as the kernel would (its parent, the host's group, too), without ``missing`` files."""
    directory.parent.mkdir(exist_ok=True)
    (directory.parent / "cgroup.subtree_control").write_text("")
    directory.mkdir(exist_ok=True)
    for name, text in _LEAF_FILES.items():
        if name not in missing:
            (directory / name).write_text(text)
    return directory


def files_of(directory: Path) -> dict[str, str]:
    """Every file of ``directory`` -> its text, stripped."""
    return {path.name: path.read_text().strip() for path in sorted(directory.iterdir())}


@pytest.fixture
def simulated(tmp_path: Path) -> Support:
    """The support :func:`support` finds on a simulated v2 root offering every controller."""
    found = support(root=simulated_root(tmp_path), proc_cgroup=own_group(tmp_path))
    assert isinstance(found, Support), found
    return found


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="support() needs root to make groups")


@needs_root
def test_v2_is_chosen_where_the_root_lists_its_controllers_and_they_are_enabled_for_its_children(
    tmp_path: Path,
) -> None:
    """A root with ``cgroup.controllers`` is cgroup v2: groups go directly under it (the ``"unified"`` base),
    with ``memory``, ``pids`` and ``cpu`` enabled in its ``cgroup.subtree_control``; ``cpu`` is optional:
    without it, ``max_cpus`` is a ``ConfigError`` naming the controller."""
    root = simulated_root(tmp_path)
    found = support(root=root, proc_cgroup=own_group(tmp_path))
    assert isinstance(found, Support)
    assert found.version == 2 and found.bases == {UNIFIED: root}
    assert found.controllers == {"memory", "pids", "cpu"}
    assert (root / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    (tmp_path / "cgroup2").rename(tmp_path / "old")
    no_cpu = support(root=simulated_root(tmp_path, "memory pids"), proc_cgroup=own_group(tmp_path))
    assert isinstance(no_cpu, Support) and no_cpu.controllers == {"memory", "pids"}
    groups = Groups()
    groups.support = no_cpu
    with pytest.raises(ConfigError, match="'cpu' controller") as caught:
        groups.check(ResourceLimits(max_cpus=1), local=True)
    assert caught.value.field == "max_cpus"


@needs_root
def test_controllers_enabled_already_are_not_written_again(tmp_path: Path) -> None:
    """Where ``cgroup.subtree_control`` enables ``memory`` and ``pids`` already (systemd does), only ``cpu``
    is added."""
    root = simulated_root(tmp_path)
    (root / "cgroup.subtree_control").write_text("memory pids\n")
    assert isinstance(support(root=root, proc_cgroup=own_group(tmp_path)), Support)
    assert (root / "cgroup.subtree_control").read_text() == "+cpu"


@needs_root
@pytest.mark.parametrize("offered, missing", [("cpu io pids", "'memory'"), ("cpu io memory", "'pids'")])
def test_v2_without_memory_or_pids_is_a_reason_not_groups(tmp_path: Path, offered: str, missing: str) -> None:
    """A v2 root that does not offer ``memory`` or ``pids`` gives the reason naming the controller (the host
    then falls back to rlimits and the monitor), and enables nothing."""
    root = simulated_root(tmp_path, offered)
    found = support(root=root, proc_cgroup=own_group(tmp_path))
    assert isinstance(found, str) and missing in found and "cgroup v2" in found
    assert (root / "cgroup.subtree_control").read_text() == "\n"


@needs_root
def test_a_v2_root_that_refuses_the_controllers_or_a_process_outside_v2_is_a_reason(tmp_path: Path) -> None:
    """A root whose ``cgroup.subtree_control`` cannot be written (as in a cgroup namespace whose root holds
    processes) gives the reason, naming the controllers and the process's own group; so does a process with
    no ``0::`` line in ``/proc/self/cgroup``."""
    root = simulated_root(tmp_path)
    (root / "cgroup.subtree_control").unlink()
    (root / "cgroup.subtree_control").mkdir()  # neither readable nor writable as a file
    found = support(root=root, proc_cgroup=own_group(tmp_path, "0::/init.scope\n"))
    assert isinstance(found, str) and "memory/pids/cpu" in found and "/init.scope" in found
    outside = support(root=root, proc_cgroup=own_group(tmp_path, "4:memory:/\n"))
    assert isinstance(outside, str) and "no cgroup v2 group" in outside


@needs_root
def test_a_hybrid_machine_stays_on_v1(tmp_path: Path) -> None:
    """v1 hierarchies plus an empty v2 one at ``unified`` (this project's machine) give v1 groups."""
    root = tmp_path / "cgroups"
    for controller in ("memory", "pids"):
        (root / controller).mkdir(parents=True)
        (root / controller / "cgroup.procs").write_text("")
    (root / "unified").mkdir()
    (root / "unified" / "cgroup.controllers").write_text("hugetlb\n")
    found = support(root=root, proc_cgroup=own_group(tmp_path, "8:pids:/\n4:memory:/\n0::/\n"))
    assert isinstance(found, Support) and found.version == 1
    assert found.bases == {"memory": root / "memory", "pids": root / "pids"}
    assert isinstance(SandboxGroup.existing(found, "h", "s"), SandboxGroup) and UNIFIED not in found.bases


@needs_root
def test_each_limit_goes_to_its_v2_file(simulated: Support, config: HostConfig) -> None:
    """Through the admin's ``Groups`` on a simulated v2 root: the host's group enables ``memory``, ``pids``,
    ``cpu`` for its sandboxes; ``max_tasks`` is ``pids.max``, ``max_cpus=0.5`` is ``cpu.max`` ``50000 100000``;
    a new group has ``memory.max`` ``max``; once the tree runs, ``memory.max`` is the charge (10 MiB) plus
    ``max_memory_mb`` plus the slack, in bytes, and ``memory.swap.max`` is 0 (no swap past it); no other file
    is made or changed."""
    groups = Groups()
    groups.boot(attrs.evolve(config, cgroup_root=simulated.bases[UNIFIED]), multiprocess=True)
    assert groups.support == simulated
    leaf = kernel_made(V2Group.existing(simulated, host_key(config), "s").dirs[UNIFIED])
    before = files_of(leaf)
    limits = ResourceLimits(max_tasks=24, max_cpus=0.5, max_memory_mb=40)
    group = groups.make("s", limits)
    assert isinstance(group, V2Group) and group.dirs == {UNIFIED: leaf}
    assert (leaf.parent / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    made = files_of(leaf)
    assert made == {**before, "pids.max": "24", "cpu.max": "50000 100000"}
    Groups.started(group, limits)
    assert files_of(leaf) == {**made, "memory.max": str((10 + 40 + MEMORY_SLACK_MB) * 2**20), "memory.swap.max": "0"}
    assert group.memory_limit_bytes() == (10 + 40 + MEMORY_SLACK_MB) * 2**20
    group.set_memory_max(None)
    group.set_cpu_quota(None)
    group.set_pids_max(None)
    assert files_of(leaf) == before
    assert group.memory_limit_bytes() == sys.maxsize


@needs_root
def test_without_the_cpu_controller_a_cpu_quota_is_refused(simulated: Support) -> None:
    """A group without ``cpu.max`` (no ``cpu`` controller for it) refuses a quota with an ``OSError`` instead
    of writing a file the kernel would not read; without ``memory.swap.max`` (no swap accounting) only
    ``memory.max`` is written."""
    leaf = kernel_made(V2Group.existing(simulated, "h", "s").dirs[UNIFIED], "cpu.max", "memory.swap.max")
    group = SandboxGroup.at({UNIFIED: str(leaf)})
    with pytest.raises(FileNotFoundError):
        group.set_cpu_quota(1.0)
    group.set_memory_max(1.0)
    assert not (leaf / "cpu.max").exists() and not (leaf / "memory.swap.max").exists()
    assert (leaf / "memory.max").read_text() == str(2**20)


@needs_root
def test_v2_cpu_time_counts_from_the_last_reset_and_the_baseline_travels_with_the_group(simulated: Support) -> None:
    """v2's ``usage_usec`` cannot be reset: ``reset_cpu`` (the admin's, at each start of the root) keeps it
    as a baseline, ``cpu_seconds`` counts past it, and the group rebuilt from ``paths()`` (what the monitor
    gets in ``Watch``) counts from the same point; a fresh group from paths without it counts all."""
    leaf = kernel_made(V2Group.existing(simulated, "h", "s").dirs[UNIFIED])
    group = SandboxGroup.create(simulated, "h", "s")
    (leaf / "cpu.stat").write_text("usage_usec 5000000\nuser_usec 4000000\nsystem_usec 1000000\n")
    assert group.cpu_seconds() == 5.0
    group.reset_cpu()
    assert group.cpu_seconds() == 0.0
    (leaf / "cpu.stat").write_text("usage_usec 5250000\nuser_usec 4250000\nsystem_usec 1000000\n")
    assert group.cpu_seconds() == 0.25
    paths = group.paths()
    assert paths == {UNIFIED: str(leaf), CPU_BASE: "5000000"}
    assert SandboxGroup.at(paths).cpu_seconds() == 0.25
    assert SandboxGroup.at({UNIFIED: str(leaf)}).cpu_seconds() == 5.25


@needs_root
def test_v2_oom_kills_and_memory_are_read_from_the_v2_files(simulated: Support) -> None:
    """The kernel's OOM kills are ``oom_kill`` of ``memory.events`` (not its ``oom`` count), the charge is
    ``memory.current``."""
    leaf = kernel_made(V2Group.existing(simulated, "h", "s").dirs[UNIFIED])
    group = SandboxGroup.create(simulated, "h", "s")
    assert group.oom_kills() == 0
    (leaf / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 3\noom_kill 2\noom_group_kill 0\n")
    (leaf / "memory.current").write_text("123456\n")
    assert group.oom_kills() == 2 and group.memory_bytes() == 123456


@needs_root
def test_v2_kill_writes_cgroup_kill_else_freezes_and_kills_the_listed(simulated: Support, tmp_path: Path) -> None:
    """With ``cgroup.kill`` a kill writes ``1`` there (the kernel ends every process at once); without it
    (kernel < 5.14) the group is frozen, each listed process is killed through a pidfd, and it is thawed."""
    leaf = kernel_made(V2Group.existing(simulated, "h", "s").dirs[UNIFIED])
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(tmp_path)])
    try:
        (leaf / "cgroup.procs").write_text(f"{sleeper.pid}\n")
        group = SandboxGroup.at({UNIFIED: str(leaf)})
        assert group.kill(rounds=1) == {sleeper.pid}  # the simulated kernel ends nothing
        assert (leaf / "cgroup.kill").read_text() == "1" and sleeper.poll() is None
        (leaf / "cgroup.kill").unlink()
        assert group.kill(rounds=1) == {sleeper.pid}  # still listed: the simulation never empties the file
        assert sleeper.wait(timeout=10) == -signal.SIGKILL
        assert (leaf / "cgroup.freeze").read_text() == "0"
    finally:
        sleeper.kill()
        sleeper.wait(timeout=10)


def _v2_mount() -> Path | None:
    """The kernel's cgroup v2 hierarchy, where mounted."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[fields.index("-") + 1] == "cgroup2":
            return Path(fields[4])
    return None


MOUNT = _v2_mount()
on_the_kernel = pytest.mark.skipif(
    MOUNT is None or os.geteuid() != 0 or not os.access(MOUNT, os.W_OK),
    reason="no cgroup v2 hierarchy this process can write (not root, or none mounted)",
)


@pytest.fixture
def kernel_group(tmp_path: Path) -> Iterator[V2Group]:
    """A v2 group of its own on the kernel's hierarchy, with no controller (none need be available), removed
    (everything in it killed) afterwards; what a failing test's processes left is killed by pid."""
    assert MOUNT is not None
    made = SandboxGroup.create(Support({UNIFIED: MOUNT}, frozenset()), f"test-{tmp_path.name}", "sandbox")
    assert isinstance(made, V2Group)
    try:
        yield made
    finally:
        made.remove()
        kill_every_process_naming(str(tmp_path))
        made.remove()  # once what it held is gone


def _start(group: SandboxGroup, tmp_path: Path, code: str) -> subprocess.Popen[str]:
    """A python process, moved into ``group``, that runs ``code`` once told to (its command line names
    ``tmp_path``, so the suite's leak guard sees anything it leaves)."""
    script = "import sys\nsys.stdin.readline()\n" + textwrap.dedent(code)
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    group.join(proc.pid)
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    return proc


def _populated(group: V2Group) -> bool:
    return "populated 1" in (group.dirs[UNIFIED] / "cgroup.events").read_text()


@on_the_kernel
def test_on_the_kernel_a_v2_group_holds_detached_descendants_and_kill_empties_it(
    kernel_group: V2Group, tmp_path: Path
) -> None:
    """A process joined to a v2 leaf group is listed in its ``cgroup.procs`` (and its ``/proc/<pid>/cgroup``
    names the group); its grandchild, detached with ``setsid`` after a double fork, is in it too; ``kill``
    ends both (``cgroup.kill`` where the kernel has it) and the group is empty (``populated 0``); ``remove``
    deletes the group's directory and the host's."""
    proc = _start(kernel_group, tmp_path, DETACHED_GRANDCHILD)
    assert proc.stdout is not None
    escaped = int(proc.stdout.readline())
    leaf = kernel_group.dirs[UNIFIED]
    assert f"0::/{leaf.relative_to(MOUNT or leaf)}" in Path(f"/proc/{escaped}/cgroup").read_text().splitlines()
    assert {proc.pid, escaped} <= kernel_group.pids() and _populated(kernel_group)
    assert kernel_group.kill() == set()
    assert proc.wait(timeout=10) == -signal.SIGKILL
    assert eventually(lambda: not processes_naming(str(tmp_path)))
    assert eventually(lambda: not _populated(kernel_group))
    assert kernel_group.remove() == set()
    assert not leaf.exists() and not leaf.parent.exists()


@on_the_kernel
def test_on_the_kernel_a_v2_group_forking_all_along_is_emptied_by_one_kill(
    kernel_group: V2Group, tmp_path: Path
) -> None:
    """A process forking a child every 5 ms (linear and for 10 s at most: no pids controller is needed to
    bound it) is ended with every child by one ``kill``."""
    code = """
        import os, time
        print("forking", flush=True)
        deadline = time.time() + 10
        while time.time() < deadline:
            if os.fork() == 0:
                time.sleep(10)
                os._exit(0)
            time.sleep(0.005)
    """
    proc = _start(kernel_group, tmp_path, code)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "forking"
    assert eventually(lambda: len(kernel_group.pids()) > 10)
    assert kernel_group.kill() == set()
    assert proc.wait(timeout=10) == -signal.SIGKILL
    assert eventually(lambda: not processes_naming(str(tmp_path)))


@on_the_kernel
def test_on_the_kernel_v2_cpu_time_keeps_the_dead_and_counts_from_the_reset(
    kernel_group: V2Group, tmp_path: Path
) -> None:
    """``cpu.stat`` of a v2 group keeps the CPU of a process that has exited (no controller needed);
    ``reset_cpu`` counts from zero again, and so does the group rebuilt from ``paths()``."""
    proc = _start(
        kernel_group, tmp_path, "import time\nend = time.process_time() + 0.2\nwhile time.process_time() < end: pass"
    )
    assert proc.wait(timeout=30) == 0
    assert (kernel_group.cpu_seconds() or 0.0) >= 0.15
    kernel_group.reset_cpu()
    assert (kernel_group.cpu_seconds() or 0.0) < 0.05
    assert (SandboxGroup.at(kernel_group.paths()).cpu_seconds() or 0.0) < 0.05


@needs_root
def test_a_host_on_a_v2_root_writes_each_limit_and_the_monitor_counts_cpu_from_each_start(
    config: HostConfig, tmp_path: Path
) -> None:
    """A ``Host`` whose ``cgroup_root`` is a simulated v2 root makes each sandbox's group there: create_sandbox
    writes ``pids.max`` and ``cpu.max`` from its limits, the root's pid lands in ``cgroup.procs`` (the admin
    and the root itself write it), ``memory.max`` is set once it runs; ``resource_usage`` (the monitor, which
    gets the group in ``Watch``) counts ``usage_usec`` from the root's start, not from the group's birth,
    and counts again from zero after ``restart_sandbox``.  (The simulated files limit nothing: the kernel's
    enforcement of them could not be run on this machine.)"""
    root = simulated_root(tmp_path)
    found = support(root=root)  # this process's own /proc/self/cgroup
    if isinstance(found, str):
        pytest.skip(found)
    leaf = kernel_made(V2Group.existing(found, host_key(config), "s").dirs[UNIFIED])
    (leaf / "cpu.stat").write_text("usage_usec 5000000\nuser_usec 5000000\nsystem_usec 0\n")  # an earlier life's
    limits = ResourceLimits(max_tasks=24, max_cpus=0.5, max_memory_mb=200)
    with Host(config, cgroup_root=root, control_groups="required") as host:
        host.create_sandbox("s", "cgrouper:Root", sandbox_path=CGROUP, limits=limits)
        pid = host.get_sandbox_info("s").pid
        assert (leaf / "pids.max").read_text() == "24" and (leaf / "cpu.max").read_text() == "50000 100000"
        assert (leaf / "cgroup.procs").read_text() == str(pid)
        assert eventually(lambda: (leaf / "memory.max").read_text() == str((10 + 200 + MEMORY_SLACK_MB) * 2**20))
        assert eventually(lambda: host.resource_usage("s").group_cpu_seconds == 0.0)
        assert host.resource_usage("s").group_memory_bytes == 10 * 2**20
        (leaf / "cpu.stat").write_text("usage_usec 5250000\nuser_usec 5250000\nsystem_usec 0\n")
        assert host.resource_usage("s").group_cpu_seconds == 0.25
        (leaf / "cgroup.procs").write_text("")  # the simulation lists a pid forever: as the kernel would, once it ends
        host.restart_sandbox("s")
        assert host.get_sandbox_info("s").pid != pid
        assert eventually(lambda: host.resource_usage("s").group_cpu_seconds == 0.0)
        (leaf / "cgroup.procs").write_text("")
