"""The host's handle on its actor system: start, attach, ask with correlation ids, and stop.

Thespian's ``ActorSystem`` object is not thread-safe and a timed-out ``ask`` leaves its
late reply for the next ``ask``, so every thread gets its own private context and every
request carries a correlation id; replies that do not match are dropped.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from datetime import timedelta

import psutil
from thespian.actors import ActorSystem
from thespian.system import isInternalActorSystemMessage
from thespian.system.transport import ReceiveEnvelope, TransmitIntent

from . import _launcher
from .config import HostConfig, system_capabilities
from .errors import HostClosedError, HostStartError

__all__ = ["ActorSystemHandle", "DEAD", "Pending", "free_port"]

DEAD = object()
"""``ask`` result when the target actor no longer exists (its address refused the message)."""

_LAUNCH_TIMEOUT = 30.0


def free_port(address: str) -> int:
    """A TCP port nobody listens on at ``address`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def port_in_use(address: str, port: int) -> bool:
    """Whether something accepts connections on ``address:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((address, port)) == 0


class ActorSystemHandle:
    """One actor system: its process tree, its contexts, and how to stop it for sure."""

    def __init__(self, config: HostConfig) -> None:
        self.config = config
        self.port = 0
        self.system: ActorSystem | None = None
        self.system_pid: int | None = None
        self.pgid: int | None = None
        self._local = threading.local()
        self._contexts: list[tuple[Any, Any]] = []
        self._lock = threading.Lock()
        self._serial = threading.RLock() if config.base == "simpleSystemBase" else None
        self._corr = itertools.count()
        self._corr_prefix = uuid.uuid4().hex[:12]
        self.closed = False

    # -- start / attach ---------------------------------------------------------------------

    def start(self) -> None:
        """Start a fresh system (through the launcher) and attach to it.

        Raises:
            HostStartError: the port is taken, or the system did not come up.
        """
        cfg = self.config
        if cfg.base == "simpleSystemBase":
            self.system = ActorSystem("simpleSystemBase", transientUnique=True)
            return
        self.port = cfg.admin_port or free_port(cfg.bind_address)
        if port_in_use(cfg.bind_address, self.port):
            raise HostStartError(
                f"something already listens on {cfg.bind_address}:{self.port}; refusing to attach to a stale or "
                "foreign actor system (choose another admin_port, or stop that system)", port=self.port)
        self._launch()
        _launcher.apply_bind_patch(cfg.bind_address)
        self.system = ActorSystem("multiprocTCPBase", {"Admin Port": self.port}, transientUnique=True)

    def _launch(self) -> None:
        logs = Path(self.config.state_dir) / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        _prune_logs(logs)
        spec = {
            "port": self.port, "bind": self.config.bind_address, "sys_path": [p for p in sys.path],
            "log": str(logs / f"actors-{self.port}.log"), "thesplog": str(logs / f"thespian-{self.port}.log"),
            "capabilities": system_capabilities(self.config, self.port), "leader": self.config.convention_leader,
            # What a sandbox root placed here by another host needs of this system (see local_environment).
            "environ": {"PLUGIN_HOST_STATE_DIR": os.fspath(self.config.state_dir),
                        "PLUGIN_HOST_FIND_LINKS": json.dumps(list(self.config.find_links)),  # URLs have ':'
                        "PLUGIN_HOST_NO_INDEX": "1" if self.config.no_index else "0"},
        }
        out = logs / f"launcher-{self.port}.log"
        with open(out, "ab") as sink:
            # Output to a file, never a pipe: the detached admin inherits it and would hold it open.
            proc = subprocess.Popen([sys.executable, _launcher.__file__, json.dumps(spec)],
                                    stdin=subprocess.DEVNULL, stdout=sink, stderr=sink, close_fds=True)
        try:
            code = proc.wait(_LAUNCH_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise HostStartError(f"the actor system did not start within {_LAUNCH_TIMEOUT} s; see {out}") from None
        if code != 0:
            raise HostStartError(f"the actor system launcher failed (exit {code}); see {out}")

    def attach_existing(self, port: int) -> None:
        """Attach to a host that already runs (operator commands); never starts one."""
        cfg = self.config
        if not port_in_use(cfg.bind_address, port):
            raise HostStartError(f"no plugin host listens on {cfg.bind_address}:{port}", port=port)
        self.port = port
        _launcher.apply_bind_patch(cfg.bind_address)
        self.system = ActorSystem("multiprocTCPBase", {"Admin Port": port}, transientUnique=True)

    def adopt(self, system_pid: int, pgid: int) -> None:
        """Remember the processes to end for sure at :meth:`shutdown`."""
        self.system_pid, self.pgid = system_pid, pgid

    # -- requests ---------------------------------------------------------------------------------

    def new_corr(self) -> str:
        """A correlation id unique to this host."""
        return f"{self._corr_prefix}-{next(self._corr)}"

    def _context(self) -> Any:
        if self._serial is not None:
            # simpleSystemBase runs actors only inside the main object's ask/tell; its
            # private contexts would wait forever.  Calls are serialised instead.
            if self.closed or self.system is None:
                raise HostClosedError("the host is closed")
            return self.system
        mailbox = getattr(self._local, "mailbox", None)
        if mailbox is None:
            if self.closed or self.system is None:
                raise HostClosedError("the host is closed")
            manager = self.system.private()
            mailbox = self._local.mailbox = _Mailbox(manager.__enter__())
            with self._lock:
                self._contexts.append((manager, mailbox.ctx))
        return mailbox

    def context_of_this_thread(self) -> Any:
        """This thread's Thespian context (to ``listen`` on it directly)."""
        mailbox = self._context()
        return mailbox if self._serial is not None else mailbox.ctx

    def create_actor(self, actor_class: Any, global_name: str | None = None) -> Any:
        """Create a top-level actor (the admin)."""
        assert self.system is not None
        return self.system.createActor(actor_class, globalName=global_name)

    def ask(self, address: Any, message: Any, timeout: float) -> Any:
        """Send ``message`` (which has a ``corr``) and return the reply with the same ``corr``.

        Returns:
            The reply; ``None`` on timeout; :data:`DEAD` when the target does not exist.
        """
        pending = self.send(address, message)
        try:
            return pending.wait(timeout)
        finally:
            pending.close()

    def send(self, address: Any, message: Any) -> Pending:
        """Send ``message`` and return a handle to wait for its reply (see :class:`Pending`)."""
        return Pending(self, self._context(), address, message)

    def tell(self, address: Any, message: Any) -> None:
        """Fire and forget (only to actors that cannot be dead, i.e. the admin)."""
        if self._serial is not None:
            with self._serial:
                self._context().tell(address, message)
            return
        self._context().ctx.tell(address, message)

    # -- stop -----------------------------------------------------------------------------------

    def process_tree(self) -> list[psutil.Process]:
        """Every process of this system (admin, logger, actors), as of now."""
        if self.system_pid is None:
            return []
        try:
            root = psutil.Process(self.system_pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def shutdown(self) -> None:
        """Shut the system down and make sure no process of it is left, hung ones included."""
        if self.closed:
            return
        self.closed = True
        tree = self.process_tree()
        # Sandbox roots lead process groups of their own; read now, while they run.
        leaders = [p for p in tree if _in_group(p, p.pid) and p.pid != os.getpgid(0)]
        try:
            with self._lock:
                contexts, self._contexts = self._contexts, []
            for manager, _ in contexts:
                try:
                    manager.__exit__(None, None, None)
                except Exception:  # noqa: BLE001 - best effort; the system goes down next
                    pass
            if self.system is not None:
                self.system.shutdown()
        finally:
            self._kill_leftovers(tree, leaders)

    def detach(self) -> None:
        """Drop this process's contexts without stopping the system (operator commands)."""
        self.closed = True
        with self._lock:
            contexts, self._contexts = self._contexts, []
        for manager, _ in contexts:
            try:
                manager.__exit__(None, None, None)
            except Exception:  # noqa: BLE001 - best effort
                pass

    def _kill_leftovers(self, tree: list[psutil.Process], leaders: list[psutil.Process]) -> None:
        if self.pgid and any(_in_group(p, self.pgid) for p in tree):
            os.killpg(self.pgid, signal.SIGKILL)  # the group is still ours: a member is alive
        for proc in tree:
            try:
                if proc.is_running():  # checks the create time too: never a recycled pid
                    proc.kill()
            except psutil.Error:
                pass
        for leader in leaders:  # a child forked after the tree was read (a restart racing the shutdown)
            if _reused(leader):
                continue  # that number leads someone else's group now
            try:
                os.killpg(leader.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + 5.0
        alive = [p for p in tree if _running(p)]
        while alive and time.monotonic() < deadline:  # a zombie counts as gone: nothing runs in it
            time.sleep(0.01)
            alive = [p for p in alive if _running(p)]


class _Mailbox:
    """One thread's private context, and replies that arrived while it waited for another one.

    A thread may wait for a second reply (an admin lookup) while its call is in flight; the
    call's reply arriving meanwhile is kept here, not dropped.  Replies to requests nobody
    waits for any more (timed out) are dropped.
    """

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.active: set[str] = set()
        self.stash: dict[str, Any] = {}


class Pending:
    """One request in flight from this thread's context, and whether it reached its target.

    Thespian's ``ask`` answers ``None`` both on timeout and when the target refuses the
    message, and says nothing about delivery.  Tracking the transmit ourselves tells the
    three cases apart: a reply, a refused message (:data:`DEAD`: never delivered, safe to
    send again), and a message delivered whose reply has not come (yet).
    """

    def __init__(self, handle: ActorSystemHandle, mailbox: Any, address: Any, message: Any) -> None:
        self.corr: str = message.corr
        self.delivered = False
        self.refused = False
        self._handle = handle
        self._mailbox: _Mailbox | None = None
        self._until_sent = False
        if handle._serial is not None:  # simpleSystemBase: synchronous, nothing to track
            self._ctx = mailbox
            with handle._serial:
                self._first = mailbox.ask(address, message, 0)
            self.delivered = True
            return
        self._ctx, self._mailbox = mailbox.ctx, mailbox
        mailbox.active.add(self.corr)
        self._first = None
        base = self._ctx._systemBase  # Thespian internals: the context's transport
        base.transport.scheduleTransmit(None, TransmitIntent(address, message, onSuccess=self._sent,
                                                             onError=self._failed))

    def _sent(self, result: Any, intent: Any) -> None:  # Thespian calls back with (result, intent)
        self.delivered = True
        if self._until_sent:
            self._ctx._systemBase.transport.abort_run()  # a cast waits for nothing more

    def _failed(self, result: Any, intent: Any) -> None:
        self.refused = True
        self._ctx._systemBase.transport.abort_run()  # stop waiting: nothing will come

    def wait(self, timeout: float) -> Any:
        """The matching reply; ``None`` after ``timeout``; :data:`DEAD` if the target refused it."""
        if self._handle._serial is not None:
            with self._handle._serial:
                reply, self._first = self._first, None
                if reply is None:
                    reply = self._ctx.listen(timeout)
                return reply if getattr(reply, "corr", None) == self.corr else None
        mailbox = self._mailbox
        assert mailbox is not None
        deadline = time.monotonic() + timeout
        while not self.refused:
            if self.corr in mailbox.stash:
                return mailbox.stash.pop(self.corr)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            reply = self._pump(left)
            if reply is not None:
                return reply
        return DEAD

    def wait_sent(self, timeout: float) -> Any:
        """Wait until the message is handed over (``True``), refused (:data:`DEAD`) or ``timeout`` (``None``)."""
        if self._handle._serial is not None:
            return True
        self._until_sent = True
        deadline = time.monotonic() + timeout
        while not (self.delivered or self.refused):
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            reply = self._pump(left)
            if reply is not None and self._mailbox is not None:
                self._mailbox.stash[self.corr] = reply
        return DEAD if self.refused else True

    def _pump(self, seconds: float) -> Any:
        """Run the transport once: this request's reply, or ``None`` (other replies are kept or dropped)."""
        response = self._ctx._systemBase._run_transport(timedelta(seconds=seconds))
        if isinstance(response, ReceiveEnvelope) and not isInternalActorSystemMessage(response.message):
            corr = getattr(response.message, "corr", None)
            if corr == self.corr:
                return response.message
            mailbox = self._mailbox
            if mailbox is not None and corr in mailbox.active:  # another request of this thread: keep it
                mailbox.stash[corr] = response.message
            # anything else answers a request nobody waits for any more: drop it
        return None

    def close(self) -> None:
        """Stop waiting for this request: a reply arriving later is dropped."""
        if self._mailbox is not None:
            self._mailbox.active.discard(self.corr)
            self._mailbox.stash.pop(self.corr, None)


_KEEP_LOGS = 60  # log files kept in state_dir/logs (three per host run)


def _prune_logs(folder: Path) -> None:
    """Drop the oldest log files, so a long-lived state_dir does not fill up with them."""
    try:
        files = sorted(folder.glob("*.log*"), key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        return
    for old in files[_KEEP_LOGS:]:
        try:
            old.unlink()
        except OSError:
            pass


def _reused(leader: psutil.Process) -> bool:
    """Whether ``leader``'s pid now belongs to another process (a group id cannot be reused while
    its group has members, so a missing leader means the group, if any, is still the same)."""
    try:
        return bool(abs(psutil.Process(leader.pid).create_time() - leader.create_time()) > 0.01)
    except psutil.Error:
        return False


def _in_group(proc: psutil.Process, pgid: int) -> bool:
    try:
        return bool(proc.is_running() and os.getpgid(proc.pid) == pgid)
    except (psutil.Error, ProcessLookupError):
        return False


def _running(proc: psutil.Process) -> bool:
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False
