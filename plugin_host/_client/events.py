"""Event subscriptions: one background thread per host listens for the admin's ``EventNotice``s."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, Callable

from ..messages import EventNotice
from ..values import Event

if TYPE_CHECKING:
    from .channel import AdminChannel

__all__ = ["EventListener", "Subscription"]

log = logging.getLogger("plugin_host.events")

_POLL = 0.2  # how often the listener looks at its stop flag while no event comes


class Subscription:
    """What ``Host.subscribe`` returns: call it (or :meth:`close` it) to stop the callback."""

    def __init__(self, listener: EventListener, callback: Callable[[Event], Any]) -> None:
        self._listener, self._callback = listener, callback

    def close(self) -> None:
        """Unsubscribe; idempotent."""
        self._listener.remove(self._callback)

    def __call__(self) -> None:
        self.close()


class EventListener:
    """Subscribes to the admin from a thread of its own and calls the callbacks with each event.

    Callbacks run in that thread, one event at a time, in the order events happened; an
    exception in a callback is logged and does not stop the others.
    """

    def __init__(self, channel: AdminChannel) -> None:
        self._channel = channel
        self._callbacks: list[Callable[[Event], Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def add(self, callback: Callable[[Event], Any]) -> Subscription:
        """Start calling ``callback`` for every event from now on."""
        with self._lock:
            self._callbacks.append(callback)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="plugin-host-events", daemon=True)
                self._thread.start()
        self._ready.wait(timeout=30)
        if self._error is not None:
            raise self._error
        return Subscription(self, callback)

    def remove(self, callback: Callable[[Event], Any]) -> None:
        """Stop calling ``callback``."""
        with self._lock:
            self._callbacks = [c for c in self._callbacks if c is not callback]

    def _run(self) -> None:
        try:
            self._channel.subscribe(10.0)
        except BaseException as exc:  # noqa: BLE001 - handed to the subscriber
            self._error = exc
        finally:
            self._ready.set()
        while not self._stop.is_set():
            message = self._channel.receive(_POLL)  # from the host's own processes only
            if isinstance(message, EventNotice):
                self._dispatch(message.event)
        self._channel.unsubscribe(2.0)

    def _dispatch(self, event: Event) -> None:
        with self._lock:
            callbacks = list(self._callbacks)
        for callback in callbacks:
            try:
                callback(event)
            except Exception:
                log.exception("an event callback raised")

    def close(self) -> None:
        """Unsubscribe from the admin and end the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
