"""One compile's inputs: the settings (:class:`Options`) and what is compiled (:class:`Job`).

Shared by :mod:`plugin_host.compiler` (which makes them) and :mod:`plugin_host._compile.cache`
(whose keys are computed from them), so neither imports the other.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from .._cgroup import CompileGroups
from ..codeload import CodeTable
from ..config import ResourceLimits
from .pool import CompilePool

__all__ = ["Job", "Options"]


@attrs.frozen
class Options:
    """A compile's settings, checked by :mod:`plugin_host.compiler` when it makes them."""

    timeout: float
    validate: bool
    profile: str
    cache_dir: Path | None
    plugin_classes: tuple[str, ...]
    pool: CompilePool | None = attrs.field(default=None, eq=False)
    """Where validation runs; not part of what a compile means (nor of its cache key)."""
    import_paths: tuple[str, ...] = ()
    """Folders put first on the validator's import path (a sandbox's dependency environment)."""
    limits: ResourceLimits | None = None
    """The sandbox's limits: its memory and CPU limits are the validator's hard rlimits."""
    user: tuple[int, int] | None = None
    """(uid, gid) the validator runs as (``isolation="user"``); None: the host's uid, without capabilities."""
    syscall_filter: str = "auto"
    """The sandboxes' seccomp filter in the validator: ``"auto"``, ``"required"`` or ``"off"``."""
    groups: CompileGroups | None = attrs.field(default=None, eq=False)
    """Where each validation gets a control group of its own; None: none (see :mod:`plugin_host._cgroup`)."""


@attrs.frozen
class Job:
    """The modules of one compile and the table they import from."""

    table: CodeTable
    targets: tuple[str, ...]
    """The modules compiled: syntax-checked, scanned, returned as artifacts."""
    label: str
    options: Options
    whole_tree: bool
    """Every module is a target, so modules unchanged since the last success need no re-import."""
