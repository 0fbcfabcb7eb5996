"""The content-hash cache of successful compiles, in a folder the caller chooses.

An entry maps the hash of everything a compile depends on (its settings, the Python running it,
and every module's name, path and checksum) to the compile's output, so an unchanged compile
is served without running anything.  After a validated compile of a whole folder, a *manifest*
also records each module's checksum, so the next compile of that folder re-imports only what
changed and what imports it.  Entries are written atomically, and the least recently used go
first when there are more than ``_CACHE_LIMIT``.  Nothing is ever written into the source tree.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

from .job import Job

__all__ = ["cache_key", "cache_load", "cache_store", "manifest_load"]

_CACHE_FORMAT = 1
"""Bumped whenever what a cache entry means changes, so old entries stop matching."""
_CACHE_LIMIT = 512
"""Cache entries kept; the least recently used go first."""


def _settings(job: Job) -> list[object]:
    o = job.options
    return [
        _CACHE_FORMAT,
        sys.version,
        sys.executable,
        o.profile,
        o.validate,
        sorted(o.plugin_classes),
        list(o.import_paths),
        None if o.limits is None else [o.limits.max_memory_mb, o.limits.max_cpu_seconds],
        None if o.user is None else list(o.user),
        o.syscall_filter,
    ]


def cache_key(job: Job) -> str:
    """The cache key of ``job``: its settings, its targets and every module's name, path and checksum."""
    digest = hashlib.sha256(json.dumps(_settings(job) + [list(job.targets)]).encode())
    for name in sorted(job.table.modules):
        m = job.table.modules[name]
        digest.update(json.dumps([name, m.path, m.is_package, m.checksum]).encode())
    return digest.hexdigest()


def cache_load(folder: Path | None, key: str) -> str | None:
    """The output of a cached success, or None (no cache, a miss, or an unreadable entry)."""
    if folder is None:
        return None
    entry = folder / f"{key}.json"
    try:
        data = json.loads(entry.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    output = data.get("output") if isinstance(data, dict) and data.get("key") == key else None
    if not isinstance(output, str):
        return None
    with contextlib.suppress(OSError):
        os.utime(entry)  # the least recently used entries are pruned first
    return output


def cache_store(folder: Path, job: Job, key: str, output: str) -> None:
    """Keep the output of a successful ``job`` under ``key`` (and, for a validated whole tree, its manifest).

    Never fails: a cache that cannot be written is only a slower next compile.
    """
    _write_json(folder, f"{key}.json", {"key": key, "output": output})
    if job.whole_tree and job.options.validate:
        modules = {name: m.checksum for name, m in job.table.modules.items()}
        _write_json(folder, _manifest_name(job), {"label": job.label, "modules": modules})
    _prune(folder)


def _manifest_name(job: Job) -> str:
    digest = hashlib.sha256(json.dumps(_settings(job) + [job.label]).encode()).hexdigest()
    return f"manifest-{digest}.json"


def manifest_load(job: Job) -> dict[str, str] | None:
    """Module -> checksum of the last successful validation of this folder with these settings."""
    if job.options.cache_dir is None:
        return None
    try:
        data = json.loads((job.options.cache_dir / _manifest_name(job)).read_text(encoding="utf-8"))
        modules = data["modules"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if not isinstance(modules, dict) or data.get("label") != job.label:
        return None
    return {str(k): str(v) for k, v in modules.items()}


def _write_json(folder: Path, name: str, data: object) -> None:
    # The cache is an optimisation: failing to write it never fails a compile.  A temporary file
    # and os.replace make a reader see the old entry or the new one, never half of one.
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
    except OSError:
        return
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle)
        os.replace(temporary, folder / name)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)


def _prune(folder: Path) -> None:
    try:
        entries = [e for e in os.scandir(folder) if e.name.endswith(".json") and not e.name.startswith(".")]
        if len(entries) <= _CACHE_LIMIT:
            return
        entries.sort(key=lambda e: e.stat().st_mtime)
        for entry in entries[: len(entries) - _CACHE_LIMIT]:
            os.unlink(entry.path)
    except OSError:
        pass
