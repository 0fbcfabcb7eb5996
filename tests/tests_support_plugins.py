"""Importable plugin classes for tests that create sandboxes without a folder."""

from actors import ChildSpec, Plugin, Supervisor


class Doubler(Plugin):
    """Multiplies requests by its factor (2 unless ``args`` says otherwise)."""

    def init(self, args):
        return (args or {}).get("factor", 2)

    def handle_call(self, request, state):
        return request * state, state


class DoublerRoot(Supervisor):
    """One Doubler named "doubler"."""

    children = [ChildSpec("doubler", Doubler)]


class Slow(Plugin):
    """Sleeps as long as asked (seconds), then answers the same number."""

    def init(self, args):
        return args or {}

    def handle_call(self, request, state):
        import time

        time.sleep(request)
        return request, state


class Stubborn(Plugin):
    """Never finishes terminate, so shutdown must kill it."""

    def handle_call(self, request, state):
        import os

        return os.getpid(), state

    def terminate(self, reason, state):
        import time

        while True:
            time.sleep(0.05)
