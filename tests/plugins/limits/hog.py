"""A plugin that misuses resources on request."""

import os
import time

from actors import ChildSpec, Plugin, Supervisor


class Hog(Plugin):
    """alloc: +50 MiB kept in state; ("grow", n): +n MiB, every page touched (resident);
    unlimit: lift its own soft RLIMIT_AS to the hard limit (a no-op: they are equal); spin: burn CPU
    forever; sleep: wait; pid."""

    def init(self, args):
        return []

    def handle_call(self, request, state):
        if request == "alloc":
            state = state + [bytearray(50 * 2**20)]
            return len(state), state
        if isinstance(request, tuple) and request[0] == "grow":
            block = bytearray(request[1] * 2**20)
            block[::4096] = b"\x01" * len(
                range(0, len(block), 4096)
            )  # every page resident, whatever the allocator does
            return len(block), state + [block]
        if request == "unlimit":
            import resource

            _, hard = resource.getrlimit(resource.RLIMIT_AS)
            resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
            return resource.getrlimit(resource.RLIMIT_AS), state
        if request == "spin":
            while True:
                pass
        if request == "swallow":  # burns CPU and swallows the budget's error: must still be stopped
            while True:
                try:
                    while True:
                        pass
                except Exception:  # noqa: BLE001 - the point: a plugin that swallows the budget's error
                    pass
        if isinstance(request, tuple) and request[0] == "sleep":
            time.sleep(request[1])
            return "slept", state
        if request == "pid":
            return os.getpid(), state
        return None, state


class Root(Supervisor):
    max_restarts, max_seconds = 3, 60
    children = [ChildSpec("hog", Hog)]


class EagerHog(Hog):
    """Takes 128 MiB (resident) in ``init``, before any monitor round, once its RLIMIT_AS is lifted
    (from outside: the hard limit is out of a plugin's reach); gives up after 20 s."""

    def init(self, args):
        import resource

        deadline = time.monotonic() + 20
        while resource.getrlimit(resource.RLIMIT_AS)[1] != resource.RLIM_INFINITY and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.handle_call(("grow", 128), [])[1]


class EagerRoot(Supervisor):
    max_restarts, max_seconds = 3, 60
    children = [ChildSpec("hog", EagerHog)]


class Big(Supervisor):
    children = [ChildSpec(f"hog{i}", Hog) for i in range(5)]


class Forker(Plugin):
    """fork: starts processes of its own (sleeping children) and answers their pids."""

    def handle_call(self, request, state):
        import subprocess

        if request == "fork":
            children = [subprocess.Popen(["sleep", "60"]) for _ in range(3)]
            return [child.pid for child in children], state
        return os.getpid(), state


class ForkerRoot(Supervisor):
    children = [ChildSpec("forker", Forker)]


class Flooder(Plugin):
    """flood: casts n messages to "sink" from one callback."""

    def handle_call(self, request, state):
        kind, count = request
        for index in range(count):
            self.cast("sink", index)
        return count, state


class Sink(Plugin):
    """Counts the casts it got."""

    def init(self, args):
        return 0

    def handle_cast(self, message, state):
        return state + 1

    def handle_call(self, request, state):
        return state, state


class FloodRoot(Supervisor):
    max_restarts, max_seconds = 10, 10
    children = [ChildSpec("sink", Sink), ChildSpec("flooder", Flooder)]
