"""Talking to plugins from the application: call, cast and run (at most once), and the address cache behind them."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator

from .. import _wire
from ..errors import (
    ActorNotFoundError,
    CallTimeoutError,
    OverloadedError,
    PluginError,
    PluginHostError,
    RunTimeoutError,
)
from ..messages import (
    ActorRef,
    Blob,
    Call,
    Cast,
    Failed,
    HostBreach,
    LookupActor,
    Run,
    pack,
    unblob,
)
from .system import DEAD, Pending

if TYPE_CHECKING:
    from ..config import HostConfig
    from .channel import AdminChannel

__all__ = ["ADMIN_SLACK", "Caller"]

ADMIN_SLACK = 5.0  # seconds added to server-side deadlines, so the server answers first
_LIVENESS_SLICES = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)  # when a waiting call checks its actor still runs
_CAST_SEND = 1.0  # longest a cast waits for Thespian to hand its message over
_GRACE = 0.005  # after an actor is seen gone, how long its last reply may still take (it left before)


def _slice(deadline: float, attempt: int) -> float:
    step = _LIVENESS_SLICES[min(attempt, len(_LIVENESS_SLICES) - 1)]
    return max(0.001, min(step, deadline - time.monotonic()))


def _principal(ref: ActorRef) -> _wire.Principal | None:
    """The sandbox incarnation an actor belongs to: frames to it are signed for it."""
    return _wire.Principal(ref.kid) if ref.kid else None


def _admin_timeout(what: str) -> Callable[[], PluginHostError]:
    return lambda: CallTimeoutError(f"the admin actor did not answer {what} in time")


class Caller:
    """A host's calls, casts and runs: sent straight to the actor where it can be, never run twice.

    Owns the address cache (``refs``), the incarnations known gone (``gone``) and the count of calls
    waiting per actor (``waiting``, for ``max_mailbox``).

    Args:
        channel: the line to the admin (lookups, routed casts, runs).
        config: the host's configuration (``call_timeout``, ``plugin_values``).
    """

    def __init__(self, channel: AdminChannel, config: HostConfig) -> None:
        self._channel = channel
        self._system = channel.system
        self.config = config
        self.refs: dict[tuple[str, str], ActorRef] = {}
        """Where each named actor ran when last looked up: ``(sandbox_id, name)`` -> its address."""
        self.gone: dict[tuple[str, str], int] = {}
        """The incarnation of each actor last seen dead (a lookup waits for a newer one)."""
        self.waiting: dict[tuple[str, str], int] = {}
        """This host's calls waiting on each actor now."""
        self.lock = threading.Lock()
        """Guards ``waiting`` (calls come from any thread)."""

    def forget(self, sandbox_id: str) -> None:
        """Drop the cached addresses of a sandbox's actors (it is being destroyed or restarted)."""
        for key in [k for k in self.refs if k[0] == sandbox_id]:
            self.refs.pop(key, None)

    def _resolve(self, sandbox_id: str, name: str, deadline: float) -> ActorRef:
        key = (sandbox_id, name)
        gone = self.gone.get(key)
        ref = self.refs.get(key)
        if ref is not None and ref.incarnation != gone:
            return ref
        wait = max(0.0, deadline - time.monotonic())
        lookup = LookupActor(sandbox_id=sandbox_id, name=name, wait=wait, not_incarnation=gone)
        ref = self._channel.request(
            lookup, wait + ADMIN_SLACK, lambda: CallTimeoutError(f"{sandbox_id}/{name}: not running again in time")
        )
        self.refs[key] = ref
        return ref

    def _mark_gone(self, ref: ActorRef) -> None:
        key = (ref.sandbox_id, ref.name)
        self.gone[key] = ref.incarnation
        self.refs.pop(key, None)

    def _still_running(self, ref: ActorRef) -> bool:
        try:
            now = self._channel.request(
                LookupActor(sandbox_id=ref.sandbox_id, name=ref.name),
                self.config.call_timeout,
                _admin_timeout("a lookup"),
            )
        except PluginHostError:
            return False
        return bool(now.incarnation == ref.incarnation)

    def _check_not_run(self, dead: ActorRef, corr: str, deadline: float) -> None:
        """Raise PluginError unless the dead incarnation provably never started call ``corr``.

        Every worker notes the call it starts in a page its supervisor reads after its
        death; the admin hands those notes out with the next incarnation's address.
        """
        try:
            fresh = self._resolve(dead.sandbox_id, dead.name, deadline)
        except PluginHostError as exc:
            raise PluginError(
                f"{dead.sandbox_id}/{dead.name}: the actor's process died before answering ({exc})",
                actor=dead.name,
                type_name="ProcessDied",
            ) from None
        last_calls = dict(fresh.deaths)
        if last_calls.get(dead.incarnation, corr) == corr:  # running our call, or unknown: assume it ran
            raise PluginError(
                f"{dead.sandbox_id}/{dead.name}: the actor's process died before answering",
                actor=dead.name,
                type_name="ProcessDied",
            )

    def _await(self, pending: Pending, ref: ActorRef, deadline: float) -> Any:
        """Wait for a call's reply, checking now and then that its actor still runs."""
        reply = pending.wait(_slice(deadline, 0))
        attempt = 0
        while reply is None and time.monotonic() < deadline:
            attempt += 1
            if not self._still_running(ref):
                self._mark_gone(ref)
                # Its last words (a Failed reply) may still be on their way.
                reply = pending.wait(min(_GRACE, max(0.001, deadline - time.monotonic())))
                if reply is None:
                    self._check_not_run(ref, pending.corr, deadline)
                    reply = DEAD  # it died before starting this call: safe to send it again
                break
            reply = pending.wait(_slice(deadline, attempt))
        return reply

    @contextlib.contextmanager
    def _mailbox_slot(self, ref: ActorRef) -> Iterator[None]:
        """Count this host's calls waiting on an actor; past ``max_mailbox``, fail fast."""
        key = (ref.sandbox_id, ref.name)
        with self.lock:
            waiting = self.waiting.get(key, 0)
            if ref.max_mailbox is not None and waiting >= ref.max_mailbox:
                self._channel.tell(HostBreach(ref.sandbox_id, ref.name, "max_mailbox", waiting, ref.max_mailbox))
                raise OverloadedError(
                    f"{ref.sandbox_id}/{ref.name} already has {waiting} calls waiting (max_mailbox {ref.max_mailbox})",
                    sandbox_id=ref.sandbox_id,
                    name=ref.name,
                )
            self.waiting[key] = waiting + 1
        try:
            yield
        finally:
            with self.lock:
                self.waiting[key] -= 1

    def call(self, sandbox_id: str, name: str, request: object, timeout: float | None = None) -> Any:
        """Send ``request`` to the actor ``name`` and return the reply (see :meth:`plugin_host.Host.call`)."""
        timeout = self.config.call_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        payload = pack(request)
        while True:
            ref = self._resolve(sandbox_id, name, deadline)
            call = Call(
                sandbox_id=sandbox_id,
                name=name,
                request=payload,
                incarnation=ref.incarnation,
                corr=self._system.new_corr(),
            )
            with self._mailbox_slot(ref):
                pending = self._system.send(ref.address, call, sandbox_id, _principal(ref))
                try:
                    reply = self._await(pending, ref, deadline)
                finally:
                    pending.close()
            if reply is DEAD or (isinstance(reply, Failed) and getattr(reply.error, "stale", False)):
                self._mark_gone(ref)  # never handled: safe to send again to the next incarnation
                continue
            if reply is None:
                raise CallTimeoutError(
                    f"{sandbox_id}/{name}: no reply within {timeout} s", sandbox_id=sandbox_id, name=name
                )
            if isinstance(reply, Failed):
                if isinstance(reply.error, PluginError):
                    self._mark_gone(ref)  # the actor crashed on it and is restarting
                raise reply.error
            return self._from_plugin(reply.value, f"{sandbox_id}/{name}")

    def _from_plugin(self, value: object, who: str) -> Any:
        """A value a plugin sent back: rebuilt as it was, or, with ``plugin_values="plain"``, only builtin data.

        Raises:
            PluginError: it is not plain data and the host takes plain data only (nothing of it was loaded).
        """
        if isinstance(value, Blob) and self.config.plugin_values == "plain":
            raise PluginError(
                f"{who} returned a value that is not plain data (builtin scalars and containers), "
                "and this host takes plain data only from plugins (plugin_values='plain')",
                type_name="NotPlainData",
                actor=who,
            )
        return unblob(value)

    def cast(self, sandbox_id: str, name: str, message: object) -> None:
        """Send ``message`` to the actor ``name``; no reply (see :meth:`plugin_host.Host.cast`)."""
        payload = pack(message)
        try:
            ref = self._resolve(sandbox_id, name, time.monotonic())
        except ActorNotFoundError as exc:
            if not getattr(exc, "stale", False):
                raise
            ref = None  # restarting: the admin queues it for the next incarnation
        if ref is not None:
            cast = Cast(
                sandbox_id=sandbox_id,
                name=name,
                message=payload,
                incarnation=ref.incarnation,
                corr=self._system.new_corr(),
            )
            pending = self._system.send(ref.address, cast, sandbox_id, _principal(ref))
            try:
                sent = pending.wait_sent(_CAST_SEND)
            finally:
                pending.close()
            if sent is not DEAD:
                return  # delivered, or lost with a process dying right now (as in OTP)
            self._mark_gone(ref)
        self._channel.tell(Cast(sandbox_id=sandbox_id, name=name, message=payload))

    def run(self, sandbox_id: str, fn: Callable[[], Any], timeout: float | None = None) -> Any:
        """Run ``fn()`` in a fresh process of the sandbox (see :meth:`plugin_host.Host.run`)."""
        timeout = self.config.call_timeout if timeout is None else timeout
        request = Run(sandbox_id=sandbox_id, fn=Blob.dump(fn), timeout=timeout)
        value = self._channel.request(
            request,
            timeout + ADMIN_SLACK,
            lambda: RunTimeoutError(f"run in {sandbox_id!r} did not finish within {timeout} s"),
        )
        return self._from_plugin(value, f"run in {sandbox_id!r}")
