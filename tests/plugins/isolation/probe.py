"""A plugin that tries what a sandbox run as its own user must not do (tests/test_isolation_user.py).

Every attempt answers what happened (``"ok"`` or the error's repr) instead of raising, so one call
reports the whole attempt.  ``os.kill`` sends signal 0: it checks the permission and harms nothing,
even when the isolation it tests is missing.
"""

import ctypes
import fcntl
import os
import socket
import tempfile
import zlib

from actors import Plugin

TAG = "v1"
_PTRACE_ATTACH, _PTRACE_DETACH = 16, 17


PLACES = [place for place in ("/tmp", "/var/tmp", "/dev/shm") if os.path.isdir(place)]
_IPC_CREAT = 0o1000


def _ipc_key(token):
    return zlib.crc32(token.encode()) & 0x7FFFFFFF


def left_behind(token):
    """What of ``leave(token)`` this process sees: the files, the SysV segment, the POSIX queue."""
    found = [os.path.join(place, token) for place in PLACES if os.path.exists(os.path.join(place, token))]
    if ctypes.CDLL(None).shmget(_ipc_key(token), 0, 0) >= 0:
        found.append("shm")
    rt = ctypes.CDLL("librt.so.1")
    queue = rt.mq_open(("/" + token).encode(), os.O_RDONLY, 0, None)
    if queue >= 0:
        rt.mq_close(queue)
        found.append("mq")
    return found


def attempt(kind, arg):
    """Try one thing; what happened."""
    try:
        if kind == "kill":
            os.kill(arg, 0)
        elif kind == "read":
            with open(arg, "rb") as source:
                source.read(16)
        elif kind == "write":
            with open(arg, "w") as target:
                target.write("planted")
        elif kind == "inherited":  # descriptors open on files under arg that this process can read through
            found = []
            for name in os.listdir("/proc/self/fd"):
                try:
                    if os.readlink(f"/proc/self/fd/{name}").startswith(arg):
                        os.pread(int(name), 16, 0)
                        found.append(name)
                except OSError:
                    pass
            return found
        elif kind == "ptrace":  # attach (and at once detach, should it work)
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.ptrace(_PTRACE_ATTACH, arg, None, None) != 0:
                code = ctypes.get_errno()
                raise OSError(code, os.strerror(code))
            libc.ptrace(_PTRACE_DETACH, arg, None, None)
        elif kind == "listening":  # ports of the listening sockets this process holds
            ports = []
            for name in os.listdir("/proc/self/fd"):
                try:
                    copy = os.dup(int(name))
                except OSError:
                    continue  # the listing's own descriptor, closed by now
                try:
                    held = socket.socket(fileno=copy)
                except OSError:
                    os.close(copy)  # not a socket: no copy left behind
                    continue
                with held:
                    if held.family == socket.AF_INET and held.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                        ports.append(held.getsockname()[1])
            return ports
        elif kind == "descriptors":  # (fd, what it refers to, whether it is open for reading) of each
            found = []
            for name in os.listdir("/proc/self/fd"):
                try:
                    target = os.readlink(f"/proc/self/fd/{name}")
                    readable = fcntl.fcntl(int(name), fcntl.F_GETFL) & os.O_ACCMODE != os.O_WRONLY
                except OSError:
                    continue
                found.append((int(name), target, readable))
            return found
        elif kind == "leave":  # a file in each shared scratch place, a SysV segment and a POSIX queue
            for place in PLACES:
                with open(os.path.join(place, arg), "w") as target:
                    target.write("left")
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.shmget(_ipc_key(arg), 4096, _IPC_CREAT | 0o666) < 0:
                raise OSError(ctypes.get_errno(), "shmget")
            rt = ctypes.CDLL("librt.so.1", use_errno=True)
            queue = rt.mq_open(("/" + arg).encode(), os.O_CREAT | os.O_RDWR, 0o666, None)
            if queue < 0:
                raise OSError(ctypes.get_errno(), "mq_open")
            rt.mq_close(queue)
        elif kind == "find":  # which of what "leave" made this process sees
            return left_behind(arg)
        elif kind == "import":
            return __import__(arg).__file__
        elif kind == "listdir":
            return sorted(os.listdir(arg))
        elif kind == "scratch":
            fd, path = tempfile.mkstemp()
            os.write(fd, b"mine")
            os.close(fd)
            return ("ok", path)
        return "ok"
    except OSError as exc:
        return repr(exc)


class Probe(Plugin):
    """Answers who it runs as, and what each attempt gave."""

    def init(self, args):
        return 0

    def handle_call(self, request, state):
        if request == "who":
            return {"pid": os.getpid(), "uid": os.getuid(), "tag": TAG, "count": state}, state
        if request == "attempts":
            return {"pid": os.getpid(), "tag": TAG}, state
        kind, arg = request
        return attempt(kind, arg), state

    def handle_cast(self, message, state):
        return state + message
