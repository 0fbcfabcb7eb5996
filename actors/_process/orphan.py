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
from typing import Any

__all__ = ["OrphanWatch", "ORPHAN_CHECK"]

ORPHAN_CHECK = "plugin_host.orphan-check"
"""Payload of the wakeups that check the admin's pings."""

_SETTLE = 0.2
"""Seconds to let queued messages in after a check that came late (this process was busy)."""


class OrphanWatch:
    """Mixed into an actor; call :meth:`note_admin` on each ping and :meth:`orphaned` on each check wakeup."""

    wakeupAfter: Any
    _orphan_last = 0.0
    _orphan_timeout: float | None = None
    _orphan_due: float | None = None

    def note_admin(self, timeout: float) -> None:
        """The admin pinged: it lives; check again within ``timeout``."""
        self._orphan_last, self._orphan_timeout = time.monotonic(), timeout
        if self._orphan_due is None:
            self._arm(timeout / 2)

    def orphaned(self) -> bool:
        """On an :data:`ORPHAN_CHECK` wakeup: whether the admin has been silent too long."""
        due, self._orphan_due = self._orphan_due, None
        if self._orphan_timeout is None or due is None:
            return False
        now = time.monotonic()
        if now - due > _SETTLE:
            # This check itself came late: pings may be waiting behind it.  Read them first.
            self._arm(_SETTLE)
            return False
        if now - self._orphan_last > self._orphan_timeout:
            return True
        self._arm(self._orphan_timeout / 2)
        return False

    def _arm(self, seconds: float) -> None:
        self._orphan_due = time.monotonic() + seconds
        self.wakeupAfter(timedelta(seconds=seconds), payload=ORPHAN_CHECK)
