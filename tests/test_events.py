"""Host.subscribe: sandbox events reach subscribers, in order."""

from __future__ import annotations

import os
import queue
import signal

import pytest
from conftest import sample

from plugin_host import Event, Host
from plugin_host.errors import PluginError


def next_kinds(events: queue.Queue[Event], count: int) -> list[tuple[str, str]]:
    return [(e.kind, e.actor) for e in (events.get(timeout=30) for _ in range(count))]


def test_subscribers_see_the_life_of_a_sandbox_in_order(host: Host) -> None:
    """started, crashed, restarted, reloaded, rolled_back and stopped, each once, in order."""
    events: queue.Queue[Event] = queue.Queue()
    host.subscribe(events.put)
    host.create_sandbox("c", "root:Root", sandbox_path=sample("counter"))
    assert next_kinds(events, 1) == [("started", "")]
    with pytest.raises(PluginError):
        host.call("c", "counter", "boom")
    assert next_kinds(events, 2) == [("crashed", "counter"), ("restarted", "counter")]
    source = open(sample("counter") + "/counter.py").read().replace("+ 1", "+ 2")
    host.hot_reload_source("c", source, module="counter")
    reloaded = events.get(timeout=30)
    assert (reloaded.kind, reloaded.details["module"], reloaded.details["new_version"]) == ("reloaded", "counter", 2)
    host.rollback_module("c", "counter", 1)
    assert events.get(timeout=30).kind == "rolled_back"
    host.destroy_sandbox("c")
    stopped = events.get(timeout=30)
    assert (stopped.kind, stopped.sandbox_id) == ("stopped", "c")
    assert stopped.time > 0


def test_unsubscribed_callbacks_hear_nothing_more_and_a_raising_one_harms_no_other(host: Host) -> None:
    """The handle unsubscribes; an exception in one callback does not stop the others."""
    heard: queue.Queue[Event] = queue.Queue()
    silenced: list[Event] = []

    def broken(event: Event) -> None:
        raise RuntimeError("subscriber bug")

    host.subscribe(broken)
    unsubscribe = host.subscribe(silenced.append)
    unsubscribe()
    host.subscribe(heard.put)
    host.create_sandbox("c", "root:Root", sandbox_path=sample("counter"))
    assert heard.get(timeout=30).kind == "started"
    assert silenced == []


def test_a_failed_sandbox_is_an_event(host: Host) -> None:
    """Past its restart intensity, the sandbox's failure is announced with the reason."""
    events: queue.Queue[Event] = queue.Queue()
    host.subscribe(events.put)
    host.create_sandbox("f", "root:Fragile", sandbox_path=sample("crashy"))
    while True:
        try:
            host.call("f", "crashy", "raise")
        except PluginError:
            pass
        except LookupError:
            break
    while (event := events.get(timeout=30)).kind != "failed":
        pass
    assert "max restart intensity" in event.reason


def crash_reason(events: queue.Queue[Event], actor: str) -> str:
    """The reason of the next ``crashed`` event of ``actor``."""
    while True:
        event = events.get(timeout=30)
        if event.kind == "crashed" and event.actor == actor:
            return event.reason


def test_a_crashed_event_names_the_cause(host: Host) -> None:
    """A crash's reason is the exception (type and message), the exit code, or the signal that ended it
    (SIGTERM too, which Thespian would otherwise turn into a quiet exit with no reason)."""
    events: queue.Queue[Event] = queue.Queue()
    host.subscribe(events.put)
    host.create_sandbox("c", "root:Root", sandbox_path=sample("crashy"))
    with pytest.raises(PluginError):
        host.call("c", "crashy", "raise")
    reason = crash_reason(events, "crashy")
    assert "RuntimeError" in reason and "crashy was asked to raise" in reason
    with pytest.raises(PluginError):
        host.call("c", "crashy", "exit")
    assert "exited with code 3" in crash_reason(events, "crashy")
    with pytest.raises(PluginError):
        host.call("c", "crashy", "segfault")
    assert "SIGSEGV" in crash_reason(events, "crashy")
    for signum in (signal.SIGKILL, signal.SIGTERM):  # from outside: the OOM killer, an operator
        os.kill(host.call("c", "crashy", "pid"), signum)
        assert signum.name in crash_reason(events, "crashy")
