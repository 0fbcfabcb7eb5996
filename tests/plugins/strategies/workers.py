"""Test plugins for supervision tests: workers that report their pid and crash on demand."""

import ctypes
import os
import time

from actors import Plugin


class Worker(Plugin):
    """Answers "pid", counts "inc", and crashes on demand; init args may make it fail."""

    def init(self, args):
        args = args or {}
        if args.get("fail_init"):
            raise RuntimeError("init refused")
        return {"count": 0, "stopped": []}

    def handle_call(self, request, state):
        if request == "pid":
            return os.getpid(), state
        if request == "inc":
            state = {**state, "count": state["count"] + 1}
            return state["count"], state
        if request == "raise":
            raise ValueError("boom")
        if request == "exit":
            os._exit(3)
        if request == "segfault":
            ctypes.string_at(0)
        if request == "hang":
            while True:
                time.sleep(0.05)
        if request == "stop":
            self.stop("normal")
            return "stopping", state
        if request == "whoami":
            return (self.name, self.sandbox_id), state
        if isinstance(request, tuple) and request[0] == "sleep":
            time.sleep(request[1])
            return "slept", state
        raise ValueError(f"unknown request {request!r}")

    def terminate(self, reason, state):
        path = os.environ.get("PLUGIN_HOST_TEST_TERMINATE_LOG")
        if path:
            with open(path, "a") as log:
                log.write(f"{self.name} {reason}\n")
