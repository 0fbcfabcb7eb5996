"""The runtime audit of a sandbox process: a PEP 578 audit hook that records (or refuses)
file writes and removals, reads outside the sandbox's folders, process creation and
signals, resource-limit changes, network use, native extension imports and ctypes use
performed by plugin code.

**Who is audited, by thread.**  One hook per process lineage (``sys.addaudithook`` hooks
cannot be removed; a forked child inherits its parent's): :func:`install` adds it and hands
the runtime an :class:`AuditControl`, once per process.  In a process of a sandbox:

* every thread except the runtime's is audited, always: a thread or timer a plugin started
  stays audited after the callback that started it returned;
* the runtime's main (Thespian) thread, the one that called :func:`install`, is audited
  while it runs plugin code (:meth:`AuditControl.plugin_code`: callbacks, and module
  top-level code wherever it runs: the root's module loading, a supervisor's spec, a
  worker's ``cloudpickle.loads`` of its spec, reload staging);
* threads the runtime starts for itself are exempt once they call
  :meth:`AuditControl.runtime_thread`; runtime work done inside plugin code on the plugin's
  behalf (the transport of ``self.call``/``cast``) is exempt inside :meth:`AuditControl.runtime`.

**What plugin code cannot reach through a module attribute.**  The hook's state lives in a
closure (the ``_State`` of the lineage), not in a module global; this module has no public
switch and no pause.  :func:`install` refuses a thread that is being audited, and a second
call in the same process, so plugin code cannot obtain a control of its own (a process a
plugin forks itself stays audited and cannot claim one either).  ``os.register_at_fork``
handlers registered by audited code run audited in the child.

What remains, honestly: plugin code runs in this interpreter.  It can reach the hook's state
through ``gc`` or a function's ``__closure__``, reach the control through the runtime objects
it is handed (its ``PluginServices``), call C functions the hook never sees (ctypes pointers
resolved before the audit started, ``_posixsubprocess`` already imported), or start a
subinterpreter.  This is defence in depth, telemetry and a speed bump; the kernel boundary is
a separate uid (``isolation="user"``), cgroups, or a container or VM.  There is no audit event
for ``signal.signal``/``signal.setitimer`` (the CPU budget must not rely on them) nor for
``prctl`` (reached through ctypes, which is audited); ``signal.pthread_kill`` is deliberately
not audited (the runtime's CPU budget uses it).
"""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import mimetypes
import os
import signal
import sys
import sysconfig
import threading
import time
import traceback
from typing import Any, Callable, ContextManager, Iterable, Iterator

from plugin_host.errors import ConfigError
from plugin_host.values import AuditRecord

__all__ = ["AUDITED_EVENTS", "AuditControl", "PROFILES", "install", "readable_defaults"]

PROFILES = ("restricted", "standard", "permissive")
"""Security profiles: ``restricted`` refuses audited operations, ``standard`` records
them, ``permissive`` records nothing."""

_MAX_DETAIL = 200
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_WRITE_MODES = frozenset("wax+")

# Extensions shipped with the interpreter are part of the runtime (``import json`` loads
# ``_json.so`` on many builds), so refusing them under ``restricted`` would break plain
# stdlib code.  These few stay audited because they hand out what the hook guards:
# native calls, a fork+exec that raises no audit event, interpreters without our hook.
_STDLIB_EXTENSION_DIRS = frozenset(
    os.path.normpath(spelling)
    for path in (sysconfig.get_config_var("DESTSHARED"), sysconfig.get_path("platstdlib") + "/lib-dynload")
    if path
    for spelling in (path, os.path.realpath(path))
)
_RISKY_STDLIB_EXTENSIONS = frozenset({"_ctypes", "_posixsubprocess", "_xxsubinterpreters"})

# System files plain stdlib code reads (zoneinfo, mimetypes, platform, os.devnull ...).
_SYSTEM_READS = (
    "/dev/null",
    "/dev/zero",
    "/dev/urandom",
    "/etc/localtime",
    "/etc/os-release",
    "/usr/lib/os-release",
    *(sysconfig.get_config_var("TZPATH") or "/usr/share/zoneinfo").split(os.pathsep),
    *mimetypes.knownfiles,
)


def readable_defaults() -> tuple[str, ...]:
    """What plugin code may read under ``restricted`` besides its sandbox's own folders: the
    interpreter's import path (stdlib, site-packages, every absolute ``sys.path`` entry now)
    and the few system files plain stdlib code reads (:data:`_SYSTEM_READS`)."""
    paths = sysconfig.get_paths()
    found = [paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths]
    found += [entry for entry in sys.path if os.path.isabs(entry)]
    return (*found, *_SYSTEM_READS)


# --- describing events: each returns the record's detail, or None when the event is benign.
# They only look at builtin types (never call repr() on plugin objects), so no plugin code
# and no further audit event can run inside the hook.


def _short(value: Any, depth: int = 0) -> str:
    kind = type(value)
    if kind is str:
        return str(value)
    if kind is bytes:
        return bytes.decode(value, "utf-8", "backslashreplace")
    if kind in (int, float, bool) or value is None:
        return str(value)
    if kind in (tuple, list) and depth < 2:
        return " ".join(_short(item, depth + 1) for item in value[:32])
    return f"<{kind.__name__}>"


def _writes(mode: Any, flags: Any) -> bool:
    # os.open passes mode None, and io.open's flags already reflect its mode, so the flags
    # decide; the mode is a fallback for a hand-made sys.audit.
    if type(flags) is int:
        return bool(flags & _WRITE_FLAGS)
    return type(mode) is str and not _WRITE_MODES.isdisjoint(mode)


class _Readable:
    """The folders and files plugin code may read (resolved once): everything else is recorded."""

    def __init__(self, paths: Iterable[str]) -> None:
        self.roots = tuple(sorted({os.path.realpath(path) for path in paths if path}))

    def allows(self, path: str) -> bool:
        real = os.path.realpath(path)  # symlinks out of a folder count where they point
        return any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in self.roots)

    def describe_open(self, args: tuple[Any, ...]) -> str | None:
        path, mode, flags = args
        if _writes(mode, flags):
            return _short(path)
        if type(path) is int:
            return None  # an fd opened before: that open was the audited step
        text = os.fsdecode(path) if type(path) in (str, bytes) else None
        if text is not None and self.allows(text):
            return None
        return f"{_short(path)} (read)"


def _describe_address(args: tuple[Any, ...]) -> str | None:
    address = args[1]  # (socket, address)
    if address is None:
        return None  # sendmsg on a connected socket: its connect was the audited step
    if type(address) is tuple and len(address) >= 2:
        host = _short(address[0])
        return f"[{host}]:{_short(address[1])}" if ":" in host else f"{host}:{_short(address[1])}"
    return _short(address)


def _describe_import(args: tuple[Any, ...]) -> str | None:
    # CPython raises "import" twice: (name, None, sys.path, sys.meta_path, sys.path_hooks)
    # for every import, and (name, filename, None, None, None) from _imp.create_dynamic,
    # i.e. only when a native extension is loaded.
    if args[1] is None:
        return None
    name, filename = _short(args[0]), _short(args[1])
    if (
        os.path.dirname(os.path.normpath(filename)) in _STDLIB_EXTENSION_DIRS
        and name not in _RISKY_STDLIB_EXTENSIONS
        and not name.startswith("_test")
    ):
        return None
    return f"{name} from {filename}"


def _describe_command(args: tuple[Any, ...]) -> str:
    return _short(args[0])  # os.system: (command,)


def _describe_exec(args: tuple[Any, ...]) -> str:
    # subprocess.Popen: (executable, args, cwd, env); os.exec / os.posix_spawn: (path, argv, env)
    executable, argv = _short(args[0]), args[1]
    command = _short(argv)
    first = _short(argv[0]) if type(argv) in (list, tuple) and argv else None
    # Popen passes argv[0] as the executable when none was given: don't say it twice.
    return command if args[0] is None or executable == first else f"{executable}: {command}"


def _describe_spawn(args: tuple[Any, ...]) -> str:
    return _describe_exec(args[1:])  # os.spawn: (mode, path, args, env)


def _describe_nothing(args: tuple[Any, ...]) -> str:
    return ""  # os.fork, os.forkpty: ()


def _describe_first(args: tuple[Any, ...]) -> str:
    first = args[0] if args else None
    return hex(first) if type(first) is int else _short(first)


def _describe_second(args: tuple[Any, ...]) -> str:
    return _short(args[1])  # ctypes.dlsym: (library, name); dlsym/handle: (handle, name)


def _describe_path(args: tuple[Any, ...]) -> str:
    return _short(args[0])  # os.remove/rmdir/mkdir/chmod/truncate/utime...: (path, ...)


def _describe_two_paths(args: tuple[Any, ...]) -> str:
    return f"{_short(args[0])} -> {_short(args[1])}"  # os.rename (os.replace too), os.symlink, os.link


def _describe_signal(args: tuple[Any, ...]) -> str:
    return f"{_short(args[0])} signal {_short(args[1])}"  # os.kill / os.killpg: (pid, signal)


def _describe_setrlimit(args: tuple[Any, ...]) -> str:
    return f"resource {_short(args[0])} to {_short(args[1])}"  # (resource, limits)


def _describe_hook(args: tuple[Any, ...]) -> str:
    return ""  # sys.settrace / sys.setprofile: a function called on every line, in runtime code too


def _describe_prlimit(args: tuple[Any, ...]) -> str | None:
    pid, which, limits = args  # limits None: a read of the limit, benign
    return None if limits is None else f"pid {_short(pid)} resource {_short(which)} to {_short(limits)}"


_DESCRIBERS: dict[str, Callable[[tuple[Any, ...]], str | None]] = {
    "subprocess.Popen": _describe_exec,
    "os.system": _describe_command,
    "os.exec": _describe_exec,
    "os.posix_spawn": _describe_exec,
    "os.spawn": _describe_spawn,
    "os.fork": _describe_nothing,
    "os.forkpty": _describe_nothing,
    "os.kill": _describe_signal,
    "os.killpg": _describe_signal,
    "os.remove": _describe_path,  # os.unlink too
    "os.rmdir": _describe_path,
    "os.rename": _describe_two_paths,  # os.replace too
    "os.mkdir": _describe_path,
    "os.chmod": _describe_path,
    "os.chown": _describe_path,
    "os.truncate": _describe_path,
    "os.utime": _describe_path,
    "os.symlink": _describe_two_paths,
    "os.link": _describe_two_paths,
    "resource.setrlimit": _describe_setrlimit,
    "resource.prlimit": _describe_prlimit,
    "sys.settrace": _describe_hook,
    "sys.setprofile": _describe_hook,
    "socket.connect": _describe_address,
    "socket.bind": _describe_address,
    "socket.sendto": _describe_address,
    "socket.sendmsg": _describe_address,
    "import": _describe_import,
    "ctypes.dlopen": _describe_first,
    "ctypes.dlsym": _describe_second,
    "ctypes.dlsym/handle": _describe_second,
    "ctypes.cdata": _describe_first,
    "ctypes.call_function": _describe_first,
    "ctypes.string_at": _describe_first,
    "ctypes.wstring_at": _describe_first,
    "ctypes.PyObj_FromPtr": _describe_first,
}

AUDITED_EVENTS = frozenset({"open", *_DESCRIBERS})
"""The CPython audit event names the hook looks at (``open`` for writing, and for reading
outside the readable folders; ``import`` only for native extensions outside the
interpreter's own; ``resource.prlimit`` only when it sets a limit)."""


def _truncate(text: str) -> str:
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 3] + "..."


class _State:
    """One process lineage's audit: its profile, sink and which threads run what.  Held by the
    hook's closure and the runtime's :class:`AuditControl` only."""

    def __init__(self, sandbox_id: str, profile: str, readable: _Readable) -> None:
        self.sandbox_id, self.profile, self.readable = sandbox_id, profile, readable
        self.describers: dict[str, Callable[[tuple[Any, ...]], str | None]] = {
            **_DESCRIBERS,
            "open": readable.describe_open,
        }
        self.emit: Callable[[AuditRecord], None] = _drop
        self.actor = ""
        self.main = threading.get_ident()
        """The runtime's main thread: audited only while it runs plugin code."""
        self.plugin_depth = 0
        self.exempt: dict[int, int] = {}
        """Threads in runtime work (or in the hook itself) -> nesting depth."""
        self.runtime_threads: set[int] = set()
        self.claimed_pid = 0
        self.claimable = True

    def audited(self, thread: int) -> bool:
        """Whether what ``thread`` does now is plugin code's doing."""
        if self.exempt.get(thread):
            return False
        if thread == self.main:
            return self.plugin_depth > 0
        return thread not in self.runtime_threads

    def check(self, event: str, args: tuple[Any, ...]) -> None:
        describe = self.describers.get(event)
        if describe is None or self.profile == "permissive":
            return
        thread = threading.get_ident()
        if not self.audited(thread):
            return
        # What describing and emitting do is not the plugin's doing; but a collection meanwhile would run
        # the plugin's finalizers (``__del__``, weakref callbacks) as exempt too: none runs in the window.
        collecting = gc.isenabled()
        gc.disable()
        self.exempt[thread] = 1
        try:
            record = self.record(event, describe, args)
        finally:
            self.exempt.pop(thread, None)
            if collecting:
                gc.enable()
        if record is not None and record.blocked:
            raise PermissionError(
                errno.EPERM,
                f"{event} refused by the restricted profile of sandbox {record.sandbox_id!r}: {record.detail}",
            )

    def record(
        self, event: str, describe: Callable[[tuple[Any, ...]], str | None], args: tuple[Any, ...]
    ) -> AuditRecord | None:
        """Describe and emit one event; the record (or None for a benign one).  Never raises."""
        try:
            detail = describe(args)
        except Exception as exc:  # noqa: BLE001 - odd args (a forged sys.audit): fail closed
            detail = f"<{type(exc).__name__} describing {event}>"
        if detail is None:
            return None
        try:
            record = AuditRecord(
                self.sandbox_id, self.actor, event, _truncate(detail), time.time(), self.profile == "restricted"
            )
        except Exception:  # noqa: BLE001 - the hook's own failure must not reach the plugin
            return None
        try:
            self.emit(record)
        except Exception:  # noqa: BLE001 - a broken sink must not break the plugin's operation
            pass
        return record

    @contextlib.contextmanager
    def as_plugin(self) -> Iterator[None]:
        """The current thread runs plugin code the interpreter calls back (a signal or fork handler),
        even in the middle of runtime work."""
        thread = threading.get_ident()
        saved = self.exempt.pop(thread, None)
        self.plugin_depth += thread == self.main
        try:
            yield
        finally:
            self.plugin_depth -= thread == self.main
            if saved:
                self.exempt[thread] = saved

    @contextlib.contextmanager
    def as_runtime(self) -> Iterator[None]:
        """The current thread runs the runtime's own code (a signal handler it installed)."""
        thread = threading.get_ident()
        self.exempt[thread] = self.exempt.get(thread, 0) + 1
        try:
            yield
        finally:
            left = self.exempt.get(thread, 1) - 1
            if left:
                self.exempt[thread] = left
            else:
                self.exempt.pop(thread, None)

    def after_fork_in_child(self) -> None:
        """Only the forking thread lives on; one forked by audited code stays audited and unclaimable."""
        thread = threading.get_ident()
        if self.audited(thread):
            self.claimable = False
        self.runtime_threads &= {thread}
        self.exempt = {thread: self.exempt[thread]} if thread in self.exempt else {}


def _drop(record: AuditRecord) -> None:
    """The sink until the runtime of a process names its own."""


class AuditControl:
    """The runtime's handle on this process's audit, from :func:`install` (never handed to plugin code).

    Records go to ``emit``, called from the thread that performed the operation and in the
    middle of it: keep it cheap and thread-safe (append to a list or deque).  An
    ``Exception`` it raises is swallowed; audit events it causes are neither recorded nor refused.
    """

    def __init__(self, state: _State) -> None:
        self._state = state

    @property
    def sandbox_id(self) -> str:
        """The sandbox the records name."""
        return self._state.sandbox_id

    @property
    def profile(self) -> str:
        """The security profile this process applies."""
        return self._state.profile

    @contextlib.contextmanager
    def plugin_code(self, actor: str) -> Iterator[None]:
        """The main thread runs plugin code for ``actor`` inside the block (callbacks, module loading).

        Blocks nest; records made meanwhile (and later by plugin threads) name ``actor``.
        """
        state = self._state
        state.actor = actor
        state.plugin_depth += 1
        try:
            yield
        finally:
            state.plugin_depth -= 1

    def runtime(self) -> ContextManager[None]:
        """What the current thread does inside the block is the runtime's work (its transport, its
        timers), done inside plugin code on the plugin's behalf: neither recorded nor refused.
        Never run plugin code (unpickling, ``__reduce__``) inside it."""
        return self._state.as_runtime()

    @contextlib.contextmanager
    def runtime_thread(self) -> Iterator[None]:
        """Mark the current thread as the runtime's for the block (wrap a runtime thread's whole
        target, e.g. the CPU-budget watchdog): never audited while it runs."""
        state, thread = self._state, threading.get_ident()
        state.runtime_threads.add(thread)
        try:
            yield
        finally:
            state.runtime_threads.discard(thread)  # a plugin thread may get this ident next

    def allow_reading(self, folder: str) -> None:
        """Let plugin code read ``folder`` too under ``restricted`` (a reload's new environment)."""
        state = self._state
        state.readable.roots = _Readable((*state.readable.roots, folder)).roots

    def send_records_to(self, emit: Callable[[AuditRecord], None]) -> None:
        """Where this process's records go from now on (a forked child names its own sink)."""
        self._state.emit = emit


def _make_install() -> Callable[..., AuditControl]:
    lineage: list[_State] = []  # the one state of this process lineage (inherited across fork)

    def install(
        sandbox_id: str, profile: str, emit: Callable[[AuditRecord], None], readable: Iterable[str] = ()
    ) -> AuditControl:
        """Audit this process for ``sandbox_id`` under ``profile``: the runtime's control, once per process.

        The first call of a process lineage adds the hook; in a process forked from an audited
        one, the first call claims the inherited hook for this process (its main thread is the
        caller, its sink ``emit``).  ``readable``: folders plugin code may read under
        ``restricted`` (the sandbox's folder, environment, scratch dir) besides
        :func:`readable_defaults`.

        Raises:
            ConfigError: ``profile`` is not one of :data:`PROFILES` (``field="profile"``).
            PermissionError: called a second time in this process, by audited code (a plugin
                thread, plugin code, a process a plugin forked), or for another sandbox or
                profile than the hook this process inherited.
        """
        if profile not in PROFILES:
            raise ConfigError(
                f"unknown security profile {profile!r}; expected one of {', '.join(PROFILES)}",
                field="profile",
                value=profile,
            )
        if lineage:
            state = lineage[0]
            thread = threading.get_ident()
            if state.audited(thread) or not state.claimable or state.claimed_pid == os.getpid():
                raise PermissionError(errno.EPERM, "the runtime audit of this process is already installed")
            if (state.sandbox_id, state.profile) != (sandbox_id, profile):
                raise PermissionError(errno.EPERM, f"this process audits sandbox {state.sandbox_id!r}")
            state.main, state.plugin_depth = thread, 0
        else:
            state = _State(sandbox_id, profile, _Readable((*readable_defaults(), *readable)))
            lineage.append(state)
            sys.addaudithook(state.check)
            os.register_at_fork(after_in_child=state.after_fork_in_child)
            _audit_fork_handlers(state)
            _audit_signal_handlers(state)
        _runtime_signal_handlers(state)
        _runtime_log_handlers(state)
        state.readable.roots = _Readable((*state.readable.roots, *readable)).roots
        state.claimed_pid = os.getpid()
        state.emit = emit
        return AuditControl(state)

    return install


def _as(mode: Callable[[], ContextManager[None]], handler: Callable[..., Any]) -> Callable[..., Any]:
    """``handler``, called in ``mode`` (the state's ``as_plugin`` or ``as_runtime``)."""

    def run(*args: Any) -> Any:
        with mode():
            return handler(*args)

    run.__wrapped__ = handler  # type: ignore[attr-defined]
    return run


def _audit_fork_handlers(state: _State) -> None:
    """Fork handlers that audited code registers run audited in the child (they run before the
    child's runtime claims its audit)."""
    original = os.register_at_fork

    def register_at_fork(**handlers: Callable[[], object]) -> None:
        if state.audited(threading.get_ident()):
            handlers = {when: _as(state.as_plugin, handler) for when, handler in handlers.items()}
        original(**handlers)

    register_at_fork.__doc__ = original.__doc__
    os.register_at_fork = register_at_fork  # type: ignore[assignment]
    posix = sys.modules.get("posix")
    if posix is not None:
        posix.register_at_fork = register_at_fork  # type: ignore[attr-defined]


def _audit_signal_handlers(state: _State) -> None:
    """A signal handler runs in the main thread whenever the signal comes, in runtime code too: one
    that audited code installs runs audited, one the runtime installs never is."""
    import _signal  # signal.signal calls _signal.signal: one patch covers both

    original = _signal.signal

    def install_handler(signalnum: int, handler: Any) -> Any:
        if callable(handler) and not hasattr(handler, "__wrapped__"):
            mode = state.as_plugin if state.audited(threading.get_ident()) else state.as_runtime
            handler = _as(mode, handler)
        return original(signalnum, handler)

    install_handler.__doc__ = original.__doc__
    _signal.signal = install_handler


def _runtime_signal_handlers(state: _State) -> None:
    """The handlers this process's runtime installed before its audit (Thespian's SIGCHLD handler
    wakes its transport up through a socket) run as the runtime's."""
    for signalnum in signal.valid_signals():
        try:
            handler = signal.getsignal(signalnum)
        except (OSError, ValueError):
            continue
        if callable(handler) and not hasattr(handler, "__wrapped__"):
            signal.signal(signalnum, _as(state.as_runtime, handler))


_LOG_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_PLAIN = (str, int, float, bool, type(None))


def _as_text(record: logging.LogRecord) -> None:
    """Turn what of ``record`` is the caller's objects into text, in the caller's mode: a plugin's
    ``__str__``/``__repr__`` must not run inside the runtime's log handler."""
    try:
        record.msg, record.args = record.getMessage(), None
    except Exception:  # noqa: BLE001 - the handler reports a message it cannot format
        return
    if record.exc_info and not record.exc_text:
        record.exc_text = "".join(traceback.format_exception(*record.exc_info))
    for key, value in list(vars(record).items()):
        if key not in _LOG_RECORD_FIELDS and type(value) not in _PLAIN:
            record.__dict__[key] = repr(value)


def _runtime_log_handlers(state: _State) -> None:
    """The log handlers this process's runtime set up (Thespian forwards log records through its
    transport) are the runtime's work: a plugin's log line is neither recorded nor refused as a socket."""
    loggers = [logging.root, *logging.root.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):
            handle = handler.handle
            if hasattr(handle, "__wrapped__"):
                continue

            def run(record: logging.LogRecord, handle: Callable[[logging.LogRecord], Any] = handle) -> Any:
                _as_text(record)
                with state.as_runtime():
                    return handle(record)

            run.__wrapped__ = handle  # type: ignore[attr-defined]
            handler.handle = run


install = _make_install()
