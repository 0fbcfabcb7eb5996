"""Every exception plugin-host raises.

All of them derive from :class:`PluginHostError`, and each also subclasses the builtin it
refines (``LookupError``, ``TimeoutError``, ``ValueError``...), so callers can catch either.
They carry their context as attributes and survive pickling, because they travel inside
``Failed`` replies between actor processes.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AccessDeniedError",
    "ActorNotFoundError",
    "BadRequestError",
    "CallTimeoutError",
    "CompilationError",
    "CompilationTimeoutError",
    "ConfigError",
    "CodeIntegrityError",
    "CredentialError",
    "DependencyError",
    "HostClosedError",
    "HostStartError",
    "HotReloadError",
    "InvalidSpecError",
    "LimitExceededError",
    "NoCapableNodeError",
    "OverloadedError",
    "PluginError",
    "PluginHostError",
    "PluginHostWarning",
    "RunTimeoutError",
    "SandboxExistsError",
    "SandboxNotFoundError",
    "SandboxStartError",
    "SecurityViolationError",
    "StateDirInUseError",
    "UnknownModuleError",
    "VersionNotFoundError",
]


class PluginHostError(Exception):
    """Base class of every plugin-host error.

    Args:
        message: the human-readable explanation.
        **context: structured details, kept as attributes of the same name.
    """

    def __init__(self, message: str = "", **context: Any) -> None:
        super().__init__(message)
        self.message = message
        for key, value in context.items():
            setattr(self, key, value)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # Context lives in __dict__; the default reduce would lose keyword arguments.
        return (_rebuild, (type(self), self.message, dict(self.__dict__)))


def _rebuild(cls: type[PluginHostError], message: str, state: dict[str, Any]) -> PluginHostError:
    # Through the constructor: classes with two builtin bases (ValueError + TimeoutError)
    # refuse a bare cls.__new__(cls).
    if not (isinstance(cls, type) and issubclass(cls, PluginHostError)) or not isinstance(state, dict):
        # Frames from sandboxes may call this: never let it construct, or write attributes on, anything else.
        raise TypeError(f"not a plugin-host error class: {cls!r}")
    error = cls(message)
    error.__dict__.update(state)
    return error


class PluginHostWarning(UserWarning):
    """Base class of the warnings plugin-host emits."""


class ConfigError(PluginHostError, ValueError):
    """A configuration value is invalid; ``field`` names it."""


class HostStartError(PluginHostError, RuntimeError):
    """The host could not start its actor system (or refused a stale one on its port)."""


class StateDirInUseError(HostStartError):
    """Another host already runs with this ``state_dir`` (``state_dir`` and ``pid`` name them)."""


class CredentialError(HostStartError):
    """A running host refused this process's credential (another cookie file, or none of its own)."""


class AccessDeniedError(PluginHostError, PermissionError):
    """A sandbox asked for something only the host may do, or something about another sandbox.

    ``request`` names the request's type and ``sandbox_id`` the sandbox that asked.
    """


class HostClosedError(PluginHostError, RuntimeError):
    """The host was used after ``close()``."""


class BadRequestError(PluginHostError, ValueError):
    """A request to the admin actor was malformed or of an unknown type."""


class SandboxNotFoundError(PluginHostError, LookupError):
    """No sandbox has this id; ``sandbox_id`` names it."""


class SandboxExistsError(PluginHostError, ValueError):
    """A sandbox with this id already exists; ``sandbox_id`` names it."""


class SandboxStartError(PluginHostError, RuntimeError):
    """A sandbox could not be started (bad spec, failing ``init``, import error, timeout)."""


class InvalidSpecError(SandboxStartError, ValueError):
    """A supervisor or child spec is not valid (wrong type, duplicate name, bad option)."""


class ActorNotFoundError(PluginHostError, LookupError):
    """The sandbox has no running actor of this name (``sandbox_id``, ``name``)."""


class CodeIntegrityError(SandboxStartError, ValueError):
    """A sandbox's code arrived on its actor system with a sha256 that does not match its source."""


class CallTimeoutError(PluginHostError, TimeoutError):
    """A call got no reply within its timeout (the actor may be hung or dead)."""


class RunTimeoutError(PluginHostError, TimeoutError):
    """A function passed to ``Host.run`` did not finish within its timeout."""


class PluginError(PluginHostError, RuntimeError):
    """Plugin code raised; the actor crashed and its supervisor acts on it.

    Attributes:
        type_name: the original exception's qualified type name.
        traceback_text: the formatted traceback from the actor process.
        actor: the name of the actor that raised, when known.
    """

    type_name: str = ""
    traceback_text: str = ""
    actor: str = ""


class LimitExceededError(PluginHostError, RuntimeError):
    """A resource limit of the sandbox was hit (``limit``, ``value`` and ``actor`` say which)."""


class OverloadedError(PluginHostError, RuntimeError):
    """An actor's mailbox is over its ``max_mailbox`` limit; the message was refused."""


class CompilationError(PluginHostError, ValueError):
    """Source code did not compile or validate.

    Attributes:
        errors: a list of ``(file, line, message)`` tuples, one per problem found.
    """

    errors: list[tuple[str, int, str]] = []


class CompilationTimeoutError(CompilationError, TimeoutError):
    """Compilation or import-time validation ran past its timeout and was killed."""


class SecurityViolationError(CompilationError):
    """The security scan rejected the code under the ``restricted`` profile."""


class HotReloadError(PluginHostError, RuntimeError):
    """A hot reload failed; the old code and state were kept.  ``actor`` and ``cause`` say why."""


class UnknownModuleError(PluginHostError, LookupError):
    """The registry knows no module of this name for this sandbox."""


class VersionNotFoundError(PluginHostError, LookupError):
    """The registry has no such version of the module."""


class NoCapableNodeError(PluginHostError, LookupError):
    """No actor system of the convention matches the sandbox's requirements."""


class DependencyError(PluginHostError, RuntimeError):
    """A sandbox's requirements could not be installed or conflict with the host."""
