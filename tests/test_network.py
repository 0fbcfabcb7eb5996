"""Network exposure: the host's sockets accept loopback connections to the configured address only.

127.0.0.0/8 is loopback on Linux, so 127.0.0.2 reaches this machine without reaching a socket
bound to 127.0.0.1: a socket bound to all interfaces (Thespian's default) would accept it.
Only loopback addresses are ever contacted.
"""

from __future__ import annotations

import socket

import psutil
import pytest
from conftest import sample

from plugin_host import Host, HostConfig

OTHER_LOCAL_ADDRESS = "127.0.0.2"


def listening_ports(host: Host) -> dict[int, str]:
    """Port to bound address of every listening socket of the host's process tree (and this process)."""
    ports: dict[int, str] = {}
    for proc in [psutil.Process(), *host._system.process_tree()]:
        try:
            connections = proc.net_connections("inet")
        except psutil.NoSuchProcess:
            continue
        for conn in connections:
            if conn.status == psutil.CONN_LISTEN:
                ports[conn.laddr.port] = conn.laddr.ip
    return ports


@pytest.fixture
def ports(host: Host) -> dict[int, str]:
    """The listening ports of a host running a sandbox that has been called (every actor up)."""
    host.create_sandbox("c", "root:Root", sandbox_path=sample("counter"))
    assert host.call("c", "counter", "inc") == 1
    found = listening_ports(host)
    assert len(found) >= 5, found  # this process, the admin, registry, monitor, sandbox root, worker...
    return found


def test_every_listening_socket_refuses_a_connection_to_another_local_address(ports: dict[int, str]) -> None:
    """No socket of the host's tree answers on 127.0.0.2: none is bound to all interfaces."""
    accepted = []
    for port in sorted(ports):
        try:
            with socket.create_connection((OTHER_LOCAL_ADDRESS, port), timeout=2):
                accepted.append(port)
        except ConnectionRefusedError:
            continue
    assert accepted == [], f"reachable on {OTHER_LOCAL_ADDRESS}: {[(p, ports[p]) for p in accepted]}"


def test_every_listening_socket_accepts_a_connection_to_the_configured_address(
    host: Host, ports: dict[int, str]
) -> None:
    """Sanity for the refusal test: the same ports accept on the configured address, and the host goes on."""
    address = host.config.bind_address
    assert set(ports.values()) == {address}
    for port in sorted(ports):
        with socket.create_connection((address, port), timeout=2):
            pass
    assert host.call("c", "counter", "inc") == 2


def test_a_host_bound_to_another_loopback_address_listens_there_only(config: HostConfig) -> None:
    """``bind_address`` is obeyed, not assumed: a host bound to 127.0.0.3 has every listening socket of its
    tree on 127.0.0.3, answers calls through it, and nothing of it answers on 127.0.0.1."""
    import attrs

    with Host(attrs.evolve(config, bind_address="127.0.0.3")) as host:
        host.create_sandbox("c", "root:Root", sandbox_path=sample("counter"))
        assert host.call("c", "counter", "inc") == 1
        found = listening_ports(host)
        assert len(found) >= 5 and set(found.values()) == {"127.0.0.3"}, found
        for port in sorted(found):
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
        assert host.call("c", "counter", "inc") == 2
