"""The lean launcher: a tiny process that starts a host's actor system, then exits.

Thespian forks its admin from whichever process first calls ``ActorSystem()``, and every
actor inherits that process's memory, file descriptors and threads.  Starting it from this
small script (run by path, in a fresh interpreter) keeps every actor lean, whatever the
embedding application has loaded.  The host attaches afterwards.

The system's description and its host key come on standard input (:func:`start`), never on the
command line or in the environment, which other processes of the same user can read through
``/proc``; the command line names only the state folder and the port (for ``ps`` and leak checks).
The launcher installs the frame authentication of :mod:`plugin_host._wire` with that key before
Thespian starts, so every process of the system inherits it.

This module also holds :func:`apply_bind_patch`, which the host process applies as well.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["apply_bind_patch", "log_defs", "start"]

KEY_BYTES = 32
"""Length of the host key handed to the launcher."""


def apply_bind_patch(address: str) -> None:
    """Make every Thespian socket of this process (and of processes forked later) bind ``address``.

    Thespian binds listening sockets on all interfaces and only *advertises* a specific
    address; anyone who reaches a port can send it pickles.  With ``0.0.0.0`` nothing is changed.
    """
    if address in ("", "0.0.0.0"):
        return
    from thespian.system.transport import IPBase

    current = IPBase.IPActorAddress.__init__
    original = getattr(current, "_plugin_host_original", current)

    def __init__(
        self: IPBase.IPActorAddress,
        af: int,
        socktype: int,
        proto: int,
        baseaddr: object,
        port: object,
        external: object = False,
    ) -> None:
        if not baseaddr or baseaddr == "0.0.0.0":
            baseaddr = address
        original(self, af, socktype, proto, baseaddr, port, external)
        self.bindname = self.sockname

    vars(__init__)["_plugin_host_original"] = original  # marks the patch (a second call finds the original)
    IPBase.IPActorAddress.__init__ = __init__


def log_defs(log_file: str) -> dict[str, Any]:
    """The ``logging.config.dictConfig`` for actor processes (never ``logDefs=False``)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"}},
        "handlers": {
            "file": {"class": "logging.FileHandler", "filename": log_file, "formatter": "plain", "level": "INFO"}
        },
        "root": {"handlers": ["file"], "level": "INFO"},
    }


def start(
    spec: dict[str, Any], key: bytearray | None, out: Path, timeout: float, new_session: bool = False
) -> tuple[int | None, list[str]]:
    """Run the launcher for ``spec`` (the key goes on its stdin, after the spec); its output goes to ``out``.

    Returns:
        Its exit code (``None`` if it did not finish within ``timeout``: it is killed) and its
        command line (every process of the system carries it).
    """
    # -P: run by path, the script's folder would come first on sys.path, and this folder's code.py and
    # operator.py would hide the standard library's modules of those names.
    command = [
        sys.executable,
        "-P",
        __file__,
        "--state-dir",
        str(spec.get("state_dir", "")),
        "--port",
        str(spec["port"]),
    ]
    data = json.dumps({**spec, "authenticated": key is not None}).encode()
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        # Output to a file, never a pipe: the detached admin inherits it and would hold it open.
        proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=fd, stderr=fd, close_fds=True, start_new_session=new_session
        )
    finally:
        os.close(fd)
    assert proc.stdin is not None
    try:
        proc.stdin.write(len(data).to_bytes(4, "big") + data)
        if key is not None:
            proc.stdin.write(key)
        proc.stdin.close()
        return proc.wait(timeout), command
    except (subprocess.TimeoutExpired, BrokenPipeError):
        proc.kill()
        proc.wait()
        return None, command


def _read_exactly(size: int) -> bytearray:
    """``size`` bytes of standard input, read straight into one buffer (a key must leave no copies)."""
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        count = os.readv(0, [view[got:]])
        if count == 0:
            raise SystemExit("the launcher's input ended early")
        got += count
    return buffer


def main(argv: list[str]) -> int:
    """Start the system described on standard input (see :func:`start`) and return."""
    spec = json.loads(bytes(_read_exactly(int.from_bytes(_read_exactly(4), "big"))))
    key = _read_exactly(KEY_BYTES) if spec["authenticated"] else None
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the forked admin must not keep the application's pipe
    os.close(devnull)
    os.umask(0o077)  # every file the system writes (registry, logs) is private
    sys.path[:] = spec["sys_path"]
    os.environ["THESPLOG_FILE"] = spec["thesplog"]
    os.environ.setdefault("THESPLOG_THRESHOLD", "WARNING")
    os.environ["THESPIAN_BASE_IPADDR"] = spec["bind"]
    os.environ.update(spec.get("environ") or {})
    # Convention timing, read once by Thespian when thespian.system.admin.convention is imported
    # (so before ActorSystem(); the forked admin inherits it) through str_to_timedelta: "M:SS",
    # integer minutes and seconds; any other format is logged and ignored.  A member re-registers
    # every CONVENTION_REREGISTRATION_PERIOD (default 7 min 22 s; the leader drops it after 3
    # missed ones).  While it has lost its leader (e.g. the leader restarted) it only wakes up
    # every CONVENTION_RESTART_PERIOD (default 3 min 22 s): Thespian's "registration timer or
    # restart timer" is an `or` on a timer that is falsy until it expires.  5 s each lets a
    # member rejoin a restarted leader within seconds; the cost is one small message per 5 s.
    os.environ.setdefault("CONVENTION_REREGISTRATION_PERIOD", "0:05")
    os.environ.setdefault("CONVENTION_RESTART_PERIOD", "0:05")
    apply_bind_patch(spec["bind"])
    if key is not None:
        from plugin_host import _wire
        from plugin_host._store import statedir as _statedir

        _wire.install()
        log_fd = _statedir.open_private(Path(spec["rejections"]))
        _wire.set_process_keys(_wire.Keyring(key, log_fd))
    from thespian.actors import ActorSystem

    capabilities = dict(spec.get("capabilities") or {})
    capabilities.update({"Admin Port": spec["port"], "Process Startup Method": "fork"})
    if spec.get("leader"):
        host, _, port = spec["leader"].rpartition(":")
        capabilities["Convention Address.IPv4"] = (host, int(port))
    ActorSystem("multiprocTCPBase", capabilities, logDefs=log_defs(spec["log"]), transientUnique=True)
    print(f"actor system up on {spec['bind']}:{spec['port']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
