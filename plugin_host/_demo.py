"""``plugin-host demo``: a guided tour of the embedded default host, in a few seconds.

Create a sandbox and call it, crash an actor (an exception, then a segfault) and watch its
supervisor bring it back, drive a sandbox past its restart intensity so that it fails next
to a healthy one, show the info table, and clean up.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from rich.markup import escape

from .errors import CallTimeoutError, PluginHostError
from .values import ChildInfo, SandboxInfo

if TYPE_CHECKING:
    from rich.console import Console

    from .host import Host

__all__ = ["run_demo", "samples_folder"]

_WAIT = 15.0  # seconds to wait for a restart or a failure before giving up

# Samples are not package data: an installed copy may lack them, so the demo carries
# minimal copies of the two it needs and writes them to a temporary folder.
_FALLBACK = {
    "counter/counter.py": '''
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
''',
    "counter/root.py": '''
from actors import ChildSpec, Supervisor
from counter import Counter

class Root(Supervisor):
    children = [ChildSpec("counter", Counter, args={"start": 0})]
''',
    "crashy/crashy.py": '''
import ctypes, os
from actors import Plugin

class Crashy(Plugin):
    def handle_call(self, request, state):
        if request == "raise":
            raise RuntimeError("crashy was asked to raise")
        if request == "segfault":
            ctypes.string_at(0)
        return {"ping": "pong", "pid": os.getpid()}[request], state
''',
    "crashy/root.py": '''
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
''',
}
_FALLBACK["crashy/counter.py"] = _FALLBACK["counter/counter.py"]


@contextlib.contextmanager
def samples_folder(shipped: Path | None = None) -> Iterator[Path]:
    """The repository's ``samples/`` folder, or a temporary one holding minimal copies.

    Args:
        shipped: where to look for the samples first (default: next to the package).
    """
    shipped = Path(__file__).resolve().parent.parent / "samples" if shipped is None else shipped
    if (shipped / "counter" / "root.py").is_file() and (shipped / "crashy" / "root.py").is_file():
        yield shipped
        return
    with tempfile.TemporaryDirectory(prefix="plugin-host-demo-") as tmp:
        for relative, source in _FALLBACK.items():
            target = Path(tmp) / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(source.lstrip())
        yield Path(tmp)


def run_demo(host: Host, samples: Path, console: Console, table: Callable[[list[SandboxInfo]], Any]) -> None:
    """Run the tour on ``host``; ``table`` renders sandbox infos for ``console``.

    Raises:
        PluginHostError: a step did not go as the tour expects.
    """
    _step(console, f"A host runs: its actor system listens on {host.config.bind_address}:{host.admin_port}")
    _counter(host, samples, console)
    _crash_and_restart(host, samples, console)
    # Later steps go here, once the host supports them (do not fake them before):
    #   - hot reload with state kept: hot_reload_source on "counter", same count after;
    #   - rollback: rollback_module back to version 1, count still kept.
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
            _say(console, f"call('crashy', 'crashy', {how!r}) -> [red]{type(exc).__name__}[/]: "
                          f"{escape(str(exc).splitlines()[0])}")
        _wait_for(lambda: _restarted(host, "crashy", "crashy", before.restarts), "a restart")
        pid = host.call("crashy", "crashy", "pid")
        _say(console, f"restarted by its supervisor: {host.call('crashy', 'crashy', 'ping')!r} "
                      f"from pid {pid} (was {before.pid})")
    _say(console, f"its sibling 'steady' never noticed: still pid {host.call('crashy', 'steady', 'pid')} "
                  f"(was {steady})")


def _fail_past_intensity(host: Host, samples: Path, console: Console) -> None:
    _step(console, "Create sandbox 'fragile' (at most 1 restart in 10 s) and crash it twice")
    host.create_sandbox("fragile", "root:Fragile", sandbox_path=samples / "crashy")
    for _ in range(2):
        before = _child(host, "fragile", "crashy")
        with contextlib.suppress(PluginHostError):
            host.call("fragile", "crashy", "raise")
        _wait_for(lambda: _restarted(host, "fragile", "crashy", before.restarts)
                  or host.get_sandbox_info("fragile").status == "failed", "a restart or a failure")
    status = host.get_sandbox_info("fragile").status
    _say(console, f"'fragile' is now [red]{status}[/]; 'counter' still counts: "
                  f"{host.call('counter', 'counter', 'inc')}")


def _child(host: Host, sandbox_id: str, name: str) -> ChildInfo:
    return next(c for c in host.get_sandbox_info(sandbox_id).children if c.name == name)


def _restarted(host: Host, sandbox_id: str, name: str, restarts: int) -> bool:
    child = _child(host, sandbox_id, name)
    return child.restarts > restarts and child.status == "running" and child.pid is not None


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    # The host has no event stream yet: poll its info, which costs one admin round trip.
    deadline = time.monotonic() + _WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise CallTimeoutError(f"demo: no {what} within {_WAIT} s")
        time.sleep(0.05)
