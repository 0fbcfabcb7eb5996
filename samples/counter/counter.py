"""A counter plugin: the smallest useful plugin, used by the README, the demo and the tests."""

from actors import Plugin


class Counter(Plugin):
    """Counts; ``"inc"`` adds one, ``"get"`` reads, ``("add", n)`` adds n; cast ``"reset"`` zeroes."""

    vsn = 1

    def init(self, args):
        return {"count": (args or {}).get("start", 0)}

    def handle_call(self, request, state):
        if request == "inc":
            state = {**state, "count": state["count"] + 1}
        elif isinstance(request, tuple) and request[0] == "add":
            state = {**state, "count": state["count"] + request[1]}
        elif request == "pid":
            import os

            return os.getpid(), state
        elif request != "get":
            raise ValueError(f"unknown request {request!r}")
        return state["count"], state

    def handle_cast(self, message, state):
        if message == "reset":
            return {**state, "count": 0}
        return state
