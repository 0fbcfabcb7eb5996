"""The correlation matcher both the host's calls and the actors' sibling calls wait with
(``plugin_host.lowlevel.Replies``): a waiter takes its own reply, a reply for another request still
waited for is kept for that waiter, any other is dropped, and the deadline ends the wait."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import attrs

from plugin_host import Host
from plugin_host.lowlevel import Replies


@attrs.frozen
class Reply:
    """A reply as the wire carries it: what it answers, by correlation id."""

    corr: str
    value: int = 0


def stream(*replies: Reply | None) -> tuple[Callable[[float], object | None], list[float]]:
    """An endpoint that yields ``replies`` in order, then nothing; and the waits it was asked for."""
    queue = list(replies)
    asked: list[float] = []

    def receive(seconds: float) -> object | None:
        asked.append(seconds)
        if queue:
            return queue.pop(0)
        time.sleep(min(seconds, 0.01))  # nothing came within the turn
        return None

    return receive, asked


def far() -> float:
    """A deadline no test reaches."""
    return time.monotonic() + 60


def test_a_matching_reply_is_returned_at_once() -> None:
    """The first reply carrying the waiter's corr ends the wait: the endpoint is asked once."""
    receive, asked = stream(Reply("a", 1))
    replies: Replies[None] = Replies()
    replies.expect("a", None)
    assert replies.await_reply("a", receive, far()) == Reply("a", 1)
    assert len(asked) == 1


def test_a_reply_for_another_waiter_is_kept_for_it() -> None:
    """A reply to another request in flight is not returned to this waiter but kept; its own waiter
    then gets it without receiving anything more."""
    receive, asked = stream(Reply("b", 2), Reply("a", 1))
    replies: Replies[None] = Replies()
    replies.expect("a", None)
    replies.expect("b", None)
    assert replies.await_reply("a", receive, far()) == Reply("a", 1)
    assert replies.await_reply("b", receive, far()) == Reply("b", 2)
    assert len(asked) == 2  # b's waiter found its reply kept: it did not receive


def test_a_late_reply_nobody_waits_for_is_dropped() -> None:
    """A reply whose request was given up (``forget``) or never made is dropped, not returned nor kept."""
    receive, _ = stream(Reply("old", 9), Reply("a", 1))
    replies: Replies[None] = Replies()
    replies.expect("old", None)
    replies.forget("old")  # its call timed out
    replies.expect("a", None)
    assert replies.await_reply("a", receive, far()) == Reply("a", 1)
    later, _ = stream()
    replies.expect("old", None)  # even a waiter for that corr again does not get the stale reply
    assert replies.await_reply("old", later, time.monotonic() + 0.05) is None


def test_forget_drops_a_reply_already_kept() -> None:
    """Giving up on a request also drops the reply kept for it."""
    receive, _ = stream(Reply("b", 2), Reply("a", 1))
    replies: Replies[None] = Replies()
    replies.expect("a", None)
    replies.expect("b", None)
    assert replies.await_reply("a", receive, far()) == Reply("a", 1)
    replies.forget("b")
    replies.expect("b", None)
    nothing, _ = stream()
    assert replies.await_reply("b", nothing, time.monotonic() + 0.05) is None


def test_the_deadline_ends_the_wait_with_none() -> None:
    """With no matching reply, the wait ends with ``None`` once the deadline passes (not before), and
    each receive is given only the time left."""
    receive, asked = stream(Reply("x"), None, Reply("y"))
    replies: Replies[None] = Replies()
    replies.expect("a", None)
    start = time.monotonic()
    assert replies.await_reply("a", receive, start + 0.2) is None
    assert 0.2 <= time.monotonic() - start < 5
    assert asked and all(0 < seconds <= 0.2 for seconds in asked)


def test_a_deadline_already_past_does_not_receive() -> None:
    """A wait whose deadline has passed returns ``None`` without asking the endpoint."""
    receive, asked = stream(Reply("a"))
    replies: Replies[None] = Replies()
    replies.expect("a", None)
    assert replies.await_reply("a", receive, time.monotonic() - 1) is None
    assert asked == []


def test_an_infinite_deadline_waits_until_the_reply() -> None:
    """``math.inf`` waits for ever: the endpoint is handed the infinite wait (its caller caps each turn)."""
    receive, asked = stream(None, Reply("a", 1))
    replies: Replies[None] = Replies()
    replies.expect("a", None)
    assert replies.await_reply("a", receive, math.inf) == Reply("a", 1)
    assert asked == [math.inf, math.inf]


def test_given_up_stops_the_wait_before_receiving() -> None:
    """``given_up`` (the host's "the target refused it") ends the wait with ``None`` before any receive,
    even when a reply is already kept for the waiter."""
    receive, asked = stream(Reply("b", 2), Reply("a", 1))
    replies: Replies[None] = Replies()
    replies.expect("a", None)
    replies.expect("b", None)
    assert replies.await_reply("a", receive, far()) == Reply("a", 1)
    assert replies.await_reply("b", receive, far(), given_up=lambda: True) is None
    assert len(asked) == 2


def test_a_first_reply_is_sorted_like_a_received_one() -> None:
    """A reply handed in with the send (``first``) is returned when it matches, and dropped when it is a late
    one, the wait then going on (the sibling call's ``ask`` then ``listen``)."""
    nothing, asked = stream()
    replies: Replies[None] = Replies()
    assert replies.await_reply("a", nothing, far(), first=Reply("a", 1)) == Reply("a", 1)
    assert asked == []
    receive, _ = stream(Reply("a", 2))
    assert replies.await_reply("a", receive, far(), first=Reply("stale", 9)) == Reply("a", 2)


def test_waiting_lists_the_requests_with_their_notes() -> None:
    """``waiting`` shows each request in flight with its requester's note (the host: the sandbox that may
    answer), until it is forgotten."""
    replies: Replies[str | None] = Replies()
    replies.expect("a", "sandbox-1")
    replies.expect("b", None)
    assert dict(replies.waiting) == {"a": "sandbox-1", "b": None}
    replies.forget("a")
    assert dict(replies.waiting) == {"b": None}


def test_a_sibling_call_drops_the_late_reply_of_one_that_timed_out(host: Host) -> None:
    """Inside an actor (``Plugin.call``), the reply to a call that timed out comes later to the same endpoint;
    the next call gets its own reply, not that late one."""
    host.create_sandbox("l", "late:Late", sandbox_path=str(Path(__file__).parent / "plugins" / "siblings"))
    timed_out, reply = host.call("l", "caller", ("late_then_echo", 0.6))
    assert timed_out is True
    assert reply == ("echo", "now")


def test_a_sibling_call_without_a_timeout_waits_for_its_reply(host: Host) -> None:
    """``Plugin.call(..., timeout=math.inf)`` inside an actor is answered (it raised ``OverflowError``: Thespian
    turns a timeout into a ``timedelta``)."""
    host.create_sandbox("l", "late:Late", sandbox_path=str(Path(__file__).parent / "plugins" / "siblings"))
    assert host.call("l", "caller", ("forever", "x")) == ("echo", "x")
