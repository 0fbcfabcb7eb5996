"""A plugin that starts processes meant to escape its sandbox (tests/test_attack_escape.py).

Each escapee carries the marker it is given on its command line, so a test finds it with psutil.
"""

import os
import subprocess
import sys
import threading
import time

from actors import ChildSpec, Plugin, Supervisor

_SLEEPER = "import time; time.sleep(120)"

_HOG = """
import sys, time
block = bytearray(int(sys.argv[1]) * 2**20)
block[::4096] = b"\\x01" * len(range(0, len(block), 4096))  # every page resident
time.sleep(120)
"""

_DOUBLE_FORK = """
import os, sys, time
if os.fork():
    os._exit(0)          # the first child: its parent (the plugin's Popen) reaps it
os.setsid()              # a session and group of its own: out of the sandbox's group
if os.fork():
    os._exit(0)          # the grandchild is orphaned: it re-parents (to init, or to a subreaper)
time.sleep(float(sys.argv[1]))
"""

_WANDERER = """
import os, sys, time
deadline = float(sys.argv[3])  # a test that fails to end it must not leave a fork loop on the machine
while time.time() < deadline:  # a new process every few ms, each one's parent gone at once: no pid lasts
    if os.fork():
        os._exit(0)
    os.setsid()
    with open(sys.argv[1], "a") as trace:  # the pids it went through, for the test to check
        trace.write(f"{os.getpid()}\\n")
    time.sleep(0.02)
"""


_KEPT = []  # the naive children's Popen objects: never waited for, so each stays a zombie once killed


class Escaper(Plugin):
    """("setsid", marker): a `setsid -f` child; ("double", marker[, seconds]): a double-forked one;
    ("wander", marker, trace, n): n processes that fork and exit without end (each appends its pid
    to the file ``trace``), from a thread that keeps starting more; ("naive", marker, n): n sleeping
    children it never reaps; ("hogs", marker, [mib, ...]): children holding that much resident memory
    each; "pid": this worker's pid."""

    def handle_call(self, request, state):
        kind = request if isinstance(request, str) else request[0]
        if kind == "setsid":
            done = subprocess.run(["setsid", "-f", sys.executable, "-c", _SLEEPER, request[1]], check=False)
            return done.returncode, state
        if kind == "double":
            seconds = request[2] if len(request) > 2 else 120.0
            done = subprocess.run([sys.executable, "-c", _DOUBLE_FORK, str(seconds), request[1]], check=False)
            return done.returncode, state
        if kind == "naive":  # plain children that stay below this worker, never reaped by it
            _KEPT.extend(subprocess.Popen([sys.executable, "-c", _SLEEPER, request[1]]) for _ in range(request[2]))
            return [child.pid for child in _KEPT[-request[2] :]], state
        if kind == "hogs":  # ("hogs", marker, [mib, ...]): children holding that much memory each
            started = [subprocess.Popen([sys.executable, "-c", _HOG, str(mib), request[1]]) for mib in request[2]]
            _KEPT.extend(started)
            return [child.pid for child in started], state
        if kind == "wander":
            deadline = time.time() + 120.0
            command = [sys.executable, "-c", _WANDERER, request[2], request[1], str(deadline)]

            def keep_starting() -> None:
                while time.time() < deadline:
                    subprocess.Popen(command)
                    threading.Event().wait(0.5)

            for _ in range(request[3]):
                subprocess.Popen(command)
            threading.Thread(target=keep_starting, daemon=True).start()
            return True, state
        return os.getpid(), state


class Root(Supervisor):
    children = [ChildSpec("escaper", Escaper)]
