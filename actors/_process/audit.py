"""The runtime audit of a sandbox process: a PEP 578 audit hook that records (or refuses)
file writes, process creation, network use, native extension imports and ctypes use
performed by plugin code.

One hook per process (``sys.addaudithook`` hooks cannot be removed); it is off until an
:class:`Auditor` marks plugin code as running with :meth:`Auditor.watching`, because the
runtime itself (Thespian's transport, our logs and registry files) must be neither
recorded nor blocked.  While off, the hook costs one attribute check per audit event.

Threads: "watching" is process-wide, not per thread, so a thread started by a plugin is
audited too while any plugin callback of the process runs (in a worker there is one
callback at a time).  Runtime code that runs inside a callback on the plugin's behalf
(``self.call`` talking to Thespian) opts out for its own thread with :meth:`Auditor.paused`.

This is defence in depth, not a security boundary: plugin code runs in this interpreter
and can reach this module's state, call the C functions the hook never sees (ctypes
pointers resolved before the audit started, ``_posixsubprocess``) or start a
subinterpreter.  Untrusted code needs OS-level isolation.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import sysconfig
import threading
import time
from typing import Any, Callable, Iterator

from plugin_host.errors import ConfigError
from plugin_host.values import AuditRecord

__all__ = ["AUDITED_EVENTS", "Auditor", "PROFILES"]

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


def _describe_open(args: tuple[Any, ...]) -> str | None:
    # (path, mode, flags): os.open passes mode None, and io.open's flags already reflect
    # its mode, so the flags decide; the mode is a fallback for a hand-made sys.audit.
    path, mode, flags = args
    if type(flags) is int:
        writes = bool(flags & _WRITE_FLAGS)
    else:
        writes = type(mode) is str and not _WRITE_MODES.isdisjoint(mode)
    return _short(path) if writes else None


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


_DESCRIBERS: dict[str, Callable[[tuple[Any, ...]], str | None]] = {
    "open": _describe_open,
    "subprocess.Popen": _describe_exec,
    "os.system": _describe_command,
    "os.exec": _describe_exec,
    "os.posix_spawn": _describe_exec,
    "os.spawn": _describe_spawn,
    "os.fork": _describe_nothing,
    "os.forkpty": _describe_nothing,
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

AUDITED_EVENTS = frozenset(_DESCRIBERS)
"""The CPython audit event names the hook looks at (``open`` only for writing, ``import``
only for native extensions outside the interpreter's own)."""


class _Active:
    """Process-wide switch read by the hook; ``auditor`` is None when no plugin code runs."""

    __slots__ = ("auditor", "actor")

    def __init__(self) -> None:
        self.auditor: Auditor | None = None
        self.actor = ""


_active = _Active()


class _ThreadState(threading.local):
    """Per-thread state: how deep this thread is in runtime code (emit, ``Auditor.paused``)."""

    paused = 0


_local = _ThreadState()
_install_lock = threading.Lock()
_installed = False


def _hook(event: str, args: tuple[Any, ...], _active: _Active = _active) -> None:
    # Runs for every audit event of the process (several per import, every open, id()...):
    # the idle path is this one attribute check.
    auditor = _active.auditor
    if auditor is None:
        return
    describe = _DESCRIBERS.get(event)
    if describe is None or _local.paused:
        return
    record = auditor._audit(event, describe, args, _active.actor)
    if record is not None and record.blocked:
        raise PermissionError(
            errno.EPERM, f"{event} refused by the restricted profile of sandbox {record.sandbox_id!r}: {record.detail}"
        )


def _truncate(text: str) -> str:
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 3] + "..."


class Auditor:
    """Records (or refuses) what plugin code does in this process, per a security profile.

    Args:
        sandbox_id: the sandbox the process belongs to; copied into every record.
        profile: one of :data:`PROFILES`.
        emit: called with each :class:`AuditRecord`, from the thread that performed the
            operation and in the middle of it: keep it cheap and thread-safe (append to a
            bounded deque, put on a queue).  An ``Exception`` it raises is swallowed, and audit events
            it causes itself are neither recorded nor refused.

    Raises:
        ConfigError: ``profile`` is not one of :data:`PROFILES` (``field="profile"``).
    """

    def __init__(self, sandbox_id: str, profile: str, emit: Callable[[AuditRecord], None]) -> None:
        if profile not in PROFILES:
            raise ConfigError(
                f"unknown security profile {profile!r}; expected one of {', '.join(PROFILES)}",
                field="profile",
                value=profile,
            )
        self.sandbox_id = sandbox_id
        """The sandbox the records name."""
        self.profile = profile
        """The security profile this auditor applies."""
        self._emit = emit

    @staticmethod
    def install() -> None:
        """Add the audit hook to this process; later calls (from any Auditor) do nothing.

        The hook stays idle until :meth:`watching` marks plugin code as running.
        """
        global _installed
        with _install_lock:
            if not _installed:
                sys.addaudithook(_hook)
                _installed = True

    @contextlib.contextmanager
    def watching(self, actor: str) -> Iterator[None]:
        """Audit every thread of the process while the block runs plugin code for ``actor``.

        Installs the hook if :meth:`install` was not called yet.  Under ``permissive`` the
        hook stays idle.  Blocks nest (one process may host sandboxes of several profiles
        under ``simpleSystemBase``); the enclosing auditor and actor come back on exit.
        """
        previous = (_active.auditor, _active.actor)
        if self.profile != "permissive":
            self.install()
        _active.actor, _active.auditor = actor, None if self.profile == "permissive" else self
        try:
            yield
        finally:
            _active.auditor, _active.actor = previous

    @staticmethod
    @contextlib.contextmanager
    def paused() -> Iterator[None]:
        """Neither record nor refuse what the current thread does inside the block.

        For runtime code that runs inside a plugin callback on the plugin's behalf (a
        sibling call opening Thespian sockets); other threads stay audited.
        """
        _local.paused += 1
        try:
            yield
        finally:
            _local.paused -= 1

    def _audit(
        self, event: str, describe: Callable[[tuple[Any, ...]], str | None], args: tuple[Any, ...], actor: str
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
                self.sandbox_id, actor, event, _truncate(detail), time.time(), self.profile == "restricted"
            )
        except Exception:  # noqa: BLE001 - the hook's own failure must not reach the plugin
            return None
        _local.paused += 1  # what emit does is the runtime's doing, not the plugin's
        try:
            self._emit(record)
        except Exception:  # noqa: BLE001 - a broken sink must not break the plugin's operation
            pass
        finally:
            _local.paused -= 1
        return record
