"""Attacks on containment that a control group per sandbox holds (issue #15), on this machine's real cgroup v1.

Every process of a sandbox is in its group, however it detaches; the group ends what a killed root left
to init, stops a fork bomb, and counts the CPU of processes that are gone; a limit only a group applies
fails ``create_sandbox`` without one; nothing of a host's groups outlives it.  Each process a test's
plugin starts carries a marker unique to the test and ends by itself within a minute; ``finally`` kills
what carries the marker by pid.  Skipped, with the reason, where groups cannot be made (not root).
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import attrs
import psutil
import pytest
from conftest import cgroup_v1_only, eventually, kill_every_process_naming, pid_alive, processes_naming

from actors._admin.groups import host_key
from plugin_host import Event, Host, HostConfig, ResourceLimits
from plugin_host._cgroup import SandboxGroup, Support, support
from plugin_host.errors import ConfigError, PluginError, SandboxNotFoundError, SandboxStartError

SUPPORT = support()
pytestmark = cgroup_v1_only(SUPPORT)

PLUGINS = os.path.join(os.path.dirname(__file__), "plugins")
ESCAPE = os.path.join(PLUGINS, "escape")
CGROUP = os.path.join(PLUGINS, "cgroup")


@pytest.fixture
def config(config: HostConfig) -> HostConfig:
    """The suite's fast settings, patient with a worker busy starting processes on a loaded machine."""
    return attrs.evolve(config, hang_timeout=10.0)


@pytest.fixture(autouse=True)
def no_group_left(config: HostConfig) -> Iterator[None]:
    """Whatever groups of the test's host a failing test leaves are emptied and removed."""
    yield
    assert isinstance(SUPPORT, Support)
    key = host_key(config)
    names = {child.name for path in host_dirs(config) for child in path.iterdir() if child.is_dir()}
    for name in names:
        SandboxGroup.named(SUPPORT, key, name).remove()
    for path in host_dirs(config):
        path.rmdir()


@pytest.fixture
def marker() -> Iterator[str]:
    """A mark unique to the test on every process its plugins start; whatever carries it is killed at the end."""
    mark = f"ph-cgroup-{uuid.uuid4().hex}"
    try:
        yield mark
    finally:
        kill_every_process_naming(mark)  # a bomb forks as it is killed: until none is left


def marked(mark: str) -> set[int]:
    """Pids of the live (not zombie) processes carrying ``mark``."""
    return {proc.pid for proc in processes_naming(mark)}


def group_of(pid: int) -> dict[str, str]:
    """Controller -> the group ``pid`` is in (its path in that hierarchy), from ``/proc/<pid>/cgroup``."""
    found = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            found[controller] = path
    return found


def group_dir(pid: int, controller: str) -> Path:
    """The directory of the group ``pid`` is in, in ``controller``'s hierarchy."""
    return Path("/sys/fs/cgroup") / controller / group_of(pid)[controller].lstrip("/")


def host_dirs(config: HostConfig) -> list[Path]:
    """Every directory of the host's groups (one per hierarchy) that exists."""
    assert isinstance(SUPPORT, Support)
    key = host_key(config)
    return [base / f"plugin-host-{key}" for base in SUPPORT.bases.values() if (base / f"plugin-host-{key}").exists()]


def root_pid(host: Host, sandbox_id: str) -> int:
    info = host.get_sandbox_info(sandbox_id)
    assert info.pid is not None
    return info.pid


def events_of(host: Host) -> queue.Queue[Event]:
    events: queue.Queue[Event] = queue.Queue()
    host.subscribe(events.put)
    return events


def _own_group() -> str:
    return Path("/proc/self/cgroup").read_text()


def test_every_process_of_a_sandbox_detached_ones_included_is_in_its_group(config: HostConfig, marker: str) -> None:
    """The root, its worker, Host.run's process, a `setsid -f` child and a double-forked one (both out of the
    sandbox's process group and session) are all in the sandbox's own group in every hierarchy, one below the host's
    ``plugin-host-<key>``; another sandbox's processes are in another group."""
    with Host(config) as host:
        host.create_sandbox("a", "escaper:Root", sandbox_path=ESCAPE)
        host.create_sandbox("b", "escaper:Root", sandbox_path=ESCAPE)
        host.call("a", "escaper", ("setsid", marker))
        host.call("a", "escaper", ("double", marker))
        escaped = eventually(lambda: len(marked(marker)) == 2 and marked(marker))
        root = root_pid(host, "a")
        expected = group_of(root)
        for controller in ("memory", "pids", "cpuacct", "freezer"):
            assert f"/plugin-host-{host_key(host.config)}/sb-" in expected[controller]
        for pid in escaped:  # they did detach: a session of their own
            assert os.getsid(pid) != os.getsid(root)
        for pid in {host.call("a", "escaper", "pid"), *escaped}:
            assert group_of(pid) == expected
        assert host.run("a", _own_group) == Path(f"/proc/{root}/cgroup").read_text()  # Host.run's process too
        other = group_of(root_pid(host, "b"))
        assert other["pids"] != expected["pids"] and group_of(host.call("b", "escaper", "pid")) == other


@pytest.mark.parametrize("end", ["destroy", "close"])
def test_a_detached_child_of_a_root_killed_from_outside_is_ended(config: HostConfig, marker: str, end: str) -> None:
    """The root is SIGKILLed from outside while a `setsid -f` child and a double-forked one (out of its process
    group, and unseen by a monitor that reads no tree for a sandbox without limits) run: they went to init,
    and still destroy_sandbox, or Host.close, ends them (their control group holds them)."""
    with Host(config) as host:
        host.create_sandbox("esc", "escaper:Root", sandbox_path=ESCAPE)
        host.call("esc", "escaper", ("setsid", marker))
        host.call("esc", "escaper", ("double", marker))
        eventually(lambda: len(marked(marker)) == 2)
        os.kill(root_pid(host, "esc"), signal.SIGKILL)
        eventually(lambda: host.get_sandbox_info("esc").status == "failed")
        if end == "destroy":
            host.destroy_sandbox("esc")
            assert not marked(marker)
    assert not marked(marker)


def test_a_fork_bomb_is_stopped_by_pids_max_and_emptied_by_destroy(config: HostConfig, marker: str) -> None:
    """A plugin's fork bomb (7 doublings: 128 processes unchecked, each ending within 20 s) stays within
    ``max_tasks=24`` tasks (the group refuses the forks past it), the sandbox's worker, another sandbox and
    the host still answer, and destroy_sandbox ends every process of it and removes its group."""
    with Host(config) as host:
        host.create_sandbox("calm", "escaper:Root", sandbox_path=ESCAPE)
        host.create_sandbox("bomb", "cgrouper:Root", sandbox_path=CGROUP, limits=ResourceLimits(max_tasks=24))
        pids = group_dir(root_pid(host, "bomb"), "pids")
        assert (pids / "pids.max").read_text().strip() == "24"
        host.call("bomb", "cgrouper", ("bomb", marker, 20, 7))
        # Refused forks are counted by the kernel: the bomb hit the limit.
        eventually(lambda: int((pids / "pids.events").read_text().split()[1]) > 0, timeout=20)
        assert len(marked(marker)) < 24
        assert int((pids / "pids.current").read_text()) <= 24
        assert host.call("calm", "escaper", "pid") and host.call("bomb", "cgrouper", "pid")
        host.destroy_sandbox("bomb")
        assert not marked(marker)
        assert not pids.exists()


def test_max_cpu_seconds_counts_the_cpu_of_forked_children(config: HostConfig) -> None:
    """Children forked one after the other each burn 0.15 s, under the per-process limit, 0.75 s together:
    past ``max_cpu_seconds=0.5`` for the sandbox (its group counts the dead), so the sandbox gets one
    ``limit_breached`` event for ``max_cpu_seconds`` and ends ``failed``, naming the limit; restarted, it
    starts a budget of its own."""
    with Host(config, monitor_interval=0.1) as host:
        events = events_of(host)
        host.create_sandbox("cpu", "cgrouper:Root", sandbox_path=CGROUP, limits=ResourceLimits(max_cpu_seconds=0.5))
        try:
            host.call("cpu", "cgrouper", ("burn", 5, 0.15), timeout=30)
        except PluginError:
            pass  # the worker, the top burner, may be killed before it answers
        assert eventually(lambda: host.get_sandbox_info("cpu").status == "failed", timeout=20)
        assert "max_cpu_seconds" in (host.get_sandbox_info("cpu").reason or "")
        seen = []
        while not events.empty():
            seen.append(events.get())
        breaches = [e for e in seen if e.kind == "limit_breached"]
        assert len(breaches) == 1 and breaches[0].details["limit"] == "max_cpu_seconds"
        assert breaches[0].details["value"] > 0.5
        host.restart_sandbox("cpu")  # a new start, a new budget
        assert host.call("cpu", "cgrouper", "pid")
        assert (host.resource_usage("cpu").group_cpu_seconds or 0.0) < 0.5


def test_resource_usage_reads_the_group(config: HostConfig) -> None:
    """With a group, resource_usage gives its CPU time, which keeps the CPU of children that are gone, and
    the memory charged to it; max_cpus is the group's CPU quota."""
    with Host(config) as host:
        host.create_sandbox("u", "cgrouper:Root", sandbox_path=CGROUP, limits=ResourceLimits(max_cpus=0.5))
        quota = group_dir(root_pid(host, "u"), "cpu") / "cpu.cfs_quota_us"
        assert quota.read_text().strip() == "50000"
        host.call("u", "cgrouper", ("burn", 1, 0.1))
        usage = host.resource_usage("u")
        assert usage.group_cpu_seconds is not None and usage.group_cpu_seconds >= 0.1 > usage.total_cpu_seconds
        assert usage.group_memory_bytes is not None and usage.group_memory_bytes > 0


def test_max_cpus_without_control_groups_is_a_config_error_leaving_nothing(config: HostConfig) -> None:
    """``max_cpus`` needs a group: with ``control_groups="off"`` create_sandbox fails with ``ConfigError``
    naming ``max_cpus``, and leaves no record and no group directory."""
    with Host(config, control_groups="off") as host:
        with pytest.raises(ConfigError) as caught:
            host.create_sandbox("q", "cgrouper:Root", sandbox_path=CGROUP, limits=ResourceLimits(max_cpus=1))
        assert caught.value.field == "max_cpus"
        with pytest.raises(SandboxNotFoundError):
            host.get_sandbox_info("q")
        assert host.list_sandboxes() == []
        host.create_sandbox("plain", "cgrouper:Root", sandbox_path=CGROUP)
        assert host.resource_usage("plain").group_cpu_seconds is None  # "off": no group at all
        assert not host_dirs(host.config)


def test_required_control_groups_where_none_can_be_made_fail_the_host_start(config: HostConfig, tmp_path: Path) -> None:
    """``control_groups="required"`` with no cgroup hierarchy under ``cgroup_root`` fails ``Host`` with
    ``ConfigError`` naming ``control_groups`` and the reason; ``"auto"`` there runs sandboxes without a group
    and says why once in the host's log."""
    nowhere = tmp_path / "no-cgroups"
    nowhere.mkdir()
    with pytest.raises(ConfigError, match="'memory'") as caught:
        Host(config, control_groups="required", cgroup_root=nowhere)
    assert caught.value.field == "control_groups"
    with Host(config, cgroup_root=nowhere) as host:
        host.create_sandbox("a", "cgrouper:Root", sandbox_path=CGROUP)
        host.create_sandbox("b", "cgrouper:Root", sandbox_path=CGROUP)
        assert host.resource_usage("a").group_cpu_seconds is None
        with pytest.raises(ConfigError, match="max_cpus"):
            host.create_sandbox("c", "cgrouper:Root", sandbox_path=CGROUP, limits=ResourceLimits(max_cpus=1))
        logs = host.config.state_dir / "logs"
    text = "".join(path.read_text() for path in logs.glob("actors-*.log"))
    assert text.count("control groups cannot be made here") == 1


def test_a_group_that_cannot_be_made_fails_the_create_with_the_reason_leaving_nothing(
    config: HostConfig, tmp_path: Path
) -> None:
    """Under a ``cgroup_root`` whose hierarchies look usable but where the ``pids`` one holds a file in place
    of the host's group, create_sandbox fails with ``ConfigError`` saying why; no record is left, nor any
    directory in the other hierarchies; the host goes on."""
    fake = tmp_path / "cgroups"
    own = group_of(os.getpid())  # the admin is forked from this process: in the same groups
    for controller in ("memory", "pids"):
        base = fake / controller / own[controller].lstrip("/")
        base.mkdir(parents=True)
        (base / "cgroup.procs").write_text("")
    key = host_key(config)
    (fake / "pids" / own["pids"].lstrip("/") / f"plugin-host-{key}").write_text("in the way")
    with Host(config, cgroup_root=fake) as host:
        with pytest.raises(ConfigError, match="cannot make the control group of sandbox 'x'"):
            host.create_sandbox("x", "cgrouper:Root", sandbox_path=CGROUP)
        with pytest.raises(SandboxNotFoundError):
            host.get_sandbox_info("x")
        assert not (fake / "memory" / own["memory"].lstrip("/") / f"plugin-host-{key}").exists()
        assert host.list_sandboxes() == []


def test_no_group_of_a_host_is_left_after_destroy_and_close(config: HostConfig) -> None:
    """destroy_sandbox removes the sandbox's group, Host.close every other, and then the host's own."""
    with Host(config) as host:
        host.create_sandbox("a", "cgrouper:Root", sandbox_path=CGROUP)
        host.create_sandbox("b", "cgrouper:Root", sandbox_path=CGROUP)
        a = group_dir(root_pid(host, "a"), "pids")
        b = group_dir(root_pid(host, "b"), "pids")
        host.restart_sandbox("a")
        assert group_dir(root_pid(host, "a"), "pids") == a  # a restart keeps the group
        host.destroy_sandbox("a")
        assert not a.exists() and b.exists()
        resolved = host.config
    assert not b.exists()
    assert not host_dirs(resolved)


def test_groups_a_killed_host_left_are_emptied_by_the_next_host_on_its_state_dir(
    config: HostConfig, marker: str, tmp_path: Path
) -> None:
    """A host killed with SIGKILL cannot remove its groups: the next host on the same state_dir empties
    (SIGKILL) and removes them as it starts; another host's groups are not touched."""
    assert isinstance(SUPPORT, Support)
    key = host_key(config)
    left = SandboxGroup.create(SUPPORT, key, "left-behind")
    stranger = SandboxGroup.create(SUPPORT, f"test-{tmp_path.name}", "other-host")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", marker])
    try:
        left.join(sleeper.pid)
        with Host(config):
            assert sleeper.wait(timeout=10) == -signal.SIGKILL
            assert not any(d.exists() for d in left.dirs.values())
            assert all(d.exists() for d in stranger.dirs.values())
    finally:
        sleeper.kill()
        left.remove()
        stranger.remove()


def test_one_sandbox_sees_only_its_own_processes_in_its_group_and_its_end_spares_the_other(
    config: HostConfig, marker: str
) -> None:
    """Sandbox A's plugin reading its own group finds its own processes only (none of B's); when A's CPU
    budget ends A (its whole group killed), B's processes run on."""
    with Host(config, monitor_interval=0.1) as host:
        host.create_sandbox("a", "cgrouper:Root", sandbox_path=CGROUP, limits=ResourceLimits(max_cpu_seconds=0.3))
        host.create_sandbox("b", "cgrouper:Root", sandbox_path=CGROUP)
        b_pids = {root_pid(host, "b"), host.call("b", "cgrouper", "pid")}
        own = set(host.call("a", "cgrouper", ("own",)))
        assert {root_pid(host, "a"), host.call("a", "cgrouper", "pid")} <= own and not own & b_pids
        try:
            host.call("a", "cgrouper", ("burn", 1, 0.4), timeout=30)
        except PluginError:
            pass
        assert eventually(lambda: host.get_sandbox_info("a").status == "failed", timeout=20)
        assert all(psutil.pid_exists(pid) for pid in b_pids)
        assert host.call("b", "cgrouper", "pid") in b_pids


def test_a_plugin_cannot_leave_its_group_nor_write_another_groups_files(config: HostConfig) -> None:
    """A plugin runs as uid 0 (without capabilities), and the groups' files belong to uid 0: what stops it
    is that every cgroup mount is read-only in its sandbox.  It cannot move itself into the host's group
    or another sandbox's, nor lower another sandbox's pids.max; it stays in its group and B's limit holds."""
    assert isinstance(SUPPORT, Support)
    with Host(config) as host:
        host.create_sandbox("a", "cgrouper:Root", sandbox_path=CGROUP)
        host.create_sandbox("b", "cgrouper:Root", sandbox_path=CGROUP, limits=ResourceLimits(max_tasks=50))
        worker = host.call("a", "cgrouper", "pid")
        mine, theirs = group_of(worker), group_dir(root_pid(host, "b"), "pids")
        for path, text in [
            (SUPPORT.bases["pids"] / "cgroup.procs", str(worker)),
            (theirs / "cgroup.procs", str(worker)),
            (theirs / "pids.max", "5"),
            (group_dir(worker, "pids") / "pids.max", "max"),
        ]:
            assert host.call("a", "cgrouper", ("write", str(path), text)) == "OSError: Read-only file system"
        assert group_of(worker) == mine
        assert (theirs / "pids.max").read_text().strip() == "50"


def test_a_kernel_oom_kill_at_the_groups_memory_limit_is_a_limit_breached_event(config: HostConfig) -> None:
    """Five forked children of 30 MiB each, allocated at once and gone before the monitor judges a stray
    (its grace), pass the group's memory limit (charge + ``max_memory_mb=40`` + 64 MiB) before the monitor
    sees them: the kernel's OOM killer ends one, and the host emits ``limit_breached`` for ``max_memory_mb``
    with the sandbox's id and a reason naming the OOM killer, as the monitor does for its own kills."""
    with Host(config, monitor_interval=0.1) as host:
        events = events_of(host)
        host.create_sandbox("oom", "cgrouper:Root", sandbox_path=CGROUP, limits=ResourceLimits(max_memory_mb=40))
        statuses = host.call("oom", "cgrouper", ("hog", 5, 30, 0.5), timeout=30)
        assert -signal.SIGKILL in statuses  # the kernel's kill (the monitor leaves strays alone for 1 s)
        breach = None
        deadline = time.monotonic() + 10
        while breach is None and time.monotonic() < deadline:
            event = events.get(timeout=max(0.0, deadline - time.monotonic()))
            if event.kind == "limit_breached" and "OOM killer" in event.reason:
                breach = event
        assert breach is not None and breach.sandbox_id == "oom"
        assert breach.details["limit"] == "max_memory_mb" and breach.details["maximum"] == 40
        assert host.get_sandbox_info("oom").status == "running"  # a stray's end is no actor's crash


def test_a_sandbox_created_again_under_its_id_while_the_old_one_dies_keeps_its_own_group(
    config: HostConfig, marker: str
) -> None:
    """A sandbox destroyed while a process of it is still dying, then created again under the same id at once,
    gets a group of its own that nothing empties under it: the old group goes as the old record goes, not
    once the old processes are gone.  The window is held open by a process the plugin started that the
    test moves out of the group and freezes (a SIGKILL waits for the thaw, so the destroy waits for it),
    thawed only once the new sandbox runs."""
    assert isinstance(SUPPORT, Support)
    if "freezer" not in SUPPORT.bases:
        pytest.skip("no freezer hierarchy to hold a dying process in")
    trap = SUPPORT.bases["freezer"] / f"trap-{marker}"
    with Host(config) as host:
        host.create_sandbox("same", "cgrouper:Root", sandbox_path=CGROUP)
        dying = host.call("same", "cgrouper", ("bomb", marker, 30, 0))  # one process, no forks
        trap.mkdir()
        destroying = threading.Thread(target=host.destroy_sandbox, args=("same",))
        try:
            for controller, base in SUPPORT.bases.items():  # out of the sandbox's group, into the test's own
                ((trap if controller == "freezer" else base) / "cgroup.procs").write_text(str(dying))
            (trap / "freezer.state").write_text("FROZEN")
            destroying.start()
            assert eventually(lambda: "same" not in {info.id for info in host.list_sandboxes()}, timeout=20)
            assert destroying.is_alive()  # still waiting for the frozen process
            host.create_sandbox("same", "cgrouper:Root", sandbox_path=CGROUP)
            root = root_pid(host, "same")
        finally:
            (trap / "freezer.state").write_text("THAWED")  # its pending SIGKILL ends it
            destroying.join(timeout=30)
            assert eventually(lambda: not pid_alive(dying))
            trap.rmdir()
        assert host.call("same", "cgrouper", "pid")
        assert host.get_sandbox_info("same").status == "running" and host.get_sandbox_info("same").pid == root
        assert root in SandboxGroup.at({c: str(group_dir(root, c)) for c in SUPPORT.bases}).pids()


def test_a_sandbox_past_its_cpu_budget_while_starting_fails_its_create_leaving_nothing(config: HostConfig) -> None:
    """A sandbox whose worker burns CPU in ``init`` passes its whole-sandbox ``max_cpu_seconds=0.2`` (its group's
    CPU time) while still starting: the create fails with ``SandboxStartError`` naming the limit, the id is
    free, and its group is gone (removed only once empty: no process of it is left)."""
    assert isinstance(SUPPORT, Support)
    with Host(config, monitor_interval=0.1) as host:
        limits = ResourceLimits(max_cpu_seconds=0.2)
        with pytest.raises(SandboxStartError, match="max_cpu_seconds"):
            host.create_sandbox("slow", "cgrouper:BurnAtStart", sandbox_path=CGROUP, limits=limits)
        assert host.list_sandboxes() == []
        group = SandboxGroup.existing(SUPPORT, host_key(config), "slow")
        assert not any(directory.exists() for directory in group.dirs.values())


def test_a_destroyed_sandboxs_group_the_kill_cannot_empty_is_logged_kept_and_removed_once_empty(
    config: HostConfig, marker: str
) -> None:
    """A process of a sandbox the kill cannot end (the plugin started it; the test freezes it in a trap freezer
    group, so its SIGKILL waits, while it stays in the sandbox's other hierarchies): destroy still returns, but
    the admin logs its pid at error level and keeps the group, a create under the id fails with
    ``ConfigError`` naming it rather than share the group, and once the process is gone the admin's tick
    removes the group and the id is usable again."""
    assert isinstance(SUPPORT, Support)
    if "freezer" not in SUPPORT.bases:
        pytest.skip("no freezer hierarchy to trap a process in")
    trap = SUPPORT.bases["freezer"] / f"trap-{marker}"
    group = SandboxGroup.existing(SUPPORT, host_key(config), "stuck")
    with Host(config) as host:
        log = Path(host.config.state_dir) / "logs" / f"actors-{host.admin_port}.log"
        host.create_sandbox("stuck", "cgrouper:Root", sandbox_path=CGROUP)
        stuck = host.call("stuck", "cgrouper", ("bomb", marker, 30, 0))  # one process, no forks
        trap.mkdir()
        try:
            (trap / "cgroup.procs").write_text(str(stuck))  # out of the group's freezer directory only
            (trap / "freezer.state").write_text("FROZEN")
            host.destroy_sandbox("stuck")
            assert group.pids() == {stuck}
            assert eventually(lambda: f"still holds processes [{stuck}]" in log.read_text())
            assert "ERROR" in next(line for line in log.read_text().splitlines() if "still holds processes" in line)
            with pytest.raises(ConfigError, match=str(stuck)):
                host.create_sandbox("stuck", "cgrouper:Root", sandbox_path=CGROUP)
        finally:
            (trap / "freezer.state").write_text("THAWED")  # its pending SIGKILL ends it
            assert eventually(lambda: not pid_alive(stuck))
            trap.rmdir()
        assert eventually(lambda: not any(directory.exists() for directory in group.dirs.values()))
        host.create_sandbox("stuck", "cgrouper:Root", sandbox_path=CGROUP)
        assert host.call("stuck", "cgrouper", "pid")
