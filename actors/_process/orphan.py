"""A host's monitor on another system ends that system's sandboxes when the host falls silent.

The admin pings its monitor on each member of the convention
(:class:`~actors._messages.NodePing`).  If the host dies, or the network between them breaks
for longer than ``node_timeout``, nothing on that member would ever stop the host's
sandboxes there: the monitor does (it knows their process groups), then ends itself.  So a
lost sandbox never keeps running on its own, and, with ``restart_elsewhere``, never runs
twice for long.  The monitor is the one to judge because it only ever runs short handlers: a
sandbox root may be busy for a long time (a slow import) without its host being gone.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Callable

__all__ = ["OrphanWatch", "ORPHAN_CHECK"]

ORPHAN_CHECK = "plugin_host.orphan-check"
"""Payload of the wakeups that check the admin's pings."""

_SETTLE = 0.2
"""Seconds to let queued messages in after a check that came late (this process was busy)."""


class OrphanWatch:
    """Whether the admin has fallen silent: call :meth:`note_admin` on each ping and :meth:`orphaned` on each
    :data:`ORPHAN_CHECK` wakeup.

    Args:
        wakeup_after: the actor's ``wakeupAfter`` (a period and a payload): how the checks are scheduled.
    """

    def __init__(self, wakeup_after: Callable[[timedelta, object], None]) -> None:
        self._wakeup_after = wakeup_after
        self._last = 0.0
        self.timeout: float | None = None
        """The admin's ping timeout (None until its first ping)."""
        self._due: float | None = None

    def note_admin(self, timeout: float) -> None:
        """The admin pinged: it lives; check again within ``timeout``."""
        self._last, self.timeout = time.monotonic(), timeout
        if self._due is None:
            self._arm(timeout / 2)

    def orphaned(self) -> bool:
        """On an :data:`ORPHAN_CHECK` wakeup: whether the admin has been silent too long."""
        due, self._due = self._due, None
        if self.timeout is None or due is None:
            return False
        now = time.monotonic()
        if now - due > _SETTLE:
            # This check itself came late: pings may be waiting behind it.  Read them first.
            self._arm(_SETTLE)
            return False
        if now - self._last > self.timeout:
            return True
        self._arm(self.timeout / 2)
        return False

    def _arm(self, seconds: float) -> None:
        self._due = time.monotonic() + seconds
        self._wakeup_after(timedelta(seconds=seconds), ORPHAN_CHECK)
