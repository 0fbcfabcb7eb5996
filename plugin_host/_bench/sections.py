"""The measuring sections of ``plugin-host bench``: each row on plugin-host and on raw Thespian.

Each section takes the run's ``_Bench`` (:mod:`plugin_host._bench.harness`) and returns its
rows; :mod:`plugin_host.bench` lists the sections (``SECTIONS``), runs them and reports.
The host and the compiler are imported inside the sections, when a bench runs.
"""

from __future__ import annotations

import functools
import os
import signal
import threading
import time
from contextlib import ExitStack, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Iterator, Sequence

import attrs
import psutil

from ..errors import PluginError
from ..states import NodeStatus
from . import actors as acts
from .harness import Row, _Bench, _BenchError, _expect, _gone, _ms, _pair, _Raw, _wait, _write
from .remote import _Node, _RawConvention

if TYPE_CHECKING:  # the host loads only when a bench runs
    from thespian.actors import ActorAddress

    from ..host import Host
    from ..values import Artifact, ReloadResult

__all__ = ["MIB", "THREADS"]

MIB = 1024 * 1024
"""Bytes in a MiB (the memory rows' unit)."""


def _call(b: _Bench) -> list[Row]:
    echo = b.raw.create(acts.Echo)
    with b.sandbox("bench-call", "roots:Trio") as sid:
        host, raw = _pair(
            b,
            b.n(500, 100),
            lambda: _ms(lambda: _expect(b.host.call(sid, "a", "ping"), "ping")),
            lambda: _ms(lambda: _expect(b.raw.ask(echo, "ping"), "ping")),
            warmup=50,
        )
    return [Row("call", "call round trip: Host.call", "ms", host, raw, "ask to a bare actor")]


def _auth(b: _Bench) -> list[Row]:
    """What frame authentication adds per frame: seal, check and decode a sandbox's call reply in a host
    process (the restricted decoder), against pickling and unpickling the same envelope."""
    import pickle

    from .. import _wire
    from ..messages import Ok

    keys = b.host._system.keys
    if keys is None:
        raise _BenchError("the bench host has no keys (simpleSystemBase?)")
    sandbox = _wire.new_sandbox_principal("bench-auth")
    envelope = ("a sender address", Ok({"count": 42, "name": "bench", "tags": ["a", "b"]}, "3f2c1a9e8b7d-12345"))
    rounds = 1000

    def authenticated() -> float:
        start = time.perf_counter()
        for _ in range(rounds):
            keys.decode(keys.seal(sandbox.kid, pickle.dumps(envelope)).partition(b">")[2])
        return (time.perf_counter() - start) / rounds * 1e6

    def plain() -> float:
        start = time.perf_counter()
        for _ in range(rounds):
            pickle.loads(pickle.dumps(envelope))
        return (time.perf_counter() - start) / rounds * 1e6

    host, raw = _pair(b, b.n(50, 10), authenticated, plain)
    return [
        Row(
            "auth",
            f"one frame authenticated: seal + check + restricted decode ({rounds} per sample)",
            "µs",
            host,
            raw,
            "pickle dumps + loads, unauthenticated",
        )
    ]


_REMOTE = {"bench": "remote"}
"""The capability the member offers on either side, and the requirement that places the callee there."""


def _remote(b: _Bench) -> list[Row]:
    """``Host.call`` to a sandbox on a convention member vs a raw ``ask`` to an actor on a member.

    plugin-host: the bench's host leads; a ``plugin-host node`` process joins it.  Raw Thespian:
    a leader and a member system of its own, the echo actor created through the leader with
    ``targetActorRequirements``.  Both on loopback; the node boots while the raw systems start.
    """
    from thespian.actors import NoCompatibleSystemForActor

    port = b.host.admin_port
    if not port:
        raise _BenchError("the bench host has no admin port to lead a convention")
    with ExitStack() as stack:  # teardown, last first: the sandbox; SIGTERM to the node; the raw systems; the node
        node = _Node(b.work / "node", port, _REMOTE, b.host.config.credential_file)  # the convention's cookie
        stack.callback(node.stop)
        raw = _RawConvention(b.work / "raw-convention", _REMOTE)
        stack.callback(raw.shutdown)
        stack.callback(node.terminate)  # the node stops while the raw systems do
        raw.start()

        def placed() -> Any:
            try:
                return raw.system.createActor(acts.RemoteEcho, targetActorRequirements=_REMOTE)
            except NoCompatibleSystemForActor:
                return None  # the member has not registered with the leader yet

        echo = _wait(placed, timeout=30, interval=0.1, what="raw Thespian: no member of the convention took the actor")
        if not raw.member_runs(raw.ask(echo, "pid")):
            raise _BenchError("raw Thespian: the echo actor did not land on the member system")
        name = node.ready()["node"]
        _wait(
            lambda: any(n.name == name and n.status == NodeStatus.UP for n in b.host.nodes()),
            timeout=30,
            what=f"the host did not list the member {name} as up",
        )
        info = b.host.create_sandbox("bench-remote", "roots:Trio", sandbox_path=b.folder, requirements=_REMOTE)
        stack.callback(b.host.destroy_sandbox, "bench-remote")
        if info.node != name or not any(p.pid == info.pid for p in node.processes()):
            raise _BenchError(f"the sandbox did not land on the member {name} (it is on {info.node})")
        host, raw_samples = _pair(
            b,
            b.n(500, 100),
            lambda: _ms(lambda: _expect(b.host.call("bench-remote", "a", "ping"), "ping")),
            lambda: _ms(lambda: _expect(raw.ask(echo, "ping"), "ping")),
            warmup=50,
        )
    return [
        Row(
            "remote",
            "call round trip to a sandbox on another actor system: Host.call",
            "ms",
            host,
            raw_samples,
            "ask to a bare actor placed on a member (targetActorRequirements)",
            note="a convention of two systems on loopback; no anchored target",
        )
    ]


THREADS = (1, 4, 16)
"""Calling threads of the ``threads_<n>`` rows."""


def _threaded_rate(threads: int, calls: int, session: Callable[[], ContextManager[Callable[[], Any]]]) -> float:
    """Calls per second when ``threads`` fresh threads share ``calls`` calls, each thread making its calls
    through one ``session`` (timed from its opening); every call must succeed."""
    failures: list[BaseException] = []
    ready = threading.Barrier(threads + 1)

    def work(count: int) -> None:
        ready.wait()
        try:
            with session() as call:
                for _ in range(count):
                    call()
        except BaseException as exc:  # noqa: BLE001 - reported below, in the bench's thread
            failures.append(exc)

    workers = [threading.Thread(target=work, args=(calls // threads,)) for _ in range(threads)]
    for worker in workers:
        worker.start()
    ready.wait()
    start = time.perf_counter()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - start
    if failures:
        raise _BenchError(f"{len(failures)} of {threads} calling threads failed: {failures[0]!r}")
    return calls // threads * threads / elapsed


def _threads(b: _Bench) -> list[Row]:
    """Aggregate call throughput from 1, 4 and 16 calling threads, each started fresh for its sample (so a
    thread's private context is made and released every time), against raw asks from as many threads,
    each through a private context of its own (the ActorSystem object is not thread-safe)."""
    echo = b.raw.create(acts.Echo)
    calls = b.n(480, 96)

    @contextmanager
    def raw_session() -> Iterator[Callable[[], Any]]:
        with b.raw.system.private() as context:
            yield lambda: _expect(context.ask(echo, "ping", 10), "ping")

    rows = []
    with b.sandbox("bench-threads", "roots:Trio") as sid:

        def host_session() -> ContextManager[Callable[[], Any]]:
            return nullcontext(lambda: _expect(b.host.call(sid, "a", "ping"), "ping"))

        for threads in THREADS:
            host, raw = _pair(
                b,
                b.n(8, 3),
                functools.partial(_threaded_rate, threads, calls, host_session),
                functools.partial(_threaded_rate, threads, calls, raw_session),
                warmup=1,
            )
            rows.append(
                Row(
                    f"threads_{threads}",
                    f"call throughput from {threads} calling thread(s), {calls} calls in all",
                    "msg/s",
                    host,
                    raw,
                    "asks from as many threads, a private context each",
                    higher_is_better=True,
                )
            )
    return rows


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
        host, raw = _pair(
            b,
            b.n(10, 3),
            lambda: batch("host", lambda: b.host.cast(sid, "b", "tick"), lambda: b.host.call(sid, "b", "ticks")),
            lambda: batch("raw", lambda: b.raw.tell(echo, "tick"), lambda: b.raw.ask(echo, "ticks")),
            warmup=1,
        )
    return [
        Row(
            "cast",
            f"cast throughput host → actor ({burst} casts, then a call)",
            "msg/s",
            host,
            raw,
            "tell, then an ask",
            higher_is_better=True,
        )
    ]


def _burst_rate(
    burst: int, reset: Callable[[], Any], trigger: Callable[[], Any], stats: Callable[[], tuple[int, float, float]]
) -> float:
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
            b,
            b.n(10, 3),
            lambda: _burst_rate(
                burst,
                lambda: call(sid, "sink", "reset"),
                lambda: call(sid, "sender", ("burst", burst, "sink")),
                lambda: call(sid, "sink", "stats"),
            ),
            lambda: _burst_rate(
                burst,
                lambda: ask(sink, "reset"),
                lambda: ask(sender, ("burst", burst, sink)),
                lambda: ask(sink, "stats"),
            ),
            warmup=1,
        )
    return [
        Row(
            "sibling",
            f"sibling → sibling throughput (self.cast, {burst}-message bursts)",
            "msg/s",
            host,
            raw,
            "actor → actor sends",
            higher_is_better=True,
            note="measured by the receiver",
        )
    ]


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
    return [
        Row(
            "sandbox_create",
            "create a sandbox (root + 3 workers, all running)",
            "ms",
            [h[0] for h, _ in both],
            [r[0] for _, r in both],
            raw_label,
        ),
        Row(
            "sandbox_destroy",
            "destroy it (until every process is gone)",
            "ms",
            [h[1] for h, _ in both],
            [r[1] for _, r in both],
            "ActorExitRequest to the parent",
        ),
    ]


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


def _raw_crash_once(raw: _Raw, parent: ActorAddress) -> float:
    old = raw.ask(parent, ("await_new", -1))
    start = time.perf_counter()
    os.kill(old, signal.SIGKILL)
    raw.ask(parent, ("await_new", old))
    return (time.perf_counter() - start) * 1000


_CRASHES = (
    ("exception", "raise", "an exception in handle_call"),
    ("exit", "exit", "os._exit(3)"),
    ("sigkill", None, "SIGKILL from outside"),
    ("segfault", "segfault", "a segfault (ctypes)"),
)


def _crash(b: _Bench) -> list[Row]:
    from thespian.actors import ActorExitRequest

    count, rows = b.n(20, 5), []
    with b.sandbox("bench-crash", "roots:One") as sid:
        for kind, request, what in _CRASHES:
            samples = b.repeat(count, functools.partial(_crash_once, b.host, sid, request))
            rows.append(
                Row(
                    f"crash_{kind}",
                    f"crash → restarted actor answers: {what}",
                    "ms",
                    samples,
                    note="from the crashing request (or the kill) to the new process's reply",
                )
            )
    parent = b.raw.create(acts.RawParent)
    b.raw.ask(parent, ("start", 1))
    rows[2].raw = b.repeat(count, lambda: _raw_crash_once(b.raw, parent))
    rows[2].raw_label = "SIGKILL, hand-written parent restarts (state lost)"
    b.raw.tell(parent, ActorExitRequest())
    return rows


def _hang(b: _Bench) -> list[Row]:
    from ..host import Host

    config = attrs.evolve(b.host.config, state_dir=str(b.work / "state-hang"), heartbeat_interval=0.1, hang_timeout=0.5)
    with Host(config) as host, b.sandbox("bench-hang", "roots:One", host) as sid:
        samples = b.repeat(b.n(8, 2), lambda: _crash_once(host, sid, "hang"), warmup=1)
    return [
        Row(
            "hang",
            "hang → detected, killed, answering again",
            "ms",
            samples,
            note="heartbeat_interval=0.1 s, hang_timeout=0.5 s; raw Thespian never detects a hang",
        )
    ]


def _reload(b: _Bench) -> list[Row]:
    rows = []
    for name, size, count in (
        ("reload_1", 1, b.n(30, 10)),
        ("reload_10", 10, b.n(20, 5)),
        ("reload_100", b.n(100, 20), b.n(10, 4)),
    ):
        turn = iter(range(1_000_000))
        folder, code = b.fleet(size)
        with b.sandbox(f"bench-{name}", "root:Root", folder=folder) as sid:
            before = b.host.call(sid, "c0", "inc")
            reload = functools.partial(_reload_once, b.host, sid, code, turn, size)
            samples = b.timed(count, reload)
            _expect(b.host.call(sid, "c0", "inc"), before + 1)  # state kept across every reload
        note = "quick mode: 20 actors (full mode: 100)" if size == 20 else "variants a/b alternate; state kept"
        rows.append(
            Row(
                name,
                f"hot reload of a compiled artifact, {size} actor(s)",
                "ms",
                samples,
                comparable=size != 20,
                note=note,
            )
        )
    return rows


def _reload_once(
    host: Host, sandbox_id: str, code: Sequence[Sequence[Artifact]], turn: Iterator[int], size: int
) -> ReloadResult:
    """One timed reload of the fleet's next variant (a and b alternate)."""
    return _updated(host.hot_reload(sandbox_id, code[(next(turn) + 1) % 2]), size)


def _updated(result: ReloadResult, size: int) -> ReloadResult:
    if len(result.actors_updated) < size:
        raise _BenchError(f"only {len(result.actors_updated)} of {size} actors reloaded")
    return result


def _reload_source(b: _Bench) -> list[Row]:
    serial, source = iter(range(1_000_000)), acts.counter_source("a")
    with b.sandbox("bench-source", "root:Root", folder=b.fleet(1)[0]) as sid:
        samples = b.timed(
            b.n(20, 5),
            lambda: _updated(
                b.host.hot_reload_source(sid, f"{source}\n# bench variant {next(serial)}\n", module="counter"), 1
            ),
        )
    return [
        Row(
            "reload_source",
            "hot_reload_source end to end (compile + validate + reload)",
            "ms",
            samples,
            note="the source differs each time (a comment), so the compile cache never hits",
        )
    ]


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
    from .. import compiler

    folder = _write(b.work / "compile-50", acts.many_modules(50))
    config, serial = b.host.config, iter(range(1_000_000))

    def cold() -> None:
        cache = b.work / f"cold-cache-{next(serial)}"  # empty: nothing of this folder is cached
        info = compiler.compile_sandbox(
            folder, timeout=config.compile_timeout, security_profile=config.security_profile, cache_dir=cache
        )
        _expect((len(info.artifacts), info.cached), (50, False))

    cold_samples = b.timed(b.n(5, 2), cold, warmup=1)
    b.host.compile_sandbox(folder)  # fills the host's cache
    cached = b.timed(b.n(20, 5), lambda: _expect(b.host.compile_sandbox(folder).cached, True), warmup=0)
    return [
        Row("compile_cold", "compile a 50-module plugin, cold (empty cache)", "ms", cold_samples),
        Row("compile_cached", "compile the same plugin again (cache hit)", "ms", cached),
    ]


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
    each, tree, raw_each, raw_tree = (
        "one plugin actor (worker)",
        "a sandbox: root + 3 workers",
        "a bare actor",
        "a parent + 3 children",
    )
    return [
        Row("memory_actor_uss", f"private memory (USS) of {each}", "MiB", uss, raw_uss, raw_each),
        Row("memory_actor_pss", f"proportional memory (PSS) of {each}", "MiB", pss, raw_pss, raw_each),
        Row(
            "memory_sandbox_uss",
            f"USS of {tree}",
            "MiB",
            [sum(t[0]) for t in trees],
            [sum(t[0]) for t in raw_trees],
            raw_tree,
        ),
        Row(
            "memory_sandbox_pss",
            f"PSS of {tree}",
            "MiB",
            [sum(t[1]) for t in trees],
            [sum(t[1]) for t in raw_trees],
            raw_tree,
        ),
    ]


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
    bad = len(errors) + sum(1 for before, now in zip([0, *sequence], sequence, strict=False) if now != before + 1)
    return [
        Row(
            "lost",
            f"messages lost or reordered across {reloads} reloads under a call load",
            "msgs",
            [float(bad)],
            count=len(sequence),
            note=f"{len(replies)} sequential calls from a thread during {reloads} reloads; replies must be 1..n",
        )
    ]
