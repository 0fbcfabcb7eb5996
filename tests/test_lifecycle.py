"""Process hygiene and the host's lifetime: nothing outlives it, nothing listens where it should not."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import attrs
import psutil
import pytest
from conftest import eventually, pid_alive, sample

from plugin_host import Host, HostConfig
from plugin_host.errors import CallTimeoutError, HostClosedError, HostStartError, PluginError, PluginHostError

STRATEGIES = os.path.join(os.path.dirname(__file__), "plugins", "strategies")


def tree_pids(host: Host) -> list[int]:
    return [p.pid for p in host._system.process_tree()]


def test_close_ends_every_process_even_hung_and_stubborn_ones(config: HostConfig) -> None:
    """Hung callbacks and a terminate that never returns do not keep any process alive."""
    host = Host(config)
    try:
        host.create_sandbox("w", "trees:OneForOne", sandbox_path=STRATEGIES)
        from tests_support_plugins import Stubborn

        host.create_sandbox("stubborn", Stubborn)
        hung = host.call("w", "a", "pid")
        caller = threading.Thread(
            target=lambda: pytest.raises(PluginHostError, host.call, "w", "a", "hang", timeout=30)
        )
        caller.start()
        pids = tree_pids(host)
        assert hung in pids and len(pids) >= 8
    finally:
        host.close()
    caller.join(timeout=30)
    assert not [pid for pid in pids if pid_alive(pid)]
    assert host.closed
    with pytest.raises(HostClosedError):
        host.list_sandboxes()


def test_a_host_whose_admin_actor_is_gone_raises_host_closed(config: HostConfig) -> None:
    """A request the admin's address refuses (its process is gone) is ``HostClosedError`` at once, as for an
    operator, never the method's timeout error; ``close`` still ends every process."""
    host = Host(config)
    try:
        tree = host._system.process_tree()
        # The admin actor is the system's child that has children of its own (the registry and the monitor).
        [admin] = [p for p in tree if p.pid != host._system.system_pid and p.children()]
        os.kill(admin.pid, signal.SIGKILL)
        with pytest.raises(HostClosedError, match="went away"):
            host.list_sandboxes()
    finally:
        host.close()
    assert not [p.pid for p in tree if pid_alive(p.pid)]


def test_leaving_the_with_block_by_an_exception_closes_the_host(config: HostConfig) -> None:
    """The context manager closes on errors too."""
    with pytest.raises(RuntimeError, match="app error"):
        with Host(config) as host:
            host.create_sandbox("c", "root:Root", sandbox_path=sample("counter"))
            pids = tree_pids(host)
            raise RuntimeError("app error")
    assert not [pid for pid in pids if pid_alive(pid)]


def test_a_busy_admin_port_is_refused(state_dir: Path) -> None:
    """The host never attaches to whatever already listens on its port (a stale system)."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(HostStartError, match="refusing to attach"):
            Host(HostConfig(state_dir=state_dir, admin_port=port))


def test_a_second_host_on_the_same_port_is_refused(config: HostConfig, host: Host) -> None:
    """Two hosts never share one actor system."""
    with pytest.raises(HostStartError):
        Host(config, admin_port=host.admin_port)
    assert host.list_sandboxes() == []


def test_a_stale_second_claim_of_the_system_is_answered_on_its_corr(host: Host) -> None:
    """A second ``HostBoot`` with another token (a stale host claiming a system that is taken) gets
    ``Failed(HostStartError)`` carrying its own corr, the token, which is what the host's boot matches the
    reply on (it timed out instead of raising); the running host's claim stands."""
    from plugin_host.messages import Failed, HostBoot

    stale = HostBoot("stale-claim", os.getpid(), 0.0, host.config)
    reply = host._system.ask(host.admin_address, stale, 10)  # the host's own corr-matched ask, as its boot uses
    assert isinstance(reply, Failed) and reply.corr == stale.corr
    assert isinstance(reply.error, HostStartError) and "already belongs to another host" in str(reply.error)
    assert host.list_sandboxes() == []


def test_hosts_get_their_own_free_ports(config: HostConfig, host: Host, tmp_path: Path) -> None:
    """Each host picks a fresh free port, so hosts (and tests) run side by side (each on its own state_dir)."""
    with Host(attrs.evolve(config, state_dir=tmp_path / "other")) as other:
        assert other.admin_port != host.admin_port
        other.create_sandbox("c", "root:Root", sandbox_path=sample("counter"))
        assert other.call("c", "counter", "inc") == 1


def test_system_ends_itself_when_the_host_process_dies(tmp_path: Path) -> None:
    """A host killed with SIGKILL (no close) leaves nothing behind: the admin notices and ends the system."""
    pid_file = tmp_path / "pids.txt"
    script = tmp_path / "app.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys, time
        from plugin_host import Host
        host = Host(state_dir={str(tmp_path / "state")!r}, heartbeat_interval=0.2, hang_timeout=1.0)
        host.create_sandbox("c", "root:Root", sandbox_path={sample("counter")!r})
        host.call("c", "counter", "inc")
        pids = [p.pid for p in host._system.process_tree()]
        open({str(pid_file)!r}, "w").write(" ".join(map(str, pids)))
        time.sleep(600)
    """)
    )
    with open(tmp_path / "app.log", "wb") as log:
        app = subprocess.Popen([sys.executable, str(script)], stdout=log, stderr=log)
    try:
        eventually(lambda: pid_file.exists() and pid_file.read_text(), timeout=60)
        pids = [int(p) for p in pid_file.read_text().split()]
        assert all(pid_alive(p) for p in pids)
    finally:
        app.kill()
        app.wait()
    eventually(lambda: not any(pid_alive(p) for p in pids), timeout=15)


def test_concurrent_callers_in_threads_each_get_their_own_replies(host: Host) -> None:
    """One private context per thread: no reply reaches the wrong thread."""
    host.create_sandbox("c", "root:Root", sandbox_path=sample("counter"))
    replies: dict[int, list[int]] = {}

    def worker(index: int) -> None:
        replies[index] = [host.call("c", "counter", "inc") for _ in range(40)]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = sorted(r for rs in replies.values() for r in rs)
    assert everything == list(range(1, 161))
    assert all(rs == sorted(rs) for rs in replies.values())


def test_a_late_reply_never_answers_the_next_call(host: Host) -> None:
    """Correlation ids: the reply to a timed-out call is dropped, not returned to the next call."""
    from tests_support_plugins import Slow

    host.create_sandbox("slow", Slow)
    with pytest.raises(CallTimeoutError):
        host.call("slow", "slow", 0.6, timeout=0.2)
    assert host.call("slow", "slow", 0.01) == 0.01
    assert host.call("slow", "slow", 0.02) == 0.02


def test_every_socket_of_the_host_binds_the_configured_address(host: Host) -> None:
    """Thespian binds all interfaces unless told otherwise; ours bind 127.0.0.1 only."""
    host.create_sandbox("c", "root:Root", sandbox_path=sample("counter"))
    host.call("c", "counter", "inc")
    listening = []
    for proc in [psutil.Process(), *host._system.process_tree()]:
        for conn in proc.net_connections("inet"):
            if conn.status == psutil.CONN_LISTEN:
                listening.append(conn.laddr.ip)
    assert len(listening) >= 5
    assert set(listening) == {"127.0.0.1"}


def test_simple_system_base_runs_plugins_in_process(state_dir: Path) -> None:
    """simpleSystemBase: fast in-process plugin tests, same API (no process isolation)."""
    from tests_support_plugins import Doubler

    with Host(HostConfig(state_dir=state_dir, base="simpleSystemBase")) as host:
        host.create_sandbox("d", Doubler)
        assert host.call("d", "doubler", 4) == 8
        with pytest.raises(PluginError):
            host.call("d", "doubler", None)
        assert host.call("d", "doubler", 5) == 10
        assert host.admin_port is None


def test_a_signal_to_the_host_process_group_is_not_needed_to_clean_up(config: HostConfig) -> None:
    """Actors run outside the application's process group, so a terminal's Ctrl-C does not hit them."""
    with Host(config) as host:
        host.create_sandbox("c", "root:Root", sandbox_path=sample("counter"))
        worker = host.call("c", "counter", "pid")
        assert os.getpgid(worker) != os.getpgid(0)
        assert signal.getsignal(signal.SIGSEGV) in (signal.SIG_DFL, None)  # the host's handlers untouched


def test_a_message_to_a_dead_actor_is_known_to_be_refused(host: Host) -> None:
    """The host tells 'refused' (never delivered, safe to resend) from 'no reply yet'."""
    from plugin_host._client.system import DEAD
    from plugin_host.messages import Call, LookupActor

    host.create_sandbox("k", "trees:Kinds", sandbox_path=STRATEGIES)  # "temp" is never restarted
    ref = host.actor_system.ask(host.admin_address, LookupActor(sandbox_id="k", name="temp", corr="l"), 10).value
    pid = host.call("k", "temp", "pid")
    os.kill(pid, signal.SIGKILL)
    eventually(
        lambda: (
            not pid_alive(pid)
            and [c.status for c in host.get_sandbox_info("k").children if c.name == "temp"] == ["crashed"]
        )
    )
    pending = host._system.send(
        ref.address, Call(sandbox_id="k", name="temp", request="pid", incarnation=ref.incarnation, corr="dead-1")
    )
    try:
        assert pending.wait(10) is DEAD
        assert pending.refused and not pending.delivered
    finally:
        pending.close()


def test_closing_a_forked_copy_of_the_host_leaves_the_parents_system_running(host: Host) -> None:
    """A child process (fork) that closes its copy of the Host does not stop the parent's sandboxes."""
    host.create_sandbox("c", "root:Root", sandbox_path=sample("counter"))
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            host.close()
        finally:
            os._exit(0)
    os.waitpid(child, 0)
    assert host.call("c", "counter", "inc") == 1


SIDE_EFFECT = textwrap.dedent('''
    import os
    import threading
    from actors import Plugin, Supervisor, ChildSpec


    class Effect(Plugin):
        """Appends a line to a file per call (the side effect), then waits until killed when asked."""

        def handle_call(self, request, state):
            path, wait = request
            with open(path, "a") as out:
                out.write(f"{os.getpid()}\\n")
            if wait:
                threading.Event().wait()  # until SIGKILL
            return os.getpid(), state


    class Root(Supervisor):
        children = [ChildSpec("effect", Effect)]
''')


def test_a_call_whose_process_is_killed_mid_call_fails_and_never_runs_again(host: Host, tmp_path: Path) -> None:
    """At most once: SIGKILL the worker in the middle of a side-effecting call: the caller gets PluginError
    and the restarted worker never runs that call again (the file holds one line from the killed pid;
    the next call's line comes from the new process)."""
    folder = tmp_path / "effect"
    folder.mkdir()
    (folder / "effect.py").write_text(SIDE_EFFECT)
    effects = tmp_path / "effects.txt"
    host.create_sandbox("e", "effect:Root", sandbox_path=str(folder))
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            host.call("e", "effect", (str(effects), True), timeout=30)
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    victim = int(eventually(lambda: effects.exists() and effects.read_text().strip()))
    os.kill(victim, signal.SIGKILL)
    caller.join(30)
    assert not caller.is_alive() and len(outcome) == 1 and isinstance(outcome[0], PluginError), outcome
    fresh = host.call("e", "effect", (str(tmp_path / "after.txt"), False))
    assert fresh != victim
    host.call("e", "effect", (str(tmp_path / "after.txt"), False))  # ordered after anything redelivered
    assert effects.read_text().split() == [str(victim)]
