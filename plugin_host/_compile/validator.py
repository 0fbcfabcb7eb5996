"""Import-time validation of a sandbox's modules in a separate, killable Python process: the host's end.

:func:`run_validator` writes the code table as JSON to a scratch folder and has it validated by
the child program of :mod:`plugin_host._compile.worker`: by default ``sys.executable`` started
there in a new session (its own process group) with stdin from ``/dev/null``, or a child forked
by a :class:`~plugin_host._compile.pool.CompilePool`'s warm worker.  Either way it reads the
child's stdout and stderr through pipes to their end (keeping a bounded tail of each) and turns
the JSON lines of the protocol into a :class:`ValidatorResult`.

When the time is up, the host asks the child for a stack dump (``faulthandler`` on ``SIGUSR1``,
written by a C signal handler, so it works even in ``while True: pass``) to name the line that was
running, then kills the whole process group, descendants the modules started included.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol, Sequence

import attrs

from .. import codeload

__all__ = ["ROOT", "Error", "Forker", "Outcome", "ValidatorResult", "collect", "kill_group", "run_validator"]

Error = tuple[str, int, str]
"""(file, line, message)."""
Outcome = tuple[str, str, bool, int | None]
"""(protocol stream, chatter, timed out, exit code) of one validator run."""

_GRACE_SECONDS = 0.3
"""How long a child that ran out of time gets to write its stack dump before it is killed."""
_MAX_CHATTER = 20_000
"""Bytes of the modules' own printing kept for ``CompileInfo.output`` (the last ones)."""
_MAX_PROTOCOL = 1_000_000
"""Bytes of the protocol stream kept; events are small, this only bounds a misbehaving child."""
ROOT = str(Path(__file__).resolve().parent.parent.parent)
"""The folder holding ``plugin_host``, first on a validator's ``sys.path`` while it starts."""
# The child must import plugin_host even when it is not installed (a checkout on PYTHONPATH);
# ``-P`` keeps the scratch working folder off sys.path.
_BOOTSTRAP = (
    "import sys; sys.path.insert(0, sys.argv[1]); from plugin_host._compile.worker import main; main(sys.argv[1:])"
)
_FRAME = re.compile(r'File "(?P<file>.*)", line (?P<line>\d+)')


class Forker(Protocol):
    """What :func:`run_validator` needs of a warm worker (a :class:`~plugin_host._compile.pool.CompilePool`)."""

    def _run(self, payload: Path, label: str, timeout: float) -> Outcome | None:
        """The outcome of the validation of ``payload`` in a forked child, or None to run it afresh."""
        ...


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
    audited: list[str] = attrs.field(factory=list)
    """What the runtime audit of the sandbox's profile recorded while top-level code ran (``event detail``,
    `` (refused)`` under ``restricted``)."""


def run_validator(
    table: codeload.CodeTable,
    targets: Sequence[str],
    plugin_classes: Sequence[str],
    *,
    timeout: float,
    label: str,
    pool: Forker | None = None,
    paths: Sequence[str] = (),
    profile: str = "standard",
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
        paths: folders put first on the import path (the sandbox's dependency environment).
        profile: the sandbox's security profile: top-level code runs under its runtime audit.
    """
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="plugin-host-compile-") as scratch:
        # The scratch folder is the child's working folder too: relative writes by top-level
        # code land there, never in the sources.
        payload = Path(scratch, "payload.json")
        payload.write_text(
            json.dumps(
                {
                    "modules": table.as_wire(),
                    "targets": list(targets),
                    "plugin_classes": list(plugin_classes),
                    "paths": list(paths),
                    "profile": profile,
                }
            ),
            encoding="utf-8",
        )
        outcome = pool._run(payload, label, timeout) if pool is not None else None
        if outcome is None:
            outcome = _run_fresh(payload, label, time.monotonic() + timeout)
    return _interpret(table, *outcome, timeout, time.monotonic() - start)


def _run_fresh(payload: Path, label: str, deadline: float) -> Outcome:
    with subprocess.Popen(
        [sys.executable, "-P", "-c", _BOOTSTRAP, ROOT, str(payload), label],
        stdin=subprocess.DEVNULL,  # top-level input() gets EOF instead of blocking
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=payload.parent,
        start_new_session=True,
    ) as proc:  # leaving closes the pipes and reaps the child
        assert proc.stdout is not None and proc.stderr is not None
        try:
            out, err, expired = collect(_FreshChild(proc), proc.stdout.fileno(), proc.stderr.fileno(), deadline)
        finally:
            kill_group(proc.pid)
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
    """The process running one validation, as :func:`collect` drives it."""

    def watch(self, selector: selectors.BaseSelector) -> None:
        """Register whatever else must be read while the child's pipes are drained."""

    def running(self) -> bool:
        """Whether the child has not exited yet."""

    def dump_stack(self) -> None:
        """Ask the child for a stack dump on its protocol stream."""

    def kill_group(self) -> None:
        """Kill the child's process group."""


def collect(child: _Child, out_fd: int, err_fd: int, deadline: float) -> tuple[str, str, bool]:
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
        kill_group(self.proc.pid)


def kill_group(pid: int) -> None:
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
        audited = [str(line) for line in result.get("audited", [])]
        return ValidatorResult(errors, chatter, False, elapsed, audited)
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
