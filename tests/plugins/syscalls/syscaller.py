"""A plugin that tries the system calls a sandbox's seccomp filter refuses (tests/test_attack_syscalls.py).

Every attempt answers what happened (``"ok"``, or the error's name such as ``"EPERM"``) instead of raising,
so one call reports a whole attack.  Namespace attempts run in a child forked for them (``unshare`` of a
user namespace needs a single-threaded process), which reports through a pipe and ends within seconds.
"""

import ctypes
import errno
import json
import os
import subprocess
import tempfile
import threading

from actors import ChildSpec, Plugin, Supervisor

CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUSER = 0x00020000, 0x02000000, 0x10000000
_SIGCHLD = 17
_SYS_CLONE, _SYS_CLONE3, _SYS_SETNS, _SYS_IO_URING_SETUP, _SYS_PIDFD_GETFD = 56, 435, 308, 425, 438  # x86_64
_PTRACE_ATTACH, _PTRACE_DETACH = 16, 17

_libc = ctypes.CDLL(None, use_errno=True)


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("length", ctypes.c_size_t)]


def _outcome(result):
    """``"ok"`` for a call that returned 0 (or more), else the name of its errno."""
    if result >= 0:
        return "ok"
    return errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))


def _error(exc):
    return errno.errorcode.get(exc.errno, repr(exc)) if isinstance(exc, OSError) and exc.errno else repr(exc)


def in_child(attempt):
    """Run ``attempt()`` (a dict of outcomes) in a forked child, single-threaded; its answer, or why none came."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: whatever happens, it answers and ends here
        try:
            os.close(read)
            try:
                answer = attempt()
            except BaseException as exc:  # noqa: BLE001 - reported, never raised into the runtime's code
                answer = {"raised": repr(exc)}
            os.write(write, json.dumps(answer).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as answer:
        text = answer.read()
    os.waitpid(pid, 0)
    return json.loads(text) if text else {"raised": "no answer"}


def seal_bypass():
    """The review's attack on the read-only cgroup mounts: a user, mount and cgroup namespace of its own, in
    which this process (uid 0, no capabilities outside) holds every capability; the cgroup v1 ``pids``
    hierarchy mounted again, writable, at the root of its own group; its ``pids.max`` raised to ``max``."""
    steps = {"unshare": _outcome(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWCGROUP))}
    if steps["unshare"] != "ok":
        return steps
    for name, text in (("setgroups", "deny"), ("gid_map", "0 0 1")):
        try:
            with open(f"/proc/self/{name}", "w") as target:
                target.write(text)
        except OSError:
            pass  # not needed for the mount: the namespace's capabilities are
    where = tempfile.mkdtemp()
    try:
        steps["mount"] = _outcome(_libc.mount(b"cgroup", where.encode(), b"cgroup", 0, b"pids"))
        if steps["mount"] != "ok":
            return steps
        try:
            with open(os.path.join(where, "pids.max"), "w") as limit:
                limit.write("max")
            steps["raise"] = "ok"
        except OSError as exc:
            steps["raise"] = _error(exc)
        _libc.umount2(where.encode(), 0)
    finally:
        os.rmdir(where)
    return steps


def namespace_calls():
    """``clone`` with ``CLONE_NEWUSER``, ``clone3``, ``setns``, ``io_uring_setup`` (the kernel surface container
    runtimes refuse), ``pidfd_getfd`` of its own descriptor and ``unshare``, each once (``unshare`` last: a
    process in a user namespace with no uid mapped cannot make another one)."""
    found = {}
    child = _libc.syscall(_SYS_CLONE, ctypes.c_ulong(CLONE_NEWUSER | _SIGCHLD), None, None, None, None)
    if child == 0:  # a raw clone: the child, in a namespace of its own, leaves at once
        os._exit(0)
    found["clone"] = _outcome(child)
    if child > 0:
        os.waitpid(child, 0)
    found["clone3"] = _outcome(_libc.syscall(_SYS_CLONE3, None, ctypes.c_size_t(0)))
    own = os.open("/proc/self/ns/uts", os.O_RDONLY)
    try:
        found["setns"] = _outcome(_libc.syscall(_SYS_SETNS, own, 0))
    finally:
        os.close(own)
    params = ctypes.create_string_buffer(120)  # struct io_uring_params, zeroed
    ring = _libc.syscall(_SYS_IO_URING_SETUP, 1, params)
    found["io_uring_setup"] = _outcome(ring)
    if ring >= 0:
        os.close(ring)
    own = os.pidfd_open(os.getpid())  # a copy of one of its own descriptors: allowed without the filter
    try:
        copy = _libc.syscall(_SYS_PIDFD_GETFD, own, own, 0)
        found["pidfd_getfd"] = _outcome(copy)
        if copy >= 0:
            os.close(copy)
    finally:
        os.close(own)
    found["unshare"] = _outcome(_libc.unshare(CLONE_NEWUSER))
    return found


def ordinary_calls():
    """What a plugin does every day: fork, threads, posix_spawn and subprocess of ``/bin/true``."""
    found = {}
    child = os.fork()
    if child == 0:
        os._exit(7)
    found["fork"] = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
    ran = []
    thread = threading.Thread(target=lambda: ran.append(threading.get_native_id()))
    thread.start()
    thread.join()
    found["thread"] = len(ran)
    spawned = os.posix_spawn("/bin/true", ["/bin/true"], dict(os.environ))
    found["posix_spawn"] = os.waitstatus_to_exitcode(os.waitpid(spawned, 0)[1])
    found["subprocess"] = subprocess.run(["/bin/true"], check=False).returncode
    found["subprocess_vfork"] = subprocess.run(["/bin/true"], check=False, close_fds=False).returncode
    return found


def reach(pid):
    """What this process can do to another process ``pid``: attach to it, read its memory, open its ``mem`` and
    ``environ``."""
    found = {}
    if _libc.ptrace(_PTRACE_ATTACH, pid, None, None) == 0:
        found["ptrace"] = "ok"
        os.waitpid(pid, 0)  # attached: it stops; let it go at once
        _libc.ptrace(_PTRACE_DETACH, pid, None, None)
    else:
        found["ptrace"] = _outcome(-1)
    buffer = ctypes.create_string_buffer(8)
    local = _IoVec(ctypes.cast(buffer, ctypes.c_void_p), 8)
    remote = _IoVec(id(None), 8)  # both forked from the same admin: the same address there
    found["process_vm_readv"] = _outcome(
        _libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    )
    for name in ("mem", "environ"):
        try:
            with open(f"/proc/{pid}/{name}", "rb") as source:
                source.read(1)
            found[name] = "ok"
        except OSError as exc:
            found[name] = _error(exc)
    return found


class Syscaller(Plugin):
    """Answers "bypass" with :func:`seal_bypass` and "namespaces" with :func:`namespace_calls` (each in a
    child), "ordinary" with :func:`ordinary_calls`, ("reach", pid) with :func:`reach` (in a child), and "pid"
    with this worker's pid."""

    def handle_call(self, request, state):
        kind = request if isinstance(request, str) else request[0]
        if kind == "bypass":
            return in_child(seal_bypass), state
        if kind == "namespaces":
            return in_child(namespace_calls), state
        if kind == "ordinary":
            return ordinary_calls(), state
        if kind == "reach":
            return in_child(lambda: reach(request[1])), state
        return os.getpid(), state


class Root(Supervisor):
    children = [ChildSpec("syscaller", Syscaller)]
