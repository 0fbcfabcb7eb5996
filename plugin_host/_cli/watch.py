"""Watch mode: hot-reload a sandbox's folder whenever its Python files change.

Why polling and not ``watchdog``: a sandbox folder is a handful of small files, so a
``stat()`` of each one every 100 ms costs next to nothing, and polling needs no new
dependency, behaves the same on every platform, and also works where file-system events
do not arrive (network mounts, container bind mounts from another OS).  Editors that save
by writing a temporary file and renaming it over the original are seen like any other
write.  The modification time only says *that* a file may have changed; its sha256 says
*whether* it did, so touching a file or saving it unchanged reloads nothing.

A save often comes as several writes (or several files at once): a change is acted on
only once the folder has been quiet for ``debounce`` seconds.  Then the whole folder is
compiled (:meth:`Host.compile_sandbox`) and hot-reloaded (:meth:`Host.hot_reload`); the
host reloads only the modules whose code differs from what runs, so one save gives one
all-or-nothing reload.  A broken save (syntax error, failing import, raising
``code_change``) leaves the running version in place: the report carries the error.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import attrs

from ..errors import PluginHostError

if TYPE_CHECKING:
    from ..host import Host

__all__ = ["FolderSnapshot", "ReloadReport", "Watcher", "reload_folder"]

_RACY = 2.0
"""Seconds during which a file's mtime may not yet tell two writes apart (coarse file-system
clocks): a file modified this recently is hashed again on every scan, as git does."""

_Stamp = tuple[int, int, int]  # (mtime_ns, size, inode)


@attrs.frozen
class ReloadReport:
    """What one reload of a watched folder did."""

    files: tuple[str, ...]
    """The changed files, relative to the folder (removed ones included)."""
    versions: dict[str, tuple[int | None, int]] = attrs.field(factory=dict)
    """Module name to ``(old, new)`` version, for each module whose version changed."""
    actors_updated: tuple[str, ...] = ()
    """Actors that now run the new code."""
    running: dict[str, int] = attrs.field(factory=dict)
    """Module name to the version that runs after the attempt (the old ones after an error)."""
    error: PluginHostError | None = None
    """Why the reload was refused or failed; ``None`` when it went through (or changed nothing)."""


class FolderSnapshot:
    """The ``*.py`` files of a folder, with a sha256 of each, updated by :meth:`scan`."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self._stamps: dict[Path, _Stamp] = {}
        self._digests: dict[Path, str] = {}
        self.scan()

    def scan(self) -> set[str]:
        """Re-read the folder; return the files (relative paths) added, removed or changed."""
        seen: set[Path] = set()
        changed: set[Path] = set()
        now_ns = time.time_ns()
        for path in self._files():
            stamp = _stamp(path)
            if stamp is None:
                continue  # removed between listing and stat: the next scan sees it gone
            seen.add(path)
            racy = now_ns - stamp[0] < _RACY * 1e9
            if stamp == self._stamps.get(path) and not racy:
                continue
            digest = _digest(path)
            if digest is None:
                continue
            self._stamps[path] = stamp
            if self._digests.get(path) != digest:
                self._digests[path] = digest
                changed.add(path)
        for path in set(self._digests) - seen:
            del self._digests[path]
            self._stamps.pop(path, None)
            changed.add(path)
        return {str(path.relative_to(self.root)) for path in changed}

    def _files(self) -> list[Path]:
        # The compiler skips hidden folders and __pycache__; so do we, or byte-code
        # written by a tool would look like an edit.
        return [
            path
            for path in self.root.rglob("*.py")
            if not any(part.startswith(".") or part == "__pycache__" for part in path.relative_to(self.root).parts[:-1])
        ]


def _stamp(path: Path) -> _Stamp | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def reload_folder(
    host: Host, sandbox_id: str, path: str | os.PathLike[str], files: tuple[str, ...] = ()
) -> ReloadReport:
    """Compile the folder and hot-reload it into the sandbox; never raises a plugin-host error.

    Args:
        host: the host that runs the sandbox.
        sandbox_id: the sandbox to reload.
        path: the sandbox's source folder.
        files: the changed files, only to be named in the report.

    Returns:
        A :class:`ReloadReport`; its ``error`` says why nothing changed, if so.
    """
    try:
        running = host.get_sandbox_info(sandbox_id)
        before = dict(running.modules)
        # Compiled under the sandbox's own profile: a refusal is reported before anything is sent.
        result = host.hot_reload(sandbox_id, host.compile_sandbox(path, security_profile=running.security_profile))
        after = dict(host.get_sandbox_info(sandbox_id).modules)
    except PluginHostError as exc:
        return ReloadReport(files, running=_modules_now(host, sandbox_id), error=exc)
    versions = {module: (before.get(module), new) for module, new in sorted(after.items()) if before.get(module) != new}
    return ReloadReport(files, versions, tuple(result.actors_updated), after)


def _modules_now(host: Host, sandbox_id: str) -> dict[str, int]:
    try:
        return dict(host.get_sandbox_info(sandbox_id).modules)
    except PluginHostError:
        return {}  # e.g. the sandbox was destroyed meanwhile; the report's error says more


class Watcher:
    """Polls a sandbox folder in a background thread and hot-reloads it after each save.

    The folder is read when the watcher is made, so make it before the sandbox is created
    and no edit made meanwhile is missed.  Use it as a context manager, or call
    :meth:`start` and :meth:`stop`.

    Args:
        host: the host that runs the sandbox.
        sandbox_id: the sandbox to reload.
        path: the sandbox's source folder.
        report: called (in the watcher's thread) with the :class:`ReloadReport` of each reload.
        interval: seconds between two scans of the folder.
        debounce: seconds the folder must stay unchanged before a reload starts.
    """

    def __init__(
        self,
        host: Host,
        sandbox_id: str,
        path: str | os.PathLike[str],
        report: Callable[[ReloadReport], None],
        *,
        interval: float = 0.1,
        debounce: float = 0.2,
    ) -> None:
        self.host, self.sandbox_id, self.report = host, sandbox_id, report
        self.interval, self.debounce = interval, debounce
        self.snapshot = FolderSnapshot(path)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"plugin-host-watch-{sandbox_id}", daemon=True)
        self._crash: BaseException | None = None

    def __enter__(self) -> Watcher:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def alive(self) -> bool:
        """Whether the watcher's thread runs (it ends on :meth:`stop` or an unexpected error)."""
        return self._thread.is_alive()

    def start(self) -> None:
        """Start watching in a background thread."""
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop watching; a reload under way finishes first (bounded by the host's reload timeout).

        Raises:
            Exception: whatever unexpected error ended the watcher's thread, if one did.
        """
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout)
        if self._crash is not None:
            crash, self._crash = self._crash, None
            raise crash

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - handed to whoever calls stop()
            self._crash = exc

    def _loop(self) -> None:
        pending: set[str] = set()
        quiet_since = 0.0
        while not self._stop.wait(self.interval):
            changed = self.snapshot.scan()
            if changed:
                pending |= changed
                quiet_since = time.monotonic()
            elif pending and time.monotonic() - quiet_since >= self.debounce:
                files, pending = tuple(sorted(pending)), set()
                self.report(reload_folder(self.host, self.sandbox_id, self.snapshot.root, files))
