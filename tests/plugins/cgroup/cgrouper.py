"""A plugin that tests a sandbox's control group from the inside (tests/test_attack_cgroup.py).

Every process it starts carries the marker it is given on its command line and ends by itself before a
deadline, so a test finds each with psutil and nothing it starts can outlive a failing test for long.
"""

import os
import subprocess
import sys
import time

from actors import ChildSpec, Plugin, Supervisor

_BOMB = """
import os, sys, time
deadline = time.time() + float(sys.argv[1])  # ends by itself, whatever happens to the test
for _ in range(int(sys.argv[2])):            # each step doubles what runs: at most 2**steps processes
    try:
        os.fork()
    except OSError:                          # EAGAIN: the group's pids.max
        pass
    time.sleep(0.05)
while time.time() < deadline:
    time.sleep(0.1)
"""


class Cgrouper(Plugin):
    """("bomb", marker, seconds, steps): a bounded fork bomb, its pid; ("burn", n, seconds): n children
    forked one after the other, each burning that much CPU, then exiting; ("own",): the pids in this
    process's control group (its pids hierarchy); ("write", path, text): write a file, "written" or the
    error; ("hog", n, mb, seconds): n children forked at once, each holding mb MiB for that long, then
    their exit statuses (a negative one: the signal that ended it); "pid": this worker's pid."""

    def handle_call(self, request, state):
        kind = request if isinstance(request, str) else request[0]
        if kind == "bomb":
            _, marker, seconds, steps = request
            return subprocess.Popen([sys.executable, "-c", _BOMB, str(seconds), str(steps), marker]).pid, state
        if kind == "burn":
            _, count, seconds = request
            for _ in range(count):
                child = os.fork()
                if child == 0:
                    end = time.process_time() + seconds
                    while time.process_time() < end:
                        pass
                    os._exit(0)
                os.waitpid(child, 0)
            return count, state
        if kind == "hog":
            _, count, megabytes, seconds = request
            children = []
            for _ in range(count):
                child = os.fork()
                if child == 0:
                    block = b"x" * (megabytes * 2**20)
                    time.sleep(seconds)
                    del block
                    os._exit(0)
                children.append(child)
            return [os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) for child in children], state
        if kind == "write":  # ("write", path, text): "written", or why not
            try:
                with open(request[1], "w", encoding="ascii") as target:
                    target.write(request[2])
            except OSError as exc:
                return f"{type(exc).__name__}: {exc.strerror}", state
            return "written", state
        if kind == "own":
            with open("/proc/self/cgroup", encoding="ascii") as own:
                path = next(line.split(":", 2)[2].strip() for line in own if ":pids:" in line)
            with open(f"/sys/fs/cgroup/pids{path}/cgroup.procs", encoding="ascii") as procs:
                return [int(pid) for pid in procs.read().split()], state
        return os.getpid(), state


class SlowStarter(Plugin):
    """Burns ``args`` seconds of CPU in ``init`` (a sandbox past its CPU budget while it starts); any call: its pid."""

    def init(self, args):
        end = time.process_time() + args
        while time.process_time() < end:
            pass

    def handle_call(self, request, state):
        return os.getpid(), state


class Root(Supervisor):
    children = [ChildSpec("cgrouper", Cgrouper)]


class BurnAtStart(Supervisor):
    children = [ChildSpec("starter", SlowStarter, args=1.5)]
