"""Import-time validation of a sandbox's modules in a separate, killable Python process.

Both ends of one small protocol live here, so they change together:

* the parent side, :func:`run_validator`, writes the code table as JSON to a scratch folder,
  starts ``sys.executable`` there in a new session (its own process group) with stdin from
  ``/dev/null``, and reads its stdout and stderr through pipes to their end (keeping a bounded
  tail of each);
* the child side, :func:`main`, serves the sandbox's modules from memory under their plain names
  (the runtime's own :class:`~plugin_host.codeload.SandboxFinder`), imports them, checks the
  declared plugin classes, and writes JSON lines to its original stdout: ``importing`` before each
  module, then one ``result``.  Whatever the modules print goes to stderr instead, so it can never
  corrupt the protocol.

When the time is up, the parent asks the child for a stack dump (``faulthandler`` on ``SIGUSR1``,
written by a C signal handler, so it works even in ``while True: pass``) to name the line that was
running, then kills the whole process group, descendants the modules started included.

A :class:`CompilePool` skips the start-up of a fresh interpreter (most of a small validation's
time): its *warm worker*, started on first use, is that same child program with the runtime
already imported, waiting on a Unix socket (:func:`serve`).  For each job it forks a child that
becomes exactly what a fresh validator would be (own session, the job's pipes as stdout and
stderr, the scratch folder as working folder) and runs the same code, so plugin code still runs
only in a throwaway process.  The parent reads the child's pipes, passed with the job, and
enforces the timeout as for a fresh process; the worker only forks, reports the child's pid and
exit code, and reaps it when told.  Whenever the worker fails, the job runs in a fresh process
and the next job starts a new worker.
"""

from __future__ import annotations

import ast
import faulthandler
import importlib
import json
import os
import re
import select
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NoReturn, Protocol, Sequence, TextIO, final

import attrs

from . import codeload
from .errors import SandboxStartError

if TYPE_CHECKING:
    # Imported lazily at run time: ``socket`` must not be among the modules a fresh validator
    # has loaded, or a sandbox module named ``socket`` would be refused as shadowing it.
    import socket

__all__ = ["CompilePool", "CompilePoolStatistics", "ValidatorResult", "main", "run_validator", "serve"]

Error = tuple[str, int, str]
_Outcome = tuple[str, str, bool, int | None]
"""(protocol stream, chatter, timed out, exit code) of one validator run."""

_GRACE_SECONDS = 0.3
"""How long a child that ran out of time gets to write its stack dump before it is killed."""
_MAX_CHATTER = 20_000
"""Bytes of the modules' own printing kept for ``CompileInfo.output`` (the last ones)."""
_MAX_PROTOCOL = 1_000_000
"""Bytes of the protocol stream kept; events are small, this only bounds a misbehaving child."""
_START_SECONDS = 10.0
"""How long a new warm worker may take to import the runtime before it counts as failed."""
_REPLY_SECONDS = 5.0
"""How long the warm worker may take to report a fork or an exit; it does nothing slow."""
_STOP_SECONDS = 2.0
"""How long a closed warm worker gets to exit by itself before its process group is killed."""
_MAX_MESSAGE = 65536
"""Bytes of one control message between the host and its warm worker (paths and small events)."""
_ROOT = str(Path(__file__).resolve().parent.parent)
# The child must import plugin_host even when it is not installed (a checkout on PYTHONPATH);
# ``-P`` keeps the scratch working folder off sys.path.
_BOOTSTRAP = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from plugin_host._compile_worker import main; main(sys.argv[1:])"
)
_SERVE_BOOTSTRAP = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from plugin_host._compile_worker import serve; serve(sys.argv[1:])"
)
_FRAME = re.compile(r'File "(?P<file>.*)", line (?P<line>\d+)')


@attrs.frozen
class ValidatorResult:
    """What one validation run found."""

    errors: list[Error]
    """(file, line, message) for every module that failed to import and every bad plugin class."""
    chatter: str
    """What the modules' top-level code printed (stdout and stderr), possibly truncated."""
    timed_out: bool
    """The run was killed at its timeout; ``errors`` names the module (and line) it was in."""
    elapsed: float
    """Wall-clock seconds, process start-up included."""


@attrs.frozen
class CompilePoolStatistics:
    """A snapshot of a :class:`CompilePool`'s counters."""

    worker_pid: int | None
    """The warm worker's process id, or ``None`` when none runs."""
    warm_jobs: int
    """Validations that ran in a child forked by the warm worker."""
    cold_jobs: int
    """Validations that ran in a fresh process: the pool was busy, closed or its worker failed."""
    worker_starts: int
    """Warm workers started so far (more than one: a worker failed and was replaced)."""


# -- parent side ---------------------------------------------------------------------------


def run_validator(
    table: codeload.CodeTable,
    targets: Sequence[str],
    plugin_classes: Sequence[str],
    *,
    timeout: float,
    label: str,
    pool: CompilePool | None = None,
    paths: Sequence[str] = (),
) -> ValidatorResult:
    """Import ``targets`` (and check ``plugin_classes``) in a separate, throwaway Python process.

    Args:
        table: every module the imported ones may import.
        targets: module names to import, in this order.
        plugin_classes: ``module:Class`` names that must be Plugin or Supervisor subclasses.
        timeout: seconds the whole run may take; past it the process group is killed.
        label: what is being compiled; it appears on the child's command line, for ``ps``.
        pool: fork the process from this pool's warm worker; ``None``, or when the pool
            cannot: start a fresh interpreter.
    """
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="plugin-host-compile-") as scratch:
        # The scratch folder is the child's working folder too: relative writes by top-level
        # code land there, never in the sources.
        payload = Path(scratch, "payload.json")
        payload.write_text(json.dumps(
            {"modules": table.as_wire(), "targets": list(targets), "plugin_classes": list(plugin_classes),
             "paths": list(paths)}
        ), encoding="utf-8")
        outcome = pool._run(payload, label, timeout) if pool is not None else None
        if outcome is None:
            outcome = _run_fresh(payload, label, time.monotonic() + timeout)
    return _interpret(table, *outcome, timeout, time.monotonic() - start)


def _run_fresh(payload: Path, label: str, deadline: float) -> _Outcome:
    with subprocess.Popen(
        [sys.executable, "-P", "-c", _BOOTSTRAP, _ROOT, str(payload), label],
        stdin=subprocess.DEVNULL,  # top-level input() gets EOF instead of blocking
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=payload.parent,
        start_new_session=True,
    ) as proc:  # leaving closes the pipes and reaps the child
        assert proc.stdout is not None and proc.stderr is not None
        try:
            out, err, expired = _collect(_FreshChild(proc), proc.stdout.fileno(), proc.stderr.fileno(), deadline)
        finally:
            _kill_group(proc.pid)
    return out, err, expired, proc.returncode


class _Tail:
    """The last ``limit`` bytes of a stream: a module printing in a loop must not eat the host's memory."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > 2 * self.limit:
            self.dropped += len(self.data) - self.limit
            del self.data[: -self.limit]

    def text(self) -> str:
        text = self.data.decode("utf-8", errors="replace")
        return f"[... {self.dropped} bytes cut ...]\n{text}" if self.dropped else text


class _Child(Protocol):
    """The process running one validation, as :func:`_collect` drives it."""

    def watch(self, selector: selectors.BaseSelector) -> None:
        """Register whatever else must be read while the child's pipes are drained."""

    def running(self) -> bool:
        """Whether the child has not exited yet."""

    def dump_stack(self) -> None:
        """Ask the child for a stack dump on its protocol stream."""

    def kill_group(self) -> None:
        """Kill the child's process group."""


def _collect(child: _Child, out_fd: int, err_fd: int, deadline: float) -> tuple[str, str, bool]:
    """Read stdout and stderr to their end or the deadline; kill what is left either way."""
    tails = {out_fd: _Tail(_MAX_PROTOCOL), err_fd: _Tail(_MAX_CHATTER)}
    with selectors.DefaultSelector() as selector:
        for fd, tail in tails.items():
            selector.register(fd, selectors.EVENT_READ, tail)
        child.watch(selector)
        expired = not _drain(selector, deadline)
        if expired and child.running():
            child.dump_stack()  # names the line it was on
            _drain(selector, time.monotonic() + _GRACE_SECONDS)
        else:
            expired = False  # it finished; descendants it started still hold the pipes open
        child.kill_group()
        _drain(selector, time.monotonic() + _GRACE_SECONDS)
    out, err = tails.values()
    return out.text(), err.text(), expired


def _drain(selector: selectors.BaseSelector, deadline: float) -> bool:
    """Read until every stream is at its end (True) or the deadline passes (False).

    A registration whose data is not a :class:`_Tail` is a callback (the warm worker's socket):
    it is served, but the drain never waits for its end.
    """
    while any(isinstance(key.data, _Tail) for key in selector.get_map().values()):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        for key, _ in selector.select(remaining):
            if not isinstance(key.data, _Tail):
                key.data()
                continue
            chunk = os.read(key.fd, 65536)
            if chunk:
                key.data.add(chunk)
            else:
                selector.unregister(key.fd)
    return True


class _FreshChild:
    """A validator started as a fresh interpreter by this process."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc

    def watch(self, selector: selectors.BaseSelector) -> None:
        pass

    def running(self) -> bool:
        # WNOWAIT: an exited child stays a zombie, so its process group id cannot be reused
        # before kill_group has run.
        try:
            return os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
        except ChildProcessError:
            return False

    def dump_stack(self) -> None:
        os.kill(self.proc.pid, signal.SIGUSR1)  # not send_signal, which reaps

    def kill_group(self) -> None:
        _kill_group(self.proc.pid)


def _kill_group(pid: int) -> None:
    """Kill the child's process group: anything its modules started must not outlive the compile."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _interpret(
    table: codeload.CodeTable, out: str, chatter: str, expired: bool, code: int | None, timeout: float, elapsed: float
) -> ValidatorResult:
    events, dump = _parse(out)
    result = next((e for e in events if e.get("event") == "result"), None)
    if result is not None:
        errors = [(str(f), int(n), str(m)) for f, n, m in result["errors"]]
        return ValidatorResult(errors, chatter, False, elapsed)
    importing = next((e["module"] for e in reversed(events) if e.get("event") == "importing"), None)
    module = table.modules.get(importing or "")
    file = module.path if module else "<validator>"
    where = _innermost_frame(dump, {m.path for m in table.modules.values()}) or (file, 0)
    doing = f"importing {importing}" if importing else "starting up"
    if expired:
        message = f"{doing} did not finish within {timeout:g} s; the validator process was killed"
    else:
        last = chatter.strip().splitlines()[-1:] or ["no output"]
        message = f"the validator process exited with code {code} while {doing} ({last[0]})"
    return ValidatorResult([(where[0], where[1], message)], chatter, expired, elapsed)


def _parse(text: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Split the child's stdout into protocol events and stack-dump lines."""
    events: list[dict[str, Any]] = []
    other: list[str] = []
    for line in text.splitlines():
        try:
            event = json.loads(line) if line.startswith("{") else None
        except ValueError:
            event = None
        if isinstance(event, dict):
            events.append(event)
        else:
            other.append(line)
    return events, other


def _innermost_frame(dump: list[str], paths: set[str]) -> tuple[str, int] | None:
    # faulthandler prints the most recent call first.
    for line in dump:
        match = _FRAME.search(line)
        if match and match["file"] in paths:
            return match["file"], int(match["line"])
    return None


# -- parent side: the warm worker ------------------------------------------------------------


@final
class CompilePool:
    """A warm compile worker: validations fork from a process that has already imported the runtime.

    The worker process starts on the first validation that uses the pool.  Each validation runs
    in a child it forks, so top-level plugin code still runs only in a throwaway process, and
    the results, errors, outputs and timeouts are those of a fresh process.  One validation runs
    at a time; one that finds the pool busy, closed, or its worker failed, runs in a fresh
    process instead (and a failed worker is replaced on the next validation).

    Args:
        label: shown on the worker's command line for ``ps`` (a host passes its ``state_dir``).
    """

    def __init__(self, *, label: str = "") -> None:
        self.label = label
        self._owner = os.getpid()
        self._lock = threading.Lock()
        """Held while a validation runs on the worker: there is one worker, serving one job at a time."""
        self._state = threading.Lock()
        """Guards the fields below, which close() changes from any thread."""
        self._worker: _Worker | None = None
        self._closed = False
        self._counts = {"warm": 0, "cold": 0, "starts": 0}

    def __enter__(self) -> CompilePool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran."""
        return self._closed

    def close(self) -> None:
        """End the warm worker, waiting for a validation in progress to end; idempotent.

        Later validations through this pool run in fresh processes.
        """
        with self._state:
            self._closed = True
            worker = self._worker
        if worker is None or os.getpid() != self._owner:
            return  # a forked copy of the owner must not stop the owner's worker
        worker.shutdown()  # a job in progress sees the worker gone and ends at once
        with self._lock:
            worker.stop()
            with self._state:
                self._worker = None

    def statistics(self) -> CompilePoolStatistics:
        """The worker's pid and how many validations ran warm and cold."""
        with self._state:
            worker, counts = self._worker, dict(self._counts)
        pid = worker.pid if worker is not None else None
        return CompilePoolStatistics(pid, counts["warm"], counts["cold"], counts["starts"])

    def _run(self, payload: Path, label: str, timeout: float) -> _Outcome | None:
        """Run one validation on the warm worker; None: run it in a fresh process instead."""
        outcome = None
        if not self._closed and os.getpid() == self._owner and self._lock.acquire(blocking=False):
            try:
                worker = self._worker or self._start()
                outcome = worker.run(payload, label, timeout) if worker is not None else None
                if worker is not None and (outcome is None or worker.dead):
                    self._discard(worker)
            finally:
                self._lock.release()
        self._count("warm" if outcome is not None else "cold")
        return outcome

    def _start(self) -> _Worker | None:
        try:
            worker = _Worker(self.label)
        except OSError:
            return None
        ready = worker.wait(lambda: worker.ready, time.monotonic() + _START_SECONDS)
        with self._state:
            if ready and not self._closed:
                self._worker = worker
                self._counts["starts"] += 1
                return worker
        worker.stop()
        return None

    def _discard(self, worker: _Worker) -> None:
        worker.stop()
        with self._state:
            if self._worker is worker:
                self._worker = None

    def _count(self, kind: str) -> None:
        with self._state:
            self._counts[kind] += 1


class _Worker:
    """The host's end of one warm worker process: its socket and what it has reported."""

    def __init__(self, label: str) -> None:
        import socket

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)  # one send, one message
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-P", "-c", _SERVE_BOOTSTRAP, _ROOT, str(theirs.fileno()), label],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                pass_fds=[theirs.fileno()],
                cwd="/",  # pins no folder of the host's
                start_new_session=True,  # no terminal: Ctrl-C in the host's shell is not for it
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()  # the worker's copy is its own; ours would hide the worker's end
        self.pid = self.proc.pid
        self.sock = ours
        self.ready = False
        self.dead = False
        self.child: int | None = None
        self.exits: dict[int, int] = {}
        # Ends the process even if the pool is never closed (at garbage collection or exit).
        self._finalizer = weakref.finalize(self, _stop_worker, self.proc, ours, os.getpid())

    def run(self, payload: Path, label: str, timeout: float) -> _Outcome | None:
        """Run one job in a child of the worker; None when the worker failed (it must go)."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            try:
                self._send_job(payload, label, [out_w, err_w])
            finally:
                os.close(out_w)  # the child holds the write ends now: their end means its end
                os.close(err_w)
            deadline = time.monotonic() + timeout
            if not self.wait(lambda: self.child is not None, time.monotonic() + _REPLY_SECONDS) or not self.child:
                return None
            return self._finish(_ForkedChild(self, self.child), out_r, err_r, deadline)
        except OSError:
            return None
        finally:
            os.close(out_r)
            os.close(err_r)

    def _send_job(self, payload: Path, label: str, fds: list[int]) -> None:
        import socket

        self.child = None
        message = json.dumps({"payload": str(payload), "label": label}).encode()
        socket.send_fds(self.sock, [message], fds)

    def _finish(self, child: _ForkedChild, out_r: int, err_r: int, deadline: float) -> _Outcome | None:
        try:
            out, err, expired = _collect(child, out_r, err_r, deadline)
        finally:
            child.kill_group()
        if not self.wait(lambda: child.pid in self.exits, time.monotonic() + _REPLY_SECONDS):
            return None
        try:
            self.sock.send(b'{"op": "reap"}')  # its group is dead: the worker may free the pid
        except OSError:
            self.dead = True  # the job's outcome is complete all the same; the worker must go
        return out, err, expired, self.exits.pop(child.pid)

    def receive(self) -> None:
        """Read one message (the socket is readable); the end or garbage marks the worker dead."""
        try:
            data = self.sock.recv(_MAX_MESSAGE)
            event = json.loads(data) if data else {}
            kind = event.get("event")
            if kind == "ready":
                self.ready = True
            elif kind == "started":
                self.child = int(event["pid"])
            elif kind == "exited":
                self.exits[int(event["pid"])] = int(event["code"])
            else:
                self.dead = True
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            self.dead = True

    def wait(self, condition: Callable[[], bool], deadline: float) -> bool:
        """Read messages until ``condition()`` holds; False if the worker died or the deadline passed."""
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        while not condition():
            if self.dead:
                return False
            # At or past the deadline this still reads what has already arrived.
            if not poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
                return condition()
            self.receive()
        return True

    def shutdown(self) -> None:
        """Tell the worker to end (it sees the end of its socket), without waiting."""
        import socket

        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def stop(self) -> None:
        """End the worker process and close the socket; idempotent."""
        self._finalizer()


class _ForkedChild:
    """A validator forked by the warm worker: its pid, and the worker that reports its exit."""

    def __init__(self, worker: _Worker, pid: int) -> None:
        self.worker = worker
        self.pid = pid

    def watch(self, selector: selectors.BaseSelector) -> None:
        selector.register(self.worker.sock, selectors.EVENT_READ, lambda: self._readable(selector))

    def _readable(self, selector: selectors.BaseSelector) -> None:
        self.worker.receive()
        if self.worker.dead:
            # Without the worker the exit code is lost and the job will run again in a fresh
            # process: end this one now instead of at its deadline.
            selector.unregister(self.worker.sock)
            self.kill_group()

    def running(self) -> bool:
        self.worker.wait(lambda: self.pid in self.worker.exits, time.monotonic())  # read pending reports
        # A dead worker's child was killed at once (see _readable): nothing is left to dump.
        return not self.worker.dead and self.pid not in self.worker.exits

    def dump_stack(self) -> None:
        # Safe: the worker reaps the child only when told, so the pid cannot have been reused.
        try:
            os.kill(self.pid, signal.SIGUSR1)
        except (ProcessLookupError, PermissionError):
            pass

    def kill_group(self) -> None:
        _kill_group(self.pid)


def _stop_worker(proc: subprocess.Popen[bytes], sock: socket.socket, owner: int) -> None:
    """End a warm worker: close its socket (it exits by itself), then kill it if it does not."""
    if os.getpid() != owner:
        return  # a forked copy of the host: the worker is not its to stop
    sock.close()
    try:
        proc.wait(_STOP_SECONDS)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        proc.wait()


# -- child side ----------------------------------------------------------------------------


def main(argv: Sequence[str]) -> None:
    """Entry point of the validator process: ``argv`` is ``[root, payload, label]``; never returns."""
    results = _claim_stdout()
    faulthandler.register(signal.SIGUSR1, file=results, all_threads=True)
    payload = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    table = codeload.CodeTable.from_wire({k: (p, s, pkg) for k, (p, s, pkg) in payload["modules"].items()})
    plugin_bases = _plugin_bases() if payload["plugin_classes"] else ()
    if sys.path and sys.path[0] == argv[0]:
        del sys.path[0]  # the bootstrap's entry: sandbox code sees the host's usual sys.path
    _validate(results, table, payload, plugin_bases)


def _validate(results: TextIO, table: codeload.CodeTable, payload: dict[str, Any], bases: tuple[type, ...]) -> NoReturn:
    sys.path[:0] = payload.get("paths", [])  # the sandbox's dependency environment comes first, as in the sandbox
    errors = _install(table)
    if not errors:
        failed, errors = _import_all(table, payload["targets"], results)
        errors += _check_classes(table, payload["plugin_classes"], bases, failed)
    _emit(results, {"event": "result", "errors": errors})
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    # Skip atexit handlers and the join of non-daemon threads that plugin code may have started.
    os._exit(0)


# -- warm worker side ----------------------------------------------------------------------


@attrs.frozen
class _Baseline:
    """The modules a fresh validator has loaded when it installs the sandbox's modules."""

    plain: frozenset[str]
    """Without plugin classes to check."""
    with_bases: frozenset[str]
    """With plugin classes to check (``actors`` is imported first)."""


def serve(argv: Sequence[str]) -> None:
    """Entry point of the warm worker: ``argv`` is ``[root, socket fd, label]``; never returns."""
    plain = frozenset(sys.modules)  # the bootstrap imported what main's has at the same point
    _plugin_bases()  # the runtime a child needs, imported once for all of them
    baseline = _Baseline(plain, frozenset(sys.modules))
    import gc
    import socket

    if sys.path and sys.path[0] == argv[0]:
        del sys.path[0]  # as in main: the forked children see the host's usual sys.path
    channel = socket.socket(fileno=int(argv[1]))
    gc.freeze()  # children share the warm heap instead of copying the pages the collector touches
    try:
        channel.send(json.dumps({"event": "ready", "pid": os.getpid()}).encode())
        while _serve_one(channel, baseline):
            pass
    except (OSError, ValueError):
        pass  # the host's end is gone, or it broke the protocol: there is nobody left to serve
    os._exit(0)


def _serve_one(channel: socket.socket, baseline: _Baseline) -> bool:
    """Fork a child for the next job and report on it; False when the host has closed its end."""
    job = _receive_job(channel)
    if job is None:
        return False
    message, fds = job
    pid = os.fork()
    if pid == 0:
        _run_forked(channel, message, fds, baseline)
    for fd in fds:
        os.close(fd)
    try:
        channel.send(json.dumps({"event": "started", "pid": pid}).encode())
        code = _await_exit(channel, pid)
        if code is None:
            return False
        channel.send(json.dumps({"event": "exited", "pid": pid, "code": code}).encode())
        # Reaping frees the pid, so it waits until the host has killed the child's group.
        return channel.recv(_MAX_MESSAGE) != b""
    finally:
        _kill_group(pid)
        os.waitpid(pid, 0)


def _receive_job(channel: socket.socket) -> tuple[dict[str, str], list[int]] | None:
    import socket

    data, fds, flags, _ = socket.recv_fds(channel, _MAX_MESSAGE, 2)
    if data and len(fds) == 2 and not flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        return json.loads(data), fds
    for fd in fds:
        os.close(fd)
    if data:
        raise OSError(f"malformed job message from the host ({len(data)} bytes, {len(fds)} fds)")
    return None


def _await_exit(channel: socket.socket, pid: int) -> int | None:
    """The child's exit code (Popen style: -N for signal N), leaving it a zombie; None if the
    host's end became readable first: it is gone (or broke the protocol)."""
    try:
        pidfd: int | None = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None  # before Linux 5.3: poll for the exit instead
    poller = select.poll()
    poller.register(channel, select.POLLIN)
    if pidfd is not None:
        poller.register(pidfd, select.POLLIN)
    try:
        while True:
            ready = {fd for fd, _ in poller.poll(None if pidfd is not None else 10)}
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            if info is not None:
                return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
            if channel.fileno() in ready:
                return None
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _run_forked(channel: socket.socket, message: dict[str, str], fds: list[int], baseline: _Baseline) -> NoReturn:
    """The forked child: turn into what a fresh validator would be, then run the job as it does."""
    try:
        channel.close()  # plugin code must not reach the worker, nor keep its socket open
        os.setsid()  # its own process group: the host kills it, and all it starts, at once
        for target, fd in zip((1, 2), fds):
            os.dup2(fd, target)
            os.close(fd)
        payload_path = message["payload"]
        os.chdir(os.path.dirname(payload_path))
        sys.argv = ["-c", _ROOT, payload_path, message["label"]]
        results = _claim_stdout()
        faulthandler.register(signal.SIGUSR1, file=results, all_threads=True)
        payload = json.loads(Path(payload_path).read_text(encoding="utf-8"))
        table = codeload.CodeTable.from_wire({k: (p, s, pkg) for k, (p, s, pkg) in payload["modules"].items()})
        bases = _plugin_bases() if payload["plugin_classes"] else ()
        _forget_warm_modules(table, baseline.with_bases if bases else baseline.plain)
        _validate(results, table, payload, bases)
    except BaseException:  # noqa: BLE001 - whatever happens, this process must never return to the worker loop
        traceback.print_exc()  # exit code 1 and a traceback, as an uncaught error in a fresh process
        sys.stderr.flush()
    os._exit(1)


def _forget_warm_modules(table: codeload.CodeTable, fresh: frozenset[str]) -> None:
    """Unload the warm modules a fresh validator would not have that the sandbox redefines.

    So a sandbox module named like one (``socket``, say) is accepted exactly as it is by a
    fresh validator, rather than refused as shadowing a module the runtime uses.
    """
    for name in table.modules:
        if name in sys.modules and name not in fresh:
            del sys.modules[name]


def _claim_stdout() -> TextIO:
    fd = os.dup(1)
    os.dup2(2, 1)  # module prints land with stderr, never in the protocol stream
    return os.fdopen(fd, "w", encoding="utf-8")


def _plugin_bases() -> tuple[type, ...]:
    from actors import Plugin, Supervisor

    return (Plugin, Supervisor)


def _emit(results: TextIO, event: dict[str, Any]) -> None:
    results.write(json.dumps(event) + "\n")
    results.flush()


def _install(table: codeload.CodeTable) -> list[Error]:
    try:
        codeload.install(table)  # the runtime's names are protected, as in a sandbox root
    except SandboxStartError as exc:
        names = getattr(exc, "modules", [])
        return [
            (table.modules[n].path, 0, f"module name {n!r} shadows a module the host runtime uses; rename it")
            for n in names
        ]
    return []


def _import_all(table: codeload.CodeTable, targets: Sequence[str], results: TextIO) -> tuple[set[str], list[Error]]:
    failed: set[str] = set()
    errors: list[Error] = []
    for name in targets:
        _emit(results, {"event": "importing", "module": name})
        try:
            importlib.import_module(name)
        except BaseException as exc:  # noqa: BLE001 - top-level plugin code may raise anything, SystemExit too
            failed.add(name)
            error = _locate(exc, table, name)
            if error not in errors:  # a broken module imported by several others is reported once
                errors.append(error)
    return failed, errors


def _locate(exc: BaseException, table: codeload.CodeTable, name: str) -> Error:
    """(file, line, message) at the innermost frame of the traceback that is sandbox code."""
    paths = {m.path for m in table.modules.values()}
    if isinstance(exc, SyntaxError) and exc.filename in paths:
        return exc.filename, exc.lineno or 0, f"SyntaxError: {exc.msg}"
    where = (table.modules[name].path, 0) if name in table.modules else ("<validator>", 0)
    for frame, line in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_filename in paths:
            where = (frame.f_code.co_filename, line)
    return where[0], where[1], f"{type(exc).__name__}: {exc}"


def _check_classes(
    table: codeload.CodeTable, specs: Sequence[str], bases: tuple[type, ...], failed: set[str]
) -> list[Error]:
    errors: list[Error] = []
    for spec in specs:
        module_name, _, qualname = spec.partition(":")
        if module_name in failed:
            continue  # its import error is already reported
        source = table.modules.get(module_name)
        file, line = (source.path, _class_line(source.source, qualname)) if source else (spec, 0)
        try:
            obj: Any = importlib.import_module(module_name)
            for part in qualname.split("."):
                obj = getattr(obj, part)
        except BaseException as exc:  # noqa: BLE001 - importing runs plugin code
            errors.append((file, line, f"plugin class {spec} not found: {type(exc).__name__}: {exc}"))
            continue
        if not (isinstance(obj, type) and issubclass(obj, bases)):
            errors.append((file, line, f"plugin class {spec} is not a subclass of actors.Plugin or actors.Supervisor"))
    return errors


def _class_line(source: str, qualname: str) -> int:
    """Line of the top-level definition of ``qualname``'s first part, or 0."""
    first = qualname.split(".")[0]
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return 0
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == first:
            return node.lineno
    return 0
