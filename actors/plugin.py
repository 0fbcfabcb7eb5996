"""The ``Plugin`` behaviour: what a plugin author subclasses (gen_server-like callbacks).

A plugin is a plain object hosted by a generic worker actor (one OS process per actor on
the default base).  Its *state* is the value its callbacks return; keep it plain data
(dicts, lists, attrs/dataclass instances) so it survives hot reloads, and keep nothing in
module globals (they reset when the code is reloaded).

Every callback runs in the actor's own process.  An exception raised by a callback
crashes the actor ("let it crash"): a waiting caller gets ``PluginError`` and the
supervisor restarts the actor with a fresh ``init`` as its strategy says.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["Plugin", "PluginServices"]


class PluginServices(Protocol):
    """What a running plugin reaches of its host (its worker actor provides it): see the ``Plugin`` services."""

    @property
    def name(self) -> str:
        """The actor's name."""
        ...

    @property
    def sandbox_id(self) -> str:
        """The sandbox's id."""
        ...

    def call(self, name: str, request: Any, timeout: float) -> Any:
        """Blocking request/reply to a sibling."""
        ...

    def cast(self, name: str, message: Any) -> None:
        """One-way message to a sibling."""
        ...

    def send_after(self, ms: float, message: Any) -> None:
        """A timer that delivers ``message`` to ``handle_info``."""
        ...

    def stop(self, reason: str) -> None:
        """Stop after the current callback."""
        ...


class Plugin:
    """Base class of plugin behaviours; every hook has a sensible default.

    Plugin classes are instantiated with no arguments: take configuration in
    :meth:`init`.  Attributes starting with ``_ph_`` are reserved for the host.
    """

    vsn: Any = None
    """Optional version tag of the code; the registry numbers versions anyway."""

    _ph_runtime: PluginServices | None = None

    # -- callbacks ------------------------------------------------------------------

    def init(self, args: Any) -> Any:
        """Return the initial state.  Runs in the new actor process on every (re)start.

        Args:
            args: the ``ChildSpec.args`` (or the sandbox ``args`` for a bare plugin).

        Raising here fails the start: at sandbox creation ``create_sandbox`` raises
        ``SandboxStartError``; on a restart it counts as a crash.
        """
        return args

    def handle_call(self, request: Any, state: Any) -> tuple[Any, Any]:
        """Answer a request; return ``(reply, new_state)``.

        The default raises ``NotImplementedError``, which crashes the actor, as an
        unexpected call does in OTP.
        """
        raise NotImplementedError(f"{type(self).__name__} does not handle calls (got {request!r})")

    def handle_cast(self, message: Any, state: Any) -> Any:
        """Handle a one-way message; return the new state.  The default ignores it."""
        return state

    def handle_info(self, message: Any, state: Any) -> Any:
        """Handle anything else (timers from :meth:`send_after`); return the new state."""
        return state

    def code_change(self, old_state: Any, old_vsn: Any, new_vsn: Any) -> Any:
        """Migrate the state when new code replaces old (hot reload or rollback).

        Runs on the *new* code.  Convert by an explicit version or schema field, never by
        ``isinstance`` against classes of the old code.  Raising aborts the reload for the
        whole sandbox (old code and state are kept).  The default keeps the state.
        """
        return old_state

    def terminate(self, reason: Any, state: Any) -> None:
        """Clean up before the actor stops (``reason`` is ``"shutdown"`` or the exception).

        Best effort: not called when the process is killed (hang, signal, limit).  It
        must finish within ``HostConfig.shutdown_timeout`` or the process is killed.
        """

    # -- services offered to the plugin ------------------------------------------

    @property
    def name(self) -> str:
        """This actor's name within its sandbox."""
        return self._ph_rt().name

    @property
    def sandbox_id(self) -> str:
        """The id of the sandbox this actor runs in."""
        return self._ph_rt().sandbox_id

    def call(self, name: str, request: Any, timeout: float = 5.0) -> Any:
        """Send ``request`` to the sibling actor ``name`` and wait for its reply.

        While waiting, this actor handles no other message (as ``gen_server:call``);
        two actors calling each other deadlock until ``timeout``.

        Raises:
            ActorNotFoundError: no actor of that name runs in this sandbox.
            CallTimeoutError: no reply within ``timeout`` seconds.
            PluginError: the sibling crashed handling the request.
        """
        return self._ph_rt().call(name, request, timeout)

    def cast(self, name: str, message: Any) -> None:
        """Send ``message`` to the sibling actor ``name`` (its ``handle_cast``); no reply."""
        self._ph_rt().cast(name, message)

    def send_after(self, ms: float, message: Any) -> None:
        """Deliver ``message`` to this actor's own ``handle_info`` after ``ms`` milliseconds."""
        self._ph_rt().send_after(ms, message)

    def stop(self, reason: str = "normal") -> None:
        """Stop this actor once the current callback returns.

        ``"normal"`` is a normal exit (a ``transient`` child is then not restarted);
        any other reason counts as a crash.
        """
        self._ph_rt().stop(reason)

    def _ph_rt(self) -> PluginServices:
        runtime = self._ph_runtime
        if runtime is None:
            raise RuntimeError(
                f"{type(self).__name__} is not running in a sandbox: plugin services "
                "(call, cast, send_after, stop, name) exist only inside a worker actor"
            )
        return runtime
