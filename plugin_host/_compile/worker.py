"""The validator program: what runs in the separate, killable process that imports a sandbox's modules.

The host starts it with ``sys.executable -P -c`` and a one-line bootstrap that imports this
module from the host's checkout.  The host's ends of its protocols are
:mod:`plugin_host._compile.validator` (one validation) and :mod:`plugin_host._compile.pool` (the warm
worker's socket); each changes together with this module.  It has two entry points:

* :func:`main`, a validator: it serves the sandbox's modules from memory under their plain names
  (the runtime's own :class:`~plugin_host.codeload.SandboxFinder`), imports them, checks the
  declared plugin classes, and writes JSON lines to its original stdout: ``importing`` before each
  module, then one ``result`` tagged with the job's nonce (first line of stdin), after which it
  ends at once (why, and what the host trusts: :mod:`plugin_host._compile.validator`).  It runs
  as pid 1 of a PID namespace of its own (:func:`_own_pid_namespace`: nothing it starts outlives it),
  and confines itself first (hard rlimits, its own mount namespace as root, no capabilities,
  ``no_new_privs``, the job's uid).  Whatever the modules print goes to stderr instead, so it can never
  corrupt the protocol.  On ``SIGUSR1`` it writes a stack dump to the protocol stream (``faulthandler``),
  which names the line a module that ran out of time was on.
* :func:`serve`, the warm worker of a :class:`CompilePool`: with the runtime already imported, it
  waits on a Unix socket, and for each job forks a child that becomes exactly what :func:`main`
  would be and runs the same validation.  It only forks, reports the child's pid and exit code,
  and reaps it when told.

The host's ends are imported here too (and re-exported), so a fresh validator has loaded the
same modules whichever entry point it runs: a sandbox module is refused as shadowing one the
runtime uses by exactly the same rule.
"""

from __future__ import annotations

import ast
import ctypes
import faulthandler
import importlib
import json
import os
import resource
import select
import signal
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Sequence, TextIO

import attrs

from .. import _audit, codeload
from .. import _confine as confine
from .. import _namespace as namespace
from .._cgroup import SandboxGroup
from ..config import ResourceLimits
from ..errors import SandboxStartError
from ..values import AuditRecord
from .pool import MAX_MESSAGE, CompilePool, CompilePoolStatistics
from .validator import ROOT, WORK, Error, ValidatorResult, kill_group, run_validator

_AUDIT_ID = "(compile)"  # the sandbox id of the validator's audit records: the sandbox may not exist yet
_CLONE_NEWPID = 0x20000000
_CLONE_NEWUSER = 0x10000000
_PR_SET_PDEATHSIG = 1

if TYPE_CHECKING:
    # Imported lazily at run time: ``socket`` must not be among the modules a fresh validator
    # has loaded, or a sandbox module named ``socket`` would be refused as shadowing it.
    import socket

__all__ = ["CompilePool", "CompilePoolStatistics", "ValidatorResult", "main", "run_validator", "serve"]


# -- child side ----------------------------------------------------------------------------


def main(argv: Sequence[str]) -> None:
    """Entry point of the validator process: ``argv`` is ``[root, payload, label]``, the job's nonce the
    first line of stdin; never returns."""
    payload = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    _join_group(payload)  # first: this process, pid 1 and all it forks are in the validation's group
    contained = _own_pid_namespace()
    nonce = _read_nonce()
    confine.load_syscall_library()  # libseccomp's imports now, as a warm worker's: see serve
    results = _claim_stdout()
    faulthandler.register(signal.SIGUSR1, file=results, all_threads=True)
    table = codeload.CodeTable.from_wire({k: (p, s, pkg) for k, (p, s, pkg) in payload["modules"].items()})
    plugin_bases = _plugin_bases() if payload["plugin_classes"] else ()
    if sys.path and sys.path[0] == argv[0]:
        del sys.path[0]  # the bootstrap's entry: sandbox code sees the host's usual sys.path
    _validate(results, table, payload, plugin_bases, nonce, contained)


def _join_group(payload: dict[str, Any]) -> None:
    """Move this process into the validation's control group (the job's ``cgroup`` paths, made by the host:
    see :mod:`plugin_host._compile.validator`), before any plugin code and while it is still root: whatever
    it forks is in it too, counted against its ``pids.max`` and memory limit, and killed with it; the seal of
    :func:`_own_namespace` keeps plugin code from moving out.  No paths: no group (the host makes none)."""
    paths = payload.get("cgroup")
    if paths:
        SandboxGroup.at(paths).join()


def _own_pid_namespace() -> bool:
    """Run the rest of the validation as pid 1 of a new PID namespace; True in that process, False where no
    namespace can be had (the validation then runs in this process, as before).

    When pid 1 of a namespace ends, the kernel kills every other process in it: so nothing plugin code
    starts (a double fork, ``setsid``) outlives the validation, whichever way it ends.  This process
    stays outside as the one the host knows: it passes ``SIGUSR1`` (the stack dump) on, waits, and ends
    as pid 1 ended; the host kills its children with its group (see
    :func:`plugin_host._compile.validator.kill_group`), and pid 1 dies with it (``PR_SET_PDEATHSIG``).
    The namespace is made here, before privileges are dropped: the seccomp filter refuses it later.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if not _unshare_pid(libc):
        return False
    child = os.fork()
    if child == 0:
        # A session of its own at once: plugin code in the namespace then shares no process group with the
        # process outside, so no kill(0, ...) of a process it forks (one that stayed in this group) reaches it.
        os.setsid()
        _die_with_parent()
        _ending_signals()
        return True
    _relay(child)


_ENDING_SIGNALS = (signal.SIGTERM, signal.SIGXCPU, signal.SIGHUP)
"""Signals whose default action ends a process, which the kernel does not deliver to pid 1 of a namespace
unless it handles them: RLIMIT_CPU's soft SIGXCPU (the named crash before the hard SIGKILL) above all."""


def _ending_signals() -> None:
    """In pid 1: end as a process without a namespace would, by exit code 128 + the signal (which
    :func:`_relay` passes on as that signal)."""
    for signum in _ENDING_SIGNALS:
        signal.signal(signum, lambda number, frame: os._exit(128 + number))


def _unshare_pid(libc: ctypes.CDLL) -> bool:
    """A new PID namespace for this process's next child: with ``CAP_SYS_ADMIN``, or else inside a new user
    namespace mapping only this process's own uid and gid (where unprivileged ones are allowed)."""
    if libc.unshare(_CLONE_NEWPID) == 0:
        return True
    uid, gid = os.geteuid(), os.getegid()
    if uid == 0 or libc.unshare(_CLONE_NEWUSER | _CLONE_NEWPID) != 0:
        return False
    try:  # the same ids inside as outside: files, signals and limits see the same user
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            fd = os.open(f"/proc/self/{name}", os.O_WRONLY)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)
    except OSError:
        return False  # nothing is forked into it: the validation runs here, as without one
    return True


def _die_with_parent() -> None:
    """``PR_SET_PDEATHSIG`` ``SIGKILL``: killing the process the host knows ends this one, and so its namespace
    (a change of uid clears it: set again after the switch)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _relay(child: int) -> NoReturn:
    """Outside the namespace: pass ``SIGUSR1`` on to ``child`` (pid 1 in it), wait, and end as it ended."""

    def forward(signum: int, frame: object) -> None:
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGUSR1, forward)
    try:
        _, status = os.waitpid(child, 0)
    except BaseException:  # noqa: BLE001 - this process must never go on to run the validation itself
        os._exit(1)
    ended_by = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) - 128 in _ENDING_SIGNALS:
        ended_by = os.WEXITSTATUS(status) - 128  # a signal pid 1 handled to end by (see _ending_signals)
    if ended_by is not None:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core of this process for pid 1's crash
        signal.signal(ended_by, signal.SIG_DFL)
        os.kill(os.getpid(), ended_by)  # the host sees -N, as for a validator without a namespace
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


def _read_nonce() -> str:
    """The job's nonce, the first line of stdin; stdin is ``/dev/null`` afterwards (top-level ``input()``
    gets EOF, and nothing more can be read of the host's pipe)."""
    data = b""
    while not data.endswith(b"\n") and len(data) < 256:
        chunk = os.read(0, 256 - len(data))
        if not chunk:
            break
        data += chunk
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    return data.decode("ascii", errors="replace").strip()


def _validate(
    results: TextIO,
    table: codeload.CodeTable,
    payload: dict[str, Any],
    bases: tuple[type, ...],
    nonce: str,
    contained: bool,
) -> NoReturn:
    """Confine this process, import the modules under the profile's audit, report, and end at once.

    The result is written from inside the audited block and followed by ``os._exit`` at once: what
    plugin code left to run later (a ``__del__``, a ``weakref.finalize``, an ``atexit`` handler, a
    replaced ``sys.stdout``'s ``flush``, a thread) runs audited or never (see :func:`_finish`).
    """
    paths = payload.get("paths", [])
    validator = os.getpid()
    _confine(payload)
    if contained:
        _die_with_parent()  # again: the switch of uid cleared it
    sys.path[:0] = paths  # the sandbox's dependency environment comes first, as in the sandbox
    errors = _install(table)
    audited: list[AuditRecord] = []
    if errors:
        _finish(results, nonce, errors, audited, validator)  # no plugin code ran
    # Top-level code runs under the sandbox's profile here as in the sandbox: ``restricted`` refuses
    # (the import fails, naming the line), ``standard`` records (the host shows what it did).
    control = _audit.install(_AUDIT_ID, payload.get("profile", "standard"), audited.append, paths)
    with control.plugin_code("(top level)"):
        failed, errors = _import_all(table, payload["targets"], results)
        errors += _check_classes(table, payload["plugin_classes"], bases, failed)
        _finish(results, nonce, errors, audited, validator)


def _confine(payload: dict[str, Any]) -> None:
    """Give up, before any plugin code runs, what the sandbox's own processes give up: its hard rlimits
    (memory, CPU), the host's mount namespace (see :func:`_own_namespace`), every capability,
    ``no_new_privs``, the host's uid when the job names one (``isolation="user"``: see
    :mod:`plugin_host._compile.validator`), being traced, and the system calls the sandboxes' seccomp
    filter refuses (where libseccomp loads; ``"required"``: or fail).

    Raises:
        OSError: a limit, the namespace of a user job, the privileges or a required filter could not be given
            up.
    """
    confine.make_non_dumpable()  # first: no window in which a process of the host's uid opens /proc/<pid>/mem
    limits = payload.get("limits") or {}
    confine.apply_rlimits(ResourceLimits(**limits))
    user = payload.get("user")
    _own_namespace(user is not None, payload.get("paths", []), limits.get("max_memory_mb"))
    confine.drop_privileges(None if user is None else lambda: confine.switch_user(int(user[0]), int(user[1])))
    confine.make_non_dumpable()  # again: a switch of uid may reset the flag
    mode = payload.get("syscall_filter", "auto")
    if mode != "off":
        try:
            confine.install_syscall_filter()
        except OSError:
            if mode == "required":
                raise  # the validator ends with the reason: the compile fails


def _own_namespace(user: bool, paths: list[str], size_mb: float | None) -> None:
    """As a sandbox root does, while this process may still mount: a mount namespace of its own with every
    cgroup mount read-only (top-level code running as uid 0 cannot write a sandbox group's limits or
    ``cgroup.procs``) and, for a ``user`` job, its own IPC namespace, fresh temporaries and POSIX queues, and
    the folders it imports from (the interpreter's, the runtime's, the job's ``paths``) readable where a home
    ``nobody`` cannot pass or a fresh temporary would hide them (:mod:`plugin_host._namespace`).

    Where the validator is not root (a host that is not), it keeps the host's namespace: it runs as the
    host's uid, which owns no cgroup file it could not write anyway, and ``user`` jobs need root.  A root
    validator that the kernel refuses a namespace (a container without ``CAP_SYS_ADMIN``) runs a
    ``"process"`` job without one (its top-level code could then write the cgroup files, as a sandbox root
    that cannot seal logs); a ``user`` job fails instead.

    Raises:
        OSError: a ``user`` job cannot have its namespace.
    """
    if os.geteuid() != 0:
        return
    try:
        namespace.enter(ipc=user)
        namespace.seal()
    except OSError:
        if user:
            raise
        return
    if user:
        fresh = namespace.private_for_user(size_mb, paths)
        if fresh:  # its working folder was in the host's /tmp, now covered: ../.. would still reach it
            os.chdir(fresh[0])


def _finish(results: TextIO, nonce: str, errors: list[Error], audited: list[AuditRecord], validator: int) -> NoReturn:
    """Write the one result line, tagged with the job's nonce, and end the process at once.

    Called inside the audited block, so what plugin code has the interpreter run meanwhile (a
    finalizer the collector runs while the line is built, the ``flush`` of a ``sys.stdout`` it
    replaced) is audited like its top-level code; ``os._exit`` then ends every thread and skips
    ``atexit`` handlers and the remaining finalizers, so nothing of the plugin's runs after the
    line (a thread that writes in the instant between the write and the exit is the host's to
    catch: see :mod:`plugin_host._compile.validator`).  A process top-level code forked that gets here
    (its import went on in the child, and failed or ended there) writes nothing: ``validator`` is the pid of
    the process whose verdict counts.
    """
    if os.getpid() != validator:
        os._exit(1)
    for stream in (sys.stdout, sys.stderr):  # the modules' own output first: they may be plugin objects
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a plugin's stream may raise anything; the result must go out
            pass
    report = [f"{r.event} {r.detail}" + (" (refused)" if r.blocked else "") for r in list(audited)]
    # A first newline ends whatever partial line plugin code left in the stream.
    line = ("\n" + json.dumps({"event": "result", "nonce": nonce, "errors": errors, "audited": report}) + "\n").encode()
    try:
        results.flush()
        fd = results.fileno()
        while line:
            line = line[os.write(fd, line) :]
    finally:
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
    # libseccomp (the syscall filter each child installs) is loaded first, as main loads it: its imports
    # (subprocess, signal, selectors ...) count as the runtime's in both, for the shadowing rule alike.
    confine.load_syscall_library()
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
        return channel.recv(MAX_MESSAGE) != b""
    finally:
        kill_group(pid)
        os.waitpid(pid, 0)


def _receive_job(channel: socket.socket) -> tuple[dict[str, str], list[int]] | None:
    import socket

    data, fds, flags, _ = socket.recv_fds(channel, MAX_MESSAGE, 2)
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
        payload_path = message["payload"]
        payload = json.loads(Path(payload_path).read_text(encoding="utf-8"))
        _join_group(payload)  # as main does, before the namespace
        contained = _own_pid_namespace()  # from here on: pid 1 of the job's own namespace
        for target, fd in zip((1, 2), fds, strict=True):
            os.dup2(fd, target)
            os.close(fd)
        nonce = message.pop("nonce", "")
        os.chdir(os.path.join(os.path.dirname(payload_path), WORK))
        sys.argv = ["-c", ROOT, payload_path, message["label"]]
        results = _claim_stdout()
        faulthandler.register(signal.SIGUSR1, file=results, all_threads=True)
        table = codeload.CodeTable.from_wire({k: (p, s, pkg) for k, (p, s, pkg) in payload["modules"].items()})
        bases = _plugin_bases() if payload["plugin_classes"] else ()
        _forget_warm_modules(table, baseline.with_bases if bases else baseline.plain)
        _validate(results, table, payload, bases, nonce, contained)
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
