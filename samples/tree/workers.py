"""The tree sample's workers: each answers ``"ping"`` and ``"pid"``."""

import os

from actors import Plugin


class Worker(Plugin):
    """A minimal worker; its role (``frontend``, ``db``...) comes from its spec's args."""

    vsn = 1

    def init(self, args):
        return {"role": (args or {}).get("role", "worker")}

    def handle_call(self, request, state):
        if request == "ping":
            return f"pong from {state['role']}", state
        if request == "pid":
            return os.getpid(), state
        raise ValueError(f"unknown request {request!r}")
