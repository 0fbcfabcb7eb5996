"""The generic worker actor: hosts one ``Plugin`` behaviour and runs its callbacks.

Plugin exceptions are caught here (Thespian would otherwise retry the message on the same
instance and then send a ``PoisonMessage``): the caller gets ``Failed(PluginError)``, and the
worker tells its supervisor why before it exits, so the supervisor can restart it.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import os
import signal
import sys
import traceback
from typing import Any, Iterator

import attrs
import cloudpickle
from thespian.actors import ActorAddress, ActorExitRequest, WakeupMessage

from plugin_host.errors import ActorNotFoundError, CallTimeoutError, OverloadedError, PluginError
from plugin_host.messages import Call, Cast, Failed, Ok, pack, unblob
from plugin_host.states import EventKind

from . import _messages as m
from ._base import SandboxMember, describe_exception, plugin_error
from ._code.codeswap import Staged
from ._process import inflight
from ._process.limits import CpuBudget, apply_rlimits
from ._spec import ChildSpec
from .plugin import Plugin

__all__ = ["WorkerActor", "PluginRuntime"]


class PluginRuntime:
    """The services a running plugin reaches through ``self.call``, ``self.cast`` and friends
    (:class:`actors.plugin.PluginServices`, provided by its worker)."""

    def __init__(self, worker: WorkerActor) -> None:
        self._worker = worker

    @property
    def name(self) -> str:
        """The actor's name."""
        return self._worker.actor_name

    @property
    def sandbox_id(self) -> str:
        """The sandbox's id."""
        return self._worker.ctx.sandbox_id

    def call(self, name: str, request: Any, timeout: float) -> Any:
        """Blocking request/reply to a sibling (see ``Plugin.call``)."""
        return self._worker.sibling_call(name, request, timeout)

    def cast(self, name: str, message: Any) -> None:
        """One-way message to a sibling."""
        self._worker.sibling_cast(name, message)

    def send_after(self, ms: float, message: Any) -> None:
        """A timer that delivers ``message`` to ``handle_info``."""
        with self._worker.runtime_work():
            self._worker.wakeupAfter(datetime.timedelta(milliseconds=ms), payload=("plugin", message))

    def stop(self, reason: str) -> None:
        """Stop after the current callback."""
        self._worker.stop_reason = reason


class WorkerActor(SandboxMember):
    """Hosts one plugin behaviour; created only by a supervisor actor."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.plugin: Plugin | None = None
        self.state: Any = None
        self.module = ""
        self.messages = 0
        self.stop_reason: str | None = None
        self.dead = False
        self._calls = itertools.count()
        self._slot = inflight.take_slot()
        self._prepared: tuple[str, Staged, tuple[Plugin, Any] | None] | None = None
        self._held: list[tuple[Any, ActorAddress]] = []
        self._budget = CpuBudget(None, "")

    # -- start --------------------------------------------------------------------

    def receiveMsg_StartChild(self, msg: m.StartChild, sender: ActorAddress) -> None:
        """Become the named actor: build the plugin and run its ``init``."""
        self.context, self.parent = msg.context, sender
        self.actor_name, self.incarnation = msg.name, msg.incarnation
        self.directory = dict(msg.directory)
        if self.multiprocess:
            # Thespian makes SIGTERM and SIGQUIT a quiet graceful exit, whose notice beats the exit
            # status; a plugin process ended by one is a crash, so the signal must show in its reason.
            for signum in (signal.SIGTERM, signal.SIGQUIT):
                signal.signal(signum, signal.SIG_DFL)
            apply_rlimits(msg.context.limits)
            self._budget = CpuBudget(msg.context.limits.call_cpu_budget_ms, msg.name)
        try:
            self.claim_audit(msg.context)
            with self._plugin_code():  # unpickling the spec runs plugin code (and may import modules)
                spec: ChildSpec = cloudpickle.loads(msg.spec)
                self.module = spec.plugin.__module__
                plugin = spec.plugin()
                plugin._ph_runtime = PluginRuntime(self)
                self.state = plugin.init(spec.args)
            self.plugin = plugin
        except Exception as exc:  # noqa: BLE001 - the sandbox boundary: any plugin error
            reason = f"init failed: {describe_exception(exc)}\n{traceback.format_exc()}"
            self.send(sender, m.StartFailed(self.actor_name, self.incarnation, reason))
            self._exit()
            return
        self.send(sender, m.Started(self.actor_name, self.incarnation))
        self._after_callback()

    # -- requests ------------------------------------------------------------------

    def receiveMsg_Call(self, msg: Call, sender: ActorAddress) -> None:
        """Run ``handle_call`` and answer ``Ok(reply)`` (a Blob unless plain data) or ``Failed``."""
        reply_to = msg.reply_to or sender
        plugin = self._target(msg)
        if plugin is None:
            self.send(reply_to, Failed(self._not_me(msg.name), msg.corr))
            return
        self.messages += 1
        inflight.write(self._slot, msg.corr)
        try:
            with self._plugin_code():
                result = plugin.handle_call(unblob(msg.request), self.state)
            if not (isinstance(result, tuple) and len(result) == 2):
                raise TypeError(f"handle_call must return (reply, new_state), got {type(result).__name__}")
            reply, self.state = result
        except Exception as exc:  # noqa: BLE001 - the sandbox boundary
            self.send(reply_to, Failed(plugin_error(exc, self.actor_name), msg.corr))
            self._crash(exc)
            return
        try:
            with self._plugin_code():  # pickling the reply runs the plugin's __reduce__
                payload = pack(reply)
        except Exception as exc:  # noqa: BLE001 - an unserialisable reply is the caller's error only
            self.send(
                reply_to,
                Failed(
                    PluginError(
                        f"{self.actor_name}: reply cannot be serialised: {describe_exception(exc)}",
                        actor=self.actor_name,
                    ),
                    msg.corr,
                ),
            )
        else:
            self.send(reply_to, Ok(payload, msg.corr))
        self._after_callback()

    def receiveMsg_Cast(self, msg: Cast, sender: ActorAddress) -> None:
        """Run ``handle_cast``."""
        if self._target(msg) is not None:
            self._run_callback("handle_cast", msg.message)

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: ActorAddress) -> None:
        """Deliver a ``send_after`` timer to ``handle_info``; expire a forgotten reload."""
        payload = msg.payload
        if isinstance(payload, tuple) and len(payload) == 2 and payload[0] == "plugin":
            self._run_callback("handle_info", payload[1])
        elif isinstance(payload, tuple) and payload[0] == "reload":
            self.receiveMsg_AbortCode(m.AbortCode(payload[1]), sender)

    def receiveUnrecognizedMessage(self, message: Any, sender: ActorAddress) -> None:
        """Any other message (from another actor) goes to ``handle_info``."""
        if type(message).__module__.startswith("thespian."):
            return
        self._run_callback("handle_info", message)

    # -- supervision plumbing ----------------------------------------------------------

    def receiveMsg_ActorExitRequest(self, msg: ActorExitRequest, sender: ActorAddress) -> None:
        """Stopped by the supervisor (or exiting on our own): run ``terminate`` once."""
        if self.plugin is not None and not self.dead:
            self.dead = True
            self._terminate("shutdown")

    # -- internals -------------------------------------------------------------------

    @contextlib.contextmanager
    def _plugin_code(self) -> Iterator[None]:
        """Around every plugin callback: the CPU budget and the runtime audit."""
        with self._budget.running(), self.plugin_code():
            yield

    def _target(self, msg: Call | Cast) -> Plugin | None:
        """The plugin, when ``msg`` is for this incarnation of this actor and it runs; else None."""
        if self.dead or self.plugin is None or self.context is None:
            return None
        if msg.sandbox_id != self.context.sandbox_id or msg.name != self.actor_name:
            return None
        return self.plugin if msg.incarnation is None or msg.incarnation == self.incarnation else None

    def _not_me(self, name: str) -> ActorNotFoundError:
        sandbox = self.context.sandbox_id if self.context else ""
        return ActorNotFoundError(
            f"actor {name!r} is not running here (restarting or moved)", sandbox_id=sandbox, name=name, stale=True
        )

    def _run_callback(self, hook: str, message: Any) -> None:
        """Run ``hook`` on ``message`` (a Blob is unpickled in the callback: that runs plugin code)."""
        if self.plugin is None or self.dead:
            return
        self.messages += 1
        try:
            with self._plugin_code():
                self.state = getattr(self.plugin, hook)(unblob(message), self.state)
        except Exception as exc:  # noqa: BLE001 - the sandbox boundary
            self._crash(exc)
            return
        self._after_callback()

    def _after_callback(self) -> None:
        if self.stop_reason is not None and not self.dead:
            reason, normal = self.stop_reason, self.stop_reason == "normal"
            self.dead = True
            self._terminate(reason)
            self.send(self.parent, m.Exiting(self.actor_name, self.incarnation, f"stopped: {reason}", normal))
            self._exit()

    def _crash(self, exc: BaseException) -> None:
        self.dead = True
        self._terminate(exc)
        reason = f"{describe_exception(exc)}\n{''.join(traceback.format_exception(exc))}"
        self.send(self.parent, m.Exiting(self.actor_name, self.incarnation, reason, False))
        self._exit()

    def _terminate(self, reason: Any) -> None:
        plugin = self.plugin
        if plugin is None:
            return  # never built: nothing to terminate
        try:
            with self._plugin_code():
                plugin.terminate(reason, self.state)
        except Exception:  # noqa: BLE001 - terminate is best effort by contract
            pass

    def _exit(self) -> None:
        self.dead = True
        self.send(self.myAddress, ActorExitRequest())

    # -- hot reload ------------------------------------------------------------------------

    def receiveMessage(self, message: Any, sender: ActorAddress) -> Any:
        """While a reload is prepared, hold plugin messages: the new code will handle them."""
        if self._prepared is not None and _is_plugin_traffic(message):
            self._held.append((message, sender))
            return None
        return super().receiveMessage(message, sender)

    def receiveMsg_LoadCode(self, msg: m.LoadCode, sender: ActorAddress) -> None:
        """Load new code; migrate the state with ``code_change`` (or the caller's state handler)."""
        try:
            if msg.environment:
                self.allow_reading(msg.environment)
            staged = Staged(msg.sources, msg.order, msg.environment, self.plugin_code)  # top-level code audited
        except Exception as exc:  # noqa: BLE001 - plugin top-level code may raise anything
            self.send(
                sender,
                m.CodeLoaded(
                    msg.reload_id, self.actor_name, False, f"loading the new code failed: {describe_exception(exc)}"
                ),
            )
            return
        swap = None
        if self.plugin is not None and not self.dead and self.module in staged.order:
            try:
                swap = self._migrate(self.plugin, msg)
            except Exception as exc:  # noqa: BLE001 - the sandbox boundary
                staged.abort()
                self.send(
                    sender,
                    m.CodeLoaded(
                        msg.reload_id, self.actor_name, False, f"code_change failed: {describe_exception(exc)}"
                    ),
                )
                return
        if msg.prepare:
            self._prepared = (msg.reload_id, staged, swap)
            # Never stay suspended if the root's verdict is lost: give up on our own.
            self.wakeupAfter(datetime.timedelta(seconds=msg.timeout + 5), payload=("reload", msg.reload_id))
        else:
            self._swap(swap)
        self.send(sender, m.CodeLoaded(msg.reload_id, self.actor_name, True, updated=swap is not None))

    def _migrate(self, old: Plugin, msg: m.LoadCode) -> tuple[Plugin, Any]:
        with self._plugin_code():  # all plugin code: its class, its __init__, the state handler
            cls: Any = sys.modules[self.module]
            for part in type(old).__qualname__.split("."):
                cls = getattr(cls, part)
            if not (isinstance(cls, type) and issubclass(cls, Plugin)):
                raise TypeError(f"{self.module}.{type(old).__qualname__} is no longer a Plugin class")
            new = cls()
            new._ph_runtime = old._ph_runtime
            old_vsn, new_vsn = msg.versions.get(self.module, (None, None))
            migrate = cloudpickle.loads(msg.state_handler) if msg.state_handler else new.code_change
            return new, migrate(self.state, old_vsn, new_vsn)

    def _swap(self, swap: tuple[Plugin, Any] | None) -> None:
        if swap is not None:
            self.plugin, self.state = swap

    def receiveMsg_CommitCode(self, msg: m.CommitCode, sender: ActorAddress) -> None:
        """Switch to the prepared code and state, then handle what arrived meanwhile."""
        if self._prepared is not None and self._prepared[0] == msg.reload_id:
            _, _, swap = self._prepared
            self._swap(swap)
            self._release()

    def receiveMsg_AbortCode(self, msg: m.AbortCode, sender: ActorAddress) -> None:
        """Keep the old code and state."""
        if self._prepared is not None and self._prepared[0] == msg.reload_id:
            self._prepared[1].abort()
            self._release()

    def _release(self) -> None:
        self._prepared = None
        held, self._held = self._held, []
        for message, sender in held:
            self.receiveMessage(message, sender)

    # -- sibling messaging -------------------------------------------------------------

    def sibling_cast(self, name: str, message: Any) -> None:
        """Send a ``Cast`` to a sibling, through the sandbox root when its address is unknown.

        With ``max_mailbox`` set, a plugin whose casts pile up faster than they are taken
        (Thespian's queue of unsent messages in this process reaches the limit) gets
        ``OverloadedError`` instead of queueing more: a flood is stopped, and reported.
        """
        context = self.ctx  # plugin code runs only once started
        limit = context.limits.max_mailbox
        if limit is not None:
            queued = _queued_transmits(self)
            if queued >= limit:
                with self.runtime_work():
                    self.send(
                        context.root,
                        m.TreeEvent(
                            context.sandbox_id,
                            EventKind.LIMIT_BREACHED,
                            self.actor_name,
                            f"max_mailbox: {queued} messages queued",
                            {"limit": "max_mailbox", "value": queued, "maximum": limit},
                        ),
                    )
                raise OverloadedError(
                    f"{self.actor_name} -> {name}: {queued} messages already queued (max_mailbox {limit})",
                    name=name,
                    limit="max_mailbox",
                )
        cast = Cast(sandbox_id=context.sandbox_id, name=name, message=pack(message))  # audited: __reduce__
        address = self.directory.get(name)
        with self.runtime_work():  # the runtime's transport (its sockets, its log), not the plugin's
            if address is None:
                self.send(context.root, m.Route(name, cast))
            else:
                self.send(address, cast)

    def sibling_call(self, name: str, request: Any, timeout: float) -> Any:
        """Blocking call to a sibling through this process's own external endpoint.

        A sibling whose address this actor does not know (yet: it is starting or restarting)
        is reached through the sandbox root, which holds the call until it runs.
        """
        from ._process.sibling import blocking_call, endpoint_address

        if not self.multiprocess:
            raise ActorNotFoundError(
                "Plugin.call between actors needs a multiprocess base (not simpleSystemBase)", name=name
            )
        context = self.ctx
        call = Call(
            sandbox_id=context.sandbox_id, name=name, request=pack(request), corr=f"{os.getpid()}-{next(self._calls)}"
        )
        with self.runtime_work():  # the runtime's own sockets, not the plugin's; the reply is unpickled after
            address = self.directory.get(name)
            message: Any = call
            if address is None:
                address = context.root
                message = m.Route(name, attrs.evolve(call, reply_to=endpoint_address(self)))
            reply = blocking_call(self, address, message, timeout, call.corr)
        if reply is None:
            raise CallTimeoutError(
                f"{self.actor_name} -> {name}: no reply within {timeout} s",
                sandbox_id=context.sandbox_id,
                name=name,
            )
        if isinstance(reply, Failed):
            raise reply.error
        return unblob(reply.value)


def _queued_transmits(actor: Any) -> int:
    """Messages this actor process has handed to Thespian that are not sent yet (Thespian internals)."""
    transport = getattr(getattr(actor, "_myRef", None), "transport", None)
    return len(getattr(transport, "_aTB_queuedPendingTransmits", ()))


def _is_plugin_traffic(message: Any) -> bool:
    """Messages a plugin callback handles (held during a reload), as opposed to plumbing."""
    if isinstance(message, (Call, Cast)):
        return True
    if isinstance(message, WakeupMessage):
        return isinstance(message.payload, tuple) and message.payload[:1] == ("plugin",)
    module = type(message).__module__
    return not (module.startswith("thespian.") or module == m.__name__)
