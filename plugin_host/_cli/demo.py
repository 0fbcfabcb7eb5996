"""``plugin-host demo``: a guided tour of the embedded default host, in a few seconds.

Create a sandbox and call it, crash an actor (an exception, then a segfault) and watch its
supervisor bring it back, hot-reload the counter with its count kept, refuse a reload whose
``code_change`` raises, contain a memory bomb with a memory limit, roll back to the first
version (each with the version history),
drive a sandbox past its restart intensity so that it fails next to a healthy one, show the
info table, and clean up.  The host keeps its registry in a scratch folder, so every run
tells the same story and leaves no history behind.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from rich.markup import escape

from ..config import HostConfig, ResourceLimits
from ..errors import ActorNotFoundError, CallTimeoutError, HotReloadError, PluginError, PluginHostError
from ..states import ChildStatus, EventKind, SandboxStatus
from ..values import ChildInfo, Event, SandboxInfo, VersionHistory

if TYPE_CHECKING:
    from rich.console import Console

    from ..host import Host

__all__ = ["run_demo", "samples_folder", "scratch_state_dir"]

_WAIT = 15.0  # seconds to wait for a restart or a failure before giving up

# Samples are not package data: an installed copy may lack them, so the demo carries
# minimal copies of the two it needs and writes them to a temporary folder.
_FALLBACK = {
    "counter/counter.py": """
import os
from actors import Plugin

class Counter(Plugin):
    def init(self, args):
        return {"count": (args or {}).get("start", 0)}

    def handle_call(self, request, state):
        if request == "inc":
            state = {**state, "count": state["count"] + 1}
        elif request == "pid":
            return os.getpid(), state
        return state["count"], state
""",
    "counter/root.py": """
from actors import ChildSpec, Supervisor
from counter import Counter

class Root(Supervisor):
    children = [ChildSpec("counter", Counter, args={"start": 0})]
""",
    "crashy/crashy.py": """
import ctypes, os
from actors import Plugin

class Crashy(Plugin):
    def handle_call(self, request, state):
        if request == "raise":
            raise RuntimeError("crashy was asked to raise")
        if request == "segfault":
            ctypes.string_at(0)
        return {"ping": "pong", "pid": os.getpid()}[request], state
""",
    "crashy/root.py": """
from actors import ChildSpec, Supervisor
from counter import Counter
from crashy import Crashy

class Steady(Counter):
    pass

class Root(Supervisor):
    max_restarts, max_seconds = 10, 10
    children = [ChildSpec("crashy", Crashy), ChildSpec("steady", Steady)]

class Fragile(Root):
    max_restarts = 1
""",
}
_FALLBACK["crashy/counter.py"] = _FALLBACK["counter/counter.py"]

# The counter's next versions, written over a copy of its folder (samples/ is never touched).
_COUNTER_NEXT = """
from actors import Plugin

class Counter(Plugin):
    vsn = VSN

    def init(self, args):
        return {"count": (args or {}).get("start", 0), "step": 10}

    def handle_call(self, request, state):
        if request == "inc":
            state = {**state, "count": state["count"] + state["step"]}
        elif request == "migrated":
            return state.get("migrated"), state
        return state["count"], state

    def code_change(self, old_state, old_vsn, new_vsn):
        CODE_CHANGE
"""
# Version 2 counts by ten; its code_change migrates version 1's state ({"count": n}).
_COUNTER_V2 = _COUNTER_NEXT.replace("VSN", "2").replace(
    "CODE_CHANGE", 'return {**old_state, "step": 10, "migrated": f"from version {old_vsn} to {new_vsn}"}'
)
# Version 3 cannot migrate: its code_change raises, so the reload must change nothing.
_COUNTER_V3 = _COUNTER_NEXT.replace("VSN", "3").replace(
    "CODE_CHANGE", 'raise ValueError("version 3 cannot migrate this state")'
)


@contextlib.contextmanager
def samples_folder(shipped: Path | None = None) -> Iterator[Path]:
    """The repository's ``samples/`` folder, or a temporary one holding minimal copies.

    Args:
        shipped: where to look for the samples first (default: next to the package).
    """
    shipped = Path(__file__).resolve().parent.parent.parent / "samples" if shipped is None else shipped
    if (shipped / "counter" / "root.py").is_file() and (shipped / "crashy" / "root.py").is_file():
        yield shipped
        return
    with tempfile.TemporaryDirectory(prefix="plugin-host-demo-") as tmp:
        for relative, source in _FALLBACK.items():
            target = Path(tmp) / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(source.lstrip())
        yield Path(tmp)


@contextlib.contextmanager
def scratch_state_dir(config: HostConfig | None = None, prefix: str = "demo-") -> Iterator[Path]:
    """A fresh ``state_dir`` inside the configured one, removed afterwards (the demo's and the bench's).

    The demo's sandbox ids are fixed, and the registry continues a sandbox id's numbering
    across runs: a scratch registry keeps every run's version history the same.

    Args:
        config: where the configured ``state_dir`` is (default: ``HostConfig()``).
        prefix: how the folder's name starts.
    """
    parent = Path((config or HostConfig()).state_dir)
    parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run_demo(
    host: Host,
    samples: Path,
    console: Console,
    table: Callable[[list[SandboxInfo]], Any],
    history: Callable[[VersionHistory], Any],
) -> None:
    """Run the tour on ``host``; ``table`` and ``history`` render infos and version histories for ``console``.

    Raises:
        PluginHostError: a step did not go as the tour expects.
    """
    _step(console, f"A host runs: its actor system listens on {host.config.bind_address}:{host.admin_port}")
    _counter(host, samples, console)
    _crash_and_restart(host, samples, console)
    with tempfile.TemporaryDirectory(prefix="plugin-host-demo-") as tmp:
        folder = Path(
            shutil.copytree(samples / "counter", Path(tmp) / "counter", ignore=shutil.ignore_patterns("__pycache__"))
        )
        _reload_keeping_state(host, folder, console, history)
        _failed_reload(host, folder, console, history)
        _memory_bomb(host, Path(tmp) / "bomb", console)
    _rollback(host, console, history)
    _fail_past_intensity(host, samples, console)
    _step(console, "Every sandbox, as the host sees it")
    console.print(table(host.list_sandboxes()))
    for info in host.list_sandboxes():
        host.destroy_sandbox(info.id)
    _step(console, "Destroyed every sandbox; closing the host ends every process it started")


def _step(console: Console, text: str) -> None:
    console.print(f"\n[bold cyan]>[/] [bold]{text}[/]", soft_wrap=True)


def _say(console: Console, text: str) -> None:
    console.print(f"  {text}", highlight=False, soft_wrap=True)


def _counter(host: Host, samples: Path, console: Console) -> None:
    _step(console, "Create sandbox 'counter' from samples/counter and call it")
    host.create_sandbox("counter", "root:Root", sandbox_path=samples / "counter")
    replies = [host.call("counter", "counter", "inc") for _ in range(3)]
    _say(console, f"call('counter', 'counter', 'inc') x3 -> {escape(str(replies))}")


def _crash_and_restart(host: Host, samples: Path, console: Console) -> None:
    _step(console, "Create sandbox 'crashy': a plugin that crashes on demand, next to a steady sibling")
    host.create_sandbox("crashy", "root:Root", sandbox_path=samples / "crashy")
    steady = host.call("crashy", "steady", "pid")
    for how in ("raise", "segfault"):
        before = _child(host, "crashy", "crashy")
        try:
            host.call("crashy", "crashy", how)
        except PluginHostError as exc:
            _say(
                console,
                f"call('crashy', 'crashy', {how!r}) -> [red]{type(exc).__name__}[/]: "
                f"{escape(str(exc).splitlines()[0])}",
            )
        _wait_for(functools.partial(_restarted, host, "crashy", "crashy", before.restarts), "a restart")
        pid = host.call("crashy", "crashy", "pid")
        _say(
            console,
            f"restarted by its supervisor: {host.call('crashy', 'crashy', 'ping')!r} from pid {pid} (was {before.pid})",
        )
    _say(
        console, f"its sibling 'steady' never noticed: still pid {host.call('crashy', 'steady', 'pid')} (was {steady})"
    )


def _reload_keeping_state(host: Host, folder: Path, console: Console, history: Callable[[VersionHistory], Any]) -> None:
    _step(console, "Hot-reload 'counter' with a version that counts by 10: its actor keeps running, and its count")
    before = host.call("counter", "counter", "get")
    (folder / "counter.py").write_text(_COUNTER_V2.lstrip())
    result = host.hot_reload("counter", host.compile_sandbox(folder))
    _say(
        console,
        f"hot_reload -> version {result.old_version} -> {result.new_version}, "
        f"actors updated: {escape(str(result.actors_updated))}",
    )
    _say(
        console,
        f"call('counter', 'counter', 'inc') -> {host.call('counter', 'counter', 'inc')} (was {before}); "
        f"code_change migrated its state {host.call('counter', 'counter', 'migrated')}",
    )
    console.print(history(host.get_version_history("counter", "counter")))


def _failed_reload(host: Host, folder: Path, console: Console, history: Callable[[VersionHistory], Any]) -> None:
    _step(console, "Hot-reload a version whose code_change raises: all or nothing, so nothing changes")
    (folder / "counter.py").write_text(_COUNTER_V3.lstrip())
    try:
        host.hot_reload("counter", host.compile_sandbox(folder))
    except HotReloadError as exc:
        _say(console, f"hot_reload -> [red]HotReloadError[/]: {escape(str(exc).splitlines()[0])}")
    else:
        raise HotReloadError("demo: a raising code_change was accepted", actor="counter", cause="no error")
    _say(
        console,
        f"still version {host.get_module_version('counter', 'counter')}, still counting by 10: "
        f"inc -> {host.call('counter', 'counter', 'inc')}",
    )
    console.print(history(host.get_version_history("counter", "counter")))


def _rollback(host: Host, console: Console, history: Callable[[VersionHistory], Any]) -> None:
    _step(console, "Roll 'counter' back to version 1: counting by one again, from the same count")
    result = host.rollback_module("counter", "counter", 1)
    _say(
        console,
        f"rollback_module('counter', 'counter', 1) -> version {result.old_version} -> "
        f"{result.new_version}; inc -> {host.call('counter', 'counter', 'inc')}",
    )
    console.print(history(host.get_version_history("counter", "counter")))


_BOMB = """
from actors import ChildSpec, Plugin, Supervisor


class Bomb(Plugin):
    def init(self, args):
        return []

    def handle_call(self, request, state):
        state = state + [bytearray(30 * 2**20)]  # 30 MiB more on every call, never freed
        return 30 * len(state), state


class Root(Supervisor):
    max_restarts, max_seconds = 1, 60
    children = [ChildSpec("bomb", Bomb)]
"""


def _memory_bomb(host: Host, folder: Path, console: Console) -> None:
    _step(console, "Create sandbox 'bomb', limited to 100 MiB per actor, and let it allocate without bound")
    folder.mkdir()
    (folder / "bomb.py").write_text(_BOMB)
    events: queue.Queue[Event] = queue.Queue()
    unsubscribe = host.subscribe(events.put)
    host.create_sandbox("bomb", "bomb:Root", sandbox_path=folder, limits=ResourceLimits(max_memory_mb=100))
    held = 0
    for _ in range(20):
        try:
            held = host.call("bomb", "bomb", "more")
        except PluginError as exc:
            _say(
                console,
                f"holding {held} MiB, one more call -> [red]{exc.type_name}[/]: the actor crashed; "
                "its supervisor restarts it",
            )
            held = 0
        except ActorNotFoundError:
            break
    unsubscribe()
    seen = [events.get_nowait() for _ in range(events.qsize())]
    breaches = sum(1 for event in seen if event.kind == EventKind.LIMIT_BREACHED)
    _say(
        console,
        f"{breaches} limit_breached events; 'bomb' is [red]{host.get_sandbox_info('bomb').status}[/] "
        f"(past its restart intensity); the host is fine, 'counter' counts: "
        f"{host.call('counter', 'counter', 'inc')}",
    )


def _fail_past_intensity(host: Host, samples: Path, console: Console) -> None:
    _step(console, "Create sandbox 'fragile' (at most 1 restart in 10 s) and crash it twice")
    host.create_sandbox("fragile", "root:Fragile", sandbox_path=samples / "crashy")
    for _ in range(2):
        before = _child(host, "fragile", "crashy")
        with contextlib.suppress(PluginHostError):
            host.call("fragile", "crashy", "raise")
        _wait_for(
            lambda: (
                _restarted(host, "fragile", "crashy", before.restarts)  # noqa: B023 - called within this turn
                or host.get_sandbox_info("fragile").status == SandboxStatus.FAILED
            ),
            "a restart or a failure",
        )
    status = host.get_sandbox_info("fragile").status
    _say(
        console, f"'fragile' is now [red]{status}[/]; 'counter' still counts: {host.call('counter', 'counter', 'inc')}"
    )


def _child(host: Host, sandbox_id: str, name: str) -> ChildInfo:
    return next(c for c in host.get_sandbox_info(sandbox_id).children if c.name == name)


def _restarted(host: Host, sandbox_id: str, name: str, restarts: int) -> bool:
    child = _child(host, sandbox_id, name)
    return child.restarts > restarts and child.status == ChildStatus.RUNNING and child.pid is not None


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    # The host has no event stream yet: poll its info, which costs one admin round trip.
    deadline = time.monotonic() + _WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise CallTimeoutError(f"demo: no {what} within {_WAIT} s")
        time.sleep(0.05)
