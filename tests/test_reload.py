"""Hot reload, rollback and the version registry, rule by rule of DESIGN.md "Hot reload semantics"."""

from __future__ import annotations

import queue
import textwrap
import threading
import time
from pathlib import Path
from typing import Iterator

import attrs
import pytest
from conftest import eventually

from plugin_host import Event, Host, HostConfig, ReloadResult
from plugin_host.errors import CompilationError, HotReloadError, PluginError, UnknownModuleError, VersionNotFoundError

ROOT = """
from actors import ChildSpec, Supervisor
from counter import Counter

class Root(Supervisor):
    max_restarts, max_seconds = 10, 10
    children = [ChildSpec(name, Counter) for name in ("c1", "c2", "c3")]
"""

FMT = """
def label(n):
    return f"n={n}"
"""


def counter(step: int = 1, tag: str = "v1", code_change: str = "return old_state", extra: str = "") -> str:
    """Source of a counter plugin whose behaviour says which version runs."""
    return (
        textwrap.dedent(f'''
        import os
        from actors import Plugin
        from fmt import label

        class Counter(Plugin):
            def init(self, args):
                return {{"count": 0, "log": []}}

            def handle_call(self, request, state):
                if request == "inc":
                    state = {{**state, "count": state["count"] + {step}}}
                    return state["count"], state
                if request == "tag":
                    return "{tag}", state
                if request == "label":
                    return label(state["count"]), state
                if request == "pid":
                    return os.getpid(), state
                if request == "state":
                    return state, state
                if request == "crash":
                    raise RuntimeError("crash on request")
                raise ValueError(request)

            def code_change(self, old_state, old_vsn, new_vsn):
                {code_change}
    ''')
        + textwrap.indent(textwrap.dedent(extra).strip("\n"), "    ")
        + "\n"
    )


def make_folder(path: Path, counter_source: str | None = None) -> str:
    path.mkdir(parents=True, exist_ok=True)
    (path / "root.py").write_text(ROOT)
    (path / "fmt.py").write_text(FMT)
    (path / "counter.py").write_text(counter_source or counter())
    return str(path)


@pytest.fixture
def sandbox(host: Host, tmp_path: Path) -> Host:
    host.create_sandbox("s", "root:Root", sandbox_path=make_folder(tmp_path / "code"))
    return host


def recorder(tag: str, gate: Path | None = None) -> str:
    """Source of a counter plugin that logs each ``(sender, seq)`` cast, and each ``("record", sender,
    seq)`` call, with the version (``tag``) that handled it; the call ``"log"`` returns that log.

    With ``gate`` (a folder), the reload to this code is held open by the test: each actor's
    ``code_change`` marks it prepared (the file ``<name>.prepared``), and c2's then waits for the file
    ``open``, so c1 and c3 hold every message that arrives until the test opens the gate.
    """
    return textwrap.dedent(f'''
        import os
        import time
        from actors import Plugin

        GATE = {str(gate) if gate else None!r}

        class Counter(Plugin):
            def init(self, args):
                return {{"log": []}}

            def handle_cast(self, message, state):
                return {{"log": state["log"] + [(*message, "{tag}")]}}

            def handle_call(self, request, state):
                if request == "log":
                    return state["log"], state
                if isinstance(request, tuple) and request[0] == "record":
                    return "{tag}", {{"log": state["log"] + [(*request[1:], "{tag}")]}}
                raise ValueError(request)

            def code_change(self, old_state, old_vsn, new_vsn):
                if GATE is not None:
                    with open(os.path.join(GATE, self.name + ".prepared"), "w"):
                        pass
                    deadline = time.monotonic() + 60  # never block forever, even if the test died
                    while self.name == "c2" and not os.path.exists(os.path.join(GATE, "open")):
                        if time.monotonic() > deadline:
                            raise TimeoutError("the test never opened the gate")
                        time.sleep(0.005)
                return old_state
    ''')


class GatedReload:
    """A hot reload of ``counter`` to ``recorder("v2", gate)`` that the test holds open.

    Entering starts the reload in a thread and returns once c1 is prepared (so every message that
    reaches it from then on is held) and c2 is blocked in its ``code_change`` (so the reload cannot
    commit); :meth:`open` lets c2 go and returns the reload's result.  Leaving always opens the gate.
    """

    def __init__(self, host: Host, gate: Path) -> None:
        self.host, self.gate = host, gate
        self.results: list[ReloadResult] = []
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        try:
            self.results.append(self.host.hot_reload_source("s", recorder("v2", self.gate), module="counter"))
        except BaseException as exc:  # noqa: BLE001 - reported by open()
            self.errors.append(exc)

    def __enter__(self) -> GatedReload:
        self.gate.mkdir()
        self.thread.start()
        prepared = [self.gate / "c1.prepared", self.gate / "c2.prepared"]
        eventually(lambda: not self.thread.is_alive() or all(path.exists() for path in prepared), timeout=30)
        assert not self.errors and self.thread.is_alive(), f"the reload ended before the gate opened: {self.errors}"
        return self

    def open(self) -> ReloadResult:
        """Let the reload commit (it must still be waiting: what was sent meanwhile was held)."""
        assert self.thread.is_alive(), "the reload ended before the gate opened: nothing was held"
        (self.gate / "open").touch()
        self.thread.join(60)
        assert not self.errors and self.results, f"the reload failed: {self.errors}"
        return self.results[0]

    def __exit__(self, *exc_info: object) -> None:
        (self.gate / "open").touch()
        self.thread.join(60)


@pytest.fixture
def slow_host(config: HostConfig) -> Iterator[Host]:
    """A host whose hang detection leaves an actor blocked in ``code_change`` alone while a test holds
    a reload open (the test config kills an actor silent for 1 s)."""
    with Host(attrs.evolve(config, hang_timeout=60.0)) as h:
        yield h


def tags(host: Host, sandbox_id: str = "s") -> set[str]:
    return {host.call(sandbox_id, name, "tag") for name in ("c1", "c2", "c3")}


def test_reload_swaps_code_in_every_actor_and_keeps_their_state(sandbox: Host) -> None:
    """Every actor of the module runs the new code; code_change keeps its state."""
    assert [sandbox.call("s", "c1", "inc") for _ in range(3)] == [1, 2, 3]
    pids = {name: sandbox.call("s", name, "pid") for name in ("c1", "c2", "c3")}
    result = sandbox.hot_reload_source("s", counter(step=10, tag="v2"), module="counter")
    assert (result.old_version, result.new_version) == (1, 2)
    assert sorted(result.actors_updated) == ["c1", "c2", "c3"]
    assert tags(sandbox) == {"v2"}
    assert sandbox.call("s", "c1", "inc") == 13  # state kept, new behaviour
    assert {name: sandbox.call("s", name, "pid") for name in pids} == pids  # no restart
    assert sandbox.get_module_version("s", "counter") == 2
    assert sandbox.get_sandbox_info("s").modules["counter"] == 2


def test_code_change_receives_the_old_state_and_both_versions(sandbox: Host) -> None:
    """code_change(old_state, old_vsn, new_vsn) runs on the new code and may migrate the state."""
    sandbox.call("s", "c1", "inc")
    migrate = 'return {**old_state, "log": old_state["log"] + [(old_vsn, new_vsn)], "count": old_state["count"] * 5}'
    sandbox.hot_reload_source("s", counter(tag="v2", code_change=migrate), module="counter")
    state = sandbox.call("s", "c1", "state")
    assert state["count"] == 5 and state["log"] == [(1, 2)]


def test_a_raising_code_change_changes_nothing(sandbox: Host) -> None:
    """All or nothing: one failing actor leaves every actor's code, state and version as they were."""
    for name in ("c1", "c2", "c3"):
        sandbox.call("s", name, "inc")
    bad = (
        'if self.name == "c2":\n                    raise ValueError("cannot migrate")\n'
        "                return old_state"
    )
    with pytest.raises(HotReloadError) as caught:
        sandbox.hot_reload_source("s", counter(tag="v2", code_change=bad), module="counter")
    assert caught.value.actor == "c2" and "cannot migrate" in caught.value.cause
    assert tags(sandbox) == {"v1"}
    assert [sandbox.call("s", name, "inc") for name in ("c1", "c2", "c3")] == [2, 2, 2]
    history = sandbox.get_version_history("s", "counter")
    assert history.current_version == 1
    assert [(v.version, v.status) for v in history.versions] == [(2, "failed"), (1, "current")]


def test_an_actor_restarted_after_a_refused_reload_runs_the_old_code(sandbox: Host) -> None:
    """All or nothing holds after the reload too: every actor that crashes once a reload was refused comes
    back on the version the registry names current (a root that kept the staged code brought it back on
    the refused one)."""
    bad = (
        'if self.name == "c2":\n                    raise ValueError("cannot migrate")\n'
        "                return old_state"
    )
    with pytest.raises(HotReloadError):
        sandbox.hot_reload_source("s", counter(tag="v2", code_change=bad), module="counter")
    for name in ("c1", "c2", "c3"):
        before = sandbox.call("s", name, "pid")
        with pytest.raises(PluginError):
            sandbox.call("s", name, "crash")
        assert sandbox.call("s", name, "pid") != before  # a new process, started by the root
    assert tags(sandbox) == {"v1"}
    assert sandbox.get_version_history("s", "counter").current_version == 1


def test_reloading_identical_code_is_a_no_op(sandbox: Host, tmp_path: Path) -> None:
    """The current code again returns the current version and mints no number."""
    result = sandbox.hot_reload_source("s", counter(), module="counter")
    assert (result.old_version, result.new_version, result.actors_updated) == (1, 1, [])
    assert sandbox.get_version_history("s", "counter").total_versions == 1


def test_code_identical_to_a_stored_version_switches_to_that_number(sandbox: Host) -> None:
    """v1 -> v2 -> the v1 source again: it becomes version 1, not 3."""
    sandbox.hot_reload_source("s", counter(tag="v2"), module="counter")
    result = sandbox.hot_reload_source("s", counter(), module="counter")
    assert (result.old_version, result.new_version) == (2, 1)
    assert tags(sandbox) == {"v1"}
    assert sandbox.get_version_history("s", "counter").total_versions == 2


def test_rollback_goes_through_code_change_and_is_recorded(sandbox: Host) -> None:
    """rollback_module(k) reloads version k's code with code_change(state, current, k)."""
    migrate = 'return {**old_state, "log": old_state["log"] + [(old_vsn, new_vsn)]}'
    sandbox.hot_reload_source("s", counter(tag="v2", code_change=migrate), module="counter")
    sandbox.hot_reload_source("s", counter(tag="v3", code_change=migrate), module="counter")
    result = sandbox.rollback_module("s", "counter", 1)
    assert (result.old_version, result.new_version) == (3, 1)
    assert tags(sandbox) == {"v1"}
    assert sandbox.call("s", "c1", "state")["log"] == [(1, 2), (2, 3)]  # v1's code_change keeps the state
    history = sandbox.get_version_history("s", "counter")
    assert history.current_version == 1
    assert {v.version: v.status for v in history.versions} == {3: "previous", 2: "previous", 1: "current"}
    with pytest.raises(VersionNotFoundError):
        sandbox.rollback_module("s", "counter", 9)


def test_modules_that_import_the_reloaded_module_are_reloaded_with_it(sandbox: Host) -> None:
    """Reloading fmt re-executes counter (which imports it), so actors see the new function."""
    sandbox.call("s", "c1", "inc")
    assert sandbox.call("s", "c1", "label") == "n=1"
    result = sandbox.hot_reload_source("s", 'def label(n):\n    return f"count is {n}"\n', module="fmt")
    assert result.module == "fmt" and result.new_version == 2
    assert sorted(result.actors_updated) == ["c1", "c2", "c3"]
    assert sandbox.call("s", "c1", "label") == "count is 1"
    assert sandbox.get_module_version("s", "counter") == 1  # re-executed, same source, same version


def test_a_restarted_actor_runs_the_current_version(sandbox: Host) -> None:
    """After a reload, a crash brings the actor back on the new code, never the original."""
    sandbox.hot_reload_source("s", counter(tag="v2"), module="counter")
    with pytest.raises(PluginError):
        sandbox.call("s", "c2", "crash")
    assert sandbox.call("s", "c2", "tag") == "v2"
    sandbox.restart_sandbox("s")
    assert tags(sandbox) == {"v2"}


def test_other_sandboxes_never_see_the_new_code(host: Host, tmp_path: Path) -> None:
    """Two sandboxes with the same module names: a reload in one is invisible to the other."""
    host.create_sandbox("a", "root:Root", sandbox_path=make_folder(tmp_path / "a"))
    host.create_sandbox("b", "root:Root", sandbox_path=make_folder(tmp_path / "b"))
    host.hot_reload_source("a", counter(tag="v2"), module="counter")
    assert tags(host, "a") == {"v2"} and tags(host, "b") == {"v1"}
    assert host.get_module_version("b", "counter") == 1


def test_state_handler_replaces_code_change(sandbox: Host) -> None:
    """A caller's state_handler migrates the state instead of the plugin's code_change."""
    sandbox.call("s", "c1", "inc")
    result = sandbox.hot_reload_source(
        "s",
        counter(tag="v2"),
        module="counter",
        state_handler=lambda state, old, new: {**state, "count": 100 + old + new},
    )
    assert result.new_version == 2
    assert sandbox.call("s", "c1", "inc") == 104


def test_no_call_is_lost_duplicated_or_reordered_across_reloads(sandbox: Host) -> None:
    """A caller doing sequential calls while reloads alternate v1/v2 sees every reply in order."""
    replies: list[int] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def caller() -> None:
        try:
            while not stop.is_set() or len(replies) < 300:
                replies.append(sandbox.call("s", "c1", "inc"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=caller)
    thread.start()
    sources = [counter(tag="v2"), counter(tag="v1")]
    for index in range(10):
        sandbox.hot_reload_source("s", sources[index % 2], module="counter")
    stop.set()
    thread.join(timeout=120)
    assert not errors
    assert replies == list(range(1, len(replies) + 1))


def test_casts_queued_during_a_reload_are_handled_by_the_new_code(slow_host: Host, tmp_path: Path) -> None:
    """Casts sent while the reload is held open are held, then replayed in the order sent, by the new code."""
    slow_host.create_sandbox("s", "root:Root", sandbox_path=make_folder(tmp_path / "code", recorder("v1")))
    for seq in range(5):
        slow_host.cast("s", "c1", (0, seq))
    with GatedReload(slow_host, tmp_path / "gate") as reload:
        for seq in range(5, 25):  # c1 is prepared and c2 blocked: the reload cannot commit yet
            slow_host.cast("s", "c1", (0, seq))
        result = reload.open()
    assert result.new_version == 2
    for seq in range(25, 30):
        slow_host.cast("s", "c1", (0, seq))
    log = slow_host.call("s", "c1", "log")
    assert [seq for _, seq, _ in log] == list(range(30))
    assert [tag for _, _, tag in log] == ["v1"] * 5 + ["v2"] * 25


def test_concurrent_senders_keep_their_order_across_a_slow_reload(slow_host: Host, tmp_path: Path) -> None:
    """Several threads cast (and call) while a reload is held open: each sender's messages reach the
    actor in the order it sent them, none lost or doubled, and all those sent during the reload are
    held and then handled by the new code.  (A newest-first replay breaks this; one sequential caller
    cannot see it, as it never has more than one message held.)"""
    slow_host.create_sandbox("s", "root:Root", sandbox_path=make_folder(tmp_path / "code", recorder("v1")))
    senders, before, during, after = 4, 10, 30, 10
    reached_call = [threading.Event() for _ in range(senders)]
    replies: dict[int, str] = {}
    errors: list[BaseException] = []

    def sender(index: int) -> None:
        try:
            for seq in range(before, before + during):
                slow_host.cast("s", "c1", (index, seq))
            reached_call[index].set()
            # A call held with the casts: it returns once the reload commits, answered by the new code.
            replies[index] = slow_host.call("s", "c1", ("record", index, before + during))
            for seq in range(before + during + 1, before + during + 1 + after):
                slow_host.cast("s", "c1", (index, seq))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            reached_call[index].set()

    for index in range(senders):
        for seq in range(before):
            slow_host.cast("s", "c1", (index, seq))
    threads = [threading.Thread(target=sender, args=(index,)) for index in range(senders)]
    with GatedReload(slow_host, tmp_path / "gate") as reload:
        for thread in threads:
            thread.start()
        for event in reached_call:
            assert event.wait(60)
        result = reload.open()
    for thread in threads:
        thread.join(60)
    assert not errors and not any(thread.is_alive() for thread in threads)
    assert result.new_version == 2 and replies == {index: "v2" for index in range(senders)}
    log = slow_host.call("s", "c1", "log")
    total = before + during + 1 + after
    for index in range(senders):
        mine = [(seq, tag) for who, seq, tag in log if who == index]
        assert [seq for seq, _ in mine] == list(range(total)), f"sender {index}"
        assert [tag for _, tag in mine] == ["v1"] * before + ["v2"] * (total - before), f"sender {index}"
    assert len(log) == senders * total


def test_a_broken_source_is_refused_before_anything_changes(sandbox: Host) -> None:
    """Syntax and import errors are caught by the isolated compiler; the running code stays."""
    with pytest.raises(CompilationError):
        sandbox.hot_reload_source("s", "def broken(:\n", module="counter")
    with pytest.raises(CompilationError):
        sandbox.hot_reload_source("s", "import does_not_exist_anywhere\n", module="counter")
    assert tags(sandbox) == {"v1"}
    assert sandbox.get_version_history("s", "counter").total_versions == 1


def test_a_crash_during_probation_rolls_back_by_itself(sandbox: Host) -> None:
    """A reloaded actor that crashes inside its probation window takes the sandbox back to the old code."""
    sandbox.call("s", "c1", "inc")
    crashy = counter(
        tag="v2",
        extra="""
        def handle_cast(self, message, state):
            raise RuntimeError("v2 is broken")
    """,
    )
    result = sandbox.hot_reload(
        "s", sandbox.compile_sandbox(make_folder(Path(sandbox.config.state_dir) / "v2", crashy)), probation=30
    )
    assert result.new_version == 2
    sandbox.cast("s", "c1", "boom")
    eventually(lambda: sandbox.get_module_version("s", "counter") == 1)
    assert eventually(lambda: tags(sandbox) == {"v1"})
    history = sandbox.get_version_history("s", "counter")
    assert {v.version: v.status for v in history.versions} == {2: "failed", 1: "current"}


def test_hot_reload_source_takes_a_probation_window_too(sandbox: Host) -> None:
    """``hot_reload_source(..., probation=)`` as ``hot_reload``: a crash inside the window rolls back."""
    sandbox.call("s", "c1", "inc")
    crashy = counter(
        tag="v2",
        extra="""
        def handle_cast(self, message, state):
            raise RuntimeError("v2 is broken")
    """,
    )
    assert sandbox.hot_reload_source("s", crashy, module="counter", probation=30).new_version == 2
    sandbox.cast("s", "c1", "boom")
    eventually(lambda: sandbox.get_module_version("s", "counter") == 1)
    assert eventually(lambda: tags(sandbox) == {"v1"})


def test_the_configured_probation_window_rolls_back_inside_it_and_never_after(
    config: HostConfig, tmp_path: Path
) -> None:
    """HostConfig.probation_seconds: a reloaded actor crashing inside the window brings the old code back
    by itself (a ``rolled_back`` event saying why); a crash after the window (``probation=`` set
    per reload, overriding the config) leaves the new version current."""
    crashy = """
        def handle_cast(self, message, state):
            raise RuntimeError("this version is broken")
    """
    with Host(config, probation_seconds=30) as host:
        events: queue.Queue[Event] = queue.Queue()
        host.subscribe(events.put)
        host.create_sandbox("s", "root:Root", sandbox_path=make_folder(tmp_path / "code"))
        # inside the configured window (no probation= given): back to version 1, and said so
        assert host.hot_reload_source("s", counter(tag="v2", extra=crashy), module="counter").new_version == 2
        host.cast("s", "c1", "boom")
        event = next_event(events, "rolled_back", timeout=10.0)
        assert "probation" in event.reason and "c1" in event.reason
        assert (event.details["module"], event.details["new_version"]) == ("counter", 1)
        assert host.get_module_version("s", "counter") == 1 and tags(host) == {"v1"}
        assert {v.version: v.status for v in host.get_version_history("s", "counter").versions} == {
            2: "failed",
            1: "current",
        }
        # after a short window: the crash is only a crash, version 3 stays
        window = 0.5
        v3 = host.compile_sandbox(make_folder(tmp_path / "v3", counter(tag="v3", extra=crashy)))
        assert host.hot_reload("s", v3, probation=window).new_version == 3
        reloaded = time.monotonic()
        time.sleep(max(reloaded + window + 0.2 - time.monotonic(), 0))  # no event marks the window's end
        host.cast("s", "c1", "boom")
        next_event(events, "restarted")  # the admin judged the crash (the root reports it before the restart)
        with pytest.raises(queue.Empty):  # a rollback would follow within ms (see above); give it 1 s
            next_event(events, "rolled_back", timeout=1.0)
        assert host.get_module_version("s", "counter") == 3 and tags(host) == {"v3"}
        assert host.get_version_history("s", "counter").current_version == 3


def next_event(events: "queue.Queue[Event]", kind: str, timeout: float = 30.0) -> Event:
    """The next event of ``kind`` within ``timeout`` seconds (others are skipped); ``queue.Empty`` if none."""
    deadline = time.monotonic() + timeout
    while True:
        event = events.get(timeout=max(deadline - time.monotonic(), 0.001))
        if event.kind == kind:
            return event


def test_history_survives_the_host_and_recreation_continues_numbering(config: HostConfig, tmp_path: Path) -> None:
    """The registry persists in state_dir: history after a restart, numbering continues, identical code dedupes."""
    folder = make_folder(tmp_path / "code")
    with Host(config) as host:
        host.create_sandbox("s", "root:Root", sandbox_path=folder)
        host.hot_reload_source("s", counter(tag="v2"), module="counter")
    with Host(config) as host:
        history = host.get_version_history("s", "counter")
        assert (history.current_version, history.total_versions) == (2, 2)
        info = host.create_sandbox("s", "root:Root", sandbox_path=folder)  # v1's source again
        assert info.modules["counter"] == 1
        result = host.hot_reload_source("s", counter(tag="v3"), module="counter")
        assert result.new_version == 3
        with pytest.raises(UnknownModuleError):
            host.get_module_version("s", "nothing")


def test_batch_hot_reload_reports_per_sandbox(host: Host, tmp_path: Path) -> None:
    """One missing sandbox does not stop the others."""
    host.create_sandbox("a", "root:Root", sandbox_path=make_folder(tmp_path / "a"))
    host.create_sandbox("b", "root:Root", sandbox_path=make_folder(tmp_path / "b"))
    info = host.compile_sandbox(make_folder(tmp_path / "new", counter(tag="v2")))
    results = host.batch_hot_reload(["a", "missing", "b"], info)
    assert results[0].new_version == 2 and results[2].new_version == 2
    assert isinstance(results[1], LookupError)
    assert tags(host, "a") == tags(host, "b") == {"v2"}


def test_a_reload_that_times_out_on_a_busy_actor_changes_nothing(sandbox: Host) -> None:
    """An actor busy past the reload's timeout loads the code late and drops it: old code, old version."""
    slow = counter(
        tag="v1",
        extra="""
        def handle_cast(self, message, state):
            import time
            time.sleep(message)
            return state
    """,
    )
    sandbox.hot_reload_source("s", slow, module="counter")
    version = sandbox.get_module_version("s", "counter")
    pid = sandbox.call("s", "c1", "pid")
    sandbox.cast("s", "c1", 0.7)  # busy for 0.7 s: longer than the reload waits, shorter than hang_timeout
    with pytest.raises(HotReloadError, match="no answer"):
        sandbox.hot_reload_source("s", counter(tag="v2"), module="counter", timeout=0.2)
    assert sandbox.call("s", "c1", "tag", timeout=10) == "v1"  # after the busy callback: still the old code
    assert sandbox.call("s", "c1", "pid") == pid  # the same process: it loaded the code late, then dropped it
    assert tags(sandbox) == {"v1"}
    assert sandbox.get_module_version("s", "counter") == version


def test_reloading_an_unchanged_module_names_that_module(sandbox: Host) -> None:
    """The no-op result names the module given, with its own version."""
    sandbox.hot_reload_source("s", counter(tag="v2"), module="counter")
    result = sandbox.hot_reload_source("s", ROOT, module="root")
    assert (result.module, result.old_version, result.new_version) == ("root", 1, 1)
