"""Supervision on multiprocTCPBase: crashes of every kind, strategies, restart types, intensity."""

from __future__ import annotations

import os
import signal
import time

import pytest
from conftest import eventually, pid_alive

from plugin_host import Host
from plugin_host.errors import ActorNotFoundError, PluginError, SandboxStartError

STRATEGIES = os.path.join(os.path.dirname(__file__), "plugins", "strategies")


def create(host: Host, supervisor: str, sandbox_id: str = "s") -> None:
    host.create_sandbox(sandbox_id, f"trees:{supervisor}", sandbox_path=STRATEGIES)


def pids(host: Host, names: str = "abc", sandbox_id: str = "s") -> dict[str, int]:
    return {name: host.call(sandbox_id, name, "pid") for name in names}


def restarts_reach(host: Host, count: int, sandbox_id: str = "s") -> None:
    """Wait until the sandbox has done ``count`` restarts and every actor runs again."""

    def done() -> bool:
        info = host.get_sandbox_info(sandbox_id)
        return info.restart_count >= count and all(c.status == "running" for c in info.children)

    eventually(done)


@pytest.mark.parametrize("how", ["raise", "exit", "segfault"])
def test_crashed_actor_is_restarted_with_fresh_state(host: Host, how: str) -> None:
    """Whatever kills a plugin, the caller gets PluginError and the actor answers again from init."""
    create(host, "OneForOne")
    before = host.call("s", "a", "pid")
    assert host.call("s", "a", "inc") == 1
    with pytest.raises(PluginError):
        host.call("s", "a", how)
    assert host.call("s", "a", "pid") != before
    assert host.call("s", "a", "inc") == 1  # a fresh init, not the old state
    assert not pid_alive(before)
    info = host.get_sandbox_info("s")
    assert info.restart_count == 1
    assert [c.restarts for c in info.children if c.name == "a"] == [1]


def test_the_restart_count_only_grows_across_a_restart_of_the_sandbox(host: Host) -> None:
    """``restart_count`` is never reset (as Kubernetes' restartCount): an actor restart counts one, a
    ``restart_sandbox`` one more, and later actor restarts add to that (it went back to 0)."""
    create(host, "OneForOne")
    with pytest.raises(PluginError):
        host.call("s", "a", "raise")
    restarts_reach(host, 1)
    host.restart_sandbox("s")
    assert host.get_sandbox_info("s").restart_count == 2
    with pytest.raises(PluginError):
        host.call("s", "b", "raise")
    restarts_reach(host, 3)
    assert host.get_sandbox_info("s").restart_count == 3


def test_plugin_error_carries_the_original_exception(host: Host) -> None:
    """PluginError names the original type and message and carries the traceback text."""
    create(host, "OneForOne")
    with pytest.raises(PluginError) as caught:
        host.call("s", "a", "raise")
    error = caught.value
    assert error.type_name == "builtins.ValueError"
    assert "boom" in str(error)
    assert "workers.py" in error.traceback_text
    assert error.actor == "a"


def test_sigkilled_actor_is_restarted(host: Host) -> None:
    """An actor killed from outside is detected through Thespian's exit signal and restarted."""
    create(host, "OneForOne")
    before = host.call("s", "b", "pid")
    os.kill(before, signal.SIGKILL)
    after = host.call("s", "b", "pid")  # waits for the new incarnation
    assert after != before
    assert host.get_sandbox_info("s").restart_count == 1


def test_hung_actor_is_killed_by_heartbeat_and_restarted(host: Host) -> None:
    """A callback that never returns stops heartbeats; the supervisor kills it by pid."""
    create(host, "OneForOne")
    before = host.call("s", "a", "pid")
    with pytest.raises(PluginError, match="died"):
        host.call("s", "a", "hang", timeout=15)
    assert host.call("s", "a", "pid") != before
    assert not pid_alive(before)


def test_one_for_one_restarts_only_the_crashed_child(host: Host) -> None:
    """one_for_one leaves the siblings alone."""
    create(host, "OneForOne")
    before = pids(host)
    with pytest.raises(PluginError):
        host.call("s", "b", "raise")
    restarts_reach(host, 1)
    after = pids(host)
    assert after["a"] == before["a"] and after["c"] == before["c"]
    assert after["b"] != before["b"]


def test_one_for_all_restarts_every_child(host: Host) -> None:
    """one_for_all stops the siblings and starts all children again."""
    create(host, "OneForAll")
    before = pids(host)
    with pytest.raises(PluginError):
        host.call("s", "b", "raise")
    restarts_reach(host, 3)
    after = pids(host)
    assert all(after[n] != before[n] for n in "abc")


def test_rest_for_one_restarts_the_crashed_child_and_those_after_it(host: Host) -> None:
    """rest_for_one restarts b and c when b crashes, and leaves a alone."""
    create(host, "RestForOne")
    before = pids(host)
    with pytest.raises(PluginError):
        host.call("s", "b", "raise")
    restarts_reach(host, 2)
    after = pids(host)
    assert after["a"] == before["a"]
    assert after["b"] != before["b"] and after["c"] != before["c"]


def test_restart_types_follow_otp(host: Host) -> None:
    """permanent always restarts, transient not after a normal stop, temporary never."""
    create(host, "Kinds")
    assert host.call("s", "trans", "stop") == "stopping"
    with pytest.raises(PluginError):
        host.call("s", "temp", "raise")
    with pytest.raises(PluginError):
        host.call("s", "perm", "raise")
    assert host.call("s", "perm", "inc") == 1
    statuses = {c.name: c.status for c in host.get_sandbox_info("s").children}
    assert statuses["trans"] == "stopped"
    assert statuses["temp"] == "crashed"
    with pytest.raises(ActorNotFoundError):
        host.call("s", "temp", "pid", timeout=2)


def test_transient_child_is_restarted_after_a_crash(host: Host) -> None:
    """transient restarts after an abnormal exit."""
    create(host, "Kinds")
    with pytest.raises(PluginError):
        host.call("s", "trans", "raise")
    assert host.call("s", "trans", "inc") == 1


def test_sandbox_fails_past_restart_intensity_and_others_keep_answering(host: Host) -> None:
    """Crashes beyond max_restarts in max_seconds mark the sandbox failed; its siblings are untouched."""
    create(host, "Fragile", "fragile")
    create(host, "OneForOne", "healthy")
    for _ in range(2):
        with pytest.raises(PluginError):
            host.call("fragile", "a", "raise")
        host.call("fragile", "a", "pid")
    worker = host.call("fragile", "a", "pid")
    with pytest.raises(PluginError):
        host.call("fragile", "a", "raise")
    with pytest.raises(ActorNotFoundError, match="failed"):
        host.call("fragile", "a", "pid", timeout=5)
    info = host.get_sandbox_info("fragile")
    assert info.status == "failed"
    assert "max restart intensity" in info.reason
    eventually(lambda: not pid_alive(worker))  # it exits on its own, just after saying why
    assert host.call("healthy", "a", "inc") == 1
    revived = host.restart_sandbox("fragile")
    assert revived.status == "running"
    assert host.call("fragile", "a", "inc") == 1


def test_restarts_spread_wider_than_the_window_never_fail_the_sandbox(host: Host) -> None:
    """Only restarts within ``max_seconds`` count towards ``max_restarts`` (OTP's intensity): with 2 in 0.3 s
    allowed, five crashes 0.4 s apart leave the sandbox running, restarted five times."""
    create(host, "Forgetful")
    for crash in range(1, 6):
        with pytest.raises(PluginError):
            host.call("s", "a", "raise")
        restarts_reach(host, crash)
        time.sleep(0.4)  # the window itself is what is tested: let it pass
    info = host.get_sandbox_info("s")
    assert info.status == "running" and info.restart_count == 5
    assert host.call("s", "a", "inc") == 1


def test_nested_supervisor_restarts_its_own_children(host: Host) -> None:
    """A crash inside a nested supervisor is handled there; the outer tree keeps its pids."""
    create(host, "Nested")
    outer = host.call("s", "outer", "pid")
    inner2 = host.call("s", "inner2", "pid")
    with pytest.raises(PluginError):
        host.call("s", "inner1", "raise")
    assert host.call("s", "inner1", "inc") == 1
    assert host.call("s", "outer", "pid") == outer
    assert host.call("s", "inner2", "pid") == inner2
    kinds = {c.name: (c.kind, c.supervisor) for c in host.get_sandbox_info("s").children}
    assert kinds["inner"] == ("supervisor", "")
    assert kinds["inner1"] == ("worker", "inner")


def test_nested_supervisor_past_its_intensity_is_restarted_by_its_parent(host: Host) -> None:
    """A nested supervisor that gives up counts as a crash of its parent's child: it comes back whole."""
    create(host, "Nested")
    outer = host.call("s", "outer", "pid")
    with pytest.raises(PluginError):
        host.call("s", "inner1", "raise")
    host.call("s", "inner1", "pid")
    inner2 = host.call("s", "inner2", "pid")
    with pytest.raises(PluginError):
        host.call("s", "inner1", "raise")  # the second restart in the window: Inner gives up
    eventually(lambda: host.call("s", "inner2", "pid") != inner2)
    assert host.call("s", "inner1", "inc") == 1
    assert host.call("s", "inner2", "pid") != inner2
    assert host.call("s", "outer", "pid") == outer
    assert host.get_sandbox_info("s").status == "running"


def test_failing_init_fails_the_create_and_leaves_nothing_behind(host: Host) -> None:
    """An init that raises at creation fails create_sandbox; the id can be used again."""
    with pytest.raises(SandboxStartError, match="init refused"):
        create(host, "BadInit")
    assert host.list_sandboxes() == []
    create(host, "OneForOne")
    assert host.call("s", "a", "inc") == 1
