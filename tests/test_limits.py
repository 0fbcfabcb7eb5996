"""Enforced resource limits: each breach is stopped, reported, and the host keeps answering."""

from __future__ import annotations

import os
import queue
import resource
import threading
import time
from pathlib import Path

import psutil
import pytest
from conftest import eventually, pid_alive, processes_naming, sample

from actors.monitor import HISTORY
from plugin_host import Event, Host, HostConfig, ResourceLimits
from plugin_host.errors import LimitExceededError, OverloadedError, PluginError, SandboxStartError

LIMITS = os.path.join(os.path.dirname(__file__), "plugins", "limits")


def events_of(host: Host) -> queue.Queue[Event]:
    events: queue.Queue[Event] = queue.Queue()
    host.subscribe(events.put)
    return events


def wait_for(events: queue.Queue[Event], kind: str, actor: str = "", timeout: float = 30) -> Event:
    deadline = time.monotonic() + timeout
    while True:
        event = events.get(timeout=max(deadline - time.monotonic(), 0.001))
        if event.kind == kind and (not actor or event.actor == actor):
            return event


def test_a_memory_bomb_is_stopped_reported_and_ends_in_a_failed_sandbox(host: Host) -> None:
    """Past max_memory_mb the plugin gets MemoryError; the restart loop ends in 'failed', the host is fine."""
    events = events_of(host)
    host.create_sandbox("calm", "root:Root", sandbox_path=sample("counter"))
    host.create_sandbox("bomb", "hog:Root", sandbox_path=LIMITS, limits=ResourceLimits(max_memory_mb=120))
    for _ in range(4):
        while True:
            try:
                host.call("bomb", "hog", "alloc")
            except PluginError as exc:
                assert exc.type_name == "builtins.MemoryError"
                break
        if host.get_sandbox_info("bomb").status == "failed":
            break
    breach = wait_for(events, "limit_breached", "hog")
    assert breach.details["limit"] == "max_memory_mb"
    wait_for(events, "failed")
    assert host.get_sandbox_info("bomb").status == "failed"
    assert host.call("calm", "counter", "inc") == 1


def test_a_callback_past_its_cpu_budget_is_interrupted(host: Host) -> None:
    """call_cpu_budget_ms interrupts a spinning callback; the caller gets an error and the actor restarts."""
    events = events_of(host)
    host.create_sandbox("spin", "hog:Root", sandbox_path=LIMITS, limits=ResourceLimits(call_cpu_budget_ms=200))
    before = host.call("spin", "hog", "pid")
    with pytest.raises(PluginError) as caught:
        host.call("spin", "hog", "spin", timeout=10)
    assert caught.value.type_name == "plugin_host.errors.LimitExceededError"
    assert wait_for(events, "limit_breached", "hog").details["limit"] == "call_cpu_budget_ms"
    assert host.call("spin", "hog", "pid") != before


def test_a_callback_that_swallows_the_budget_error_is_killed(host: Host) -> None:
    """A plugin cannot catch its way past the CPU budget: the second alarm kills the process."""
    host.create_sandbox("spin", "hog:Root", sandbox_path=LIMITS, limits=ResourceLimits(call_cpu_budget_ms=100))
    before = host.call("spin", "hog", "pid")
    with pytest.raises(PluginError):
        host.call("spin", "hog", "swallow", timeout=10)
    assert host.call("spin", "hog", "pid") != before


def test_lifetime_cpu_past_max_cpu_seconds_ends_the_process(config: HostConfig) -> None:
    """max_cpu_seconds: the monitor (or RLIMIT_CPU as a backstop) ends a process that burned too much."""
    with Host(config, hang_timeout=30.0) as host:  # the heartbeat must not take it for hung first
        check_cpu_limit(host)


def check_cpu_limit(host: Host) -> None:
    events = events_of(host)
    host.create_sandbox("cpu", "hog:Root", sandbox_path=LIMITS, limits=ResourceLimits(max_cpu_seconds=1))
    before = host.call("cpu", "hog", "pid")
    with pytest.raises(PluginError):
        host.call("cpu", "hog", "spin", timeout=20)
    breach = wait_for(events, "limit_breached", "hog")
    assert breach.details["limit"] == "max_cpu_seconds"
    assert not pid_alive(before) or eventually(lambda: not pid_alive(before))


def test_a_tree_larger_than_max_actors_is_refused(host: Host) -> None:
    """max_actors caps the actors of a sandbox: a bigger tree does not start, Host.run past it is refused."""
    with pytest.raises(SandboxStartError, match="max_actors"):
        host.create_sandbox("big", "hog:Big", sandbox_path=LIMITS, limits=ResourceLimits(max_actors=4))
    host.create_sandbox("one", "hog:Root", sandbox_path=LIMITS, limits=ResourceLimits(max_actors=1))
    with pytest.raises(LimitExceededError, match="max_actors"):
        host.run("one", lambda: 1)


def test_resource_usage_counts_every_message_handled_before_it_was_asked(state_dir: Path) -> None:
    """``ActorUsage.messages`` counts the calls answered before the query, not as of the last heartbeat
    (30 s apart here); an actor busy in a long call keeps its last figure and does not hold the answer up."""
    with Host(HostConfig(state_dir=state_dir, heartbeat_interval=30, call_timeout=10)) as host:
        host.create_sandbox("c", "hog:Root", sandbox_path=LIMITS)
        for calls in (1, 2, 3):
            host.call("c", "hog", "pid")
            assert {a.name: a.messages for a in host.resource_usage("c").actors}["hog"] == calls
        busy = threading.Thread(target=host.call, args=("c", "hog", ("sleep", 4.0)))
        busy.start()
        try:
            eventually(lambda: host._caller.waiting.get(("c", "hog"), 0) == 1)
            started = time.monotonic()
            usage = host.resource_usage("c")
            assert time.monotonic() - started < 2.0
            assert {a.name: a.messages for a in usage.actors}["hog"] == 3  # the figure it last gave
        finally:
            busy.join()


def test_calls_past_max_mailbox_fail_fast(host: Host) -> None:
    """With max_mailbox=1, a second call while one waits raises OverloadedError at once."""
    host.create_sandbox("slow", "hog:Root", sandbox_path=LIMITS, limits=ResourceLimits(max_mailbox=1))
    host.call("slow", "hog", "pid")
    started = threading.Event()
    results: list[object] = []

    def first() -> None:
        started.set()
        results.append(host.call("slow", "hog", ("sleep", 0.4)))  # well under hang_timeout

    thread = threading.Thread(target=first)
    thread.start()
    started.wait()
    eventually(lambda: host._caller.waiting.get(("slow", "hog"), 0) == 1)
    events = events_of(host)
    with pytest.raises(OverloadedError):
        host.call("slow", "hog", "pid")
    assert wait_for(events, "limit_breached", "hog").details["limit"] == "max_mailbox"
    thread.join()
    assert results == ["slept"]
    assert isinstance(host.call("slow", "hog", "pid"), int)


def test_resource_usage_matches_the_processes(host: Host) -> None:
    """resource_usage reports each actor's pid, memory and CPU as /proc sees them, and its messages."""
    host.create_sandbox("c", "root:Root", sandbox_path=sample("counter"))
    for _ in range(5):
        host.call("c", "counter", "inc")
    pid = host.call("c", "counter", "pid")
    usage = host.resource_usage("c")
    actor = next(a for a in usage.actors if a.name == "counter")
    assert actor.pid == pid and actor.messages == 6
    rss = psutil.Process(pid).memory_info().rss
    assert abs(actor.rss_bytes - rss) < 0.2 * rss
    assert 0 <= actor.cpu_seconds < 60 and actor.restarts == 0
    proc = psutil.Process(pid)
    assert abs(actor.open_files - proc.num_fds()) <= 2 and actor.threads == proc.num_threads()
    assert usage.total_rss_bytes >= actor.rss_bytes
    assert {a.name for a in usage.actors} == {"(root)", "counter"}


def test_processes_a_plugin_forks_past_max_actors_are_ended(host: Host) -> None:
    """A plugin that starts processes of its own is held to max_actors by the monitor."""
    events = events_of(host)
    host.create_sandbox("fork", "hog:ForkerRoot", sandbox_path=LIMITS, limits=ResourceLimits(max_actors=2))
    strays = host.call("fork", "forker", "fork")
    breach = wait_for(events, "limit_breached")
    assert breach.details["limit"] == "max_actors"
    eventually(lambda: not any(pid_alive(pid) for pid in strays))
    assert isinstance(host.call("fork", "forker", "pid"), int)


def test_a_plugin_flooding_a_sibling_is_stopped_by_max_mailbox(host: Host) -> None:
    """Casts piling up past max_mailbox raise OverloadedError in the flooding plugin; the sink and host are fine."""
    events = events_of(host)
    host.create_sandbox("flood", "hog:FloodRoot", sandbox_path=LIMITS, limits=ResourceLimits(max_mailbox=50))
    with pytest.raises(PluginError) as caught:
        host.call("flood", "flooder", ("flood", 20000), timeout=30)
    assert caught.value.type_name == "plugin_host.errors.OverloadedError"
    breach = wait_for(events, "limit_breached", "flooder")
    assert breach.details["limit"] == "max_mailbox"
    assert isinstance(host.call("flood", "sink", "count"), int)


def lift_memory_limits(marker: str) -> int:
    """From outside (with CAP_SYS_RESOURCE, which sandbox processes never have), lift RLIMIT_AS of every
    process of the host whose command line names ``marker``; how many were lifted."""
    lifted = 0
    for proc in processes_naming(marker):
        try:
            if resource.prlimit(proc.pid, resource.RLIMIT_AS)[1] != resource.RLIM_INFINITY:
                resource.prlimit(proc.pid, resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
                lifted += 1
        except (OSError, ValueError):  # gone meanwhile
            continue
    return lifted


def _has_cap_sys_resource() -> bool:
    with open("/proc/self/status", encoding="ascii") as status:
        return any(line.startswith("CapEff:") and int(line.split()[1], 16) >> 24 & 1 for line in status)


NEEDS_CAP_SYS_RESOURCE = pytest.mark.skipif(
    not _has_cap_sys_resource(),
    reason="lifting a sandbox's hard RLIMIT_AS from outside (to reach the monitor) needs CAP_SYS_RESOURCE",
)


@NEEDS_CAP_SYS_RESOURCE
def test_the_monitor_kills_a_process_whose_resident_memory_grew_past_max_memory_mb(config: HostConfig) -> None:
    """max_memory_mb is also the monitor's: a process whose RLIMIT_AS is out of the way (lifted from
    outside, as a plugin no longer can) and grows its RSS past the limit is SIGKILLed by the monitor,
    which says so (limit, value, maximum), and restarted."""
    with Host(config, monitor_interval=0.1) as host:
        events = events_of(host)
        host.create_sandbox("rss", "hog:Root", sandbox_path=LIMITS, limits=ResourceLimits(max_memory_mb=64))
        pid = host.call("rss", "hog", "pid")
        assert lift_memory_limits(str(config.state_dir)) >= 1  # only the monitor can stop it now
        eventually(lambda: host.resource_usage("rss").history)  # sampled once: its start size is known
        try:
            assert host.call("rss", "hog", ("grow", 96)) == 96 * 2**20  # resident, and no MemoryError
        except PluginError as exc:  # the monitor may kill it before the answer leaves
            assert exc.type_name != "builtins.MemoryError"
        breach = crash = None
        deadline = time.monotonic() + 10
        while breach is None or crash is None:
            event = events.get(timeout=max(deadline - time.monotonic(), 0.01))
            if event.actor == "hog" and event.kind == "limit_breached":
                breach = event
            elif event.actor == "hog" and event.kind == "crashed":
                crash = event
        assert breach.details["limit"] == "max_memory_mb" and breach.details["maximum"] == 64
        assert 64 < breach.details["value"] < 64 + 96 and "max_memory_mb" in breach.reason
        assert "SIGKILL" in crash.reason
        assert eventually(lambda: not pid_alive(pid))
        assert host.call("rss", "hog", "pid") != pid


@NEEDS_CAP_SYS_RESOURCE
def test_memory_taken_before_the_monitors_first_round_counts_against_max_memory_mb(config: HostConfig) -> None:
    """The monitor measures growth from the process's start, not from its first sample: a plugin whose
    RLIMIT_AS is lifted (from outside) and takes 128 MiB in ``init`` (over a 64 MiB limit) is killed all the same."""
    with Host(config, monitor_interval=0.1, hang_timeout=30.0) as host:  # its init waits to be lifted
        events = events_of(host)
        creating = threading.Thread(
            target=host.create_sandbox,
            args=("eager", "hog:EagerRoot"),
            kwargs={"sandbox_path": LIMITS, "limits": ResourceLimits(max_memory_mb=64)},
        )
        creating.start()
        try:
            eventually(lambda: lift_memory_limits(str(config.state_dir)) >= 2)  # its root and its worker
            breach = wait_for(events, "limit_breached", "hog", timeout=10)
        finally:
            creating.join()
        assert breach.details["limit"] == "max_memory_mb" and breach.details["value"] > 64


def test_resource_usage_history_holds_the_monitors_recent_samples_oldest_first(config: HostConfig) -> None:
    """ResourceUsage.history: (time, total rss, total cpu) per monitor round, oldest first, following
    the processes (rss grows with the plugin's memory), and never longer than HISTORY samples."""
    with Host(config, monitor_interval=0.02) as host:
        started = time.time()
        host.create_sandbox("h", "hog:Root", sandbox_path=LIMITS)
        first = eventually(lambda: host.resource_usage("h").history)[0]
        host.call("h", "hog", ("grow", 64))
        grown = time.time()
        # a sample taken after the growth shows it, in bytes, next to the earlier ones
        history = eventually(
            lambda: [s for s in host.resource_usage("h").history if s[0] > grown] and host.resource_usage("h").history
        )
        later = next(s for s in history if s[0] > grown)
        assert later[1] - first[1] > 60 * 2**20
        times = [s[0] for s in history]
        assert times == sorted(times) and len(set(times)) == len(times)
        assert started <= times[0] and times[-1] <= time.time()
        assert all(rss > 0 and cpu >= 0 for _, rss, cpu in history)
        assert [s[2] for s in history] == sorted(s[2] for s in history)  # cpu time only grows: no restart here
        # bounded: after HISTORY more rounds the oldest samples are gone and the length stays HISTORY
        full = eventually(lambda: (h := host.resource_usage("h").history) and h[0][0] > later[0] and h, timeout=20)
        assert len(full) == HISTORY
        usage = host.resource_usage("h")
        assert abs(usage.history[-1][1] - usage.total_rss_bytes) < 0.2 * usage.total_rss_bytes
