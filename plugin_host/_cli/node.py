"""The ``plugin-host node`` command: an actor system that joins a convention and only offers capacity.

It runs no application and no sandbox of its own; hosts of the convention place sandbox roots
on it through its capabilities.  The system is started by the lean launcher like a host's;
a :class:`actors.node.NodeActor` claims it, says which processes to end at shutdown, confirms
that the leader registered the node, and ends the system if this command is killed.

Thespian is imported only when the command runs, so building the CLI parser stays light.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._client.system import ActorSystemHandle
    from ..config import HostConfig

__all__ = ["add_arguments", "parse_capability", "run_node"]

JOIN_TIMEOUT = 15.0
"""How long the leader may take to register the node (a member retries every 5 s; see ``_client.launcher``)."""
_BOOT_SLACK = 10.0  # beyond JOIN_TIMEOUT, for the node actor's own start


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``node`` command's options."""
    parser.add_argument("--leader", required=True, metavar="HOST:PORT", help="admin address of the convention leader")
    parser.add_argument(
        "--capability",
        dest="capabilities",
        action="append",
        type=parse_capability,
        default=[],
        metavar="KEY=VALUE",
        help="a capability to offer; VALUE is JSON if it parses, else a string; repeatable",
    )
    parser.add_argument("--bind", metavar="ADDR", help="the only address the node's sockets bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, metavar="N", help="admin port of the node (default: a free one)")
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        help="where the node's logs and sandbox environments go (default: the host default)",
    )
    parser.add_argument(
        "--find-links",
        action="append",
        metavar="DIR",
        help="a folder or URL of wheels for sandbox requirements installed here; repeatable",
    )
    parser.add_argument("--no-index", action="store_true", help="install sandbox requirements from --find-links only")
    parser.add_argument(
        "--cookie-file",
        metavar="PATH",
        help="the convention's credential, a copy of the leader host's cookie file (default: "
        "STATE_DIR/cookie); a member with another one is refused",
    )
    parser.add_argument("--json", action="store_true", help="print the startup line as one JSON object")


def parse_capability(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` -> ``(KEY, value)``: VALUE parsed as JSON when it parses (``true``, ``4``), else the string.

    Raises:
        argparse.ArgumentTypeError: no ``=`` or an empty KEY (a usage error).
    """
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    return key, value


def run_node(args: argparse.Namespace) -> int:
    """Start the node, print its startup line, and serve until SIGTERM or SIGINT; return the exit code.

    Raises:
        PluginHostError: a bad option value (e.g. a reserved capability), a busy port, or a
            system that did not start or join.
    """
    from ..config import HostConfig

    fields: dict[str, Any] = {"convention_leader": args.leader, "capabilities": dict(args.capabilities)}
    for name, value in (
        ("bind_address", args.bind),
        ("admin_port", args.port),
        ("state_dir", args.state_dir),
        ("find_links", args.find_links),
        ("no_index", args.no_index or None),
        ("cookie_file", args.cookie_file),
    ):
        if value is not None:
            fields[name] = value
    config = HostConfig(**fields)  # validates before anything starts: a ConfigError starts no process

    _check_leader_accepts(config)

    from .._client.system import ActorSystemHandle

    stop = threading.Event()
    previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in (signal.SIGTERM, signal.SIGINT)}
    handle = ActorSystemHandle(config)
    try:
        handle.start(lock=False)  # a node keeps no registry: it may share a host's state_dir (and its cookie)
        if _boot(handle, stop):
            print(_startup_line(handle, args.json), flush=True)
            stop.wait()  # the handlers run in this (main) thread, which a signal wakes: no polling
    finally:
        handle.shutdown()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


def _check_leader_accepts(config: HostConfig) -> None:
    """Fail at once, not after :data:`JOIN_TIMEOUT`, when nothing listens at the leader's address or it
    refuses this node's credential (one signed frame; the leader logs a refused one)."""
    import attrs

    from .. import _wire
    from .._client.system import port_in_use
    from .._store import statedir as _statedir
    from ..errors import CredentialError, HostStartError

    leader = config.convention_leader
    assert leader is not None  # --leader is required
    address, _, port = leader.rpartition(":")
    try:
        listening = port_in_use(address, int(port))
    except OSError as exc:  # e.g. a host name that does not resolve
        raise HostStartError(f"cannot reach the convention leader {leader}: {exc}") from None
    if not listening:
        raise HostStartError(f"no convention leader listens on {leader}")
    config = attrs.evolve(config, state_dir=_statedir.prepare(config.state_dir))  # its real path from now on
    keys = _wire.Keyring(_wire.host_key_from_cookie(_statedir.cookie(config.credential_file, create=True)))
    try:
        accepted = _wire.probe((address, int(port)), keys)
    except OSError as exc:  # nothing listens, or a host name that does not resolve
        raise HostStartError(f"no convention leader answers on {leader}: {exc}") from None
    if not accepted:
        raise CredentialError(
            f"the convention leader {leader} refused this node's credential "
            f"{config.credential_file}: pass a copy of the leader host's cookie file "
            "with --cookie-file"
        )


def _boot(handle: ActorSystemHandle, stop: threading.Event) -> bool:
    """Claim the system through the node actor, adopt its processes, and check that it joined.

    Returns:
        ``True`` once joined; ``False`` when a signal came first (the caller shuts down).
    """
    import psutil

    from actors.node import NODE_GLOBAL_NAME, NodeActor, NodeBoot, NodeBooted

    from ..errors import HostStartError
    from ..messages import Failed

    node = handle.create_actor(NodeActor, NODE_GLOBAL_NAME)
    boot = NodeBoot(handle.new_corr(), os.getpid(), psutil.Process().create_time(), JOIN_TIMEOUT)
    pending = handle.send(node, boot)
    deadline = time.monotonic() + JOIN_TIMEOUT + _BOOT_SLACK
    reply = None
    try:
        # Short slices, so that a signal during the join is honoured promptly.
        while reply is None and not stop.is_set() and time.monotonic() < deadline:
            reply = pending.wait(0.25)
    finally:
        pending.close()
    if reply is None and stop.is_set():
        return False
    if isinstance(reply, Failed):
        raise reply.error
    if not isinstance(reply, NodeBooted):
        raise HostStartError(f"the node actor did not answer the boot request (got {reply!r})")
    handle.adopt(reply.system_pid, reply.pgid)
    if not reply.joined:
        raise HostStartError(
            f"the convention leader {handle.config.convention_leader} did not register this node "
            f"within {JOIN_TIMEOUT:g} s (is it running, and reachable from "
            f"{handle.config.bind_address}?)"
        )
    return True


def _startup_line(handle: ActorSystemHandle, as_json: bool) -> str:
    """The one line printed once the node has joined (human text, or one JSON object)."""
    from ..config import node_name

    config = handle.config
    name = node_name(config.bind_address, handle.port)
    if as_json:
        return json.dumps(
            {
                "node": name,
                "port": handle.port,
                "leader": config.convention_leader,
                "capabilities": config.capabilities,
                "pid": os.getpid(),
                "system_pid": handle.system_pid,
                "pgid": handle.pgid,
            }
        )
    caps = (
        ", ".join(
            f"{key}={value if isinstance(value, str) else json.dumps(value)}"
            for key, value in config.capabilities.items()
        )
        or "none"
    )
    return (
        f"node {name} joined the convention of {config.convention_leader} (capabilities: {caps}); "
        "Ctrl-C or SIGTERM stops it"
    )
