"""The application process's line to its admin actor: one request, one reply, one policy per outcome.

``Host``, the operator's ``AdminClient`` and the event listener all talk to the admin through an
:class:`AdminChannel`, so an answer means the same everywhere: ``Ok`` gives its value, ``Failed``
raises its error, no answer in time raises the caller's timeout error, and an admin that refused
the request (its process is gone) or a closed host raises :class:`~plugin_host.errors.HostClosedError`.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import attrs
from thespian.actors import ActorAddress

from ..errors import CallTimeoutError, HostClosedError, PluginHostError
from ..messages import ADMIN_GLOBAL_NAME, Failed, Ok, Request, Subscribe, Unsubscribe
from .system import DEAD, ActorSystemHandle

__all__ = ["AdminChannel", "connect", "unwrap"]

T = TypeVar("T")


def connect(system: ActorSystemHandle) -> ActorAddress:
    """The address of the system's admin actor: the running one, or a new one if there is none.

    Global names are idempotent, so an operator attaching to a running host finds its admin and starts none.
    """
    from actors.admin import AdminActor  # the application imports the actor package only to name it here

    return system.create_actor(AdminActor, ADMIN_GLOBAL_NAME)


class AdminChannel:
    """Requests to one admin actor, from whichever thread asks (each thread has its own context).

    Args:
        system: the actor system the admin runs in, attached.
        address: the admin's address (:func:`connect`).
        label: how errors name the other end, e.g. ``"the plugin host on port 1234"``.
        port: the admin port, set on the errors raised (``None`` on ``simpleSystemBase``).
    """

    def __init__(self, system: ActorSystemHandle, address: ActorAddress, label: str, port: int | None = None) -> None:
        self.system = system
        self.address = address
        self._label = label
        self._port = port

    def request(
        self, request: Request[T], timeout: float, on_timeout: Callable[[], PluginHostError] | None = None
    ) -> T:
        """Send ``request`` (with a fresh ``corr``) and return the value of its ``Ok`` reply.

        A request about a sandbox (``sandbox_id``) may be answered by that sandbox's processes too
        (a run, a routed call).

        Raises:
            HostClosedError: the host is closed, or its admin is gone (it refused the request).
            CallTimeoutError: no answer within ``timeout`` (``on_timeout()`` instead, when given).
            PluginHostError: the admin answered ``Failed`` (its error is raised as is).
        """
        if self.system.closed:
            raise HostClosedError("the host is closed")
        about = getattr(request, "sandbox_id", None)
        reply = self.ask(attrs.evolve(request, corr=self.system.new_corr()), timeout, about)
        if reply is DEAD:
            raise HostClosedError(f"{self._label} went away", port=self._port)
        if reply is None:
            if on_timeout is not None:
                raise on_timeout()
            raise CallTimeoutError(f"the admin actor did not answer {type(request).__name__} in time")
        if isinstance(reply, Failed):
            raise reply.error
        value: T = reply.value
        return value

    def ask(self, message: object, timeout: float, about: object = None) -> Any:
        """Send ``message`` (it has a ``corr``) and return the raw reply: ``None`` on timeout, ``DEAD`` if refused."""
        return self.system.ask(self.address, message, timeout, about if isinstance(about, str) else None)

    def tell(self, message: object) -> None:
        """Fire and forget (the admin's address does not die while the host runs)."""
        self.system.tell(self.address, message)

    def subscribe(self, timeout: float) -> None:
        """Have the admin send this thread's context every event (``EventNotice``) from now on.

        Raises:
            HostClosedError, CallTimeoutError, PluginHostError: as :meth:`request`.
        """
        self.request(Subscribe(), timeout)

    def unsubscribe(self, timeout: float) -> None:
        """Stop the events to this thread's context (best effort: the admin may be going down)."""
        try:
            self.request(Unsubscribe(), timeout)
        except PluginHostError:
            pass

    def receive(self, timeout: float) -> Any:
        """The next message this thread's context gets from the host's own processes, or ``None``."""
        return self.system.receive(timeout)


def unwrap(result: object) -> Any:
    """One item of a batch reply: the ``Ok``'s value, the ``Failed``'s error, anything else as is."""
    if isinstance(result, Failed):
        return result.error
    if isinstance(result, Ok):
        return result.value
    return result
