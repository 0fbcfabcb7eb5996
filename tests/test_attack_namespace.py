"""What a sandbox root inherits from the admin, and what its sandbox shares with the host and other sandboxes
(issue #15, containment).

A local sandbox root is forked from the admin: without care it (and every worker forked from it) holds
the admin's registry database, logs, listening sockets and pipes, whatever its isolation.  A sandbox run
as its own user gets a private ``/tmp``, ``/var/tmp``, ``/dev/shm`` and IPC namespace, so what it leaves
there dies with it instead of waiting for the next sandbox given the same (reused) uid, and it can import
the host's Python even where that lives under a ``0700`` home.
"""

from __future__ import annotations

import os
from pathlib import Path

import psutil
from test_isolation_user import PROBE

from plugin_host import Host

_SHARED = ("socket:[", "pipe:[")  # unique names (an anon_inode is not)


def descriptors(pid: int) -> dict[int, str]:
    """fd -> what it refers to, of a process the test may inspect (it runs as the host's user)."""
    found = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            found[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
    return found


def test_a_process_sandbox_holds_nothing_of_the_admins(host: Host) -> None:
    """Under the default ``isolation="process"``, a plugin's process (and its sandbox root) holds no descriptor
    of a file under the ``state_dir`` (the registry's database and its ``-wal``/``-shm``, the logs, the cookie)
    but its write-only standard streams, no listening socket but its own Thespian one, and no socket or pipe
    the admin holds too (the host's connections, other children's sentinels)."""
    info = host.create_sandbox("a", "probe:Probe", sandbox_path=PROBE)
    state_dir = str(Path(host.config.state_dir).resolve())
    held = host.call("a", "probe", ("descriptors", None))
    leaked = [(fd, target) for fd, target, readable in held if target.startswith(state_dir) and (fd > 2 or readable)]
    assert leaked == [], leaked
    assert len(host.call("a", "probe", ("listening", None))) == 1  # its own: none of the admin's or the host's
    admin = psutil.Process(info.pid).ppid()
    admins = {target for target in descriptors(admin).values() if target.startswith(_SHARED)}
    worker = host.call("a", "probe", "who")["pid"]
    for pid in (info.pid, worker):
        shared = sorted(set(descriptors(pid).values()) & admins)
        assert shared == [], (pid, shared)
        assert not [(fd, t) for fd, t in descriptors(pid).items() if t.startswith(state_dir) and fd > 2], pid
