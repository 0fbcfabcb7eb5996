"""``plugin-host bench``: every performance promise measured against raw Thespian, in one run.

One process runs the embedded default (a ``Host`` whose ``state_dir`` is a scratch folder,
removed afterwards, so a bench never touches the user's registry) and, next to it, raw
Thespian ``multiprocTCPBase`` doing the same operations with the bare actors of
:mod:`plugin_host._bench_actors`.  Each row reports the median, the p99 and ``n`` (warm-ups not
counted) and the ratio to the raw baseline where one exists; the targets of the project's
anchors are checked per row.  For rates (msg/s) the "p99" column is the slow tail: the 1st
percentile of the per-burst rates.  Sampling order is fixed and no randomness is used.
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence, TypeVar

import attrs
import psutil

from . import _bench_actors as acts
from ._launcher import apply_bind_patch, log_defs
from .config import HostConfig
from .errors import PluginError, PluginHostError

if TYPE_CHECKING:  # the host and the compiler load only when a bench runs: `plugin-host --help` stays fast
    from .host import Host

__all__ = ["ROWS", "Row", "SECTIONS", "TARGETS", "Target", "evaluate_targets", "machine", "run_bench"]

MIB = 1024 * 1024
_T = TypeVar("_T")


# -- targets ---------------------------------------------------------------------------------


@attrs.frozen
class Target:
    """One row of the targets table in the project's anchors, as data."""

    metric: str
    """The anchors' wording."""
    row: str
    """The bench row it is checked on."""
    stat: str
    """``median`` or ``ratio`` (to the raw-Thespian baseline)."""
    op: str
    """``<=`` or ``>=``."""
    bound: float

    def check(self, row: Mapping[str, Any] | None) -> tuple[str, float | None]:
        """``("pass" | "fail" | "n/a", value)``: n/a when the row did not run or its workload differs."""
        value = None if row is None else row.get(self.stat)
        if row is None or value is None or not row.get("comparable", True) or not row.get("n"):
            return "n/a", value
        ok = value <= self.bound if self.op == "<=" else value >= self.bound
        return ("pass" if ok else "fail"), value


_CRASH = "crash → restarted actor answers ≤ 10 ms median"
TARGETS: tuple[Target, ...] = (
    Target("Host.call round trip ≤ 1.15 × raw ask", "call", "ratio", "<=", 1.15),
    Target(f"{_CRASH} (exception)", "crash_exception", "median", "<=", 10.0),
    Target(f"{_CRASH} (os._exit)", "crash_exit", "median", "<=", 10.0),
    Target(f"{_CRASH} (SIGKILL)", "crash_sigkill", "median", "<=", 10.0),
    Target(f"{_CRASH} (segfault)", "crash_segfault", "median", "<=", 10.0),
    Target("hot reload of a compiled artifact, 1 actor, state kept ≤ 2 ms", "reload_1", "median", "<=", 2.0),
    Target("hot reload, 100 actors of one module ≤ 60 ms", "reload_100", "median", "<=", 60.0),
    Target("hot_reload_source end to end ≤ 50 ms", "reload_source", "median", "<=", 50.0),
    Target("create a sandbox (root + 3 workers) ≤ 30 ms", "sandbox_create", "median", "<=", 30.0),
    Target("private memory per plugin actor ≤ 5 MiB", "memory_actor_uss", "median", "<=", 5.0),
    Target("sibling → sibling throughput ≥ 1.0 × raw actor → actor", "sibling", "ratio", ">=", 1.0),
    Target("messages lost or reordered across 100 reloads = 0", "lost", "median", "<=", 0.0),
)
"""The targets table of ANCHORS.md (same machine, same run, raw Thespian as the baseline)."""


def evaluate_targets(rows: Mapping[str, Mapping[str, Any]],
                     targets: Sequence[Target] = TARGETS) -> list[dict[str, Any]]:
    """Check each target against the JSON form of the rows (name to ``median``, ``ratio``, ``n``...).

    Returns:
        One dict per target: its fields, the measured ``value`` and ``result`` (pass/fail/n/a).
    """
    results = []
    for target in targets:
        result, value = target.check(rows.get(target.row))
        results.append({**attrs.asdict(target), "value": value, "result": result})
    return results


# -- rows --------------------------------------------------------------------------------------


def _p99(samples: Sequence[float], higher_is_better: bool) -> float:
    ordered = sorted(samples, reverse=higher_is_better)  # the slow tail last, either way
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


@attrs.define
class Row:
    """One measured row: samples of plugin-host and, where one exists, of the raw baseline."""

    name: str
    label: str
    unit: str
    samples: list[float]
    raw: list[float] | None = None
    raw_label: str = ""
    higher_is_better: bool = False
    note: str = ""
    comparable: bool = True
    """False when the workload differs from the target's (a ``--quick`` reduction)."""
    count: int | None = None
    """``n`` when it is not the number of samples (the lost-message row counts calls)."""

    def summary(self) -> dict[str, Any]:
        """The JSON form: median, p99, n, unit, raw baseline and ratio."""
        median = statistics.median(self.samples) if self.samples else None
        raw = None
        ratio = None
        if self.raw:
            raw_median = statistics.median(self.raw)
            raw = {"label": self.raw_label, "n": len(self.raw), "median": raw_median,
                   "p99": _p99(self.raw, self.higher_is_better)}
            ratio = None if median is None or not raw_median else median / raw_median
        return {"name": self.name, "label": self.label, "unit": self.unit, "median": median,
                "p99": _p99(self.samples, self.higher_is_better) if self.samples else None,
                "n": len(self.samples) if self.count is None else self.count, "raw": raw, "ratio": ratio,
                "higher_is_better": self.higher_is_better, "comparable": self.comparable, "note": self.note}


# -- the run -----------------------------------------------------------------------------------


class _BenchError(PluginHostError):
    """A bench operation did not behave (a wrong reply, a missing restart); fails its section."""


class _Progress:
    """A rich progress bar on a terminal's stderr, plain lines otherwise; no refresh thread (forks)."""

    def __init__(self, sections: int) -> None:
        self.live: Any = None
        self.started = time.monotonic()
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.live = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=Console(stderr=True), auto_refresh=False)
            self.live.start()
            self.overall = self.live.add_task("bench", total=sections)
            self.task = self.live.add_task("", total=1)
        self.shown = 0.0

    def section(self, label: str) -> None:
        """A section starts."""
        if self.live is None:
            print(f"[{time.monotonic() - self.started:6.1f} s] {label}", file=sys.stderr, flush=True)
            return
        self.live.reset(self.task, total=0, description=f"  {label}")
        self.live.refresh()

    def expect(self, samples: int) -> None:
        """``samples`` more ticks are coming in this section."""
        if self.live is not None:
            self.live.update(self.task, total=(self.live.tasks[self.task].total or 0) + samples)

    def tick(self, done_section: bool = False) -> None:
        """One sample (or, with ``done_section``, one section) done."""
        if self.live is None:
            return
        self.live.advance(self.overall if done_section else self.task)
        if done_section or time.monotonic() - self.shown > 0.1:
            self.shown = time.monotonic()
            self.live.refresh()

    def stop(self) -> None:
        """Remove the bar."""
        if self.live is not None:
            self.live.stop()


class _Raw:
    """The raw-Thespian baseline system, in this process."""

    def __init__(self, folder: Path) -> None:
        from thespian.actors import ActorSystem

        from ._system import free_port

        apply_bind_patch("127.0.0.1")  # never expose a pickle port beyond loopback
        saved = {k: os.environ.get(k) for k in ("THESPLOG_FILE", "THESPIAN_BASE_IPADDR")}
        os.environ.update(THESPLOG_FILE=str(folder / "raw-thespian.log"), THESPIAN_BASE_IPADDR="127.0.0.1")
        try:
            self.system = ActorSystem("multiprocTCPBase", {"Admin Port": free_port("127.0.0.1")},
                                      logDefs=log_defs(str(folder / "raw-actors.log")), transientUnique=True)
        finally:
            for key, value in saved.items():
                os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
        self.processes = psutil.Process().children(recursive=True)

    def create(self, cls: type) -> Any:
        """Create a top-level actor."""
        return self.system.createActor(cls)

    def ask(self, address: Any, message: Any, timeout: float = 10.0) -> Any:
        """Ask and fail loudly on no reply."""
        reply = self.system.ask(address, message, timeout)
        if reply is None:
            raise _BenchError(f"raw Thespian: no reply to {message!r}")
        return reply

    def tell(self, address: Any, message: Any) -> None:
        """Fire and forget."""
        self.system.tell(address, message)

    def shutdown(self) -> None:
        """Shut the system down; kill any of its processes that outlive that."""
        try:
            self.system.shutdown()
        finally:
            for proc in self.processes:
                try:
                    if proc.is_running():  # checks the create time: never a recycled pid
                        proc.kill()
                except psutil.Error:
                    pass


@attrs.define
class _Bench:
    host: Host
    raw: _Raw
    folder: Path
    """The bench plugin folder (``PLUGIN_SOURCES``)."""
    work: Path
    quick: bool
    progress: _Progress
    fleets: dict[int, tuple[Path, list[list[Any]]]] = attrs.field(factory=dict)

    def n(self, full: int, quick: int) -> int:
        """Samples for this mode."""
        return quick if self.quick else full

    def repeat(self, count: int, fn: Callable[[], _T], warmup: int = 2) -> list[_T]:
        """Run ``fn`` (which returns one sample) ``warmup`` times unrecorded, then ``count`` times."""
        for _ in range(warmup):
            fn()
        self.progress.expect(count)
        samples = []
        for _ in range(count):
            samples.append(fn())
            self.progress.tick()
        return samples

    def timed(self, count: int, fn: Callable[[], Any], warmup: int = 2) -> list[float]:
        """Milliseconds per call of ``fn``."""
        return self.repeat(count, lambda: _ms(fn), warmup)

    @contextmanager
    def sandbox(self, sandbox_id: str, supervisor: str, host: Host | None = None,
                folder: Path | None = None) -> Iterator[str]:
        """A sandbox (of the bench folder unless ``folder``) for the duration of a section."""
        host = host or self.host
        host.create_sandbox(sandbox_id, supervisor, sandbox_path=folder or self.folder)
        try:
            yield sandbox_id
        finally:
            host.destroy_sandbox(sandbox_id)

    def fleet(self, size: int) -> tuple[Path, list[list[Any]]]:
        """The folder of ``size`` counters (variant a) and the ``counter`` artifact of each variant."""
        if size not in self.fleets:
            folders = [_write(self.work / f"fleet-{size}-{v}", acts.fleet_sources(size, v)) for v in acts.VARIANTS]
            code = [[a for a in self.host.compile_sandbox(f).artifacts if a.module == "counter"] for f in folders]
            self.fleets[size] = (folders[0], code)
        return self.fleets[size]


def _ms(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000.0


def _wait(condition: Callable[[], Any], timeout: float = 30.0, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise _BenchError(f"condition not met within {timeout} s")
        time.sleep(interval)
    return value


def _gone(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return True


def _expect(value: Any, expected: Any) -> Any:
    if value != expected:
        raise _BenchError(f"expected {expected!r}, got {value!r}")
    return value


def _pair(b: _Bench, count: int, host_fn: Callable[[], float], raw_fn: Callable[[], float],
          warmup: int = 2) -> tuple[list[float], list[float]]:
    """Alternate host and raw samples, so drifting machine load hits both sides alike."""
    both = b.repeat(count, lambda: (host_fn(), raw_fn()), warmup)
    return [h for h, _ in both], [r for _, r in both]


# -- sections ----------------------------------------------------------------------------------


def _call(b: _Bench) -> list[Row]:
    echo = b.raw.create(acts.Echo)
    with b.sandbox("bench-call", "roots:Trio") as sid:
        host, raw = _pair(b, b.n(500, 100), lambda: _ms(lambda: _expect(b.host.call(sid, "a", "ping"), "ping")),
                          lambda: _ms(lambda: _expect(b.raw.ask(echo, "ping"), "ping")), warmup=50)
    return [Row("call", "call round trip: Host.call", "ms", host, raw, "ask to a bare actor")]


def _cast(b: _Bench) -> list[Row]:
    burst = b.n(500, 200)
    echo = b.raw.create(acts.Echo)
    sent = {"host": 0, "raw": 0}

    def batch(side: str, cast: Callable[[], None], count: Callable[[], Any]) -> float:
        start = time.perf_counter()
        for _ in range(burst):
            cast()
        sent[side] += burst
        _expect(count(), sent[side])  # the closing call is ordered after the casts: all arrived
        return burst / (time.perf_counter() - start)

    with b.sandbox("bench-cast", "roots:Trio") as sid:
        host, raw = _pair(b, b.n(10, 3), lambda: batch("host", lambda: b.host.cast(sid, "b", "tick"),
                                                       lambda: b.host.call(sid, "b", "ticks")),
                          lambda: batch("raw", lambda: b.raw.tell(echo, "tick"), lambda: b.raw.ask(echo, "ticks")),
                          warmup=1)
    return [Row("cast", f"cast throughput host → actor ({burst} casts, then a call)", "msg/s", host, raw,
                "tell, then an ask", higher_is_better=True)]


def _burst_rate(burst: int, reset: Callable[[], Any], trigger: Callable[[], Any],
                stats: Callable[[], tuple[int, float, float]]) -> float:
    """Messages per second as the receiver saw them: from the burst's start to its last arrival."""
    reset()
    trigger()
    def done() -> tuple[int, float, float] | None:
        seen = stats()
        return seen if seen[0] >= burst else None

    count, t0, t_last = _wait(done)
    _expect(count, burst)
    return float(burst / (t_last - t0))


def _sibling(b: _Bench) -> list[Row]:
    burst = 500  # under Thespian's 950 queued transmits per sender (THESPIAN_NOTES §1.2)
    sender, sink = b.raw.create(acts.Sender), b.raw.create(acts.Sink)
    with b.sandbox("bench-sibling", "roots:Pair") as sid:
        call, ask = b.host.call, b.raw.ask
        host, raw = _pair(
            b, b.n(10, 3),
            lambda: _burst_rate(burst, lambda: call(sid, "sink", "reset"),
                                lambda: call(sid, "sender", ("burst", burst, "sink")),
                                lambda: call(sid, "sink", "stats")),
            lambda: _burst_rate(burst, lambda: ask(sink, "reset"), lambda: ask(sender, ("burst", burst, sink)),
                                lambda: ask(sink, "stats")), warmup=1)
    return [Row("sibling", f"sibling → sibling throughput (self.cast, {burst}-message bursts)", "msg/s", host, raw,
                "actor → actor sends", higher_is_better=True, note="measured by the receiver")]


def _sandbox(b: _Bench) -> list[Row]:
    from thespian.actors import ActorExitRequest

    serial = iter(range(1_000_000))

    def host_once() -> tuple[float, float]:
        sid = f"bench-sandbox-{next(serial)}"
        start = time.perf_counter()
        info = b.host.create_sandbox(sid, "roots:Trio", sandbox_path=b.folder)
        created = time.perf_counter()
        b.host.destroy_sandbox(sid)
        _wait(lambda: all(_gone(p) for p in [info.pid, *(c.pid for c in info.children)] if p), interval=0.0005)
        return (created - start) * 1000, (time.perf_counter() - created) * 1000

    def raw_once() -> tuple[float, float]:
        start = time.perf_counter()
        parent = b.raw.create(acts.RawParent)
        pid, kids = b.raw.ask(parent, ("start", 3))
        created = time.perf_counter()
        b.raw.tell(parent, ActorExitRequest())
        _wait(lambda: all(_gone(p) for p in [pid, *kids]), interval=0.0005)
        return (created - start) * 1000, (time.perf_counter() - created) * 1000

    both = b.repeat(b.n(20, 5), lambda: (host_once(), raw_once()))
    raw_label = "a parent creates 3 children, all answered (4 createActor)"
    return [Row("sandbox_create", "create a sandbox (root + 3 workers, all running)", "ms", [h[0] for h, _ in both],
                [r[0] for _, r in both], raw_label),
            Row("sandbox_destroy", "destroy it (until every process is gone)", "ms", [h[1] for h, _ in both],
                [r[1] for _, r in both], "ActorExitRequest to the parent")]


def _crash_once(host: Host, sid: str, request: str | None) -> float:
    """Crash the actor ``w`` (``request`` None: SIGKILL it); ms until a new process answered."""
    old = host.call(sid, "w", "pid")
    start = time.perf_counter()
    if request is None:
        os.kill(old, signal.SIGKILL)
    else:
        try:
            host.call(sid, "w", request)
        except PluginError:
            pass
        else:
            raise _BenchError(f"{request!r} did not crash the actor")
    new = host.call(sid, "w", "pid")
    elapsed = (time.perf_counter() - start) * 1000
    if new == old:
        raise _BenchError("the actor answered from the same process")
    return elapsed


def _raw_crash_once(raw: _Raw, parent: Any) -> float:
    old = raw.ask(parent, ("await_new", -1))
    start = time.perf_counter()
    os.kill(old, signal.SIGKILL)
    raw.ask(parent, ("await_new", old))
    return (time.perf_counter() - start) * 1000


_CRASHES = (("exception", "raise", "an exception in handle_call"), ("exit", "exit", "os._exit(3)"),
            ("sigkill", None, "SIGKILL from outside"), ("segfault", "segfault", "a segfault (ctypes)"))


def _crash(b: _Bench) -> list[Row]:
    from thespian.actors import ActorExitRequest

    count, rows = b.n(20, 5), []
    with b.sandbox("bench-crash", "roots:One") as sid:
        for kind, request, what in _CRASHES:
            samples = b.repeat(count, functools.partial(_crash_once, b.host, sid, request))
            rows.append(Row(f"crash_{kind}", f"crash → restarted actor answers: {what}", "ms", samples,
                            note="from the crashing request (or the kill) to the new process's reply"))
    parent = b.raw.create(acts.RawParent)
    b.raw.ask(parent, ("start", 1))
    rows[2].raw = b.repeat(count, lambda: _raw_crash_once(b.raw, parent))
    rows[2].raw_label = "SIGKILL, hand-written parent restarts (state lost)"
    b.raw.tell(parent, ActorExitRequest())
    return rows


def _hang(b: _Bench) -> list[Row]:
    from .host import Host

    config = attrs.evolve(b.host.config, state_dir=str(b.work / "state-hang"), heartbeat_interval=0.1,
                          hang_timeout=0.5)
    with Host(config) as host, b.sandbox("bench-hang", "roots:One", host) as sid:
        samples = b.repeat(b.n(8, 2), lambda: _crash_once(host, sid, "hang"), warmup=1)
    return [Row("hang", "hang → detected, killed, answering again", "ms", samples,
                note="heartbeat_interval=0.1 s, hang_timeout=0.5 s; raw Thespian never detects a hang")]


def _reload(b: _Bench) -> list[Row]:
    rows = []
    for name, size, count in (("reload_1", 1, b.n(30, 10)), ("reload_10", 10, b.n(20, 5)),
                              ("reload_100", b.n(100, 20), b.n(10, 4))):
        turn = iter(range(1_000_000))
        folder, code = b.fleet(size)
        with b.sandbox(f"bench-{name}", "root:Root", folder=folder) as sid:
            before = b.host.call(sid, "c0", "inc")
            samples = b.timed(count, lambda: _updated(b.host.hot_reload(sid, code[(next(turn) + 1) % 2]), size))
            _expect(b.host.call(sid, "c0", "inc"), before + 1)  # state kept across every reload
        note = "quick mode: 20 actors (full mode: 100)" if size == 20 else "variants a/b alternate; state kept"
        rows.append(Row(name, f"hot reload of a compiled artifact, {size} actor(s)", "ms", samples,
                        comparable=size != 20, note=note))
    return rows


def _updated(result: Any, size: int) -> Any:
    if len(result.actors_updated) < size:
        raise _BenchError(f"only {len(result.actors_updated)} of {size} actors reloaded")
    return result


def _reload_source(b: _Bench) -> list[Row]:
    serial, source = iter(range(1_000_000)), acts.counter_source("a")
    with b.sandbox("bench-source", "root:Root", folder=b.fleet(1)[0]) as sid:
        samples = b.timed(b.n(20, 5), lambda: _updated(b.host.hot_reload_source(
            sid, f"{source}\n# bench variant {next(serial)}\n", module="counter"), 1))
    return [Row("reload_source", "hot_reload_source end to end (compile + validate + reload)", "ms", samples,
                note="the source differs each time (a comment), so the compile cache never hits")]


def _rollback(b: _Bench) -> list[Row]:
    folder, code = b.fleet(1)
    with b.sandbox("bench-rollback", "root:Root", folder=folder) as sid:
        first = b.host.get_module_version(sid, "counter")
        second = b.host.hot_reload(sid, code[1]).new_version
        turn = iter(range(1_000_000))

        def once() -> None:
            version = (first, second)[next(turn) % 2]
            _expect(b.host.rollback_module(sid, "counter", version).new_version, version)

        samples = b.timed(b.n(20, 6), once)
    return [Row("rollback", "rollback to a stored version, 1 actor", "ms", samples)]


def _compile(b: _Bench) -> list[Row]:
    from . import compiler

    folder = _write(b.work / "compile-50", acts.many_modules(50))
    config, serial = b.host.config, iter(range(1_000_000))

    def cold() -> None:
        cache = b.work / f"cold-cache-{next(serial)}"  # empty: nothing of this folder is cached
        info = compiler.compile_sandbox(folder, timeout=config.compile_timeout,
                                        security_profile=config.security_profile, cache_dir=cache)
        _expect((len(info.artifacts), info.cached), (50, False))

    cold_samples = b.timed(b.n(5, 2), cold, warmup=1)
    b.host.compile_sandbox(folder)  # fills the host's cache
    cached = b.timed(b.n(20, 5), lambda: _expect(b.host.compile_sandbox(folder).cached, True), warmup=0)
    return [Row("compile_cold", "compile a 50-module plugin, cold (empty cache)", "ms", cold_samples),
            Row("compile_cached", "compile the same plugin again (cache hit)", "ms", cached)]


def _memory_of(pids: Sequence[int]) -> tuple[list[float], list[float]]:
    """USS and PSS of each process, MiB."""
    full = [psutil.Process(pid).memory_full_info() for pid in pids]
    return [m.uss / MIB for m in full], [m.pss / MIB for m in full]


def _memory(b: _Bench) -> list[Row]:
    from thespian.actors import ActorExitRequest

    actors, sandboxes = 10, b.n(3, 2)
    with b.sandbox("bench-memory", "root:Root", folder=b.fleet(actors)[0]) as sid:
        workers = [c for c in b.host.get_sandbox_info(sid).children if c.kind == "worker"]
        for child in workers:
            b.host.call(sid, child.name, "inc")  # each has run a callback
        uss, pss = _memory_of([c.pid for c in workers if c.pid])
    echoes = [b.raw.create(acts.Echo) for _ in range(actors)]
    raw_uss, raw_pss = _memory_of([b.raw.ask(e, "pid") for e in echoes])
    trees, raw_trees = [], []
    b.progress.expect(sandboxes)
    for i in range(sandboxes):
        with b.sandbox(f"bench-memory-{i}", "roots:Trio") as sid:
            info = b.host.get_sandbox_info(sid)
            for name in ("a", "b", "c"):
                b.host.call(sid, name, "ping")
            trees.append(_memory_of([p for p in [info.pid, *(c.pid for c in info.children)] if p]))
        parent = b.raw.create(acts.RawParent)
        pid, kids = b.raw.ask(parent, ("start", 3))
        raw_trees.append(_memory_of([pid, *kids]))
        echoes.append(parent)
        b.progress.tick()
    for address in echoes:
        b.raw.tell(address, ActorExitRequest())
    each, tree, raw_each, raw_tree = "one plugin actor (worker)", "a sandbox: root + 3 workers", "a bare actor", \
        "a parent + 3 children"
    return [Row("memory_actor_uss", f"private memory (USS) of {each}", "MiB", uss, raw_uss, raw_each),
            Row("memory_actor_pss", f"proportional memory (PSS) of {each}", "MiB", pss, raw_pss, raw_each),
            Row("memory_sandbox_uss", f"USS of {tree}", "MiB", [sum(t[0]) for t in trees],
                [sum(t[0]) for t in raw_trees], raw_tree),
            Row("memory_sandbox_pss", f"PSS of {tree}", "MiB", [sum(t[1]) for t in trees],
                [sum(t[1]) for t in raw_trees], raw_tree)]


def _lost(b: _Bench) -> list[Row]:
    reloads, (folder, code) = 100, b.fleet(1)
    replies: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()
    with b.sandbox("bench-lost", "root:Root", folder=folder) as sid:

        def load() -> None:  # sequential calls from another thread, each with its own context
            while not stop.is_set():
                try:
                    replies.append(b.host.call(sid, "c0", "inc"))
                except Exception as exc:  # noqa: BLE001 - every failure counts as a lost message
                    errors.append(exc)

        thread = threading.Thread(target=load, name="bench-load", daemon=True)
        thread.start()
        try:
            _wait(lambda: len(replies) >= 5)
            b.progress.expect(reloads)
            for i in range(reloads):
                _updated(b.host.hot_reload(sid, code[(i + 1) % 2]), 1)
                b.progress.tick()
        finally:
            stop.set()
            thread.join(60)
        final = b.host.call(sid, "c0", "inc")
    sequence = [*replies, final]
    bad = len(errors) + sum(1 for before, now in zip([0, *sequence], sequence) if now != before + 1)
    return [Row("lost", f"messages lost or reordered across {reloads} reloads under a call load", "msgs",
                [float(bad)], count=len(sequence),
                note=f"{len(replies)} sequential calls from a thread during {reloads} reloads; replies must be 1..n")]


@attrs.frozen
class _Section:
    name: str
    label: str
    run: Callable[[_Bench], list[Row]]
    rows: tuple[str, ...]


_SECTIONS = (
    _Section("call", "call round trip", _call, ("call",)),
    _Section("cast", "cast throughput", _cast, ("cast",)),
    _Section("sibling", "sibling → sibling throughput", _sibling, ("sibling",)),
    _Section("sandbox", "sandbox create + destroy", _sandbox, ("sandbox_create", "sandbox_destroy")),
    _Section("crash", "crash → restarted", _crash, tuple(f"crash_{kind}" for kind, _, _ in _CRASHES)),
    _Section("hang", "hang → restarted", _hang, ("hang",)),
    _Section("reload", "hot reload (1, 10, 100 actors)", _reload, ("reload_1", "reload_10", "reload_100")),
    _Section("reload_source", "hot_reload_source", _reload_source, ("reload_source",)),
    _Section("rollback", "rollback", _rollback, ("rollback",)),
    _Section("compile", "compile 50 modules", _compile, ("compile_cold", "compile_cached")),
    _Section("memory", "memory", _memory, ("memory_actor_uss", "memory_actor_pss", "memory_sandbox_uss",
                                           "memory_sandbox_pss")),
    _Section("lost", "lost / reordered across reloads", _lost, ("lost",)),
)

SECTIONS: tuple[str, ...] = tuple(s.name for s in _SECTIONS)
"""What ``--only`` accepts."""

ROWS: tuple[str, ...] = tuple(row for s in _SECTIONS for row in s.rows)
"""Every row a full run reports, in order."""


# -- running and reporting ---------------------------------------------------------------------


def _write(folder: Path, files: Mapping[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


@contextmanager
def _scratch() -> Iterator[Path]:
    """A fresh folder inside the configured ``state_dir``, removed afterwards."""
    parent = Path(HostConfig().state_dir)
    parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="bench-", dir=parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def machine() -> dict[str, Any]:
    """The machine and versions a run measured."""
    from importlib import metadata

    cpu = ""
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "")
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "thespian": metadata.version("thespian"), "cloudpickle": metadata.version("cloudpickle"),
            "plugin_host": metadata.version("plugin-host"), "platform": platform.platform(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1), "load_average": os.getloadavg()}


def _run_sections(b: _Bench, sections: Sequence[_Section]) -> tuple[list[Row], dict[str, str]]:
    rows: list[Row] = []
    errors: dict[str, str] = {}
    for section in sections:
        b.progress.section(section.label)
        try:
            rows += section.run(b)
        except Exception as exc:  # noqa: BLE001 - one broken section must not hide the others
            errors[section.name] = f"{type(exc).__name__}: {exc}"
            print(f"bench: {section.name} failed: {errors[section.name]}", file=sys.stderr, flush=True)
        b.progress.tick(done_section=True)
    return rows, errors


def run_bench(*, quick: bool = False, json_path: str | os.PathLike[str] | None = None,
              only: Sequence[str] | None = None) -> int:
    """Run the bench, print the table on stdout and optionally write the JSON report.

    Args:
        quick: fewer samples and a 20-actor instead of a 100-actor reload (about 30 s).
        json_path: where to write the JSON report.
        only: section names (:data:`SECTIONS`) to run; default all.

    Returns:
        0; 1 when a section failed or a message was lost or reordered.
    """
    from .host import Host

    started, load = time.monotonic(), os.getloadavg()[0]
    sections = [s for s in _SECTIONS if not only or s.name in only]
    progress = _Progress(len(sections))
    with _scratch() as work:
        raw = _Raw(work)  # first: its admin forks from this process, which has no thread yet
        try:
            with Host(state_dir=str(work / "state")) as host:
                bench = _Bench(host, raw, _write(work / "plugins", acts.PLUGIN_SOURCES), work, quick, progress)
                rows, errors = _run_sections(bench, sections)
        finally:
            raw.shutdown()
            progress.stop()
    report = _report(rows, errors, quick, only, time.monotonic() - started, json_path)
    report["machine"]["load_average_start"] = load
    _print_report(report)
    if json_path is not None:
        Path(json_path).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    lost = report["rows"].get("lost")
    return 1 if errors or (lost is not None and lost["median"] != 0) else 0


def _report(rows: list[Row], errors: dict[str, str], quick: bool, only: Sequence[str] | None, duration: float,
            json_path: Any) -> dict[str, Any]:
    command = "plugin-host bench" + (" --quick" if quick else "") + (f" --json {json_path}" if json_path else "") + \
        (f" --only {' '.join(only)}" if only else "")
    summaries = {row.name: row.summary() for row in rows}
    return {"command": command, "mode": "quick" if quick else "full", "duration_s": round(duration, 1),
            "machine": machine(), "rows": summaries, "targets": evaluate_targets(summaries), "errors": errors,
            "notes": ["p99 of a rate (msg/s) is its slow tail: the 1st percentile of the per-burst rates",
                      "ratio = plugin-host median / raw Thespian median (same machine, same run, interleaved)"]}


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit in ("msg/s", "msgs"):
        return f"{value:,.0f}"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def _target_text(target: Mapping[str, Any], unit: str) -> str:
    bound = f"{target['bound']:g}" + ("×" if target["stat"] == "ratio" else f" {unit}")
    return f"{target['op'].replace('<=', '≤').replace('>=', '≥')} {bound}"


def _table(report: Mapping[str, Any], plain: bool) -> Any:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    targets = {t["row"]: t for t in report["targets"]}
    table = Table(box=box.SIMPLE_HEAD if plain else box.ROUNDED, header_style="bold")
    for column in ("row", "n", "median", "p99", "unit", "raw Thespian", "ratio", "target", ""):
        table.add_column(column, justify="left" if column in ("row", "unit", "target", "") else "right",
                         no_wrap=column != "row")
    styles = {"pass": "green", "fail": "bold red", "n/a": "dim"}
    for row in report["rows"].values():
        raw, target = row["raw"], targets.get(row["name"])
        table.add_row(row["label"], str(row["n"]), _fmt(row["median"], row["unit"]), _fmt(row["p99"], row["unit"]),
                      row["unit"], "" if raw is None else _fmt(raw["median"], row["unit"]),
                      "" if row["ratio"] is None else f"{row['ratio']:.2f}×",
                      "" if target is None else _target_text(target, row["unit"]),
                      Text("" if target is None else target["result"], style=styles.get(target["result"], ""))
                      if target else "")
    return table


def _print_report(report: Mapping[str, Any]) -> None:
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    plain = not console.is_terminal
    m = report["machine"]
    console.print(f"$ {report['command']}", markup=False, highlight=False)
    console.print(f"{report['mode']} mode, {report['duration_s']:.0f} s; {m['cores']} cores ({m['cpu']}), "
                  f"Python {m['python']}, Thespian {m['thespian']}, cloudpickle {m['cloudpickle']}, {m['platform']}; "
                  f"load average {m['load_average_start']:.2f} at the start, {m['load_average'][0]:.2f} at the end",
                  markup=False, highlight=False)
    console.print(_table(report, plain))
    for row in report["rows"].values():
        extra = [f"raw: {row['raw']['label']}"] if row["raw"] else []
        if row["note"]:
            extra.append(row["note"])
        if extra:
            console.print(f"  {row['name']}: {'; '.join(extra)}", markup=False, highlight=False)
    for note in report["notes"]:
        console.print(f"  {note}", markup=False, highlight=False)
    counts = {r: sum(1 for t in report["targets"] if t["result"] == r) for r in ("pass", "fail", "n/a")}
    console.print(f"targets: {counts['pass']} pass, {counts['fail']} fail, {counts['n/a']} n/a", highlight=False)
    for section, error in report["errors"].items():
        console.print(f"error in {section}: {error}", style="red", markup=False, highlight=False)
