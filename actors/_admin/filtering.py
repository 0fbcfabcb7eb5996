"""The admin's side of the syscall filter: whether this host's sandboxes get it (:class:`Filtering`).

The admin decides once, as it boots, from ``HostConfig.syscall_filter`` and whether libseccomp can be
loaded here (:func:`plugin_host._confine.syscall_filter_support`), and tells each root in its ``StartSandbox``;
the root installs the filter (:func:`actors._process.syscalls.confine`).  Like the control groups: on
``"auto"`` a host that cannot filter says why once in its log; on ``"required"`` it does not start.
"""

from __future__ import annotations

from plugin_host.config import HostConfig
from plugin_host.errors import ConfigError
from plugin_host.lowlevel import confine

from .._base import log

__all__ = ["Filtering"]


class Filtering:
    """Whether this host's sandboxes run under the syscall filter, and what each root is told."""

    def __init__(self) -> None:
        self.local = "off"
        """What a root on this system is told: ``"required"`` (the admin found the filter works here) or ``"off"``."""
        self.remote = "off"
        """What a root on another system of the convention is told: the host's setting, for that system to apply."""

    def boot(self, config: HostConfig, multiprocess: bool) -> None:
        """Decide from ``config.syscall_filter``, and warn once when this host's sandboxes go without.

        Raises:
            ConfigError: ``"required"`` where the filter cannot be installed (``field="syscall_filter"``).
        """
        self.remote = config.syscall_filter
        if config.syscall_filter == "off":
            self.local = "off"
            return
        reason = confine.syscall_filter_support() if multiprocess else "the actor system runs in one process"
        if reason is not None:
            if config.syscall_filter == "required":
                raise ConfigError(f"syscall_filter is 'required', but {reason}", field="syscall_filter")
            log.warning("sandboxes run without a syscall filter: %s", reason)
            self.local = "off"
            return
        self.local = "required"  # checked here: a root that then cannot install it fails its start

    def mode(self, local: bool) -> str:
        """What the root of a sandbox is told (``local``: it runs on this system)."""
        return self.local if local else self.remote
