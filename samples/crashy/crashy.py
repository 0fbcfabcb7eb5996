"""A plugin that misbehaves on request: the demo and the tests crash it every way they can."""

import ctypes
import os
import time

from actors import Plugin


class Crashy(Plugin):
    """A plugin that crashes on demand.

    ``"ping"`` answers ``"pong"``, ``"pid"`` its process id, ``"count"`` the calls handled since
    its last ``init``; ``"raise"``, ``"exit"``, ``"segfault"`` and ``"hang"`` crash or wedge its
    process so that its supervisor has to act.
    """

    vsn = 1

    def init(self, args):
        return {"calls": 0}

    def handle_call(self, request, state):
        state = {**state, "calls": state["calls"] + 1}
        if request == "ping":
            return "pong", state
        if request == "pid":
            return os.getpid(), state
        if request == "count":
            return state["calls"], state
        if request == "raise":
            raise RuntimeError("crashy was asked to raise")
        if request == "exit":
            os._exit(3)
        if request == "segfault":
            ctypes.string_at(0)  # reads address 0: SIGSEGV
        if request == "hang":
            while True:  # never returns; the heartbeat finds it and kills it
                time.sleep(0.1)
        raise ValueError(f"unknown request {request!r}")
