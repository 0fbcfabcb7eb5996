"""The host's handle on its actor system: start, attach, ask with correlation ids, and stop.

Thespian's ``ActorSystem`` object is not thread-safe and a timed-out ``ask`` leaves its
late reply for the next ``ask``, so every thread gets its own private context and every
request carries a correlation id (matched by :class:`~plugin_host._replies.Replies`).  Every frame is
signed with the host's key (:mod:`plugin_host._wire`); a reply counts only when it comes
from the host's own processes or from the sandbox the request was about.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import sys
import threading
import time
import uuid
import weakref
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import psutil
from thespian.actors import ActorAddress, ActorSystem
from thespian.system import isInternalActorSystemMessage
from thespian.system.transport import ReceiveEnvelope, TransmitIntent

from .. import _wire
from .._replies import Replies
from .._store import statedir as _statedir
from ..config import HostConfig, system_capabilities
from ..errors import CredentialError, HostClosedError, HostStartError
from . import launcher

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
    """One actor system: its process tree, its contexts, its keys, and how to stop it for sure."""

    def __init__(self, config: HostConfig) -> None:
        self.config = config
        self.keys: _wire.Keyring | None = None
        """This process's keys for the system (``None`` on ``simpleSystemBase``: nothing goes on a wire)."""
        self._host_lock: _statedir.HostLock | None = None
        self._runtime: Path | None = None
        self.port = 0
        self.system: ActorSystem | None = None
        self.system_pid: int | None = None
        self.pgid: int | None = None
        self._local = threading.local()
        self._contexts: list[weakref.finalize] = []
        """One per thread that talked to the system: it closes that thread's context when the thread's
        mailbox goes (the thread ended) or at shutdown, whichever comes first."""
        self._lock = threading.Lock()
        self._serial = threading.RLock() if config.base == "simpleSystemBase" else None
        self._corr = itertools.count()
        self._corr_prefix = uuid.uuid4().hex[:12]
        self._pid = os.getpid()
        self.closed = False

    # -- start / attach ---------------------------------------------------------------------

    def start(self, lock: bool = True) -> None:
        """Start a fresh system (through the launcher) and attach to it.

        Args:
            lock: take ``state_dir``'s host lock for the system's life (a host does; a node need not).

        Raises:
            ConfigError: ``state_dir`` or the credential file is not private to this user.
            StateDirInUseError: another host runs with this ``state_dir``.
            HostStartError: the port is taken, or the system did not come up.
        """
        state_dir = _statedir.prepare(self.config.state_dir)
        self.config = cfg = attrs.evolve(self.config, state_dir=state_dir)  # its real path from now on
        if lock:
            self._host_lock = _statedir.HostLock(state_dir)
            self._host_lock.acquire()
        try:
            if cfg.base == "simpleSystemBase":
                self.system = ActorSystem("simpleSystemBase", transientUnique=True)
                return
            self.port = cfg.admin_port or free_port(cfg.bind_address)
            if port_in_use(cfg.bind_address, self.port):
                raise HostStartError(
                    f"something already listens on {cfg.bind_address}:{self.port}; refusing to attach to a stale or "
                    "foreign actor system (choose another admin_port, or stop that system)",
                    port=self.port,
                )
            logs = _statedir.private_folder(state_dir / "logs")
            _prune_logs(logs)
            self.keys = self._keyring(logs, create=True)
            self._launch(logs)
            self._attach()
        except BaseException:
            self._release()
            raise

    def _keyring(self, logs: Path, create: bool) -> _wire.Keyring:
        secret = _statedir.cookie(self.config.credential_file, create)
        log_fd = _statedir.open_private(logs / f"rejected-{self.port}.log") if logs.is_dir() else None
        return _wire.Keyring(_wire.host_key_from_cookie(secret), log_fd)

    def _attach(self) -> None:
        launcher.apply_bind_patch(self.config.bind_address)
        _wire.install()
        if self.config.state_dir.is_dir():  # this process's own Thespian log: never a fixed name in /tmp
            _thespian_log_to(Path(self.config.state_dir) / "logs" / f"thespian-app-{self.port}.log")
        with _wire.keys_for_new_systems(self.keys):
            self.system = ActorSystem("multiprocTCPBase", {"Admin Port": self.port}, transientUnique=True)

    def _launch(self, logs: Path) -> None:
        files = {name: logs / f"{name}-{self.port}.log" for name in ("actors", "thespian", "rejected", "launcher")}
        for path in files.values():  # made private here, so a symlink planted in their place is not followed
            os.close(_statedir.open_private(path))
        spec = {
            "port": self.port,
            "bind": self.config.bind_address,
            "sys_path": [p for p in sys.path],
            "state_dir": os.fspath(self.config.state_dir),
            "log": str(files["actors"]),
            "thesplog": str(files["thespian"]),
            "rejections": str(files["rejected"]),
            "capabilities": system_capabilities(self.config, self.port),
            "leader": self.config.convention_leader,
            # What a sandbox root placed here by another host needs of this system (see local_environment).
            "environ": {
                "PLUGIN_HOST_STATE_DIR": os.fspath(self.config.state_dir),
                "PLUGIN_HOST_FIND_LINKS": json.dumps(list(self.config.find_links)),  # URLs have ':'
                "PLUGIN_HOST_NO_INDEX": "1" if self.config.no_index else "0",
            },
        }
        assert self.keys is not None
        code, _ = launcher.start(spec, self.keys.host_key, files["launcher"], _LAUNCH_TIMEOUT)
        if code is None:
            raise HostStartError(f"the actor system did not start within {_LAUNCH_TIMEOUT} s; see {files['launcher']}")
        if code != 0:
            raise HostStartError(f"the actor system launcher failed (exit {code}); see {files['launcher']}")

    def attach_existing(self, port: int) -> None:
        """Attach to a host that already runs (operator commands); never starts one.

        Raises:
            HostStartError: nothing answers on that port, or the credential file is missing.
            CredentialError: the system there refuses this credential.
        """
        cfg = self.config
        self.port = port
        self.keys = self._keyring(Path(cfg.state_dir) / "logs", create=False)
        try:
            accepted = _wire.probe((cfg.bind_address, port), self.keys)
        except OSError as exc:
            raise HostStartError(f"no plugin host answers on {cfg.bind_address}:{port}: {exc}", port=port) from None
        if not accepted:
            raise CredentialError(
                f"the plugin host on {cfg.bind_address}:{port} refused the credential "
                f"{cfg.credential_file} (another host's cookie?)",
                port=port,
            )
        self._attach()

    def publish(self) -> None:
        """Write the runtime file operator commands find this host by (removed at shutdown)."""
        self._runtime = _statedir.write_runtime(self.config.state_dir, self.port, self.config.bind_address)

    def _release(self) -> None:
        if self.keys is not None:
            self.keys.log.close()
        if self._runtime is not None:
            try:
                self._runtime.unlink()
            except OSError:
                pass
            self._runtime = None
        if self._host_lock is not None:
            self._host_lock.release()
            self._host_lock = None

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
            # A thread that ends releases its context (its sockets) with its thread-local mailbox:
            # an application that calls from a new thread per request must not run out of descriptors.
            closer = weakref.finalize(mailbox, _exit_context, manager)
            with self._lock:
                self._contexts = [c for c in self._contexts if c.alive]
                self._contexts.append(closer)
        return mailbox

    def context_of_this_thread(self) -> Any:
        """This thread's Thespian context (to ``listen`` on it directly)."""
        mailbox = self._context()
        return mailbox if self._serial is not None else mailbox.ctx

    def create_actor(self, actor_class: type, global_name: str | None = None) -> ActorAddress:
        """Create a top-level actor (the admin)."""
        assert self.system is not None
        return self.system.createActor(actor_class, globalName=global_name)

    def ask(self, address: ActorAddress, message: object, timeout: float, about: str | None = None) -> Any:
        """Send ``message`` (which has a ``corr``) and return the reply with the same ``corr``.

        Args:
            about: the sandbox the request concerns: its processes may answer too.

        Returns:
            The reply; ``None`` on timeout; :data:`DEAD` when the target does not exist.
        """
        pending = self.send(address, message, about)
        try:
            return pending.wait(timeout)
        finally:
            pending.close()

    def send(
        self, address: ActorAddress, message: Any, about: str | None = None, principal: _wire.Principal | None = None
    ) -> Pending:
        """Send ``message`` and return a handle to wait for its reply (see :class:`Pending`).

        Args:
            about: the sandbox the request concerns: a reply signed by its processes counts too.
            principal: the sandbox incarnation ``address`` belongs to (the frame is signed for it).
        """
        if principal is None or self.keys is None:
            return Pending(self, self._context(), address, message, about)
        with _wire.signing_for(address, principal):
            return Pending(self, self._context(), address, message, about)

    def accepts(self, envelope: ReceiveEnvelope, about: str | None) -> bool:
        """Whether a received envelope's signer may answer a request about sandbox ``about``."""
        if self.keys is None:
            return True
        principal = _wire.envelope_principal(envelope, self.keys)
        return principal.is_host or (about is not None and principal.sandbox_id == about)

    def receive(self, timeout: float) -> Any:
        """The next message this thread's context gets from the host's own processes, or ``None``."""
        ctx = self.context_of_this_thread()
        if self._serial is not None:
            return ctx.listen(min(timeout, _A_WHILE))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            response = ctx._systemBase._run_transport(_at_most_a_while(left))
            if (
                isinstance(response, ReceiveEnvelope)
                and not isInternalActorSystemMessage(response.message)
                and self.accepts(response, None)
            ):
                return response.message
        return None

    def tell(self, address: ActorAddress, message: object) -> None:
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
            self._close_contexts()
            if self.system is not None:
                self.system.shutdown()
        finally:
            self._kill_leftovers(tree, leaders)
            self._release()

    def detach(self) -> None:
        """Drop this process's contexts without stopping the system (operator commands)."""
        self.closed = True
        if self.keys is not None and os.getpid() == self._pid:
            self.keys.log.close()
        self._close_contexts()

    def _close_contexts(self) -> None:
        with self._lock:
            closers, self._contexts = self._contexts, []
        for closer in closers:
            closer()  # runs at most once, whether the thread still lives or not

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
    """One thread's private context, and the requests it has in flight there.

    A thread may wait for a second reply (an admin lookup) while its call is in flight; the
    call's reply arriving meanwhile is kept for it, not dropped (see :class:`~plugin_host._replies.Replies`).
    """

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.replies: Replies[str | None] = Replies()
        """Its requests in flight, each noted with the sandbox that may answer it too."""


class Pending:
    """One request in flight from this thread's context, and whether it reached its target.

    Thespian's ``ask`` answers ``None`` both on timeout and when the target refuses the
    message, and says nothing about delivery.  Tracking the transmit ourselves tells the
    three cases apart: a reply, a refused message (:data:`DEAD`: never delivered, safe to
    send again), and a message delivered whose reply has not come (yet).
    """

    def __init__(
        self, handle: ActorSystemHandle, mailbox: Any, address: ActorAddress, message: Any, about: str | None = None
    ) -> None:
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
        mailbox.replies.expect(self.corr, about)
        self._first = None
        base = self._ctx._systemBase  # Thespian internals: the context's transport
        base.transport.scheduleTransmit(
            None, TransmitIntent(address, message, onSuccess=self._sent, onError=self._failed)
        )

    def _sent(self, result: object, intent: TransmitIntent) -> None:  # Thespian calls back with (result, intent)
        self.delivered = True
        if self._until_sent:
            self._ctx._systemBase.transport.abort_run()  # a cast waits for nothing more

    def _failed(self, result: object, intent: TransmitIntent) -> None:
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
        reply = mailbox.replies.await_reply(self.corr, self._receive, deadline, given_up=lambda: self.refused)
        return DEAD if reply is None and self.refused else reply

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
            reply = self._receive(left)
            if reply is not None and self._mailbox is not None:
                self._mailbox.replies.file(reply)  # its own reply included: wait() takes it
        return DEAD if self.refused else True

    def _receive(self, seconds: float) -> Any:
        """Run the transport once: a reply to one of this thread's requests, or ``None``.

        A reply counts only from the host's processes or the sandbox its request was about: another
        sandbox may not forge it.  Matching it to its request is :class:`Replies`' job.
        """
        response = self._ctx._systemBase._run_transport(_at_most_a_while(seconds))
        if not isinstance(response, ReceiveEnvelope) or isInternalActorSystemMessage(response.message):
            return None
        assert self._mailbox is not None
        waiting = self._mailbox.replies.waiting
        corr = getattr(response.message, "corr", "")
        if corr not in waiting or not self._handle.accepts(response, waiting[corr]):
            return None  # forged, or it answers a request nobody waits for any more
        return response.message

    def close(self) -> None:
        """Stop waiting for this request: a reply arriving later is dropped."""
        if self._mailbox is not None:
            self._mailbox.replies.forget(self.corr)


def _exit_context(manager: Any) -> None:
    """Close one thread's private context (best effort: the system may be going down)."""
    try:
        manager.__exit__(None, None, None)
    except Exception:  # noqa: BLE001 - see above
        pass


def _thespian_log_to(path: Path) -> None:
    """Where Thespian's own log of this process goes (it defaults to ``$TMPDIR/thespian.log``, a name
    anyone could have planted a symlink at); Thespian reads the name once and caches it here."""
    from thespian.system import utilis

    os.close(_statedir.open_private(path))
    utilis._thesplog_file, utilis._thesplog_old_file = str(path), f"{path}.old"


_KEEP_LOGS = 100  # log files kept in state_dir/logs (five per host run)


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


_A_WHILE = 3600.0
"""The longest one turn of the transport waits (``timedelta`` overflows on ``inf``, a wait for ever)."""


def _at_most_a_while(seconds: float) -> timedelta:
    """One turn's wait: ``seconds``, or :data:`_A_WHILE` for longer ones (the caller's loop waits on)."""
    return timedelta(seconds=min(seconds, _A_WHILE))
