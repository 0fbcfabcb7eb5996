"""The Host facade end to end on multiprocTCPBase: sandboxes, calls, bad input."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import eventually, pid_alive, sample

from plugin_host import Host, HostConfig, SandboxInfo
from plugin_host.errors import (
    ActorNotFoundError,
    BadRequestError,
    CompilationError,
    InvalidSpecError,
    PluginError,
    PluginHostError,
    RunTimeoutError,
    SandboxExistsError,
    SandboxNotFoundError,
    SandboxStartError,
)

STRATEGIES = os.path.join(os.path.dirname(__file__), "plugins", "strategies")


def write_plugin(folder: Path, name: str, reply: str) -> str:
    """A one-module sandbox folder whose Counter answers ``reply`` to "which"."""
    folder.mkdir(parents=True)
    (folder / f"{name}.py").write_text(
        textwrap.dedent(f"""
        from actors import ChildSpec, Plugin, Supervisor

        class Echo(Plugin):
            def handle_call(self, request, state):
                return {reply!r}, state

        class Root(Supervisor):
            children = [ChildSpec("echo", Echo)]
    """)
    )
    return str(folder)


def test_destroy_returns_once_every_process_of_the_sandbox_has_ended(host: Host) -> None:
    """``destroy_sandbox`` answers only when its root and workers are gone, not while they are still exiting
    (before the admin waited for them, 29 of 80 such pids still ran when it returned)."""
    for _ in range(10):
        info = host.create_sandbox("t", "root:Root", sandbox_path=sample("counter"))
        pids = [info.pid, *(child.pid for child in info.children)]
        host.destroy_sandbox("t")
        assert [pid for pid in pids if pid_alive(pid)] == []


def test_create_call_and_destroy_a_sandbox_from_a_folder(host: Host) -> None:
    """The counter sample: created from its folder, called, listed, destroyed."""
    info = host.create_sandbox("c", "root:Root", sandbox_path=sample("counter"))
    assert isinstance(info, SandboxInfo)
    assert info.status == "running" and info.supervisor == "root:Root"
    assert [c.name for c in info.children] == ["counter"]
    assert info.modules == {"counter": 1, "root": 1}
    assert info.node.startswith("127.0.0.1:")
    assert [host.call("c", "counter", "inc") for _ in range(3)] == [1, 2, 3]
    assert host.call("c", "counter", ("add", 10)) == 13
    assert [s.id for s in host.list_sandboxes()] == ["c"]
    worker = host.call("c", "counter", "pid")
    host.destroy_sandbox("c")
    assert host.list_sandboxes() == []
    assert not pid_alive(worker)
    with pytest.raises(SandboxNotFoundError):
        host.call("c", "counter", "get")


def test_two_sandboxes_keep_same_named_modules_apart(host: Host, tmp_path: Path) -> None:
    """Each sandbox has its own namespace: a module of the same name with different code in each."""
    host.create_sandbox("one", "plug:Root", sandbox_path=write_plugin(tmp_path / "one", "plug", "first"))
    host.create_sandbox("two", "plug:Root", sandbox_path=write_plugin(tmp_path / "two", "plug", "second"))
    assert host.call("one", "echo", "which") == "first"
    assert host.call("two", "echo", "which") == "second"


def test_sandbox_modules_never_enter_the_host_sys_modules(host: Host) -> None:
    """Plugin code runs in the sandbox's processes only."""
    before = set(sys.modules)
    host.create_sandbox("c", "root:Root", sandbox_path=sample("counter"))
    host.call("c", "counter", "inc")
    assert "counter" not in sys.modules and "root" not in sys.modules
    assert not {m for m in set(sys.modules) - before if m in ("counter", "root", "trees", "workers")}


def test_sandbox_from_an_importable_class_and_a_bare_plugin(host: Host) -> None:
    """Without a folder, the supervisor is an importable class; a bare Plugin is a one-child tree."""
    from tests_support_plugins import Doubler, DoublerRoot

    host.create_sandbox("sup", DoublerRoot)
    assert host.call("sup", "doubler", 21) == 42
    info = host.create_sandbox("bare", Doubler, args={"factor": 3})
    assert [c.name for c in info.children] == ["doubler"]
    assert host.call("bare", "doubler", 5) == 15
    assert info.supervisor == "tests_support_plugins:Doubler"


def test_run_executes_a_function_inside_the_sandbox(host: Host) -> None:
    """Host.run runs a function in a fresh process of the sandbox, which sees its modules."""
    host.create_sandbox("c", "root:Root", sandbox_path=sample("counter"))

    def probe():
        import os

        import counter

        return os.getpid(), counter.Counter.__name__

    pid, name = host.run("c", probe)
    assert name == "Counter" and pid != os.getpid()
    with pytest.raises(PluginError, match="ZeroDivisionError"):
        host.run("c", lambda: 1 / 0)


def test_run_past_its_timeout_is_killed(host: Host) -> None:
    """A function that does not return in time raises RunTimeoutError and its process is ended."""
    host.create_sandbox("c", "root:Root", sandbox_path=sample("counter"))

    def forever():
        import time

        while True:
            time.sleep(0.05)

    with pytest.raises(RunTimeoutError):
        host.run("c", forever, timeout=0.5)
    assert host.call("c", "counter", "inc") == 1


def test_batch_create_and_destroy_report_per_item(host: Host) -> None:
    """One bad spec never fails the others; results come back in order."""
    results = host.batch_create(
        [
            {"sandbox_id": "b1", "supervisor": "root:Root", "sandbox_path": sample("counter")},
            {"sandbox_id": "b2", "supervisor": "root:Nope", "sandbox_path": sample("counter")},
            {"sandbox_id": "b3", "supervisor": "root:Root", "sandbox_path": sample("counter")},
            {"sandbox_id": "b1", "supervisor": "root:Root", "sandbox_path": sample("counter")},
        ]
    )
    assert isinstance(results[0], SandboxInfo) and isinstance(results[2], SandboxInfo)
    assert isinstance(results[1], SandboxStartError)
    assert isinstance(results[3], SandboxExistsError)
    assert host.call("b3", "counter", "inc") == 1
    gone = host.batch_destroy(["b1", "missing", "b3"])
    assert gone[0] is None and gone[2] is None
    assert isinstance(gone[1], SandboxNotFoundError)
    assert host.list_sandboxes() == []


def test_duplicate_id_is_refused(host: Host) -> None:
    """A second sandbox with the same id raises SandboxExistsError; the first keeps running."""
    host.create_sandbox("c", "root:Root", sandbox_path=sample("counter"))
    with pytest.raises(SandboxExistsError):
        host.create_sandbox("c", "root:Root", sandbox_path=sample("counter"))
    assert host.call("c", "counter", "inc") == 1


@pytest.mark.parametrize("bad_id", ["", "a/b", "..", "x" * 129, "tab\there", "nl\n", 42, None])
def test_bad_sandbox_ids_are_refused(host: Host, bad_id: object) -> None:
    """Ids that could be paths or garbage get BadRequestError."""
    with pytest.raises(BadRequestError):
        host.create_sandbox(bad_id, "root:Root", sandbox_path=sample("counter"))  # type: ignore[arg-type]


def test_unknown_sandbox_and_actor_raise_lookup_errors(host: Host) -> None:
    """Unknown ids raise SandboxNotFoundError, unknown actors ActorNotFoundError, both LookupErrors."""
    with pytest.raises(SandboxNotFoundError):
        host.get_sandbox_info("nope")
    with pytest.raises(SandboxNotFoundError):
        host.destroy_sandbox("nope")
    with pytest.raises(SandboxNotFoundError):
        host.restart_sandbox("nope")
    host.create_sandbox("c", "root:Root", sandbox_path=sample("counter"))
    with pytest.raises(ActorNotFoundError):
        host.call("c", "nobody", "x", timeout=2)
    with pytest.raises(LookupError):
        host.cast("c", "nobody", "x")


@pytest.mark.parametrize(
    "supervisor, error, match",
    [
        ("root:Nope", SandboxStartError, "no 'Nope'"),
        ("nomodule:Root", SandboxStartError, "cannot import"),
        ("counter:Counter.init", InvalidSpecError, "neither"),
        ("justaname", SandboxStartError, "module:Class"),
    ],
)
def test_bad_supervisor_references_fail_to_start(host: Host, supervisor: str, error: type, match: str) -> None:
    """A supervisor that does not exist or is not a spec fails with a clear SandboxStartError."""
    with pytest.raises(error, match=match):
        host.create_sandbox("c", supervisor, sandbox_path=sample("counter"))
    assert host.list_sandboxes() == []


def test_missing_folder_and_syntax_errors_are_reported(host: Host, tmp_path: Path) -> None:
    """A folder that does not exist, and every syntax error with file and line."""
    with pytest.raises(SandboxStartError, match="does not exist"):
        host.create_sandbox("c", "root:Root", sandbox_path=str(tmp_path / "missing"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.py").write_text("def f(:\n    pass\n")
    (broken / "b.py").write_text("x = 1\ny = (\n")
    with pytest.raises(CompilationError) as caught:
        host.create_sandbox("c", "a:Root", sandbox_path=str(broken))
    files = sorted(Path(f).name for f, _, _ in caught.value.errors)
    assert files == ["a.py", "b.py"]
    assert caught.value.errors[0][1] >= 1


def test_child_spec_that_is_not_a_plugin_is_refused(host: Host, tmp_path: Path) -> None:
    """ChildSpec validates its plugin class; the sandbox fails to start with InvalidSpecError."""
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "root.py").write_text(
        textwrap.dedent("""
        from actors import ChildSpec, Supervisor

        class Root(Supervisor):
            children = [ChildSpec("x", dict)]
    """)
    )
    with pytest.raises(SandboxStartError, match="Plugin or Supervisor"):
        host.create_sandbox("c", "root:Root", sandbox_path=str(folder))


def test_module_shadowing_the_host_runtime_is_refused(host: Host, tmp_path: Path) -> None:
    """A sandbox module named like a package the runtime uses (e.g. attrs) is refused."""
    folder = tmp_path / "shadow"
    folder.mkdir()
    (folder / "attrs.py").write_text("X = 1\n")
    (folder / "root.py").write_text("from actors import Supervisor\nclass Root(Supervisor):\n    pass\n")
    with pytest.raises(SandboxStartError, match="shadow"):
        host.create_sandbox("c", "root:Root", sandbox_path=str(folder))


def test_garbage_sent_to_the_admin_gets_bad_request_and_the_admin_keeps_answering(host: Host) -> None:
    """The admin answers anything it does not understand with Failed(BadRequestError)."""
    from plugin_host.messages import Failed, ListSandboxes

    system = host.actor_system
    for garbage in ["hello", 42, {"a": 1}, ("x",), b"\x00\x01"]:
        reply = system.ask(host.admin_address, garbage, 5)
        assert isinstance(reply, Failed) and isinstance(reply.error, BadRequestError)
    reply = system.ask(host.admin_address, ListSandboxes(corr="k"), 5)
    assert reply.value == [] and reply.corr == "k"


def test_errors_are_plugin_host_errors_and_builtins(host: Host) -> None:
    """Callers can catch our base class or the builtin a class refines."""
    with pytest.raises(PluginHostError):
        host.get_sandbox_info("nope")
    with pytest.raises(LookupError):
        host.get_sandbox_info("nope")


def test_a_failing_plugin_never_disturbs_another_sandbox(host: Host) -> None:
    """Crashes in one sandbox leave the pids and state of another untouched."""
    host.create_sandbox("calm", "root:Root", sandbox_path=sample("counter"))
    host.create_sandbox("wild", "trees:OneForOne", sandbox_path=STRATEGIES)
    calm = host.call("calm", "counter", "pid")
    host.call("calm", "counter", "inc")
    for how in ("raise", "exit", "segfault"):
        with pytest.raises(PluginError):
            host.call("wild", "a", how)
    assert host.call("calm", "counter", "pid") == calm
    assert host.call("calm", "counter", "inc") == 2


def test_restricted_profile_refuses_a_sandbox_that_spawns_processes(host: Host, tmp_path: Path) -> None:
    """create_sandbox runs the security scan: restricted refuses subprocess with file and line."""
    from plugin_host.errors import SecurityViolationError

    folder = tmp_path / "sneaky"
    folder.mkdir()
    (folder / "root.py").write_text(
        "import subprocess\nfrom actors import Supervisor\nclass Root(Supervisor):\n    pass\n"
    )
    with pytest.raises(SecurityViolationError) as caught:
        host.create_sandbox("s", "root:Root", sandbox_path=str(folder), security_profile="restricted")
    assert caught.value.errors[0][1] == 1
    info = host.create_sandbox("s", "root:Root", sandbox_path=str(folder), security_profile="standard")
    assert info.status == "running"


def test_a_root_that_dies_while_starting_fails_the_create_and_frees_the_id(host: Host, tmp_path: Path) -> None:
    """A module that calls os._exit (or sys.exit) at import: SandboxStartError, and the id can be used again."""
    for exit_call in ("import os; os._exit(3)", "import sys; sys.exit(4)"):
        folder = tmp_path / f"dies{len(exit_call)}"
        folder.mkdir()
        (folder / "root.py").write_text(f"{exit_call}\n")
        with pytest.raises(SandboxStartError):
            host.create_sandbox("x", "root:Root", sandbox_path=str(folder))
        assert host.list_sandboxes() == []
    info = host.create_sandbox("x", "root:Root", sandbox_path=sample("counter"))
    assert info.status == "running"


def test_run_whose_function_kills_its_process_fails_promptly(host: Host) -> None:
    """Host.run: a function that exits its process gets PluginError at once, not a timeout."""
    import time

    host.create_sandbox("c", "root:Root", sandbox_path=sample("counter"))
    start = time.monotonic()
    with pytest.raises(PluginError, match="died"):
        host.run("c", lambda: __import__("os")._exit(1), timeout=20)
    assert time.monotonic() - start < 10
    with pytest.raises(PluginError, match="SystemExit"):
        host.run("c", lambda: __import__("sys").exit(2), timeout=20)


def test_destroying_a_sandbox_while_it_starts_fails_the_create(host: Host, tmp_path: Path) -> None:
    """create_sandbox answers SandboxStartError (not None) when the sandbox is destroyed before it ran."""
    import threading

    folder = tmp_path / "slow"
    folder.mkdir()
    (folder / "root.py").write_text(
        textwrap.dedent("""
        import time
        from actors import ChildSpec, Plugin, Supervisor

        class Slow(Plugin):
            def init(self, args):
                time.sleep(1.5)
                return None

        class Root(Supervisor):
            children = [ChildSpec("slow", Slow)]
    """)
    )
    outcome: list[object] = []

    def create() -> None:
        try:
            outcome.append(host.create_sandbox("s", "root:Root", sandbox_path=str(folder)))
        except PluginHostError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=create)
    thread.start()
    from conftest import eventually

    eventually(lambda: any(i.id == "s" for i in host.list_sandboxes()))
    host.destroy_sandbox("s")
    thread.join(timeout=30)
    assert len(outcome) == 1 and isinstance(outcome[0], SandboxStartError)
    assert host.list_sandboxes() == []


def test_a_plugins_log_calls_reach_the_log_whatever_their_arguments(host: Host, tmp_path: Path) -> None:
    """A log call with a wrong format or an ``extra`` field holding a plugin's own object neither raises in
    the plugin nor gets the record refused on its way to the host's log (extra objects go as text)."""
    folder = tmp_path / "chatty"
    folder.mkdir()
    (folder / "chatty.py").write_text(
        textwrap.dedent("""
        import logging
        from actors import Plugin

        class Thing:
            def __repr__(self):
                return "<a thing of the plugin>"

        class Chatty(Plugin):
            def handle_call(self, request, state):
                logging.getLogger("chatty").warning("%d items", "not a number")
                logging.getLogger("chatty").warning("with an extra", extra={"thing": Thing()})
                return "said", state
    """)
    )
    host.create_sandbox("chatty", "chatty:Chatty", sandbox_path=str(folder))
    assert host.call("chatty", "chatty", "go") == "said"
    log = Path(host.config.state_dir) / "logs" / f"actors-{host.admin_port}.log"
    # Thespian writes a record whose format does not fit its arguments as "<un-str-able message>".
    eventually(lambda: "with an extra" in log.read_text() and "chatty: <un-str-able message>" in log.read_text())
    assert host.nodes()[0].rejected_frames == 0


def test_threads_that_end_release_what_the_host_held_for_them(host: Host) -> None:
    """2,000 calls from 200 short-lived threads (a new thread per request, as a threaded HTTP server
    does): the process's file descriptors stay where they were (each thread's context, with its sockets,
    was kept for ever: 3 descriptors per thread, 600 here)."""
    import threading

    host.create_sandbox("c", "root:Root", sandbox_path=sample("counter"))
    host.call("c", "counter", "inc")
    before = len(os.listdir("/proc/self/fd"))
    errors: list[BaseException] = []

    def calls() -> None:
        try:
            for _ in range(10):
                host.call("c", "counter", "inc")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    for _ in range(10):
        threads = [threading.Thread(target=calls) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    assert host.call("c", "counter", "get") == 2_001
    assert len(os.listdir("/proc/self/fd")) <= before + 3


def test_an_infinite_timeout_waits_as_long_as_it_takes(config: HostConfig) -> None:
    """``call_timeout=math.inf`` (and ``timeout=math.inf`` on a call) means no time limit, as the config's
    "a positive number" allows: calls, usage queries and reloads answer (``timedelta`` overflowed on it)."""
    import math

    import attrs

    with Host(attrs.evolve(config, call_timeout=math.inf, start_timeout=math.inf)) as host:
        host.create_sandbox("c", "root:Root", sandbox_path=sample("counter"))
        assert host.call("c", "counter", "inc") == 1
        assert host.call("c", "counter", "inc", timeout=math.inf) == 2
        assert host.call("c", "counter", "inc", timeout=1e14) == 3
        assert any(a.name == "counter" for a in host.resource_usage("c").actors)
        host.destroy_sandbox("c")
