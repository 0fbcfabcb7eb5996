"""What ``plugin-host bench`` runs: raw-Thespian baseline actors and the bench's plugin sources.

The raw actors are the baseline the product is compared with: a bare echo actor (and one
placed by capability on another system of a convention), a burst sender and a counting sink,
and a hand-written parent that restarts its children on ``ChildActorExited``.  They live in
an importable module because the multiproc bases cannot create actor classes defined in
``__main__``.  They use plain tuples and ``receiveMessage``, as a user of raw Thespian would,
so the baseline carries none of the host's machinery.

The plugin sources are written to scratch folders and loaded into sandboxes.  Reload rows
use a folder of their own per size (``counter`` plus the supervisor that imports it, as in
the README), and swap two versions of ``counter`` (same behaviour, different code).
"""

from __future__ import annotations

import os
import time
from typing import Any

from thespian.actors import Actor, ActorAddress, ActorExitRequest, ChildActorExited

__all__ = [
    "Echo",
    "RawParent",
    "RemoteEcho",
    "Sender",
    "Sink",
    "PLUGIN_SOURCES",
    "VARIANTS",
    "counter_source",
    "fleet_sources",
    "many_modules",
]


class Echo(Actor):
    """Answers ``"pid"`` with its pid, counts ``"tick"`` one-way messages, echoes anything else."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.ticks = 0

    def receiveMessage(self, message: object, sender: ActorAddress) -> None:
        """Handle one message."""
        if message == "pid":
            self.send(sender, os.getpid())
        elif message == "tick":
            self.ticks += 1
        elif message == "ticks":
            self.send(sender, self.ticks)
        elif isinstance(message, (str, bytes, int)):
            self.send(sender, message)


class RemoteEcho(Echo):
    """An :class:`Echo` that runs only on a system offering every capability it is created with.

    ``createActor(RemoteEcho, targetActorRequirements={...})`` on a convention leader that lacks
    them places it on a member that has them, as a raw Thespian user would place an actor.
    """

    @staticmethod
    def actorSystemCapabilityCheck(capabilities: dict[str, object], requirements: dict[str, object] | None) -> bool:
        """Whether a system with ``capabilities`` may run this actor for ``requirements``."""
        return all(capabilities.get(key) == value for key, value in (requirements or {}).items())


class Sink(Actor):
    """Counts ``("tick", t0)`` messages of a burst; ``"stats"`` answers ``(count, t0, t_last)``."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.count, self.t0, self.t_last = 0, 0.0, 0.0

    def receiveMessage(self, message: object, sender: ActorAddress) -> None:
        """Handle one message."""
        if isinstance(message, tuple) and message[0] == "tick":
            self.count += 1
            self.t0, self.t_last = message[1], time.monotonic()
        elif message == "stats":
            self.send(sender, (self.count, self.t0, self.t_last))
        elif message == "reset":
            self.count, self.t0, self.t_last = 0, 0.0, 0.0
            self.send(sender, "reset")


class Sender(Actor):
    """On ``("burst", n, sink)``, sends ``n`` ticks to ``sink`` from one handler, then answers."""

    def receiveMessage(self, message: object, sender: ActorAddress) -> None:
        """Handle one message."""
        if isinstance(message, tuple) and message[0] == "burst":
            _, count, sink = message
            t0 = time.monotonic()  # CLOCK_MONOTONIC is system-wide: the sink's clock is the same
            for _ in range(count):
                self.send(sink, ("tick", t0))
            self.send(sender, "sent")


class RawParent(Actor):
    """A hand-written supervisor: ``("start", k)`` makes ``k`` echo children; a dead one is replaced.

    ``("start", k)`` answers ``(own pid, [child pids])`` once every child answered a ping.
    ``("await_new", old_pid)`` answers the pid of a replacement child (not ``old_pid``) as
    soon as one answered its first ping.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.children: list[list[Any]] = []  # [address, pid or None]; addresses compare with == only
        self.starter: ActorAddress | None = None
        self.waiting: list[tuple[ActorAddress, int]] = []
        self.stopping = False

    def receiveMessage(self, message: object, sender: ActorAddress) -> None:
        """Handle one message."""
        if isinstance(message, ChildActorExited):
            self._replace(message.childAddress)
        elif isinstance(message, ActorExitRequest):
            self.stopping = True
        elif isinstance(message, int):
            self._answered(sender, message)
        elif isinstance(message, tuple) and message[0] == "start":
            self.starter = sender
            for _ in range(message[1]):
                self._spawn()
        elif isinstance(message, tuple) and message[0] == "await_new":
            self.waiting.append((sender, message[1]))
            self._serve_waiting()

    def _spawn(self) -> None:
        child = self.createActor(Echo)
        self.children.append([child, None])
        self.send(child, "pid")

    def _replace(self, address: ActorAddress) -> None:
        self.children = [c for c in self.children if c[0] != address]
        if not self.stopping:
            self._spawn()

    def _answered(self, child: ActorAddress, pid: int) -> None:
        for entry in self.children:
            if entry[0] == child:
                entry[1] = pid
        if self.starter is not None and all(pid is not None for _, pid in self.children):
            self.send(self.starter, (os.getpid(), [pid for _, pid in self.children]))
            self.starter = None
        self._serve_waiting()

    def _serve_waiting(self) -> None:
        live = [pid for _, pid in self.children if pid is not None]
        still = []
        for who, old in self.waiting:
            fresh = [pid for pid in live if pid != old]
            if fresh:
                self.send(who, fresh[0])
            else:
                still.append((who, old))
        self.waiting = still


_WORKERS = '''
"""Bench workers: answer, count, crash on demand, and send bursts to a sibling."""
import ctypes
import os
import time

from actors import Plugin


class Worker(Plugin):
    def init(self, args):
        return {"count": 0, "ticks": 0, "t0": 0.0, "t_last": 0.0}

    def handle_call(self, request, state):
        if request == "pid":
            return os.getpid(), state
        if request == "ticks":
            return state["ticks"], state
        if request == "raise":
            raise ValueError("bench: crash by exception")
        if request == "exit":
            os._exit(3)
        if request == "segfault":
            ctypes.string_at(0)
        if request == "hang":
            while True:
                time.sleep(0.05)
        if request == "stats":
            return (state["ticks"], state["t0"], state["t_last"]), state
        if request == "reset":
            return "reset", {**state, "ticks": 0, "t0": 0.0, "t_last": 0.0}
        if isinstance(request, tuple) and request[0] == "burst":
            _, count, target = request
            t0 = time.monotonic()
            for _ in range(count):
                self.cast(target, ("tick", t0))
            return "sent", state
        return request, state

    def handle_cast(self, message, state):
        if isinstance(message, tuple) and message[0] == "tick":
            return {**state, "ticks": state["ticks"] + 1, "t0": message[1], "t_last": time.monotonic()}
        return {**state, "ticks": state["ticks"] + 1}
'''

_ROOTS = '''
"""Bench supervisors; restart intensity high enough that the bench never trips it."""
from actors import ChildSpec, Supervisor
from workers import Worker


class One(Supervisor):
    max_restarts, max_seconds = 1000, 1
    children = [ChildSpec("w", Worker)]


class Trio(Supervisor):
    max_restarts, max_seconds = 1000, 1
    children = [ChildSpec(name, Worker) for name in ("a", "b", "c")]


class Pair(Supervisor):
    max_restarts, max_seconds = 1000, 1
    children = [ChildSpec("sender", Worker), ChildSpec("sink", Worker)]
'''

_FLEET_ROOT = '''
"""A supervisor of {size} counter(s) named c0, c1, ...: a reload of ``counter`` reaches them all."""
from actors import ChildSpec, Supervisor
from counter import Counter


class Root(Supervisor):
    max_restarts, max_seconds = 1000, 1
    children = [ChildSpec(f"c{{i}}", Counter) for i in range({size})]
'''


def counter_source(variant: str) -> str:
    """The ``counter`` module: ``"inc"`` adds one and answers the count; ``variant`` changes only code."""
    return f'''
"""A counter whose state survives reloads (variant {variant})."""
from actors import Plugin

VARIANT = {variant!r}


class Counter(Plugin):
    vsn = VARIANT

    def init(self, args):
        return {{"count": 0}}

    def handle_call(self, request, state):
        if request == "inc":
            state = {{**state, "count": state["count"] + 1}}
            return state["count"], state
        if request == "variant":
            return VARIANT, state
        return state["count"], state
'''


VARIANTS = ("a", "b")
"""The two versions of ``counter`` that reload rows alternate."""

PLUGIN_SOURCES = {"workers.py": _WORKERS, "roots.py": _ROOTS}
"""The bench sandbox folder (workers and their supervisors): file name to source."""


def fleet_sources(size: int, variant: str) -> dict[str, str]:
    """A sandbox folder of ``size`` counters under ``root:Root``, running ``counter`` variant ``variant``."""
    return {"counter.py": counter_source(variant), "root.py": _FLEET_ROOT.format(size=size)}


def many_modules(count: int) -> dict[str, str]:
    """A plugin of ``count`` modules, each importing the one before it (file name to source)."""
    files = {"mod000.py": "def value():\n    return 0\n"}
    for i in range(1, count - 1):
        files[f"mod{i:03d}.py"] = (
            f'"""Module {i} of the compile bench."""\nimport mod{i - 1:03d}\n\n\n'
            f"def value():\n    return mod{i - 1:03d}.value() + 1\n\n\n"
            f"TABLE = {{n: n * {i} for n in range(20)}}\n"
        )
    files["plugin.py"] = (
        f"from actors import Plugin\nimport mod{count - 2:03d}\n\n\nclass Top(Plugin):\n"
        f"    def handle_call(self, request, state):\n"
        f"        return mod{count - 2:03d}.value(), state\n"
    )
    return files
