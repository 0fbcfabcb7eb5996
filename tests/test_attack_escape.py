"""Attacks on containment (issue #15): processes a plugin starts to hide from its sandbox.

A `setsid -f` child or a double-forked one leaves the sandbox's process group, and its parent
exits: without a subreaper it re-parents to init, out of the sandbox's tree.  The sandbox root is a
child subreaper, so each stays in the tree: the monitor sees it and counts it against
``max_actors``, and ``destroy_sandbox`` and ``Host.close()`` end it.  Each escapee carries a marker
unique to its test on its command line; every test kills what carries it by pid in ``finally``, so
a failing test leaves nothing behind.
"""

from __future__ import annotations

import os
import queue
import time
import uuid
from pathlib import Path
from typing import Iterator

import attrs
import psutil
import pytest
from conftest import eventually, pid_alive, processes_naming

from plugin_host import Event, Host, HostConfig, ResourceLimits

ESCAPE = os.path.join(os.path.dirname(__file__), "plugins", "escape")


@pytest.fixture
def config(config: HostConfig) -> HostConfig:
    """The suite's fast settings, but patient with a worker busy starting processes on a loaded machine."""
    return attrs.evolve(config, hang_timeout=10.0)


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[str]:
    """A mark unique to the test on every escapee's command line; whatever carries it is killed at the end
    (a wanderer's pids also come from its trace file: one lives too briefly for a scan of every process)."""
    mark = f"ph-escapee-{uuid.uuid4().hex}"
    trace = tmp_path / "wander.trace"
    try:
        yield mark
    finally:
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < 0.2:  # a wanderer forks anew as it is killed: until none is left
            traced = trace.read_text().split()[-20:] if trace.exists() else []
            procs = processes_naming(mark) + [p for p in map(_process, traced) if p is not None]
            for proc in procs:
                try:
                    if proc.status() != psutil.STATUS_ZOMBIE and mark in " ".join(proc.cmdline()):  # not recycled
                        quiet_since = time.monotonic()
                        proc.kill()
                except psutil.Error:
                    pass
            time.sleep(0.005)


def _process(pid: str) -> psutil.Process | None:
    try:
        return psutil.Process(int(pid))
    except psutil.Error:
        return None


def escapees(mark: str) -> set[int]:
    """Pids of the live (not zombie) processes carrying ``mark``."""
    return {proc.pid for proc in processes_naming(mark)}


def events_of(host: Host) -> queue.Queue[Event]:
    events: queue.Queue[Event] = queue.Queue()
    host.subscribe(events.put)
    return events


def drain(events: queue.Queue[Event]) -> list[Event]:
    """The events received so far."""
    found = []
    while not events.empty():
        found.append(events.get())
    return found


def escape_twice(host: Host, sandbox_id: str, mark: str) -> set[int]:
    """Start a `setsid -f` child and a double-forked one; return their pids once both run."""
    host.call(sandbox_id, "escaper", ("setsid", mark))
    host.call(sandbox_id, "escaper", ("double", mark))
    pids = eventually(lambda: len(escapees(mark)) == 2 and escapees(mark))
    root = root_pid(host, sandbox_id)
    for pid in pids:  # they did escape: out of the sandbox's process group, into a session of their own
        assert os.getpgid(pid) != os.getpgid(root) and os.getsid(pid) != os.getsid(root)
    return set(pids)


def root_pid(host: Host, sandbox_id: str) -> int:
    """The pid of the sandbox's root, as resource_usage reports it."""
    return next(a.pid for a in host.resource_usage(sandbox_id).actors if a.name == "(root)" and a.pid)


def test_setsid_and_double_forked_children_are_seen_and_ended_by_destroy(config: HostConfig, marker: str) -> None:
    """A `setsid -f` child and a double-forked one stay in the sandbox's tree: resource_usage lists them
    (their memory counts in its total), and destroy_sandbox ends them before it returns."""
    with Host(config, monitor_interval=0.1) as host:
        host.create_sandbox("esc", "escaper:Root", sandbox_path=ESCAPE)
        pids = escape_twice(host, "esc", marker)
        root = root_pid(host, "esc")
        for pid in pids:
            assert psutil.Process(pid).ppid() == root  # re-parented to the root, the subreaper
        seen = eventually(lambda: {a.pid for a in host.resource_usage("esc").actors} >= pids)
        assert seen
        host.destroy_sandbox("esc")
        assert not escapees(marker)


def test_setsid_and_double_forked_children_are_ended_by_host_close(config: HostConfig, marker: str) -> None:
    """Host.close() leaves no process of a sandbox running, escapees included."""
    with Host(config) as host:
        host.create_sandbox("esc", "escaper:Root", sandbox_path=ESCAPE)
        escape_twice(host, "esc", marker)
    assert not escapees(marker)


@pytest.mark.parametrize("first, second", [("setsid", "double"), ("double", "setsid")])
def test_escapees_count_against_max_actors_and_each_is_reported_once(
    config: HostConfig, marker: str, first: str, second: str
) -> None:
    """An escapee counts against max_actors: one fits under max_actors=2 (worker + escapee), a second
    escape goes past it and the monitor ends the plugin's own processes, escapees included, until the
    tree fits again, with one limit_breached event per process killed: a killed one (a zombie until
    reaped) is never counted nor reported again."""
    with Host(config, monitor_interval=0.05) as host:
        events = events_of(host)
        host.create_sandbox("esc", "escaper:Root", sandbox_path=ESCAPE, limits=ResourceLimits(max_actors=2))
        host.call("esc", "escaper", (first, marker))
        eventually(lambda: escapees(marker))
        host.call("esc", "escaper", (second, marker))
        # Past the limit the monitor kills every process the plugin started that its round saw; one born
        # after that round (setsid's child as setsid is killed) may stay, since worker + it fit max_actors.
        eventually(lambda: len(escapees(marker)) <= 1)
        time.sleep(1.0)  # twenty monitor rounds: no event may come for a process already killed
        breaches = [e for e in drain(events) if e.kind == "limit_breached"]
        # each process the plugin started is killed at most once: setsid and its child, the double fork's three
        assert 1 <= len(breaches) <= 5, [str(e) for e in breaches]
        assert {e.details["limit"] for e in breaches} == {"max_actors"}
        assert isinstance(host.call("esc", "escaper", "pid"), int)


def test_a_killed_process_left_a_zombie_is_neither_counted_nor_reported_again(config: HostConfig, marker: str) -> None:
    """Children a plugin never reaps stay zombies below it once the monitor killed them past max_actors:
    exactly one limit_breached event per process killed, none for the zombies after (no event spam)."""
    with Host(config, monitor_interval=0.05) as host:
        events = events_of(host)
        host.create_sandbox("esc", "escaper:Root", sandbox_path=ESCAPE, limits=ResourceLimits(max_actors=2))
        pids = host.call("esc", "escaper", ("naive", marker, 3))
        eventually(lambda: not escapees(marker))
        worker = psutil.Process(host.call("esc", "escaper", "pid"))
        assert {p.pid for p in worker.children() if p.status() == psutil.STATUS_ZOMBIE} >= set(pids)
        time.sleep(1.0)  # twenty monitor rounds with the zombies still there
        everything = drain(events)
        breaches = [e for e in everything if e.kind == "limit_breached"]
        assert len(breaches) == 3, [str(e) for e in everything]
        assert {(e.actor, e.details["limit"]) for e in breaches} == {("escaper", "max_actors")}


def test_max_memory_mb_is_one_budget_for_the_whole_sandbox_its_largest_process_is_killed(
    config: HostConfig, marker: str
) -> None:
    """Two processes a plugin started, 40 and 30 MiB resident, each under max_memory_mb=56 but together over
    it: the monitor kills the larger (as the OOM killer would), says so once, and the rest fit."""
    with Host(config, monitor_interval=0.1) as host:
        events = events_of(host)
        host.create_sandbox("mem", "escaper:Root", sandbox_path=ESCAPE, limits=ResourceLimits(max_memory_mb=56))
        big, small = host.call("mem", "escaper", ("hogs", marker, [40, 30]))
        eventually(lambda: not pid_alive(big), timeout=15)
        assert pid_alive(small)
        breaches = [e for e in drain(events) if e.kind == "limit_breached"]
        assert len(breaches) == 1 and breaches[0].details["limit"] == "max_memory_mb"
        assert breaches[0].details["value"] > 56 and breaches[0].actor == "escaper"


def test_orphans_that_exit_under_the_root_are_reaped_and_the_tree_still_supervises(
    config: HostConfig, marker: str
) -> None:
    """The root reaps orphans that end under it (no zombie piles up), and only those: its own actors'
    exits still reach their supervisors (a killed worker is restarted)."""
    with Host(config) as host:
        host.create_sandbox("esc", "escaper:Root", sandbox_path=ESCAPE)
        host.call("esc", "escaper", ("double", marker, 0.2))
        root = psutil.Process(root_pid(host, "esc"))
        eventually(lambda: not escapees(marker))

        def zombies() -> list[psutil.Process]:
            return [p for p in root.children() if p.status() == psutil.STATUS_ZOMBIE]

        eventually(lambda: not zombies(), timeout=5)
        worker = host.call("esc", "escaper", "pid")
        psutil.Process(worker).kill()
        assert eventually(lambda: _answers(host) not in (None, worker))


def _answers(host: Host) -> int | None:
    try:
        return int(host.call("esc", "escaper", "pid", timeout=2))
    except Exception:  # noqa: BLE001 - restarting: not yet
        return None


def test_a_sandbox_destroyed_while_its_processes_fork_is_emptied(
    config: HostConfig, marker: str, tmp_path: Path
) -> None:
    """A plugin that forks without end (processes that fork and exit every few ms, each in a session of
    its own, and a thread starting more) is destroyed mid-fork: none of them runs once destroy_sandbox
    returns, and none is forked after (each writes its pid to a trace file: the file stops growing)."""
    trace = tmp_path / "wander.trace"
    with Host(config) as host:
        host.create_sandbox("esc", "escaper:Root", sandbox_path=ESCAPE)
        host.call("esc", "escaper", ("wander", marker, str(trace), 2))
        eventually(lambda: trace.exists() and len(trace.read_text().split()) > 20)  # they wander
        host.destroy_sandbox("esc")
        written = trace.read_text()
        assert not [pid for pid in map(int, written.split()) if pid_alive(pid)]
        time.sleep(0.3)  # thirty generations' time: one forked as the last one was killed would write
        assert trace.read_text() == written
