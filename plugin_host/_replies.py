"""Matching replies to requests by correlation id, for every endpoint that waits for one.

An endpoint (an application thread's context, an actor process's call endpoint) receives the
replies to all of its requests in one stream, in any order, late ones included: a request that
timed out still gets its reply some day.  The one rule, used by the host's calls and the actors'
sibling calls alike: a waiter takes the reply carrying its own correlation id; a reply for another
request still waited for is kept for that waiter; any other reply answers a request given up and
is dropped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

__all__ = ["Replies"]

Note = TypeVar("Note")
"""What the requester remembers about a request in flight (the host: which sandbox may answer it)."""


def _never() -> bool:
    return False


class Replies(Generic[Note]):
    """The requests in flight at one endpoint, and the replies that came for them while nobody listened.

    Not thread-safe: one endpoint is used by one thread at a time.
    """

    def __init__(self) -> None:
        self._waiting: dict[str, Note] = {}
        self._kept: dict[str, object] = {}

    @property
    def waiting(self) -> Mapping[str, Note]:
        """The requests waited for: correlation id -> the requester's note about it."""
        return self._waiting

    def expect(self, corr: str, note: Note) -> None:
        """Wait for the reply carrying ``corr`` from now on (it is kept if it comes while another waits)."""
        self._waiting[corr] = note

    def forget(self, corr: str) -> None:
        """Give up on ``corr``: a reply kept for it, and any arriving later, are dropped."""
        self._waiting.pop(corr, None)
        self._kept.pop(corr, None)

    def file(self, reply: object) -> None:
        """Keep ``reply`` for its waiter, or drop it when nobody waits for it (it answers a request given up)."""
        corr = _corr_of(reply)
        if corr is not None and corr in self._waiting:
            self._kept[corr] = reply

    def await_reply(
        self,
        corr: str,
        receive: Callable[[float], object | None],
        deadline: float,
        given_up: Callable[[], bool] = _never,
        first: object | None = None,
    ) -> object | None:
        """The reply carrying ``corr``, or ``None`` once ``deadline`` (``time.monotonic()``) passes or ``given_up()``.

        Args:
            receive: the endpoint's next reply within the seconds given, or ``None`` (nothing came, or
                what came is not for this endpoint's requests); any reply for another request is filed.
            given_up: asked before every wait: ``True`` stops waiting (the request cannot be answered).
            first: a reply already received (with the request's own send), sorted before waiting for more.
        """
        reply = first
        while True:
            if reply is not None:
                if _corr_of(reply) == corr:
                    return reply
                self.file(reply)
            if given_up():
                return None
            if corr in self._kept:
                return self._kept.pop(corr)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            reply = receive(left)


def _corr_of(reply: object) -> str | None:
    corr = getattr(reply, "corr", None)
    return corr if isinstance(corr, str) else None
