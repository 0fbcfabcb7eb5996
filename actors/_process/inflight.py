"""Which call a worker was running when it died: a tiny shared-memory slot per worker.

A worker killed mid-call (``os._exit``, a signal, a hang) sends no reply, and from the
caller's side that looks just like a message that never arrived.  Before forking a worker,
its supervisor maps a small anonymous shared page; the forked worker writes the correlation
id of each call there as it starts it, and the supervisor reads it after the death.  The
caller can then tell "died running my call" (never retried) from "died before it" (safe
to send again to the next incarnation).
"""

from __future__ import annotations

import mmap

__all__ = ["SLOT_SIZE", "new_slot", "take_slot", "write", "read"]

SLOT_SIZE = 128
_next: mmap.mmap | None = None


def new_slot() -> mmap.mmap:
    """Map a slot for the child about to be forked (it inherits it through ``take_slot``)."""
    global _next
    _next = mmap.mmap(-1, SLOT_SIZE)
    return _next


def take_slot() -> mmap.mmap | None:
    """In the forked child: the slot its parent mapped for it (once)."""
    global _next
    slot, _next = _next, None
    return slot


def write(slot: mmap.mmap | None, corr: str) -> None:
    """Record the call now running."""
    if slot is not None:
        slot[:SLOT_SIZE] = corr.encode("utf-8", "replace")[:SLOT_SIZE].ljust(SLOT_SIZE, b"\0")


def read(slot: mmap.mmap | None) -> str:
    """The call that was running last ("" when none or unknown)."""
    if slot is None:
        return ""
    return slot[:SLOT_SIZE].rstrip(b"\0").decode("utf-8", "replace")
