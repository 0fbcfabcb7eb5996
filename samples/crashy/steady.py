"""A well-behaved sibling: proves that one crashing actor leaves its neighbours alone."""

import os

from actors import Plugin


class Steady(Plugin):
    """Counts; ``"inc"`` adds one, ``"get"`` reads, ``"pid"`` names its process."""

    vsn = 1

    def init(self, args):
        return {"count": 0}

    def handle_call(self, request, state):
        if request == "inc":
            state = {**state, "count": state["count"] + 1}
        elif request == "pid":
            return os.getpid(), state
        elif request != "get":
            raise ValueError(f"unknown request {request!r}")
        return state["count"], state
