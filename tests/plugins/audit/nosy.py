"""A plugin that does what the runtime audit watches."""

import os
import socket
import subprocess

from actors import ChildSpec, Plugin, Supervisor


class Nosy(Plugin):
    """write: a file; spawn: a process; connect: a socket; read: a file (not audited)."""

    def init(self, args):
        return args or {}

    def handle_call(self, request, state):
        kind, target = request
        if kind == "write":
            with open(target, "w") as handle:
                handle.write("x")
        elif kind == "read":
            with open(target) as handle:
                handle.read()
        elif kind == "spawn":
            subprocess.run(["/bin/true"], check=True)
        elif kind == "connect":
            with socket.socket() as sock:
                sock.settimeout(1)
                try:
                    sock.connect(("127.0.0.1", target))
                except ConnectionRefusedError:
                    pass
        elif kind == "system":
            os.system("true")
        return "done", state


class Root(Supervisor):
    max_restarts, max_seconds = 10, 10
    children = [ChildSpec("nosy", Nosy)]
