"""What every actor of a host shares: process set-up, replies, Thespian internals in one place."""

from __future__ import annotations

import contextlib
import logging
import tempfile
import traceback
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping

from thespian.actors import ActorAddress, ActorTypeDispatcher

from plugin_host import lowlevel
from plugin_host.errors import AccessDeniedError, BadRequestError, PluginError, PluginHostError
from plugin_host.lowlevel import audit
from plugin_host.messages import Failed, Ok, Request
from plugin_host.values import AuditRecord

from . import _messages as m
from ._process.hardening import harden_process

__all__ = ["Admission", "HostActor", "SandboxMember", "audit_process", "plugin_error", "describe_exception"]

log = logging.getLogger("plugin_host.actors")

Admission = Literal["refused", "request", "report"]
"""What a host actor does with a message a sandbox's process signed: refuse it; handle it as a
request (its answers to the sender are signed for that sandbox); or take it as a report."""


class HostActor(ActorTypeDispatcher):
    """An ``ActorTypeDispatcher`` that hardens its process and answers bad requests."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._ph_ready = False

    def receiveMessage(self, message: object, sender: ActorAddress) -> Any:
        """Set the process up on the first message, check who sent it, then dispatch on its type."""
        if not self._ph_ready:
            self._ph_ready = True
            if self.multiprocess:
                harden_process()
            self.setup_process()
        principal = lowlevel.sender_principal()
        if principal.is_host or not _in_host_process():
            return self._dispatch(message, sender)
        try:
            admission = self.admit(message, principal)
            reply_to = getattr(message, "reply_to", None)
            if reply_to is not None and not reply_to == sender:
                admission = "refused"  # answers go to the sandbox that asked, in its key, never elsewhere
        except Exception:  # noqa: BLE001 - a malformed message is refused, never an error in Thespian's loop
            admission = "refused"
        if admission == "refused":
            self.refuse(message, sender, principal)
            return None
        if admission == "request":
            with lowlevel.signing_for(sender, principal):
                return self._dispatch(message, sender)
        return self._dispatch(message, sender)

    def admit(self, message: object, principal: lowlevel.Principal) -> Admission:
        """What to do with ``message`` from a sandbox's process; host actors take orders from the host only."""
        return "refused"

    def refuse(self, message: object, sender: ActorAddress, principal: lowlevel.Principal) -> AccessDeniedError:
        """Drop a message a sandbox may not send here; one with a ``corr`` is answered ``Failed(AccessDeniedError)``."""
        about = getattr(message, "sandbox_id", None)
        target = f" about sandbox {about!r}" if isinstance(about, str) and about != principal.sandbox_id else ""
        error = AccessDeniedError(
            f"sandbox {principal.sandbox_id!r} may not send {type(message).__name__}{target} "
            f"to the {type(self).__name__}: only the host may",
            request=type(message).__name__,
            sandbox_id=principal.sandbox_id,
        )
        log.warning("refused: %s", error)
        corr = getattr(message, "corr", None)
        if isinstance(corr, str) and not isinstance(message, (Ok, Failed)):  # answering answers would loop
            with lowlevel.signing_for(sender, principal):  # in its key: only it can read the answer
                self.send(sender, Failed(error, corr))
        return error

    def _dispatch(self, message: object, sender: ActorAddress) -> Any:
        try:
            return super().receiveMessage(message, sender)
        except Exception as exc:
            log.exception("%s could not handle a %s", type(self).__name__, type(message).__name__)
            if isinstance(message, Request):
                target = getattr(message, "reply_to", None) or sender
                self.send(
                    target,
                    Failed(
                        BadRequestError(
                            f"{type(self).__name__} could not handle {type(message).__name__}: "
                            f"{describe_exception(exc)}"
                        ),
                        message.corr,
                    ),
                )
            return None

    @staticmethod
    def actorSystemCapabilityCheck(capabilities: dict[str, object], requirements: Mapping[str, object] | None) -> bool:
        """Thespian's placement test: a system fits when it offers every required capability, equal."""
        return all(
            capabilities.get(key) == value
            for key, value in dict(requirements or {}).items()
            if key != lowlevel.KID_REQUIREMENT
        )

    @property
    def multiprocess(self) -> bool:
        """Whether this actor has a process of its own (not ``simpleSystemBase``)."""
        return "simpleSystemBase" not in type(self._myRef).__module__

    def setup_process(self) -> None:
        """Hook: runs once, in the actor's process, before the first message."""

    def receiveUnrecognizedMessage(self, message: object, sender: ActorAddress) -> None:
        """Answer a request we do not understand; nothing crashes on garbage."""
        corr = getattr(message, "corr", "") if isinstance(message, Request) else ""
        if isinstance(message, (Ok, Failed)):
            log.warning("%s dropped an answer it did not ask for: %.200r", type(self).__name__, message)
        elif isinstance(message, Request) or not _is_thespian_system_message(message):
            self.send(
                sender,
                Failed(
                    BadRequestError(f"{type(self).__name__} does not understand {type(message).__name__} messages"),
                    corr,
                ),
            )

    def reply(self, target: ActorAddress, value: object, corr: str) -> None:
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

    def admit(self, message: object, principal: lowlevel.Principal) -> Admission:
        """Asked only in a root that still holds the host key (one made by hand, before its start):
        it takes nothing from sandboxes.  Once it holds its own key, only its sandbox and the host can
        reach it at all."""
        return "refused"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.context: m.SandboxContext | None = None
        self.actor_name = ""
        self.incarnation = 0
        self.parent: ActorAddress | None = None
        self.directory: dict[str, ActorAddress] = {}
        """Where the sandbox's named actors run (name -> address), as last told by the root."""
        self._audit: audit.AuditControl | None = None
        self._audited: list[AuditRecord] = []

    messages = 0
    """Plugin messages handled (workers count them)."""

    @property
    def ctx(self) -> m.SandboxContext:
        """The sandbox's context, set by the start message (``StartChild``, or ``StartSandbox`` at the root):
        always there once plugin code runs."""
        if self.context is None:
            raise RuntimeError(f"{type(self).__name__} {self.actor_name!r} used before its start message")
        return self.context

    def receiveMsg_Ping(self, msg: m.Ping, sender: ActorAddress) -> None:
        """Heartbeat from the supervisor: this process is not stuck in a callback.  What plugin
        threads did since the last callback goes to the audit log now."""
        self.send(sender, m.Pong(self.actor_name, self.incarnation, msg.seq, self.messages))
        self.flush_audit()

    # -- the runtime audit (plugin_host._audit) -------------------------------------------------

    def claim_audit(self, context: m.SandboxContext, readable: Iterable[str] = ()) -> None:
        """Audit this process for the sandbox, before any plugin code runs in it (multiprocess bases only).

        Raises:
            PermissionError: the audit of this process was claimed already (by plugin code).
        """
        if self.multiprocess:
            self._audit = audit_process(context, self._audited.append, readable)

    def allow_reading(self, folder: str) -> None:
        """Plugin code of this process may read ``folder`` under ``restricted`` (a reload's new environment)."""
        if self._audit is not None:
            self._audit.allow_reading(folder)

    @contextlib.contextmanager
    def plugin_code(self) -> Iterator[None]:
        """The block runs plugin code (callbacks, module top-level code, unpickling plugin objects): audited."""
        if self._audit is None:
            yield
            return
        try:
            with self._audit.plugin_code(self.actor_name or "(root)"):
                yield
        finally:
            self.flush_audit()

    @contextlib.contextmanager
    def runtime_work(self) -> Iterator[None]:
        """Inside plugin code, the runtime's own work for it (its transport, its timers): never audited."""
        if self._audit is None:
            yield
            return
        with self._audit.runtime():
            yield

    def flush_audit(self) -> None:
        """Send the records made so far to the sandbox root (the root's own go on to the admin)."""
        if self._audited and self.context is not None:
            records = tuple(self._audited)
            del self._audited[: len(records)]  # a plugin thread may be adding one meanwhile
            with self.runtime_work():
                self.send(self.context.root, m.AuditRecords(self.context.sandbox_id, records))

    def receiveMsg_DirectoryUpdate(self, msg: m.DirectoryUpdate, sender: ActorAddress) -> None:
        """Learn where named actors run now."""
        self.directory.update(msg.entries)


def _in_host_process() -> bool:
    """Whether this process holds the host key (sandbox processes only ever verify their own)."""
    keys = lowlevel.process_keys()
    return keys is not None and keys.is_host


def _is_thespian_system_message(message: object) -> bool:
    return type(message).__module__.startswith("thespian.")


def describe_exception(exc: BaseException) -> str:
    """``Type: message`` for logs and reasons."""
    return f"{type(exc).__qualname__}: {exc}"


def audit_process(
    context: m.SandboxContext, emit: Callable[[AuditRecord], None], readable: Iterable[str] = ()
) -> audit.AuditControl:
    """Audit this process for ``context``'s sandbox and profile, before any plugin code runs in it.

    Raises:
        PermissionError: the audit of this process was claimed already (by plugin code).
    """
    # Thespian's log evaluates tempfile.gettempdir() on its first line even when THESPLOG_FILE is
    # set, and that probe creates files: let the runtime make it once, before any plugin code.
    tempfile.gettempdir()
    return audit.install(context.sandbox_id, context.security_profile, emit, readable)


def plugin_error(exc: BaseException, actor: str) -> PluginHostError:
    """Wrap an exception raised by plugin code for the caller (our own errors too: the plugin raised them)."""
    kind = type(exc)
    return PluginError(
        f"{actor}: {describe_exception(exc)}",
        type_name=f"{kind.__module__}.{kind.__qualname__}",
        traceback_text="".join(traceback.format_exception(exc)),
        actor=actor,
    )
