"""A caller whose sibling answers too late: that late reply must not pass for the next call's."""

import math
import time

from actors import ChildSpec, Plugin, Supervisor
from plugin_host.errors import CallTimeoutError


class Slow(Plugin):
    """Answers ("sleep", s) after s seconds, ("echo", x) at once."""

    def init(self, args):
        return None

    def handle_call(self, request, state):
        kind, value = request
        if kind == "sleep":
            time.sleep(value)
            return ("slept", value), state
        return ("echo", value), state


class Caller(Plugin):
    """("late_then_echo", s): a call to "slow" that times out (its reply comes s seconds later), then another;
    ("forever", x): a call to "slow" with an infinite timeout."""

    def init(self, args):
        return None

    def handle_call(self, request, state):
        kind, value = request
        if kind == "forever":  # no timeout at all
            return self.call("slow", ("echo", value), timeout=math.inf), state
        try:
            self.call("slow", ("sleep", value), timeout=value / 3)
        except CallTimeoutError:
            timed_out = True
        else:
            timed_out = False
        time.sleep(value)  # the late reply reaches this process's call endpoint meanwhile
        return (timed_out, self.call("slow", ("echo", "now"), timeout=5)), state


class Late(Supervisor):
    children = [ChildSpec("slow", Slow), ChildSpec("caller", Caller)]
