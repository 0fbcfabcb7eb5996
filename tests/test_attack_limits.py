"""Attacks on the resource limits (issue #15 §1): a hostile plugin tries to lift them and fails.

Each test is one bypass that worked before: the plugin lifts its own hard limit, its module
top-level code runs in the sandbox root without limits, it disarms the CPU budget, ``Host.run``
ignores the sandbox's limits and profile, it keeps its capabilities as root.  Every test also
checks that the host and another sandbox are unaffected.  Burns are short: a 50 ms budget
against a burn of at most 1 s of CPU.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path
from typing import Iterator

import psutil
import pytest
from conftest import eventually, pid_alive, sample

from plugin_host import Host, HostConfig, ResourceLimits
from plugin_host.errors import ConfigError, PluginError, SandboxStartError

PLUGINS = Path(__file__).resolve().parent / "plugins"
LIFTERS = str(PLUGINS / "lifters")
LIFTERS_TOP = str(PLUGINS / "lifters_top")
MiB = 2**20


def calm(host: Host) -> None:
    """A bystander sandbox, created before the attack."""
    host.create_sandbox("calm", "root:Root", sandbox_path=sample("counter"))
    assert host.call("calm", "counter", "inc") == 1


def still_calm(host: Host) -> None:
    """The host answers and the bystander sandbox kept its state."""
    assert host.call("calm", "counter", "inc") == 2
    assert host.get_sandbox_info("calm").status == "running"


def test_a_plugin_cannot_lift_its_hard_memory_limit(host: Host) -> None:
    """RLIMIT_AS is hard (soft = hard): raising it to infinity fails, and 300 MiB under
    max_memory_mb=100 is a MemoryError in the plugin, never an allocation."""
    calm(host)
    host.create_sandbox("m", "lifter:Root", sandbox_path=LIFTERS, limits=ResourceLimits(max_memory_mb=100))
    soft, hard = host.call("m", "lifter", "rlimits")["RLIMIT_AS"]
    assert soft == hard != resource.RLIM_INFINITY
    with pytest.raises(PluginError) as caught:
        host.call("m", "lifter", ("alloc", 300))
    assert caught.value.type_name == "builtins.MemoryError"
    still_calm(host)


def test_module_top_level_code_in_the_sandbox_root_is_under_the_memory_limit(host: Host) -> None:
    """The root imports the plugin's modules: their top-level code lifts RLIMIT_AS and takes 256 MiB
    under max_memory_mb=64, which fails the start; nothing of the sandbox is left."""
    calm(host)
    with pytest.raises(SandboxStartError, match="MemoryError"):
        host.create_sandbox("top", "bomb:Root", sandbox_path=LIFTERS_TOP, limits=ResourceLimits(max_memory_mb=64))
    assert [info.id for info in host.list_sandboxes()] == ["calm"]
    still_calm(host)


@pytest.fixture
def patient(config: HostConfig) -> Iterator[Host]:
    """A host whose heartbeat does not take a 1 s burn for a hang: only the CPU budget may stop it."""
    with Host(config, hang_timeout=30.0) as host:
        yield host


def test_disarming_the_cpu_budget_with_setitimer_does_not_stop_it(patient: Host) -> None:
    """setitimer(ITIMER_VIRTUAL, 0) does not disarm call_cpu_budget_ms: the burn gets
    LimitExceededError and the actor restarts."""
    host = patient
    calm(host)
    host.create_sandbox("b", "lifter:Root", sandbox_path=LIFTERS, limits=ResourceLimits(call_cpu_budget_ms=50))
    before = host.call("b", "lifter", "pid")
    with pytest.raises(PluginError) as caught:
        host.call("b", "lifter", "disarm_burn")
    assert caught.value.type_name == "plugin_host.errors.LimitExceededError"
    assert eventually(lambda: host.call("b", "lifter", "pid") != before)
    still_calm(host)


def test_ignoring_the_budgets_signal_gets_the_callback_killed(patient: Host) -> None:
    """A plugin that sets SIGVTALRM to SIG_IGN and keeps burning is killed (SIGKILL) within
    the grace, and its supervisor restarts it."""
    host = patient
    calm(host)
    host.create_sandbox("i", "lifter:Root", sandbox_path=LIFTERS, limits=ResourceLimits(call_cpu_budget_ms=50))
    before = host.call("i", "lifter", "pid")
    with pytest.raises(PluginError) as caught:
        host.call("i", "lifter", "ignore_burn")
    assert caught.value.type_name == "ProcessDied"
    assert eventually(lambda: not pid_alive(before))
    assert eventually(lambda: host.call("i", "lifter", "pid") != before)
    still_calm(host)


def test_host_run_is_under_the_sandboxs_memory_limit(host: Host) -> None:
    """Host.run's function lifts RLIMIT_AS and takes 300 MiB under max_memory_mb=100: MemoryError."""

    def hog() -> int:
        import resource

        try:
            resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        except (ValueError, OSError):
            pass
        return len(bytearray(300 * 2**20)) // 2**20

    calm(host)
    host.create_sandbox("m", "lifter:Root", sandbox_path=LIFTERS, limits=ResourceLimits(max_memory_mb=100))
    with pytest.raises(PluginError) as caught:
        host.run("m", hog)
    assert caught.value.type_name == "builtins.MemoryError"
    still_calm(host)


def test_host_run_is_audited_under_the_sandboxs_profile(host: Host, tmp_path: Path) -> None:
    """Under restricted, a file written by Host.run's function is refused and shows in the
    sandbox's audit log, blocked, under the actor name ``run``."""
    calm(host)
    host.create_sandbox("r", "root:Root", sandbox_path=sample("counter"), security_profile="restricted")
    target = tmp_path / "written-by-run.txt"
    with pytest.raises(PluginError) as caught:
        host.run("r", lambda: open(target, "w").write("x"))
    assert caught.value.type_name == "builtins.PermissionError"
    assert not target.exists()
    records = eventually(lambda: host.audit_log("r"))
    assert [(r.event, r.actor, r.blocked) for r in records] == [("open", "run", True)]
    assert str(target) in records[0].detail
    still_calm(host)


def test_no_sandbox_process_may_dump_core(host: Host) -> None:
    """RLIMIT_CORE is (0, 0) in a worker and in Host.run: a core dump would hold the sandbox's key.
    (Thespian sets it in its actor processes too; ours does not depend on that.)"""
    host.create_sandbox("c", "lifter:Root", sandbox_path=LIFTERS)
    assert host.call("c", "lifter", "rlimits")["RLIMIT_CORE"] == (0, 0)
    assert host.run("c", lambda: __import__("resource").getrlimit(__import__("resource").RLIMIT_CORE)) == (0, 0)


@pytest.mark.skipif(os.geteuid() != 0, reason="capabilities are dropped only when the host runs as root")
def test_sandbox_processes_hold_no_capabilities_when_the_host_is_root(host: Host) -> None:
    """A host run as root keeps its capabilities; the sandbox root and its workers have none
    (effective, permitted, bounding, ambient), and no_new_privs is set."""
    host.create_sandbox("caps", "lifter:Root", sandbox_path=LIFTERS)
    assert host.call("caps", "lifter", "caps") == {"CapEff": 0, "CapPrm": 0, "CapBnd": 0, "CapAmb": 0, "NoNewPrivs": 1}
    root_pid = host.get_sandbox_info("caps").pid
    assert root_pid is not None
    with open(f"/proc/{root_pid}/status", encoding="ascii") as status:
        masks = {
            k: int(v.split()[0], 16) for k, _, v in (line.partition(":") for line in status) if k.startswith("Cap")
        }
    assert masks["CapEff"] == masks["CapBnd"] == 0
    with open("/proc/self/status", encoding="ascii") as status:
        assert any(line.startswith("CapEff:") and int(line.split()[1], 16) for line in status)


def test_a_memory_limit_below_the_floor_is_a_config_error_at_create(host: Host) -> None:
    """max_memory_mb under the documented floor (32 MiB) cannot hold the runtime: ConfigError at
    create_sandbox, and no sandbox and no process of it are left."""
    calm(host)
    processes = len(psutil.Process().children(recursive=True))
    with pytest.raises(ConfigError) as caught:
        host.create_sandbox("tiny", "lifter:Root", sandbox_path=LIFTERS, limits=ResourceLimits(max_memory_mb=8))
    assert caught.value.field == "max_memory_mb"
    assert [info.id for info in host.list_sandboxes()] == ["calm"]
    assert eventually(lambda: len(psutil.Process().children(recursive=True)) == processes)
    still_calm(host)


def test_a_cpu_limit_above_the_hosts_hard_limit_is_a_config_error_at_create(config: HostConfig) -> None:
    """max_cpu_seconds above the host's own hard RLIMIT_CPU would silently be the host's: ConfigError at
    create_sandbox, nothing left.  (The test lowers its own hard limit to 10^6 s first.)"""
    saved = resource.getrlimit(resource.RLIMIT_CPU)
    ceiling = 10**6
    resource.setrlimit(resource.RLIMIT_CPU, (min(saved[0], ceiling), ceiling) if saved[0] >= 0 else (ceiling, ceiling))
    try:
        with Host(config) as host:
            calm(host)
            with pytest.raises(ConfigError) as caught:
                host.create_sandbox(
                    "greedy", "lifter:Root", sandbox_path=LIFTERS, limits=ResourceLimits(max_cpu_seconds=2 * ceiling)
                )
            assert caught.value.field == "max_cpu_seconds"
            assert [info.id for info in host.list_sandboxes()] == ["calm"]
            host.create_sandbox("fits", "lifter:Root", sandbox_path=LIFTERS, limits=ResourceLimits(max_cpu_seconds=60))
            assert isinstance(host.call("fits", "lifter", "pid"), int)
            still_calm(host)
    finally:
        try:
            resource.setrlimit(resource.RLIMIT_CPU, saved)
        except (ValueError, OSError):
            pass  # not root: the lowered hard limit (10^6 s) stays; harmless for a test run
