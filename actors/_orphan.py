"""Actors running on another system than their host's admin end themselves when it falls silent.

The admin pings its sandbox roots and monitors on other systems every tick
(:class:`~actors._messages.NodePing`).  If the host dies, or the network between them
breaks for longer than ``node_timeout``, nothing on that system would ever stop them: this
watch does, so a lost sandbox is never left running (and, with ``restart_elsewhere``,
never runs twice for long).
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

__all__ = ["OrphanWatch", "ORPHAN_CHECK"]

ORPHAN_CHECK = "plugin_host.orphan-check"
"""Payload of the wakeups that check the admin's pings."""


class OrphanWatch:
    """Mixed into an actor; call :meth:`note_admin` on each ping and :meth:`orphaned` on each check wakeup."""

    wakeupAfter: Any
    _orphan_last = 0.0
    _orphan_timeout: float | None = None
    _orphan_armed = False

    def note_admin(self, timeout: float) -> None:
        """The admin pinged: it lives; check again within ``timeout``."""
        self._orphan_last, self._orphan_timeout = time.monotonic(), timeout
        self._arm()

    def orphaned(self) -> bool:
        """On an :data:`ORPHAN_CHECK` wakeup: whether the admin has been silent too long."""
        self._orphan_armed = False
        if self._orphan_timeout is None:
            return False
        if time.monotonic() - self._orphan_last > self._orphan_timeout:
            return True
        self._arm()
        return False

    def _arm(self) -> None:
        if not self._orphan_armed and self._orphan_timeout is not None:
            self._orphan_armed = True
            self.wakeupAfter(timedelta(seconds=self._orphan_timeout / 2), payload=ORPHAN_CHECK)
