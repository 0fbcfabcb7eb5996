"""A plugin that slips past the static scan, so the runtime audit must catch it."""

import os

from actors import ChildSpec, Plugin, Supervisor


class Sly(Plugin):
    """write: a file at a computed path; system: os.system found by name."""

    def handle_call(self, request, state):
        kind, target = request
        if kind == "write":
            mode = "w"
            with open(target, mode) as handle:
                handle.write("x")
        elif kind == "system":
            getattr(os, "sys" + "tem")("true")
        return "done", state


class Root(Supervisor):
    max_restarts, max_seconds = 10, 10
    children = [ChildSpec("sly", Sly)]
