"""The other actor systems of the bench's ``remote`` section.

``_Node`` is a ``plugin-host node`` process joining the bench host's convention; ``_RawConvention``
is raw Thespian's equivalent, two systems (a leader and a member) started by the lean launcher
(the bench process already has threads by then, and a Thespian admin must fork before any).
Both end every process they started, by the pids they recorded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import psutil

from .._client import launcher
from .._client.launcher import apply_bind_patch
from .harness import _BenchError, _wait

if TYPE_CHECKING:
    from thespian.actors import ActorAddress

__all__ = ["_Node", "_RawConvention"]


def _stop_tree(tree: Sequence[psutil.Process], timeout: float = 5.0) -> None:
    """Wait up to ``timeout`` for the processes recorded in ``tree`` to end; SIGKILL the rest."""
    _, alive = psutil.wait_procs(list(tree), timeout=timeout)
    for proc in alive:
        try:
            proc.kill()  # psutil checks the create time: never a recycled pid
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)


def _tree(root: psutil.Process | None) -> list[psutil.Process]:
    """``root`` and every process under it, as of now."""
    if root is None:
        return []
    try:
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


class _Node:
    """A ``plugin-host node`` process joining ``leader_port`` on loopback (the ``remote`` section).

    It starts at once and is waited for by :meth:`ready`, so the caller can do other work
    while it boots.  Its output goes to a file, never a pipe (the system's daemons inherit it).
    """

    def __init__(self, folder: Path, leader_port: int, capabilities: Mapping[str, str], cookie: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.out = folder / "node.out"
        command = [
            sys.executable,
            "-m",
            "plugin_host",
            "node",
            "--leader",
            f"127.0.0.1:{leader_port}",
            "--state-dir",
            str(folder / "state"),
            "--cookie-file",
            str(cookie),
            "--json",
        ]
        for key, value in capabilities.items():
            command += ["--capability", f"{key}={value}"]
        with open(self.out, "wb") as sink:
            self.proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.info: dict[str, Any] = {}
        self.system: psutil.Process | None = None
        self.tree: list[psutil.Process] | None = None
        """The processes to end, recorded when the node is told to stop."""

    def _startup_line(self) -> dict[str, Any] | None:
        for text in self.out.read_text(errors="replace").splitlines():
            if text.startswith("{"):
                try:
                    return dict(json.loads(text))
                except ValueError:  # still being written
                    return None
        return None

    def ready(self, timeout: float = 40.0) -> dict[str, Any]:
        """Wait for the node's JSON startup line (it has joined the leader) and return it."""

        def line() -> dict[str, Any] | None:
            if self.proc.poll() is not None:
                raise _BenchError(
                    f"plugin-host node exited {self.proc.returncode}: {self.out.read_text(errors='replace')[-2000:]}"
                )
            return self._startup_line()

        self.info = _wait(line, timeout, interval=0.05, what="plugin-host node printed no startup line")
        self.system = psutil.Process(self.info["system_pid"])
        return self.info

    def processes(self) -> list[psutil.Process]:
        """Every process of the node's actor system, as of now."""
        return _tree(self.system)

    def terminate(self) -> None:
        """SIGTERM, as an operator would, without waiting (other teardown runs meanwhile); see :meth:`stop`."""
        if self.tree is None:
            if self.system is None and (info := self._startup_line()):  # it came up after all
                try:
                    self.system = psutil.Process(info["system_pid"])
                except psutil.Error:
                    pass
            self.tree = self.processes()
            try:
                self.tree.append(psutil.Process(self.proc.pid))
            except psutil.Error:
                pass
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        """SIGTERM (unless :meth:`terminate` sent it); wait, then kill whatever is left of the recorded processes."""
        self.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        _stop_tree(self.tree or [])


def _admin_of(command: Sequence[str]) -> psutil.Process | None:
    """The admin of a system the launcher started with ``command``, once the launcher has exited.

    Every process of that system is a fork of the launcher and carries its command line (which
    names the system's port); the admin is the one whose parent does not.
    """
    found = {}
    for proc in psutil.process_iter(["cmdline", "ppid", "status"]):
        if proc.info["cmdline"] == list(command) and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found[proc.pid] = proc
    return next((p for p in found.values() if p.info["ppid"] not in found), None)


class _RawConvention:
    """Two raw Thespian ``multiprocTCPBase`` systems on loopback: a leader and a member that joined it.

    Each is started by the lean launcher (a fresh process: an admin forked from the bench
    process, which runs the host's threads by now, could inherit a held lock) with the bind
    patch and ``THESPIAN_BASE_IPADDR`` of :class:`_Raw`; the member's capabilities carry
    ``Convention Address.IPv4`` = the leader's.  This process creates its actors through the
    leader (``system``), as a raw user's application would; it attaches to the member too, but
    only so that :meth:`shutdown` can stop both.
    """

    def __init__(self, folder: Path, capabilities: Mapping[str, Any]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.capabilities = folder, dict(capabilities)
        self.admins: list[psutil.Process] = []
        self.groups: list[int] = []
        self.handles: list[Any] = []
        """This process's handle on each system, leader first (to shut them down)."""

    def start(self) -> None:
        """Start the leader, then the member (which joins it), and attach to each."""
        leader_port = self._launch("leader", {}, None)
        self._launch("member", self.capabilities, f"127.0.0.1:{leader_port}")

    @property
    def system(self) -> Any:
        """This process's handle on the leader: where the application creates its actors."""
        return self.handles[0]

    def _launch(self, name: str, capabilities: Mapping[str, Any], leader: str | None) -> int:
        from thespian.actors import ActorSystem

        from .._client.system import free_port

        port = free_port("127.0.0.1")
        spec = {
            "port": port,
            "bind": "127.0.0.1",
            "sys_path": list(sys.path),
            "capabilities": dict(capabilities),
            "leader": leader,
            "log": str(self.folder / f"raw-{name}-actors.log"),
            "state_dir": str(self.folder),
            "thesplog": str(self.folder / f"raw-{name}-thespian.log"),
        }
        out = self.folder / f"raw-{name}-launcher.out"
        code, command = launcher.start(spec, None, out, 30.0, new_session=True)  # raw: no frame authentication
        if code is None:
            raise _BenchError(f"raw Thespian {name} system did not start within 30 s; see {out}")
        admin = _admin_of(command)
        if admin is not None:  # recorded before anything can fail: shutdown() ends it for sure
            self.admins.append(admin)
            try:
                self.groups.append(os.getpgid(admin.pid))
            except OSError:
                pass
        if code != 0 or admin is None:
            raise _BenchError(f"raw Thespian {name} system did not start (launcher exit {code}); see {out}")
        apply_bind_patch("127.0.0.1")
        saved = os.environ.get("THESPIAN_BASE_IPADDR")
        os.environ["THESPIAN_BASE_IPADDR"] = "127.0.0.1"
        try:  # its admin listens (checked above): this attaches and starts nothing
            self.handles.append(ActorSystem("multiprocTCPBase", {"Admin Port": port}, transientUnique=True))
        finally:
            if saved is None:
                os.environ.pop("THESPIAN_BASE_IPADDR", None)
            else:
                os.environ["THESPIAN_BASE_IPADDR"] = saved
        return port

    def ask(self, address: ActorAddress, message: object, timeout: float = 10.0) -> Any:
        """Ask through the leader's handle and fail loudly on no reply."""
        reply = self.system.ask(address, message, timeout)
        if reply is None:
            raise _BenchError(f"raw Thespian (convention): no reply to {message!r}")
        return reply

    def member_runs(self, pid: int) -> bool:
        """Whether ``pid`` is a process of the member system."""
        return len(self.admins) > 1 and any(p.pid == pid for p in _tree(self.admins[1]))

    def shutdown(self) -> None:
        """Shut both systems down (the member first); kill any of their processes that outlive that."""
        trees = [_tree(admin) for admin in self.admins]
        try:
            for handle in reversed(self.handles):
                try:
                    handle.shutdown()
                except Exception:  # noqa: BLE001 - best effort; the processes are killed next
                    pass
        finally:
            for tree in trees:
                _stop_tree(tree)
            own = os.getpgid(0)
            for group in self.groups:  # a process forked after the trees were read
                if group != own:
                    try:
                        os.killpg(group, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
