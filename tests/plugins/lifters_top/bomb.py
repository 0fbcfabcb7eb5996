"""Module top-level code that lifts RLIMIT_AS and allocates 256 MiB: it runs in the sandbox root."""

import resource

from actors import ChildSpec, Plugin, Supervisor

try:
    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
except (ValueError, OSError):
    _, _hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (_hard, _hard))
HOARD = bytearray(256 * 2**20)
HOARD[:: 2**20] = b"\x01" * len(range(0, len(HOARD), 2**20))


class Idle(Plugin):
    """Never reached when the root's limit holds."""


class Root(Supervisor):
    children = [ChildSpec("idle", Idle)]
