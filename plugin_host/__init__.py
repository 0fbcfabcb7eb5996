"""plugin-host: isolated, supervised, hot-reloadable plugin sandboxes on Thespian.

Applications import everything from here::

    from plugin_host import Host, HostConfig, ResourceLimits
"""

from __future__ import annotations

from . import errors, messages
from .config import HostConfig, ResourceLimits
from .errors import PluginHostError
from .values import (
    ActorUsage,
    Artifact,
    AuditRecord,
    ChildInfo,
    CompileInfo,
    Event,
    ModuleVersion,
    NodeInfo,
    ReloadResult,
    ResourceUsage,
    SandboxInfo,
    VersionHistory,
)

__all__ = [
    "ActorUsage",
    "Artifact",
    "AuditRecord",
    "ChildInfo",
    "CompileInfo",
    "Event",
    "Host",
    "HostConfig",
    "ModuleVersion",
    "NodeInfo",
    "PluginHostError",
    "ReloadResult",
    "ResourceLimits",
    "ResourceUsage",
    "SandboxInfo",
    "VersionHistory",
    "errors",
    "messages",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # Lazy: actor processes import plugin_host.* for messages and errors; only an
    # application needs the facade (and importing it eagerly would be circular).
    if name == "Host":
        from .host import Host

        return Host
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
