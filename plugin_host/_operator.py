"""Operator access to a host that runs in another process, through its admin port.

The ``status`` and ``destroy`` commands attach to the actor system a ``Host`` already runs
and speak the ``plugin_host.messages`` protocol to its admin actor.  They never start that
system and never shut it down: closing an :class:`AdminClient` only detaches from it.
"""

from __future__ import annotations

from typing import Any

import attrs

from .config import HostConfig
from .errors import CallTimeoutError, HostStartError, PluginHostError
from .messages import ADMIN_GLOBAL_NAME, DestroySandbox, Failed, ListSandboxes, Request
from ._system import DEAD, ActorSystemHandle
from .values import SandboxInfo

__all__ = ["AdminClient"]

_SLACK = 5.0  # seconds on top of the admin's own deadlines, so that it answers first


class AdminClient:
    """A connection to the admin actor of a running host.

    Args:
        port: the host's admin port (``Host.admin_port``).
        config: where to connect (``bind_address``) and the timeouts to use; default
            ``HostConfig()``, i.e. defaults and the ``PLUGIN_HOST_*`` environment.

    Raises:
        HostStartError: no plugin host listens on that port.
    """

    def __init__(self, port: int, config: HostConfig | None = None) -> None:
        self.config = config or HostConfig()
        self._system = ActorSystemHandle(self.config)
        try:
            self._system.attach_existing(port)
            # Global names are idempotent: this finds the running admin, it starts none.
            from actors.admin import AdminActor

            self._admin = self._system.create_actor(AdminActor, ADMIN_GLOBAL_NAME)
        except PluginHostError:
            self._system.detach()
            raise
        except Exception as exc:  # noqa: BLE001 - Thespian raises its own types for a bad peer
            self._system.detach()
            raise HostStartError(f"cannot reach a plugin host on port {port}: {exc}", port=port) from exc

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Detach from the host's actor system, leaving it running.  Idempotent."""
        self._system.detach()

    def request(self, request: Request, timeout: float) -> Any:
        """Send one admin request and return the value of its ``Ok`` reply.

        Raises:
            CallTimeoutError: the admin did not answer within ``timeout`` seconds.
            PluginHostError: the admin answered ``Failed`` (its error is raised as is).
        """
        request = attrs.evolve(request, corr=self._system.new_corr())
        reply = self._system.ask(self._admin, request, timeout)
        if reply is None or reply is DEAD:
            raise CallTimeoutError(f"the admin actor did not answer {type(request).__name__} in time")
        if isinstance(reply, Failed):
            raise reply.error
        return reply.value

    def list_sandboxes(self) -> list[SandboxInfo]:
        """Every sandbox of the host, sorted by id."""
        return list(self.request(ListSandboxes(), self.config.call_timeout + _SLACK))

    def destroy_sandbox(self, sandbox_id: str) -> None:
        """Stop a sandbox of the host and end its processes.

        Raises:
            SandboxNotFoundError: no such sandbox.
        """
        self.request(DestroySandbox(sandbox_id=sandbox_id), 2 * self.config.shutdown_timeout + _SLACK)
