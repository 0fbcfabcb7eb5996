"""The warm compile worker: validations forked from a process that has already imported the runtime.

A :class:`CompilePool` skips the start-up of a fresh interpreter (most of a small validation's
time): its *warm worker*, started on first use, is the validator program of
:mod:`plugin_host._compile.worker` with the runtime already imported, waiting on a Unix socket
(:func:`~plugin_host._compile.worker.serve`).  For each job it forks a child that becomes exactly
what a fresh validator would be (own session, the job's pipes as stdout and stderr, the scratch
folder as working folder) and runs the same code, so plugin code still runs only in a throwaway
process.  The host reads the child's pipes, passed with the job, and enforces the timeout as for
a fresh process (:func:`~plugin_host._compile.validator.collect`); the worker only forks, reports the
child's pid and exit code, and reaps it when told.  Whenever the worker fails, the job runs in a
fresh process and the next job starts a new worker.

This module is the host's end of that socket; the worker's end is in
:mod:`plugin_host._compile.worker`, and both change together.
"""

from __future__ import annotations

import json
import os
import select
import selectors
import signal
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Callable, final

import attrs

from .validator import ROOT, Outcome, collect, kill_group

if TYPE_CHECKING:
    # Imported lazily at run time: ``socket`` must not be among the modules a fresh validator
    # has loaded, or a sandbox module named ``socket`` would be refused as shadowing it.
    import socket

__all__ = ["MAX_MESSAGE", "CompilePool", "CompilePoolStatistics"]

_START_SECONDS = 10.0
"""How long a new warm worker may take to import the runtime before it counts as failed."""
_REPLY_SECONDS = 5.0
"""How long the warm worker may take to report a fork or an exit; it does nothing slow."""
_STOP_SECONDS = 2.0
"""How long a closed warm worker gets to exit by itself before its process group is killed."""
MAX_MESSAGE = 65536
"""Bytes of one control message between the host and its warm worker (paths and small events)."""
_SERVE_BOOTSTRAP = (
    "import sys; sys.path.insert(0, sys.argv[1]); from plugin_host._compile.worker import serve; serve(sys.argv[1:])"
)


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

    def _run(self, payload: Path, label: str, timeout: float, nonce: str) -> Outcome | None:
        """Run one validation (its result tagged ``nonce``) on the warm worker; None: run it in a fresh
        process instead."""
        outcome = None
        if not self._closed and os.getpid() == self._owner and self._lock.acquire(blocking=False):
            try:
                worker = self._worker or self._start()
                outcome = worker.run(payload, label, timeout, nonce) if worker is not None else None
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
                [sys.executable, "-P", "-c", _SERVE_BOOTSTRAP, ROOT, str(theirs.fileno()), label],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
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

    def run(self, payload: Path, label: str, timeout: float, nonce: str) -> Outcome | None:
        """Run one job in a child of the worker; None when the worker failed (it must go)."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            try:
                self._send_job(payload, label, nonce, [out_w, err_w])
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

    def _send_job(self, payload: Path, label: str, nonce: str, fds: list[int]) -> None:
        import socket

        self.child = None
        message = json.dumps({"payload": str(payload), "label": label, "nonce": nonce}).encode()
        socket.send_fds(self.sock, [message], fds)

    def _finish(self, child: _ForkedChild, out_r: int, err_r: int, deadline: float) -> Outcome | None:
        try:
            out, err, expired = collect(child, out_r, err_r, deadline)
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
            data = self.sock.recv(MAX_MESSAGE)
            event = json.loads(data) if data else {}
            said = event.get("event")
            if said == "ready":
                self.ready = True
            elif said == "started":
                self.child = int(event["pid"])
            elif said == "exited":
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
        kill_group(self.pid)


def _stop_worker(proc: subprocess.Popen[bytes], sock: socket.socket, owner: int) -> None:
    """End a warm worker: close its socket (it exits by itself), then kill it if it does not."""
    if os.getpid() != owner:
        return  # a forked copy of the host: the worker is not its to stop
    sock.close()
    try:
        proc.wait(_STOP_SECONDS)
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        proc.wait()
