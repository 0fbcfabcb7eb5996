"""Beyond one machine: sandboxes on other actor systems of a Thespian convention, on loopback.

The host leads the convention; members are real ``plugin-host node`` processes on other
ports, each with its own state folder (so the process-leak guard covers them too).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil
import pytest
from conftest import eventually, sample, terminate
from test_deps import _write_wheel
from test_deps_host import plugin_folder
from test_reload import counter, make_folder

from plugin_host import Host, HostConfig, _wire
from plugin_host.cli import main
from plugin_host.errors import (
    ActorNotFoundError,
    CodeIntegrityError,
    HotReloadError,
    NoCapableNodeError,
    PluginHostError,
    SandboxStartError,
)
from plugin_host.values import Event

NODE_TIMEOUT = 2.0


class Node:
    """A ``plugin-host node`` process and the processes of its actor system."""

    def __init__(self, folder: Path, leader_port: int, capabilities: dict[str, str], *extra: str, cookie: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.out = folder / "node.out"
        self.state = folder / "state"
        command = [
            sys.executable,
            "-m",
            "plugin_host",
            "node",
            "--leader",
            f"127.0.0.1:{leader_port}",
            "--state-dir",
            str(self.state),
            "--cookie-file",
            str(cookie),
            "--json",
            *extra,
        ]
        for key, value in capabilities.items():
            command += ["--capability", f"{key}={value}"]
        with open(self.out, "wb") as sink:  # a file, never a pipe: the system's daemons inherit it
            self.proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.info: dict[str, Any] = eventually(self._ready, timeout=30)
        self.name: str = self.info["node"]
        self.system = psutil.Process(self.info["system_pid"])

    def _ready(self) -> dict[str, Any] | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"plugin-host node exited {self.proc.returncode}: {self.out.read_text()}")
        for line in self.out.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                return dict(json.loads(line))
        return None

    def processes(self) -> list[psutil.Process]:
        """Every process of the node's actor system, as of now."""
        try:
            return [self.system, *self.system.children(recursive=True)]
        except psutil.Error:
            return []

    def runs(self, pid: int | None) -> bool:
        return pid is not None and any(p.pid == pid for p in self.processes())

    def kill(self) -> None:
        """SIGKILL the node: its command and every process of its system, at once."""
        victims = [psutil.Process(self.proc.pid), *self.processes()]
        for proc in victims:
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(victims, timeout=5)
        self.proc.wait(5)

    def stop(self) -> None:
        """SIGTERM, as an operator would; kill whatever is left (by the pids recorded)."""
        tree = self.processes()
        terminate(self.proc)
        _, alive = psutil.wait_procs(tree, timeout=5)
        for proc in alive:
            proc.kill()


@pytest.fixture
def wheels(tmp_path: Path) -> Path:
    """A folder with two tiny wheels, tinylib 1.0 and 2.0 (sandbox requirements, offline)."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    for version in ("1.0", "2.0"):
        _write_wheel(folder, version)
    return folder


@pytest.fixture
def leader(state_dir: Path, wheels: Path) -> Iterator[Host]:
    config = HostConfig(
        state_dir=state_dir,
        heartbeat_interval=0.2,
        hang_timeout=1.0,
        shutdown_timeout=2.0,
        start_timeout=20.0,
        node_timeout=NODE_TIMEOUT,
        capabilities={"zone": "a"},
        find_links=(str(wheels),),
        no_index=True,
    )
    with Host(config) as host:
        yield host


@pytest.fixture
def start_node(leader: Host, tmp_path: Path) -> Iterator[Callable[..., Node]]:
    nodes: list[Node] = []

    def start(*extra: str, **capabilities: str) -> Node:
        node = Node(
            tmp_path / f"node{len(nodes)}",
            leader.admin_port or 0,
            capabilities,
            *extra,
            cookie=leader.config.credential_file,
        )  # members share the leader's credential
        nodes.append(node)
        eventually(lambda: any(n.name == node.name and n.status == "up" for n in leader.nodes()), timeout=20)
        return node

    try:
        yield start
    finally:
        for node in nodes:
            node.stop()


def events_of(host: Host) -> tuple[list[Event], threading.Condition]:
    seen: list[Event] = []
    changed = threading.Condition()

    def collect(event: Event) -> None:
        with changed:
            seen.append(event)
            changed.notify_all()

    host.subscribe(collect)
    return seen, changed


def wait_for(seen: list[Event], changed: threading.Condition, test: Callable[[Event], bool], timeout: float) -> Event:
    with changed:
        assert changed.wait_for(lambda: any(test(e) for e in seen), timeout), [(e.kind, e.sandbox_id) for e in seen]
        return next(e for e in seen if test(e))


def test_members_are_listed_with_their_capabilities(leader: Host, start_node: Callable[..., Node]) -> None:
    b = start_node(zone="b")
    nodes = {n.name: n for n in leader.nodes()}
    assert nodes[b.name].capabilities["zone"] == "b" and not nodes[b.name].local
    local = [n for n in nodes.values() if n.local]
    assert len(local) == 1 and local[0].capabilities["zone"] == "a"


def test_sandboxes_go_where_the_requirements_are_met(
    leader: Host, start_node: Callable[..., Node], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    b, c = start_node(zone="b"), start_node(zone="c")
    code = make_folder(tmp_path / "code")
    on_c = leader.create_sandbox("on-c", "root:Root", sandbox_path=code, requirements={"zone": "c"})
    on_a = leader.create_sandbox("on-a", "root:Root", sandbox_path=code, requirements={"zone": "a"})
    assert on_c.node == c.name and on_a.node != c.name and on_a.node != b.name
    # The root and every actor really run in the member's process tree, and answer calls.
    assert c.runs(on_c.pid) and all(c.runs(child.pid) for child in on_c.children)
    assert not b.runs(on_c.pid) and not c.runs(on_a.pid)
    assert [leader.call("on-c", "c1", "inc") for _ in range(3)] == [1, 2, 3]
    assert leader.call("on-c", "c2", "pid") in {p.pid for p in c.processes()}
    leader.cast("on-c", "c1", "noop")
    listed = {info.id: info.node for info in leader.list_sandboxes()}
    assert listed == {"on-a": on_a.node, "on-c": c.name}
    nodes = {n.name: n for n in leader.nodes()}
    assert nodes[c.name].sandboxes == ["on-c"] and nodes[b.name].sandboxes == []
    usage = leader.resource_usage("on-c")  # sampled by the monitor on that member
    assert {a.pid for a in usage.actors} <= {p.pid for p in c.processes()} and usage.total_rss_bytes > 0
    assert (
        main(
            [
                "status",
                "--port",
                str(leader.admin_port),
                "--state-dir",
                str(leader.config.state_dir),
                "--once",
                "--sandbox",
                "on-c",
            ]
        )
        == 0
    )
    rows = [row for row in map(str.split, capsys.readouterr().out.splitlines()) if row[:1] == ["on-c"]]
    assert len(rows) == 4 and {row[-1] for row in rows} == {c.name}  # root + 3 workers, each on node c


def test_no_capable_member_is_a_clear_error_and_starts_nothing(
    leader: Host, start_node: Callable[..., Node], tmp_path: Path
) -> None:
    b = start_node(zone="b")
    before = len(b.processes())
    with pytest.raises(NoCapableNodeError, match="zone") as caught:
        leader.create_sandbox(
            "x", "root:Root", sandbox_path=make_folder(tmp_path / "code"), requirements={"zone": "mars"}
        )
    assert b.name in str(caught.value)
    assert leader.list_sandboxes() == [] and len(b.processes()) == before


def test_code_travels_with_the_sandbox_not_as_files(
    leader: Host, start_node: Callable[..., Node], tmp_path: Path
) -> None:
    b = start_node(zone="b")
    folder = tmp_path / "code"
    leader.create_sandbox("s", "root:Root", sandbox_path=make_folder(folder), requirements={"zone": "b"})
    for file in folder.iterdir():
        file.unlink()
    folder.rmdir()
    info = leader.restart_sandbox("s")  # the member starts it again from the code it was sent
    assert info.node == b.name and leader.call("s", "c1", "tag") == "v1"


def test_reload_and_rollback_of_a_remote_sandbox(leader: Host, start_node: Callable[..., Node], tmp_path: Path) -> None:
    b = start_node(zone="b")
    leader.create_sandbox("s", "root:Root", sandbox_path=make_folder(tmp_path / "code"), requirements={"zone": "b"})
    leader.call("s", "c1", "inc")
    result = leader.hot_reload_source("s", counter(step=10, tag="v2"), module="counter")
    assert result.new_version == 2 and sorted(result.actors_updated) == ["c1", "c2", "c3"]
    assert leader.call("s", "c1", "tag") == "v2" and leader.call("s", "c1", "inc") == 11  # state kept
    back = leader.rollback_module("s", "counter", 1)
    assert back.new_version == 1 and leader.call("s", "c1", "tag") == "v1"
    assert leader.call("s", "c1", "inc") == 12
    assert leader.get_sandbox_info("s").node == b.name


def test_a_remote_sandbox_installs_its_requirements_on_its_member(
    leader: Host, start_node: Callable[..., Node], tmp_path: Path, wheels: Path
) -> None:
    """The member installs the sandbox's requirements itself (its state_dir, its wheels), also on reload."""
    b = start_node("--find-links", str(wheels), "--no-index", zone="b")
    folder = Path(plugin_folder(tmp_path / "s", "tinylib==1.0"))
    (folder / "where.py").write_text("import tinylib\n\ndef where():\n    return tinylib.__file__\n")
    before = leader.create_sandbox("s", "uses:Root", sandbox_path=str(folder), requirements={"zone": "b"})
    assert leader.call("s", "uses", "v") == "1.0"
    assert str(b.state / "envs") in leader.run("s", lambda: __import__("where").where())
    (folder / "requirements.txt").write_text("tinylib==2.0\n")
    seen, _ = events_of(leader)
    leader.hot_reload("s", leader.compile_sandbox(str(folder)))  # pip runs off the root's loop: no one starves
    assert leader.call("s", "uses", "v") == "2.0"
    assert len([e for e in (b.state / "envs").iterdir() if e.is_dir()]) == 2
    after = leader.get_sandbox_info("s")
    assert [(c.pid, c.restarts) for c in after.children] == [(c.pid, 0) for c in before.children]
    assert not [e for e in seen if e.kind in ("crashed", "lost", "failed")]


def test_a_remote_install_longer_than_the_reload_timeout_fails_the_reload_and_changes_nothing(
    leader: Host, start_node: Callable[..., Node], tmp_path: Path, wheels: Path
) -> None:
    """pip on the member counts against the reload's timeout; past it the reload fails for good, no late switch."""
    start_node("--find-links", str(wheels), "--no-index", zone="b")
    folder = Path(plugin_folder(tmp_path / "s", "tinylib==1.0"))
    leader.create_sandbox("s", "uses:Root", sandbox_path=str(folder), requirements={"zone": "b"})
    (folder / "requirements.txt").write_text("tinylib==2.0\n")
    code = leader.compile_sandbox(str(folder))
    leader.prepare_dependencies(str(folder))  # the host's own copy first: only the member's pip is timed
    with pytest.raises(HotReloadError, match="took longer"):
        leader.hot_reload("s", code, timeout=0.2)  # pip alone takes longer than that
    assert leader.call("s", "uses", "v") == "1.0" and leader.get_sandbox_info("s").modules == {"uses": 1}
    leader.hot_reload("s", code)  # installed on the member by now: this one goes through
    assert leader.call("s", "uses", "v") == "2.0"


def test_many_sandboxes_on_a_stopped_member_move_and_the_admin_stays_responsive(
    leader: Host, start_node: Callable[..., Node]
) -> None:
    """Nothing but pings goes to a lost member: sends to it would pile up and stall every send of the admin."""
    first, second = start_node(zone="x"), start_node(zone="x")
    seen, changed = events_of(leader)
    ids = [f"s{i}" for i in range(8)]
    for sandbox_id in ids:
        leader.create_sandbox(
            sandbox_id, "root:Root", sandbox_path=sample("counter"), requirements={"zone": "x"}, restart_elsewhere=True
        )
    on_first = [info.id for info in leader.list_sandboxes() if info.node == first.name]
    assert len(on_first) == 4  # placement spreads them: the fewest sandboxes first
    frozen = first.processes()
    for proc in frozen:
        proc.suspend()
    try:
        for sandbox_id in on_first:
            wait_for(
                seen, changed, lambda e, i=sandbox_id: e.kind == "lost" and e.sandbox_id == i, timeout=NODE_TIMEOUT + 10
            )
        started = time.monotonic()
        leader.list_sandboxes()
        assert time.monotonic() - started < 2  # answered at once, not stuck behind sends to the stopped member
        eventually(
            lambda: all(i.status == "running" and i.node == second.name for i in leader.list_sandboxes()), timeout=30
        )
        assert [leader.call(i, "counter", "inc") for i in ids] == [1] * len(ids)
        statuses = {n.name: n.status for n in leader.nodes()}
        assert statuses[first.name] == "lost" and statuses[second.name] == "up"
    finally:
        for proc in frozen:
            proc.resume()


def test_a_sandbox_created_on_a_stopped_member_never_runs_there_later(
    leader: Host, start_node: Callable[..., Node], tmp_path: Path
) -> None:
    """The creation waits on a stopped member, the member is lost, the create fails; resumed, the member
    may still run the queued creation, and that late root is told to end at once."""
    b = start_node(zone="b")
    frozen = b.processes()
    for proc in frozen:
        proc.suspend()
    try:
        with pytest.raises(SandboxStartError, match="lost while starting"):
            leader.create_sandbox(
                "s", "root:Root", sandbox_path=make_folder(tmp_path / "code"), requirements={"zone": "b"}
            )
    finally:
        for proc in frozen:
            proc.resume()
    eventually(lambda: {n.name: n.status for n in leader.nodes()}[b.name] == "up", timeout=NODE_TIMEOUT * 4 + 5)
    # Sandbox roots lead process groups of their own: none may be left on the member.
    eventually(lambda: not [p for p in b.processes() if _leads_group(p)], timeout=15)
    assert leader.list_sandboxes() == []


def _leads_group(proc: psutil.Process) -> bool:
    try:
        return os.getpgid(proc.pid) == proc.pid and proc.status() != psutil.STATUS_ZOMBIE
    except (OSError, psutil.Error):
        return False


def test_a_host_cut_off_past_node_timeout_finds_its_member_again(
    leader: Host, start_node: Callable[..., Node], tmp_path: Path
) -> None:
    """The host's processes stopped past node_timeout: the member's monitor ends the host's sandboxes there
    and exits; resumed, the host marks them lost, starts a new monitor, and the member takes sandboxes again."""
    b = start_node(zone="b")
    info = leader.create_sandbox(
        "s", "root:Root", sandbox_path=make_folder(tmp_path / "code"), requirements={"zone": "b"}
    )
    pids = [info.pid, *(c.pid for c in info.children)]
    frozen = leader._system.process_tree()
    for proc in frozen:
        proc.suspend()
    try:
        eventually(lambda: not any(b.runs(pid) for pid in pids), timeout=NODE_TIMEOUT * 2 + 5)
    finally:
        for proc in frozen:
            proc.resume()
    eventually(lambda: leader.get_sandbox_info("s").status == "lost", timeout=NODE_TIMEOUT * 3 + 5)
    eventually(lambda: {n.name: n.status for n in leader.nodes()}[b.name] == "up", timeout=NODE_TIMEOUT * 4 + 5)
    again = leader.create_sandbox(
        "t", "root:Root", sandbox_path=make_folder(tmp_path / "code2"), requirements={"zone": "b"}
    )
    assert again.node == b.name and leader.call("t", "c1", "inc") == 1
    assert {a.name for a in leader.resource_usage("t").actors} >= {"(root)", "c1"}


def test_a_killed_member_s_sandbox_restarts_elsewhere_from_the_current_code(
    leader: Host, start_node: Callable[..., Node], tmp_path: Path
) -> None:
    """A member killed: its sandbox is re-created on the other member from the current version, and while it
    moves nothing of it (node, pids, a "running" status) is said of the lost member."""
    first, second = start_node(zone="x"), start_node(zone="x")
    seen, changed = events_of(leader)
    info = leader.create_sandbox(
        "s",
        "root:Root",
        sandbox_path=make_folder(tmp_path / "code"),
        requirements={"zone": "x"},
        restart_elsewhere=True,
    )
    where, other = (first, second) if info.node == first.name else (second, first)
    leader.hot_reload_source("s", counter(tag="v2"), module="counter")
    where.kill()
    # Detected within node_timeout (plus a tick and scheduling slack), not Thespian's minutes.
    lost = wait_for(seen, changed, lambda e: e.kind == "lost" and e.sandbox_id == "s", timeout=NODE_TIMEOUT + 5)
    assert where.name in lost.reason and lost.details["restarting_on"] == other.name
    moving = leader.get_sandbox_info("s")  # while it starts there: nothing of it is said to be on the lost one
    assert moving.node == other.name and (moving.pid is None or other.runs(moving.pid))
    assert all(child.pid is None or other.runs(child.pid) for child in moving.children), moving
    # Until the new root reports, it is "starting"; "running" only once every child runs there.
    assert moving.status == "starting" or (
        moving.status == "running"
        and moving.children
        and all(child.status == "running" and other.runs(child.pid) for child in moving.children)
    ), moving
    assert leader.call("s", "c1", "tag", timeout=20) == "v2"  # the current version, on the other member
    now = leader.get_sandbox_info("s")
    assert now.status == "running" and now.node == other.name and other.runs(now.pid)
    assert now.modules["counter"] == 2
    assert {n.name: n.status for n in leader.nodes()}[where.name] == "lost"


def test_without_restart_elsewhere_a_killed_member_s_sandbox_is_lost(
    leader: Host, start_node: Callable[..., Node], tmp_path: Path
) -> None:
    b = start_node(zone="b")
    seen, changed = events_of(leader)
    leader.create_sandbox("s", "root:Root", sandbox_path=make_folder(tmp_path / "code"), requirements={"zone": "b"})
    b.kill()
    wait_for(seen, changed, lambda e: e.kind == "lost" and e.sandbox_id == "s", timeout=NODE_TIMEOUT + 5)
    info = leader.get_sandbox_info("s")
    assert info.status == "lost" and b.name in (info.reason or "")
    started = time.monotonic()
    with pytest.raises(ActorNotFoundError, match="lost"):
        leader.call("s", "c1", "inc", timeout=10)
    assert time.monotonic() - started < 5  # fails at once, not after the call's timeout (10 s)
    leader.destroy_sandbox("s")
    assert leader.list_sandboxes() == []


def test_a_member_that_stops_cleanly_loses_its_sandboxes_at_once(
    leader: Host, start_node: Callable[..., Node], tmp_path: Path
) -> None:
    b = start_node(zone="b")
    seen, changed = events_of(leader)
    leader.create_sandbox("s", "root:Root", sandbox_path=make_folder(tmp_path / "code"), requirements={"zone": "b"})
    b.stop()
    assert b.proc.returncode == 0
    lost = wait_for(seen, changed, lambda e: e.kind == "lost" and e.sandbox_id == "s", timeout=NODE_TIMEOUT + 5)
    assert "did not answer" not in lost.reason  # told by Thespian (it left, its root exited), not a timeout
    assert not b.processes() or all(not p.is_running() for p in b.processes())


def test_a_member_cut_off_for_a_while_comes_back_without_its_lost_sandboxes(
    leader: Host, start_node: Callable[..., Node], tmp_path: Path
) -> None:
    """A member stopped (SIGSTOP) past node_timeout is lost; resumed, it is up again and the lost sandbox is gone."""
    b = start_node(zone="b")
    seen, changed = events_of(leader)
    info = leader.create_sandbox(
        "s", "root:Root", sandbox_path=make_folder(tmp_path / "code"), requirements={"zone": "b"}
    )
    frozen = b.processes()
    for proc in frozen:
        proc.suspend()
    try:
        wait_for(seen, changed, lambda e: e.kind == "lost" and e.sandbox_id == "s", timeout=NODE_TIMEOUT + 5)
        assert {n.name: n.status for n in leader.nodes()}[b.name] == "lost"
    finally:
        for proc in frozen:
            proc.resume()
    eventually(lambda: {n.name: n.status for n in leader.nodes()}[b.name] == "up", timeout=10)
    eventually(lambda: not any(b.runs(pid) for pid in [info.pid, *(c.pid for c in info.children)]), timeout=10)
    again = leader.create_sandbox(
        "t", "root:Root", sandbox_path=make_folder(tmp_path / "code2"), requirements={"zone": "b"}
    )
    assert again.node == b.name and leader.call("t", "c1", "inc") == 1


def test_closing_the_host_leaves_members_as_they_were(
    leader: Host, start_node: Callable[..., Node], tmp_path: Path, state_dir: Path
) -> None:
    b = start_node(zone="b")
    baseline = {p.pid for p in b.processes()}
    leader.create_sandbox("s", "root:Root", sandbox_path=make_folder(tmp_path / "code"), requirements={"zone": "b"})
    assert len(b.processes()) > len(baseline)
    leader.close()
    # The sandbox and this host's monitor on the member are gone; the member itself runs on.
    eventually(lambda: {p.pid for p in b.processes()} <= baseline, timeout=10)
    assert b.proc.poll() is None


def test_a_root_refuses_code_that_does_not_match_its_checksum(host: Host, tmp_path: Path) -> None:
    from actors import _messages as m
    from actors.sandbox import SandboxActor
    from plugin_host import codeload

    sources = codeload.read_sandbox_folder(make_folder(tmp_path / "code")).as_wire()
    checksums = codeload.wire_checksums(sources)
    tampered = {**sources, "counter": (sources["counter"][0], sources["counter"][1] + "\nimport os\n", False)}
    principal = _wire.new_sandbox_principal("t")  # as the admin does: Thespian's admin signs for its key
    root = host.actor_system.createActor(
        SandboxActor, targetActorRequirements={_wire.KID_REQUIREMENT: principal.kid.hex()}
    )
    context = m.SandboxContext("t", root, 0.2, 1.0, 2.0)
    try:
        with _wire.signing_for(root, principal):  # it took its sandbox's key at fork: the host signs for it
            first = host.actor_system.ask(
                root, m.StartSandbox(context, "root:Root", tampered, None, {}, None, checksums, kid=principal.kid), 10
            )
        assert isinstance(first, m.SandboxStatus) and first.status == "starting" and first.pid  # its pid, first
        reply = host.actor_system.listen(10)
        assert isinstance(reply, m.SandboxStatus) and reply.status == "start_failed"
        assert isinstance(reply.error, CodeIntegrityError) and "counter" in str(reply.error)
    finally:
        with _wire.signing_for(root, principal):  # the root holds its own key only by now
            host.actor_system.tell(root, __import__("thespian.actors").actors.ActorExitRequest())
    with pytest.raises(CodeIntegrityError):
        codeload.verify_checksums(tampered, checksums)
    codeload.verify_checksums(sources, checksums)


def test_a_host_that_joins_another_leader_can_place_sandboxes_on_it(leader: Host, tmp_path: Path) -> None:
    """Two applications: the second host joins the first's convention and runs a sandbox on its system."""
    config = HostConfig(
        state_dir=tmp_path / "second",
        heartbeat_interval=0.2,
        hang_timeout=1.0,
        node_timeout=NODE_TIMEOUT,
        convention_leader=f"127.0.0.1:{leader.admin_port}",
        cookie_file=leader.config.credential_file,
    )  # the convention's credential
    with Host(config) as second:
        first = eventually(
            lambda: next((n for n in second.nodes() if n.capabilities.get("zone") == "a"), None), timeout=20
        )
        info = second.create_sandbox(
            "s", "root:Root", sandbox_path=make_folder(tmp_path / "code"), requirements={"zone": "a"}
        )
        assert info.node == first.name and second.call("s", "c1", "inc") == 1
        assert psutil.Process(info.pid).ppid() in {p.pid for p in leader._system.process_tree()}
        assert leader.list_sandboxes() == []  # the first host's own sandboxes are its business only


def test_every_socket_of_a_member_binds_its_address_only(
    leader: Host, start_node: Callable[..., Node], tmp_path: Path
) -> None:
    """A member started with ``--bind 127.0.0.4`` (not the default) has every socket (its admin, logger,
    monitor, the remote root and workers) on that address: 127.0.0.1 and 127.0.0.2 are refused."""
    b = start_node("--bind", "127.0.0.4", zone="b")
    leader.create_sandbox("s", "root:Root", sandbox_path=make_folder(tmp_path / "code"), requirements={"zone": "b"})
    assert leader.call("s", "c1", "inc") == 1
    ports: dict[int, str] = {}
    for proc in b.processes():
        for conn in proc.net_connections("inet"):
            if conn.status == psutil.CONN_LISTEN:
                ports[conn.laddr.port] = conn.laddr.ip
    assert len(ports) >= 6 and set(ports.values()) == {"127.0.0.4"}, ports  # admin, logger, monitor, root, 3+
    for port in ports:
        for elsewhere in ("127.0.0.1", "127.0.0.2"):
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((elsewhere, port), timeout=2).close()
        socket.create_connection(("127.0.0.4", port), timeout=2).close()
    assert leader.call("s", "c1", "inc") == 2


@pytest.mark.parametrize("capabilities", [{"plugin_host.node": "x"}, {"plugin_host.anything": 1}])
def test_reserved_capabilities_are_refused(capabilities: dict[str, Any], state_dir: Path) -> None:
    with pytest.raises(PluginHostError, match="reserved"):
        HostConfig(state_dir=state_dir, capabilities=capabilities)


def test_host_killed_without_close_remote_sandboxes_end_themselves(tmp_path: Path, state_dir: Path) -> None:
    """The host process dies (SIGKILL): its admin ends its own system, and the sandbox on the member ends itself."""
    script = tmp_path / "host_then_hang.py"
    script.write_text(
        textwrap.dedent(f"""
        import json, sys, threading
        sys.path[:0] = [{str(Path(__file__).parent)!r}, {str(Path(__file__).parent.parent)!r}]
        from plugin_host import Host, HostConfig
        from test_reload import make_folder
        from pathlib import Path
        host = Host(HostConfig(state_dir={str(state_dir)!r}, heartbeat_interval=0.2, node_timeout={NODE_TIMEOUT}))
        print(json.dumps({{"port": host.admin_port}}), flush=True)
        import time
        while not any(n.capabilities.get("zone") == "b" and n.status == "up" for n in host.nodes()):
            time.sleep(0.05)
        info = host.create_sandbox("s", "root:Root", sandbox_path=make_folder(Path({str(tmp_path / "code")!r})),
                                   requirements={{"zone": "b"}})
        print(json.dumps({{"created": [info.pid] + [c.pid for c in info.children]}}), flush=True)
        threading.Event().wait()
    """)
    )
    out = tmp_path / "host.out"
    with open(out, "wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, str(script)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ},
        )
    node = None
    try:
        port = eventually(lambda: _json_lines(out).get("port"), timeout=30)
        node = Node(tmp_path / "node", port, {"zone": "b"}, cookie=state_dir / "cookie")
        sandbox = eventually(lambda: _json_lines(out).get("created"), timeout=40)
        assert len(sandbox) == 4 and all(node.runs(pid) for pid in sandbox)
        proc.kill()
        proc.wait(5)
        eventually(lambda: not any(node.runs(pid) for pid in sandbox), timeout=NODE_TIMEOUT * 2 + 5)
        assert node.proc.poll() is None  # the member itself runs on
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        if node is not None:
            node.stop()


def _json_lines(path: Path) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            merged.update(json.loads(line))
    return merged
