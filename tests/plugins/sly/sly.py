"""A plugin that slips past the static scan, so the runtime audit must catch it.

The strict scan of ``restricted`` refuses ``getattr`` with a computed name on a module, and writes to
computed paths; it cannot know that a function's parameter holds a module, so that is the way past.
"""

import io
import os

from actors import ChildSpec, Plugin, Supervisor


def _attribute(namespace, name):
    """``getattr`` on a parameter: the scan cannot tell that it is a module."""
    return getattr(namespace, name)


class Sly(Plugin):
    """write: io.open found by name, at a computed path; system: os.system found by name."""

    def handle_call(self, request, state):
        kind, target = request
        if kind == "write":
            with _attribute(io, "op" + "en")(target, "w") as handle:
                handle.write("x")
        elif kind == "system":
            _attribute(os, "sys" + "tem")("true")
        return "done", state


class Root(Supervisor):
    max_restarts, max_seconds = 10, 10
    children = [ChildSpec("sly", Sly)]
