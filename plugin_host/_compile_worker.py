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
"""

from __future__ import annotations

import ast
import faulthandler
import importlib
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Sequence, TextIO

import attrs

from . import codeload
from .errors import SandboxStartError

__all__ = ["ValidatorResult", "main", "run_validator"]

Error = tuple[str, int, str]

# The names a sandbox may not shadow; the same list the sandbox root protects at run time.
_PROTECTED = ("actors", "plugin_host", "thespian", "cloudpickle", "attrs", "attr", "psutil")
_GRACE_SECONDS = 0.3
"""How long a child that ran out of time gets to write its stack dump before it is killed."""
_MAX_CHATTER = 20_000
"""Bytes of the modules' own printing kept for ``CompileInfo.output`` (the last ones)."""
_MAX_PROTOCOL = 1_000_000
"""Bytes of the protocol stream kept; events are small, this only bounds a misbehaving child."""
_ROOT = str(Path(__file__).resolve().parent.parent)
# The child must import plugin_host even when it is not installed (a checkout on PYTHONPATH);
# ``-P`` keeps the scratch working folder off sys.path.
_BOOTSTRAP = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from plugin_host._compile_worker import main; main(sys.argv[1:])"
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


# -- parent side ---------------------------------------------------------------------------


def run_validator(
    table: codeload.CodeTable,
    targets: Sequence[str],
    plugin_classes: Sequence[str],
    *,
    timeout: float,
    label: str,
) -> ValidatorResult:
    """Import ``targets`` (and check ``plugin_classes``) in a fresh Python process.

    Args:
        table: every module the imported ones may import.
        targets: module names to import, in this order.
        plugin_classes: ``module:Class`` names that must be Plugin or Supervisor subclasses.
        timeout: seconds the whole run may take; past it the process group is killed.
        label: what is being compiled; it appears on the child's command line, for ``ps``.
    """
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="plugin-host-compile-") as scratch:
        # The scratch folder is the child's working folder too: relative writes by top-level
        # code land there, never in the sources.
        payload = Path(scratch, "payload.json")
        payload.write_text(json.dumps(
            {"modules": table.as_wire(), "targets": list(targets), "plugin_classes": list(plugin_classes)}
        ), encoding="utf-8")
        with subprocess.Popen(
            [sys.executable, "-P", "-c", _BOOTSTRAP, _ROOT, str(payload), label],
            stdin=subprocess.DEVNULL,  # top-level input() gets EOF instead of blocking
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=scratch,
            start_new_session=True,
        ) as proc:  # leaving closes the pipes and reaps the child
            try:
                out, err, expired = _collect(proc, start + timeout)
            finally:
                _kill_group(proc)
    return _interpret(table, out, err, expired, proc.returncode, timeout, time.monotonic() - start)


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


def _collect(proc: subprocess.Popen[bytes], deadline: float) -> tuple[str, str, bool]:
    """Read stdout and stderr to their end or the deadline; kill what is left either way."""
    assert proc.stdout is not None and proc.stderr is not None
    tails = {proc.stdout.fileno(): _Tail(_MAX_PROTOCOL), proc.stderr.fileno(): _Tail(_MAX_CHATTER)}
    with selectors.DefaultSelector() as selector:
        for fd in tails:
            selector.register(fd, selectors.EVENT_READ)
        expired = not _drain(selector, tails, deadline)
        if expired and _running(proc):
            os.kill(proc.pid, signal.SIGUSR1)  # a stack dump names the line it was on; not send_signal, which reaps
            _drain(selector, tails, time.monotonic() + _GRACE_SECONDS)
        else:
            expired = False  # it finished; descendants it started still hold the pipes open
        _kill_group(proc)
        _drain(selector, tails, time.monotonic() + _GRACE_SECONDS)
    out, err = tails.values()
    return out.text(), err.text(), expired


def _drain(selector: selectors.BaseSelector, tails: dict[int, _Tail], deadline: float) -> bool:
    """Read until every stream is at its end (True) or the deadline passes (False)."""
    while selector.get_map():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        for key, _ in selector.select(remaining):
            chunk = os.read(key.fd, 65536)
            if chunk:
                tails[key.fd].add(chunk)
            else:
                selector.unregister(key.fd)
    return True


def _running(proc: subprocess.Popen[bytes]) -> bool:
    # WNOWAIT: an exited child stays a zombie, so its process group id cannot be reused
    # before _kill_group has run.
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
    except ChildProcessError:
        return False


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the child's process group: anything its modules started must not outlive the compile."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
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
    errors = _install(table)
    if not errors:
        failed, errors = _import_all(table, payload["targets"], results)
        errors += _check_classes(table, payload["plugin_classes"], plugin_bases, failed)
    _emit(results, {"event": "result", "errors": errors})
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    # Skip atexit handlers and the join of non-daemon threads that plugin code may have started.
    os._exit(0)


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
        codeload.install(table, protected=_PROTECTED)
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
