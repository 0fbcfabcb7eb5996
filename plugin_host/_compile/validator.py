"""Import-time validation of a sandbox's modules in a separate, killable Python process: the host's end.

:func:`run_validator` writes the code table as JSON to a scratch folder and has it validated by
the child program of :mod:`plugin_host._compile.worker`: by default ``sys.executable`` started
there in a new session (its own process group) with stdin from ``/dev/null``, or a child forked
by a :class:`~plugin_host._compile.pool.CompilePool`'s warm worker.  Either way it reads the
child's stdout and stderr through pipes to their end (keeping a bounded tail of each) and turns
the JSON lines of the protocol into a :class:`ValidatorResult`.

**Which result counts.**  Plugin code runs in the validator's interpreter: it can write to any of
its file descriptors (the protocol stream is one), start threads, leave finalizers and ``atexit``
handlers, and walk ``gc`` or frames to read anything in memory.  So the host takes as the
validator's verdict only the line tagged with a per-job nonce (``secrets.token_hex``, sent over
stdin or with the warm worker's job, read before any plugin code runs and kept in a local):

* a result line without the nonce (any line plugin code writes without digging in memory) is never
  taken, and fails the compile as a forgery;
* the validator writes its line from inside the audited block, then ``os._exit`` at once (see
  :func:`plugin_host._compile.worker._finish`): no ``atexit`` handler, finalizer or thread of the
  plugin's writes after it, and whatever runs while it is built runs audited;
* plugin code that digs the nonce out of memory and writes a tagged line cannot pass it for the
  validator's while the validator still writes its own: two tagged lines fail the compile, none
  trusted.  It can still write one and end the process itself before the validator does (or
  simply catch its own ``PermissionError``): the verdict is made in the process plugin code runs
  in, so it is advisory, as the audit itself is (README, "What contains a sandbox").  What holds
  whatever the verdict: the operations ``restricted`` refuses were refused in the validator, and
  the sandbox root runs the same top-level code under the same audit and limits when it loads it.

**What confines it.**  Before any plugin code, the validator applies the job's hard rlimits (the
sandbox's ``max_memory_mb`` and ``max_cpu_seconds``, see :mod:`plugin_host._confine`), sets
``no_new_privs`` and drops every capability; for an ``isolation="user"`` sandbox (or a host whose
default it is) it also switches to ``nobody`` (``VALIDATION_USER`` of :mod:`plugin_host._client.code`:
the sandbox's own uid is given out by the admin only at the create, and a validation must not
reach the running processes of the sandbox whose new code it checks), with a root-owned readable
copy of the dependency environment in its scratch folder (``state_dir`` is not readable to it).
Every such validation runs as the same uid, so the scratch folder stays the host's (``0711``, not
listable), the payload (the whole source, read before the switch) readable by the host's uid only,
the copies read-only; only its working folder ``work`` is ``nobody``'s.
A warm pool serves every job: each forked child confines itself, per job, before plugin code;
the warm worker itself never runs plugin code.

When the time is up, the host asks the child for a stack dump (``faulthandler`` on ``SIGUSR1``,
written by a C signal handler, so it works even in ``while True: pass``) to name the line that was
running, then kills the validator, its child and its process group.  The validation runs as pid 1
of a PID namespace of its own (see :mod:`plugin_host._compile.worker`): when it ends, however it ends,
the kernel kills every process the modules started, ones that left the process group included.
While it runs, where ``groups`` are given (:class:`~plugin_host._cgroup.CompileGroups`), the validation is in
a control group of its own, made here and joined by the validator before any plugin code: its ``pids.max``
stops a fork loop, its memory limit bounds every process together; it is killed and removed at the end.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import secrets
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
from .._cgroup import CompileGroups, SandboxGroup, kill_still_listed
from ..config import ResourceLimits

__all__ = ["ROOT", "WORK", "Error", "Forker", "Outcome", "ValidatorResult", "collect", "kill_group", "run_validator"]

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
WORK = "work"
"""The validator's working folder, in the job's scratch folder (the validator's uid owns it)."""
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

    def _run(self, payload: Path, label: str, timeout: float, nonce: str) -> Outcome | None:
        """The outcome of the validation of ``payload`` (tagged ``nonce``) in a forked child, or None to run
        it afresh."""
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
    limits: ResourceLimits | None = None,
    user: tuple[int, int] | None = None,
    syscall_filter: str = "auto",
    groups: CompileGroups | None = None,
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
        limits: the sandbox's limits: its memory and CPU limits become the validator's hard rlimits.
        user: (uid, gid) the validator runs as (``isolation="user"``); None: the host's uid, without
            capabilities.
        syscall_filter: the sandboxes' seccomp filter: ``"auto"`` (where libseccomp loads), ``"required"``
            (the validation fails without it) or ``"off"``.
        groups: where the validation gets a control group of its own (made here, joined by the validator
            before any plugin code, killed and removed once it ends); None: none.

    Raises:
        ConfigError: ``groups`` are given, but this validation's cannot be made.
    """
    start = time.monotonic()
    given = limits or ResourceLimits()
    group = None if groups is None else groups.make(given.max_tasks, given.max_memory_mb)
    try:
        outcome, nonce = _run_in(
            table, targets, plugin_classes, timeout, label, pool, paths, profile, limits, user, syscall_filter, group
        )
    finally:
        if group is not None:
            group.remove()  # killed first: whatever the validation left, wherever it went in its namespace
    return _interpret(table, *outcome, timeout, time.monotonic() - start, nonce)


def _run_in(
    table: codeload.CodeTable,
    targets: Sequence[str],
    plugin_classes: Sequence[str],
    timeout: float,
    label: str,
    pool: Forker | None,
    paths: Sequence[str],
    profile: str,
    limits: ResourceLimits | None,
    user: tuple[int, int] | None,
    syscall_filter: str,
    group: SandboxGroup | None,
) -> tuple[Outcome, str]:
    """Write the job's payload to a scratch folder and run the validator on it; its outcome and nonce."""
    with tempfile.TemporaryDirectory(prefix="plugin-host-compile-") as scratch:
        # Its ``work`` subfolder is the child's working folder: relative writes by top-level code
        # land there, never in the sources, nor over the payload or the environment copies.
        work = Path(scratch, WORK)
        work.mkdir(mode=0o700)
        if user is not None:
            paths = _readable_copies(paths, Path(scratch))
        payload = Path(scratch, "payload.json")
        payload.touch(mode=0o600)  # read before the validator drops its privileges: the host's uid only
        payload.write_text(
            json.dumps(
                {
                    "modules": table.as_wire(),
                    "targets": list(targets),
                    "plugin_classes": list(plugin_classes),
                    "paths": list(paths),
                    "profile": profile,
                    "limits": _limits_wire(limits),
                    "user": None if user is None else list(user),
                    "syscall_filter": syscall_filter,
                    "cgroup": None if group is None else group.paths(),
                }
            ),
            encoding="utf-8",
        )
        if user is not None:
            # Every user validation runs as the same uid: the folder stays the host's and unlistable,
            # so another's processes can neither read the payload nor rename or replace a thing in it.
            os.chmod(scratch, 0o711)
            os.chown(work, user[0], user[1])
        nonce = secrets.token_hex(16)
        outcome = pool._run(payload, label, timeout, nonce) if pool is not None else None
        if outcome is None:
            outcome = _run_fresh(payload, label, time.monotonic() + timeout, nonce)
    return outcome, nonce


def _readable_copies(paths: Sequence[str], scratch: Path) -> list[str]:
    """Copies of the dependency environments (under ``state_dir``, which another uid cannot read) in the
    job's scratch folder, root's and read-only to everyone: what a validator run as another uid imports."""
    from .. import deps  # here, not at the top: a fresh validator imports this module, and must not load deps

    copies = []
    for number, path in enumerate(paths):
        copy = scratch / f"env-{number}"
        deps.copy_readable(path, copy)
        copies.append(str(copy))
    return copies


def _limits_wire(limits: ResourceLimits | None) -> dict[str, float] | None:
    """The limits the validator applies as hard rlimits (the others concern a running sandbox)."""
    if limits is None:
        return None
    wanted = {"max_memory_mb": limits.max_memory_mb, "max_cpu_seconds": limits.max_cpu_seconds}
    return {name: value for name, value in wanted.items() if value is not None}


def _run_fresh(payload: Path, label: str, deadline: float, nonce: str) -> Outcome:
    with subprocess.Popen(
        [sys.executable, "-P", "-c", _BOOTSTRAP, ROOT, str(payload), label],
        stdin=subprocess.PIPE,  # the nonce, then EOF (the child reopens it on /dev/null)
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=payload.parent / WORK,
        start_new_session=True,
    ) as proc:  # leaving closes the pipes and reaps the child
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        try:
            proc.stdin.write(nonce.encode() + b"\n")  # far below a pipe's buffer: never blocks
            proc.stdin.close()
        except OSError:
            pass  # it died at start: its exit code says so
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
    """Kill the validator ``pid``, its children and its process group: nothing its modules started may
    outlive the compile.

    Its child is pid 1 of the validation's PID namespace (see :mod:`plugin_host._compile.worker`): killing it
    kills every process in the namespace, even one plugin code moved to another session.  ``pid`` must
    not be reaped yet (so neither id can have been reused).
    """
    kill_still_listed(_children(pid), lambda: set(_children(pid)))  # never a pid reaped and reused meanwhile
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _children(pid: int) -> list[int]:
    """The children of process ``pid`` (single-threaded: its main thread's); none if it has exited."""
    try:
        return [int(n) for n in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def _interpret(
    table: codeload.CodeTable,
    out: str,
    chatter: str,
    expired: bool,
    code: int | None,
    timeout: float,
    elapsed: float,
    nonce: str,
) -> ValidatorResult:
    events, dump = _parse(out)
    result, forged = _the_result(events, nonce)
    if result is not None:
        errors = [(str(f), int(n), str(m)) for f, n, m in result["errors"]] + forged
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
    return ValidatorResult([(where[0], where[1], message), *forged], chatter, expired, elapsed)


def _the_result(events: list[dict[str, Any]], nonce: str) -> tuple[dict[str, Any] | None, list[Error]]:
    """The validator's own result among ``events``, and an error for each result line plugin code wrote.

    Only a line tagged with the job's nonce can be the validator's (see :mod:`plugin_host._compile.worker`):
    plugin code writing to the protocol stream (it is one of the process's file descriptors) does
    not know it.  Lines without it are forgeries, each an error of the compile.  Two tagged lines
    mean plugin code dug the nonce out of the validator's memory and wrote one: there is then no
    telling which is the validator's, and neither counts.
    """
    results = [e for e in events if e.get("event") == "result"]
    tagged = [e for e in results if hmac.compare_digest(str(e.get("nonce", "")).encode(), nonce.encode())]
    message = "top-level code wrote a result line of its own to the validator's protocol stream"
    forged = [("<validator>", 0, message)] if len(results) > len(tagged) else []
    if len(tagged) > 1:
        message = "more than one result line carries the job's nonce: top-level code forged one; none is trusted"
        return None, [("<validator>", 0, message)]
    return (tagged[0] if tagged else None), forged


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
