"""Blocking request/reply from inside an actor (``Plugin.call``), like ``gen_server:call``.

Thespian has no selective receive inside an actor, so the call goes out through a second
endpoint of this process: a clone of the actor's own transport, the mechanism Thespian's
``ActorSystem.private()`` uses.  It is made once per process and never shut down (shutting an
``ActorSystem`` down from inside an actor would stop the whole system).  While it waits,
the actor handles no other message; two actors calling each other wait out the timeout.
"""

from __future__ import annotations

import time
from typing import Any

from thespian.system.systemBase import BaseContext

from plugin_host.lowlevel import Replies

__all__ = ["blocking_call"]

_context: Any = None
_TURN = 3600.0
"""The longest one wait on the endpoint: Thespian makes a timeout a ``timedelta``, which infinity overflows."""


def _endpoint(actor: Any) -> Any:
    global _context
    if _context is None:
        ref = actor._myRef  # Thespian internals: the actor's manager and its transport
        _context = BaseContext(ref._adminAddr, ref.transport)
    return _context


def endpoint_address(actor: Any) -> Any:
    """The address replies to this process's blocking calls go to."""
    return _endpoint(actor).transport.myAddress


def blocking_call(actor: Any, address: Any, message: Any, timeout: float, corr: str) -> Any:
    """Send ``message`` to ``address`` and wait for the reply carrying ``corr``.

    Returns:
        The reply, or ``None`` when nothing matching arrived within ``timeout`` (or the
        target refused the message because it no longer exists).
    """
    ctx = _endpoint(actor)
    started = time.monotonic()
    first = ctx.ask(address, message, min(timeout, _TURN))
    if first is None and (timeout <= _TURN or time.monotonic() - started < _TURN):
        # No reply in time, or the target refused the message: ask answers None to both (and to a turn of
        # its transport that brought nothing, so a call longer than a turn may end early: never late).
        return None
    # The actor waits for one call at a time: a reply to any other is late (its call timed out), dropped.
    replies: Replies[None] = Replies()
    return replies.await_reply(corr, lambda seconds: ctx.listen(min(seconds, _TURN)), started + timeout, first=first)
