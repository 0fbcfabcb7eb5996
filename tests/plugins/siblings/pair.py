"""Two actors that talk to each other by name: calls, casts and timers."""

from actors import ChildSpec, Plugin, Supervisor


class Store(Plugin):
    """Keeps a list; answers "items" and ("add", x); casts append too."""

    def init(self, args):
        return {"items": [], "infos": []}

    def handle_call(self, request, state):
        if request == "items":
            return list(state["items"]), state
        if request == "infos":
            return list(state["infos"]), state
        if request == "crash":
            raise RuntimeError("store crashed")
        if request == "hang":
            import time

            while True:
                time.sleep(0.05)
        kind, value = request
        if kind == "add":
            state = {**state, "items": state["items"] + [value]}
            return len(state["items"]), state
        if kind == "ping_me_in":
            self.send_after(value, "tick")
            return "scheduled", state
        raise ValueError(request)

    def handle_cast(self, message, state):
        return {**state, "items": state["items"] + [message]}

    def handle_info(self, message, state):
        return {**state, "infos": state["infos"] + [message]}


class Client(Plugin):
    """Forwards to "store" with self.call / self.cast."""

    def init(self, args):
        return None

    def handle_call(self, request, state):
        kind, value = request
        if kind == "via_call":
            return self.call("store", ("add", value)), state
        if kind == "via_cast":
            self.cast("store", value)
            return "sent", state
        if kind == "call_missing":
            return self.call("nobody", "x"), state
        if kind == "call_crash":
            return self.call("store", "crash"), state
        if kind == "call_timeout":
            return self.call("store", "hang", timeout=value), state
        if kind == "whoami":
            return (self.name, self.sandbox_id), state
        raise ValueError(request)


class Pair(Supervisor):
    max_restarts, max_seconds = 10, 10
    children = [ChildSpec("store", Store), ChildSpec("client", Client)]
