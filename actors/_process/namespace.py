"""A sandbox root's private mount and IPC namespace: entered once, before the root drops its capabilities.

The machinery is shared with the compile validator (:mod:`plugin_host._namespace`, through
:mod:`plugin_host.lowlevel`): what is made private, what is revealed and why are written there.  The root
enters the namespace (with its own IPC namespace for a sandbox run as its own user), seals the cgroup
mounts when the sandbox has a group, and, for a sandbox run as its own user, gets fresh temporaries and
POSIX queues and the folders it imports revealed.

A sandbox of the host's own uid (``isolation="process"``) keeps the host's ``/tmp`` and IPC: it runs
as the host's user, and a plugin may hand files to the host there.
"""

from __future__ import annotations

from plugin_host.lowlevel import namespace as _shared

__all__ = [
    "enter",
    "private_temporaries",
    "private_queues",
    "reveal",
    "hidden_folders",
    "import_folders",
    "TEMPORARIES",
]

TEMPORARIES = _shared.TEMPORARIES
"""The shared scratch places a sandbox run as its own user gets afresh (those others may write)."""
enter = _shared.enter
"""Into a mount (and IPC) namespace of this process's own, ``/`` private in it."""
private_temporaries = _shared.private_temporaries
"""Fresh ``tmpfs`` mounts on the temporaries, what the sandbox imports from below them bound back read-only."""
private_queues = _shared.private_queues
"""A fresh ``mqueue`` instance on ``/dev/mqueue`` where it exists."""
reveal = _shared.reveal
"""The folders a sandbox imports from made readable where a home its uid cannot pass holds them."""
hidden_folders = _shared.hidden_folders
"""Which of some folders a user of its own could not reach, by the folder that stops it."""
import_folders = _shared.import_folders
"""The folders a sandbox needs to import from: the interpreter's and the runtime's, not the application's."""
