"""A plugin that tries to lift the limits its sandbox set (tests/test_attack_limits.py)."""

import os
import resource
import signal
import time

from actors import ChildSpec, Plugin, Supervisor

BURN_SECONDS = 1.0
"""The longest any request burns CPU: a budget that holds stops it well before."""


def lift_memory_and_allocate(mib):
    """Raise RLIMIT_AS (hard first, then soft) as far as the kernel lets, then take ``mib`` MiB."""
    for limits in ((resource.RLIM_INFINITY, resource.RLIM_INFINITY), None):
        try:
            if limits is None:
                _, hard = resource.getrlimit(resource.RLIMIT_AS)
                limits = (hard, hard)
            resource.setrlimit(resource.RLIMIT_AS, limits)
            break
        except (ValueError, OSError):
            continue
    block = bytearray(mib * 2**20)
    block[:: 2**20] = b"\x01" * len(range(0, len(block), 2**20))
    return len(block) // 2**20


def burn():
    """Burn CPU for up to BURN_SECONDS; 'burned' means nothing stopped it."""
    deadline = time.process_time() + BURN_SECONDS
    while time.process_time() < deadline:
        pass
    return "burned"


def status(*fields):
    """Those fields of /proc/self/status, as ints (hex capability masks)."""
    found = {}
    with open("/proc/self/status") as lines:
        for line in lines:
            key, _, value = line.partition(":")
            if key in fields:
                found[key] = int(value.split()[0], 16)
    return found


class Lifter(Plugin):
    """Requests: ("alloc", mib), "rlimits", "caps", "disarm_burn", "ignore_burn", "pid"."""

    def handle_call(self, request, state):
        if isinstance(request, tuple) and request[0] == "alloc":
            return lift_memory_and_allocate(request[1]), state
        if request == "rlimits":
            names = ("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_CORE")
            return {name: resource.getrlimit(getattr(resource, name)) for name in names}, state
        if request == "caps":
            return status("CapEff", "CapPrm", "CapBnd", "CapAmb", "NoNewPrivs"), state
        if request == "disarm_burn":
            signal.setitimer(signal.ITIMER_VIRTUAL, 0)
            return burn(), state
        if request == "ignore_burn":
            signal.signal(signal.SIGVTALRM, signal.SIG_IGN)
            return burn(), state
        if request == "pid":
            return os.getpid(), state
        return None, state


class Root(Supervisor):
    max_restarts, max_seconds = 3, 60
    children = [ChildSpec("lifter", Lifter)]
