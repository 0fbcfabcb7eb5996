"""The lean launcher: a tiny process that starts a host's actor system, then exits.

Thespian forks its admin from whichever process first calls ``ActorSystem()``, and every
actor inherits that process's memory, file descriptors and threads.  Starting it from this
small script (run by path, so the ``plugin_host`` package is not imported) keeps every
actor lean, whatever the embedding application has loaded.  The host attaches afterwards.

This module also holds :func:`apply_bind_patch`, which the host process applies as well.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

__all__ = ["apply_bind_patch", "log_defs"]


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

    def __init__(self: Any, af: Any, socktype: Any, proto: Any, baseaddr: Any, port: Any, external: Any = False) -> None:
        if not baseaddr or baseaddr == "0.0.0.0":
            baseaddr = address
        original(self, af, socktype, proto, baseaddr, port, external)
        self.bindname = self.sockname

    __init__._plugin_host_original = original  # type: ignore[attr-defined]
    IPBase.IPActorAddress.__init__ = __init__


def log_defs(log_file: str) -> dict[str, Any]:
    """The ``logging.config.dictConfig`` for actor processes (never ``logDefs=False``)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "filename": log_file, "formatter": "plain",
                              "level": "INFO"}},
        "root": {"handlers": ["file"], "level": "INFO"},
    }


def main(argv: list[str]) -> int:
    """Start the system described by the JSON in ``argv[1]`` and return."""
    spec = json.loads(argv[1])
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
