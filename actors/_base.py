"""What every actor of a host shares: process set-up, replies, Thespian internals in one place."""

from __future__ import annotations

import logging
import traceback
from typing import Any

from thespian.actors import ActorTypeDispatcher

from plugin_host.errors import BadRequestError, PluginError, PluginHostError
from plugin_host.messages import Failed, Ok, Request

from . import _messages as m
from ._hardening import harden_process

__all__ = ["HostActor", "SandboxMember", "plugin_error", "describe_exception"]

log = logging.getLogger("plugin_host.actors")


class HostActor(ActorTypeDispatcher):
    """An ``ActorTypeDispatcher`` that hardens its process and answers bad requests."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ph_ready = False

    def receiveMessage(self, message: Any, sender: Any) -> Any:  # noqa: N802 (Thespian API)
        """Set the process up on the first message, then dispatch on the message type."""
        if not self._ph_ready:
            self._ph_ready = True
            if self.multiprocess:
                harden_process()
            self.setup_process()
        try:
            return super().receiveMessage(message, sender)
        except Exception as exc:  # noqa: BLE001 - never let Thespian retry and poison: answer and go on
            log.exception("%s could not handle a %s", type(self).__name__, type(message).__name__)
            if isinstance(message, Request):
                target = getattr(message, "reply_to", None) or sender
                self.send(target, Failed(BadRequestError(
                    f"{type(self).__name__} could not handle {type(message).__name__}: {describe_exception(exc)}"),
                    message.corr))
            return None

    @staticmethod
    def actorSystemCapabilityCheck(capabilities: dict[str, Any], requirements: Any) -> bool:  # noqa: N802
        """Thespian's placement test: a system fits when it offers every required capability, equal."""
        return all(capabilities.get(key) == value for key, value in dict(requirements or {}).items())

    @property
    def multiprocess(self) -> bool:
        """Whether this actor has a process of its own (not ``simpleSystemBase``)."""
        return "simpleSystemBase" not in type(self._myRef).__module__

    def setup_process(self) -> None:
        """Hook: runs once, in the actor's process, before the first message."""

    def receiveUnrecognizedMessage(self, message: Any, sender: Any) -> None:  # noqa: N802
        """Answer a request we do not understand; nothing crashes on garbage."""
        corr = getattr(message, "corr", "") if isinstance(message, Request) else ""
        if isinstance(message, Request) or not _is_thespian_system_message(message):
            self.send(sender, Failed(BadRequestError(f"{type(self).__name__} does not understand "
                                                      f"{type(message).__name__} messages"), corr))

    def reply(self, target: Any, value: Any, corr: str) -> None:
        """Send ``Ok(value)`` (or ``Failed`` when ``value`` is an error) to ``target``."""
        if isinstance(value, BaseException):
            self.send(target, Failed(value, corr))
        else:
            self.send(target, Ok(value, corr))

    def child_process(self) -> Any:
        """The ``multiprocessing.Process`` of the child created last (None in-process)."""
        procs = getattr(self._myRef, "_child_procs", None)
        return procs[-1].childProc if procs else None


class SandboxMember(HostActor):
    """An actor of a sandbox's tree (worker or supervisor): its identity, heartbeat and directory."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.context: m.SandboxContext | None = None
        self.actor_name = ""
        self.incarnation = 0
        self.parent: Any = None
        self.directory: dict[str, Any] = {}
        """Where the sandbox's named actors run (name -> address), as last told by the root."""

    messages = 0
    """Plugin messages handled (workers count them)."""

    def receiveMsg_Ping(self, msg: m.Ping, sender: Any) -> None:  # noqa: N802
        """Heartbeat from the supervisor: this process is not stuck in a callback."""
        self.send(sender, m.Pong(self.actor_name, self.incarnation, msg.seq, self.messages))

    def receiveMsg_DirectoryUpdate(self, msg: m.DirectoryUpdate, sender: Any) -> None:  # noqa: N802
        """Learn where named actors run now."""
        self.directory.update(msg.entries)


def _is_thespian_system_message(message: Any) -> bool:
    return type(message).__module__.startswith("thespian.")


def describe_exception(exc: BaseException) -> str:
    """``Type: message`` for logs and reasons."""
    return f"{type(exc).__qualname__}: {exc}"


def plugin_error(exc: BaseException, actor: str) -> PluginHostError:
    """Wrap an exception raised by plugin code for the caller (our own errors too: the plugin raised them)."""
    kind = type(exc)
    return PluginError(
        f"{actor}: {describe_exception(exc)}",
        type_name=f"{kind.__module__}.{kind.__qualname__}",
        traceback_text="".join(traceback.format_exception(exc)),
        actor=actor,
    )
