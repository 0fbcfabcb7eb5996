"""Supervision specs: ``Supervisor`` (the behaviour) and ``ChildSpec`` (one child)."""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

from plugin_host.errors import InvalidSpecError

from .plugin import Plugin

__all__ = ["ChildSpec", "Supervisor", "STRATEGIES", "RESTART_TYPES", "bare_plugin_supervisor"]

STRATEGIES = ("one_for_one", "one_for_all", "rest_for_one")
"""OTP restart strategies."""

RESTART_TYPES = ("permanent", "transient", "temporary")
"""OTP restart types: always, only after an abnormal exit, never."""


def _check_name(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, str) or not value or len(value) > 200 or not value.isprintable():
        raise InvalidSpecError(f"child name must be a non-empty printable string, got {value!r}")


def _check_plugin(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not (isinstance(value, type) and issubclass(value, (Plugin, Supervisor))):
        raise InvalidSpecError(
            f"child {instance.name!r}: plugin must be a Plugin or Supervisor subclass, got {value!r}"
        )


def _check_restart(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value not in RESTART_TYPES:
        raise InvalidSpecError(f"child {instance.name!r}: restart must be one of {RESTART_TYPES}, got {value!r}")


@attrs.frozen
class ChildSpec:
    """One child of a supervisor.

    Args:
        name: unique within the whole sandbox; ``Host.call(id, name, ...)`` reaches it.
        plugin: a ``Plugin`` subclass (a worker) or a ``Supervisor`` subclass (a subtree).
        args: passed to ``Plugin.init`` on every (re)start.
        restart: ``permanent`` (always restarted), ``transient`` (only after an abnormal
            exit) or ``temporary`` (never).

    Raises:
        InvalidSpecError: a field is not valid.
    """

    name: str = attrs.field(validator=_check_name)
    plugin: type = attrs.field(validator=_check_plugin)
    args: Any = None
    restart: str = attrs.field(default="permanent", validator=_check_restart)

    @property
    def is_supervisor(self) -> bool:
        """Whether this child is a nested supervisor."""
        return issubclass(self.plugin, Supervisor)


class Supervisor:
    """A supervision spec: subclass it and set the class attributes.

    Attributes:
        strategy: ``one_for_one`` restarts the crashed child; ``one_for_all`` restarts
            every child; ``rest_for_one`` restarts the crashed child and those after it.
        max_restarts: restarts allowed within ``max_seconds`` before the supervisor gives
            up: a nested one stops and its parent treats that as a crash; the sandbox
            root marks the sandbox ``failed``.
        max_seconds: the restart-intensity window, in seconds.
        children: the children, started in order (stopped in reverse order).
    """

    strategy: ClassVar[str] = "one_for_one"
    max_restarts: ClassVar[int] = 3
    max_seconds: ClassVar[float] = 5.0
    children: ClassVar[list[ChildSpec]] = []

    @classmethod
    def check(cls, seen: set[str] | None = None) -> None:
        """Validate the spec and every nested spec (names unique across the tree).

        Raises:
            InvalidSpecError: the first problem found.
        """
        seen = set() if seen is None else seen
        where = f"supervisor {cls.__name__}"
        if cls.strategy not in STRATEGIES:
            raise InvalidSpecError(f"{where}: strategy must be one of {STRATEGIES}, got {cls.strategy!r}")
        if isinstance(cls.max_restarts, bool) or not isinstance(cls.max_restarts, int) or cls.max_restarts < 0:
            raise InvalidSpecError(f"{where}: max_restarts must be an integer >= 0, got {cls.max_restarts!r}")
        if (
            isinstance(cls.max_seconds, bool)
            or not isinstance(cls.max_seconds, (int, float))
            or not cls.max_seconds > 0
        ):
            raise InvalidSpecError(f"{where}: max_seconds must be a positive number, got {cls.max_seconds!r}")
        if not isinstance(cls.children, (list, tuple)):
            raise InvalidSpecError(f"{where}: children must be a list of ChildSpec")
        for child in cls.children:
            if not isinstance(child, ChildSpec):
                raise InvalidSpecError(f"{where}: children must be ChildSpec instances, got {child!r}")
            if child.name in seen:
                raise InvalidSpecError(f"{where}: actor name {child.name!r} is used twice in the sandbox")
            seen.add(child.name)
            if child.is_supervisor:
                nested: type[Supervisor] = child.plugin
                nested.check(seen)


def bare_plugin_supervisor(plugin: type[Plugin], args: Any) -> type[Supervisor]:
    """Wrap a bare ``Plugin`` class as a one-child supervisor (child named after the class, lower-cased)."""
    spec = ChildSpec(plugin.__name__.lower(), plugin, args=args)
    return type(f"{plugin.__name__}Root", (Supervisor,), {"children": [spec], "__module__": plugin.__module__})
