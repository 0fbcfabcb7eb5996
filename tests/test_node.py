"""``plugin-host node``: a member system that joins a convention, stops cleanly, and dies with its command.

The node runs as a real subprocess (output to files: Thespian's daemons inherit them); its
state_dir is under the test's tmp_path, so the leak guard sees any process it leaves.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import attrs
import psutil
import pytest
from conftest import ROOT, eventually, processes_naming, terminate
from thespian.actors import Actor, NoCompatibleSystemForActor

from plugin_host import Host, HostConfig
from plugin_host._client.system import free_port
from plugin_host.config import NODE_CAPABILITY, PYTHON_CAPABILITY

TESTS = Path(__file__).resolve().parent


class NodeProbe(Actor):
    """Answers ``"pid"`` with its process id; runs only where every requirement equals a capability.

    Both systems import it by name: the leader's admin to check the requirements (this
    module is on the test's ``sys.path``), the node to run it (``PYTHONPATH`` names ``tests``).
    """

    @staticmethod
    def actorSystemCapabilityCheck(capabilities: dict[str, Any], requirements: dict[str, Any]) -> bool:
        return all(capabilities.get(key) == value for key, value in (requirements or {}).items())

    def receiveMessage(self, message: Any, sender: Any) -> None:
        if message == "pid":
            self.send(sender, os.getpid())


class Node:
    """A running ``plugin-host node`` command and what its startup line says."""

    def __init__(self, proc: subprocess.Popen[bytes], out: Path, err: Path) -> None:
        self.proc, self.out, self.err = proc, out, err
        self.line = ""
        self.tree: list[psutil.Process] = []

    def wait_line(self, timeout: float = 30.0) -> str:
        """The startup line (waits for it; fails if the command exits first)."""

        def printed() -> str:
            text = self.out.read_text()
            if "\n" not in text:
                assert self.proc.poll() is None, f"node exited with {self.proc.returncode}: {self.err.read_text()}"
            return text.partition("\n")[0]

        self.line = eventually(printed, timeout=timeout)
        return self.line

    def info(self) -> dict[str, Any]:
        """The ``--json`` startup line, parsed; records the system's process tree for the cleanup."""
        info: dict[str, Any] = json.loads(self.wait_line())
        self.tree = system_tree(info["system_pid"])
        return info


def system_tree(system_pid: int) -> list[psutil.Process]:
    """The Thespian admin ``system_pid`` and every process below it, as of now."""
    root = psutil.Process(system_pid)
    return [root, *root.children(recursive=True)]


def node_command(tmp_path: Path, leader: str, *extra: str) -> list[str]:
    """The command line of a node keeping its state (and logs) under ``tmp_path``."""
    return [
        sys.executable,
        "-m",
        "plugin_host.cli",
        "node",
        "--leader",
        leader,
        "--state-dir",
        str(tmp_path / "node"),
        *extra,
    ]


def node_env() -> dict[str, str]:
    """The environment of a node: ``tests`` importable there too, for :class:`NodeProbe`."""
    paths = [str(TESTS), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


@pytest.fixture
def start_node(tmp_path: Path, config: HostConfig) -> Iterator[Callable[..., Node]]:
    """Start ``plugin-host node`` subprocesses (with the hosts' credential, unless one is given); each (and its
    recorded system) is ended after the test."""
    started: list[Node] = []

    def start(leader: str, *extra: str) -> Node:
        out, err = tmp_path / f"node{len(started)}.out", tmp_path / f"node{len(started)}.err"
        if "--cookie-file" not in extra:
            extra = (*extra, "--cookie-file", str(config.credential_file))
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            proc = subprocess.Popen(
                node_command(tmp_path, leader, *extra),
                cwd=ROOT,
                env=node_env(),
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            )
        started.append(Node(proc, out, err))
        return started[-1]

    yield start
    for node in started:
        try:
            terminate(node.proc)
        finally:
            for proc in node.tree:  # only the pids recorded from this node's own startup line
                try:
                    if proc.is_running():  # compares the create time: never a recycled pid
                        proc.kill()
                except psutil.Error:
                    pass


def leader_of(host: Host) -> str:
    """``host:port`` of a host's actor system."""
    return f"{host.config.bind_address}:{host.admin_port}"


def place_probe(system: Any, requirements: dict[str, Any]) -> Any:
    """A :class:`NodeProbe` created from ``system`` where ``requirements`` are met; ``None`` if no system meets them."""
    try:
        return system.createActor(NodeProbe, targetActorRequirements=requirements)
    except NoCompatibleSystemForActor:
        return None


def alive(procs: list[psutil.Process]) -> list[int]:
    """The pids of ``procs`` still running (a zombie counts as gone: nothing runs in it)."""
    return [p.pid for p in procs if _running(p)]


def _running(proc: psutil.Process) -> bool:
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def test_node_joins_the_convention_and_runs_actors_placed_on_it(host: Host, start_node: Callable[..., Node]) -> None:
    """The leader places an actor by the node's ``plugin_host.node`` capability; it runs in the node's tree."""
    node = start_node(leader_of(host), "--capability", "zone=b", "--capability", "slots=4", "--json")
    info = node.info()
    assert info["leader"] == leader_of(host)
    assert info["capabilities"] == {"zone": "b", "slots": 4}
    assert info["node"] == f"127.0.0.1:{info['port']}"
    assert info["pid"] == node.proc.pid

    system = host.actor_system
    # The startup line comes after the leader recorded the node; the retry is only a safety net.
    probe = eventually(lambda: place_probe(system, {NODE_CAPABILITY: info["node"]}), timeout=10.0, interval=0.05)
    pid = system.ask(probe, "pid", 10)
    assert isinstance(pid, int), pid
    assert pid in {p.pid for p in system_tree(info["system_pid"])}
    assert pid not in {p.pid for p in host._system.process_tree()}
    # The user's capabilities and the reserved ones are offered; a requirement nobody meets is refused.
    both = {"zone": "b", "slots": 4, PYTHON_CAPABILITY: "%d.%d" % sys.version_info[:2]}
    assert system.ask(system.createActor(NodeProbe, targetActorRequirements=both), "pid", 10) in {
        p.pid for p in system_tree(info["system_pid"])
    }
    with pytest.raises(NoCompatibleSystemForActor):
        system.createActor(NodeProbe, targetActorRequirements={"zone": "a"})


def test_node_rejoins_a_restarted_leader_within_seconds(config: HostConfig, start_node: Callable[..., Node]) -> None:
    """A leader restarted on the same port learns of the node again without restarting the node.

    Thespian's defaults would take 3 min 22 s (CONVENTION_RESTART_PERIOD); the launcher sets 5 s.
    """
    config = attrs.evolve(config, admin_port=free_port(config.bind_address))
    leader = f"{config.bind_address}:{config.admin_port}"
    with Host(config):
        node = start_node(leader, "--json")
        info = node.info()
    with Host(config) as restarted:
        system = restarted.actor_system
        probe = eventually(lambda: place_probe(system, {NODE_CAPABILITY: info["node"]}), timeout=12.0, interval=0.1)
        assert system.ask(probe, "pid", 10) in {p.pid for p in system_tree(info["system_pid"])}
    assert node.proc.poll() is None  # the node outlived both leaders


def test_sigterm_stops_the_node_and_every_process_of_its_system(host: Host, start_node: Callable[..., Node]) -> None:
    """SIGTERM: exit code 0 within seconds, and the admin, logger and node actor are all gone."""
    node = start_node(leader_of(host), "--json")
    info = node.info()
    assert len(node.tree) >= 3, node.tree  # the admin, its logger, the node actor
    assert all(os.getpgid(p.pid) == info["pgid"] for p in node.tree)
    node.proc.send_signal(signal.SIGTERM)
    assert node.proc.wait(10) == 0, node.err.read_text()
    assert alive(node.tree) == []
    assert node.err.read_text() == ""


def test_a_killed_node_command_takes_its_system_down(host: Host, start_node: Callable[..., Node]) -> None:
    """SIGKILL of the command: the node actor's watchdog ends every process of the system."""
    node = start_node(leader_of(host), "--json")
    node.info()
    node.proc.kill()  # not reaped yet: a zombie command must count as dead too
    eventually(lambda: alive(node.tree) == [], timeout=5.0)
    assert node.proc.wait(5) == -signal.SIGKILL


def test_human_startup_line(host: Host, start_node: Callable[..., Node]) -> None:
    """Without ``--json``: one line naming the node, the leader and the capabilities."""
    node = start_node(leader_of(host), "--capability", "zone=b", "--capability", "gpu=true")
    line = node.wait_line()
    assert re.fullmatch(
        rf"node 127\.0\.0\.1:\d+ joined the convention of {re.escape(leader_of(host))} "
        r"\(capabilities: zone=b, gpu=true\); Ctrl-C or SIGTERM stops it",
        line,
    ), line
    node.proc.send_signal(signal.SIGINT)
    assert node.proc.wait(10) == 0, node.err.read_text()


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--capability", "nokey"], 2, "expected KEY=VALUE"),
        (["--capability", "=x"], 2, "expected KEY=VALUE"),
        (["--capability", "plugin_host.node=x"], 1, "error: capabilities ['plugin_host.node'] are reserved"),
    ],
)
def test_bad_options_start_nothing(tmp_path: Path, extra: list[str], code: int, message: str) -> None:
    """A usage error exits 2, a reserved capability name exits 1 with one ``error:`` line; no process starts."""
    out, err = tmp_path / "out", tmp_path / "err"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        done = subprocess.run(
            node_command(tmp_path, "127.0.0.1:9", *extra),
            cwd=ROOT,
            env=node_env(),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            timeout=60,
        )
    assert done.returncode == code, err.read_text()
    assert message in err.read_text()
    assert out.read_text() == ""
    assert not (tmp_path / "node").exists()
    assert processes_naming(str(tmp_path)) == []


def test_no_leader_listening_fails_at_once(tmp_path: Path) -> None:
    """Nothing on the leader's port: one ``error:`` line and exit 1, before any process starts."""
    leader = f"127.0.0.1:{free_port('127.0.0.1')}"
    err = tmp_path / "err"
    with open(tmp_path / "out", "wb") as stdout, open(err, "wb") as stderr:
        done = subprocess.run(
            node_command(tmp_path, leader),
            cwd=ROOT,
            env=node_env(),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            timeout=60,
        )
    assert done.returncode == 1
    assert err.read_text().strip() == f"error: no convention leader listens on {leader}"
    assert not (tmp_path / "node").exists()


def test_a_node_with_another_credential_is_refused_and_named_in_the_hosts_log(host: Host, tmp_path: Path) -> None:
    """A member whose cookie is not the leader's: one ``error:`` line within seconds, exit 1, nothing left
    running; the leader's log names the refused peer's address."""
    err = tmp_path / "err"
    with open(tmp_path / "out", "wb") as stdout, open(err, "wb") as stderr:
        done = subprocess.run(
            node_command(tmp_path, leader_of(host)),
            cwd=ROOT,
            env=node_env(),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            timeout=60,
        )
    assert done.returncode == 1
    assert err.read_text().startswith(
        f"error: the convention leader {leader_of(host)} refused this node's credential {tmp_path / 'node' / 'cookie'}"
    )
    assert processes_naming(str(tmp_path / "node")) == []
    log = Path(host.config.state_dir) / "logs" / f"actors-{host.admin_port}.log"
    line = eventually(
        lambda: next(
            (
                text
                for text in log.read_text().splitlines()
                if "unauthenticated frame(s) dropped, from 127.0.0.1:" in text
            ),
            None,
        )
    )
    assert "wrong tag" in line
    assert [n.name for n in host.nodes()] == [leader_of(host)]
