"""What a sandbox root inherits from the admin, and what its sandbox shares with the host and other sandboxes
(issue #15, containment).

A local sandbox root is forked from the admin: without care it (and every worker forked from it) holds
the admin's registry database, logs, listening sockets and pipes, whatever its isolation.  A sandbox run
as its own user gets a private ``/tmp``, ``/var/tmp``, ``/dev/shm`` and IPC namespace, so what it leaves
there dies with it instead of waiting for the next sandbox given the same (reused) uid, and it can import
the host's Python even where that lives under a ``0700`` home.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import sysconfig
import uuid
import zlib
from pathlib import Path

import attrs
import psutil
import pytest
import thespian
from conftest import ROOT
from test_isolation_user import PROBE, as_root, free_uid, gone, tree

from plugin_host import Host, HostConfig
from plugin_host.errors import PluginHostError
from plugin_host.lowlevel import namespace

_SHARED = ("socket:[", "pipe:[")  # unique names (an anon_inode is not)


def descriptors(pid: int) -> dict[int, str]:
    """fd -> what it refers to, of a process the test may inspect (it runs as the host's user)."""
    found = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            found[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
    return found


def test_a_process_sandbox_holds_nothing_of_the_admins(host: Host) -> None:
    """Under the default ``isolation="process"``, a plugin's process (and its sandbox root) holds no descriptor
    of a file under the ``state_dir`` (the registry's database and its ``-wal``/``-shm``, the logs, the cookie)
    but its write-only standard streams and the log of dropped frames (write-only, where every process of the
    host appends what it drops), no listening socket but its own Thespian one, and no socket or pipe
    the admin holds too (the host's connections, other children's sentinels)."""
    info = host.create_sandbox("a", "probe:Probe", sandbox_path=PROBE)
    state_dir = str(Path(host.config.state_dir).resolve())
    held = host.call("a", "probe", ("descriptors", None))
    rejections = str(Path(state_dir, "logs", "rejected-"))  # kept, write-only: every host process counts drops
    leaked = [
        (fd, target)
        for fd, target, readable in held
        if target.startswith(state_dir) and (readable or fd > 2 and not target.startswith(rejections))
    ]
    assert leaked == [], leaked
    assert len(host.call("a", "probe", ("listening", None))) == 1  # its own: none of the admin's or the host's
    admin = psutil.Process(info.pid).ppid()
    admins = {target for target in descriptors(admin).values() if target.startswith(_SHARED)}
    worker = host.call("a", "probe", "who")["pid"]
    for pid in (info.pid, worker):
        shared = sorted(set(descriptors(pid).values()) & admins)
        assert shared == [], (pid, shared)
        kept = [(fd, t) for fd, t in descriptors(pid).items() if t.startswith(state_dir) and fd > 2]
        assert [t for _, t in kept if not t.startswith(rejections)] == [], pid


_PLACES = [place for place in ("/tmp", "/var/tmp", "/dev/shm") if os.path.isdir(place)]
_IPC_RMID = 0


def left_in_the_host(token: str) -> list[str]:
    """What of the probe's ``("leave", token)`` is in the host's own ``/tmp``, ``/var/tmp``, ``/dev/shm``
    and IPC namespace (the same forms the probe's ``find`` answers)."""
    found = [os.path.join(place, token) for place in _PLACES if os.path.exists(os.path.join(place, token))]
    if ctypes.CDLL(None).shmget(zlib.crc32(token.encode()) & 0x7FFFFFFF, 0, 0) >= 0:
        found.append("shm")
    rt = ctypes.CDLL("librt.so.1")
    queue = rt.mq_open(("/" + token).encode(), os.O_RDONLY, 0, None)
    if queue >= 0:
        rt.mq_close(queue)
        found.append("mq")
    return found


def remove_from_the_host(token: str) -> None:
    """Whatever of ``token`` a failing run left in the host's places and IPC namespace: gone."""
    for place in _PLACES:
        Path(place, token).unlink(missing_ok=True)
    libc = ctypes.CDLL(None)
    segment = libc.shmget(zlib.crc32(token.encode()) & 0x7FFFFFFF, 0, 0)
    if segment >= 0:
        libc.shmctl(segment, _IPC_RMID, None)
    ctypes.CDLL("librt.so.1").mq_unlink(("/" + token).encode())


@as_root
def test_what_a_user_sandbox_leaves_in_tmp_shm_and_ipc_dies_with_it(config: HostConfig) -> None:
    """A sandbox run as its own user writes ``/tmp``, ``/var/tmp`` and ``/dev/shm`` and makes a SysV shared
    memory segment and a POSIX message queue: none of it is in the host's places or IPC namespace, and
    once it is destroyed the next sandbox given the same uid (a range of one) sees none of it."""
    uid, token = free_uid(), f"ph-{uuid.uuid4().hex[:12]}"
    try:
        with Host(attrs.evolve(config, isolation="user", sandbox_uids=(uid, uid))) as host:
            first = host.create_sandbox("a", "probe:Probe", sandbox_path=PROBE)
            assert first.uid == uid
            assert host.call("a", "probe", ("leave", token)) == "ok"
            assert len(host.call("a", "probe", ("find", token))) == len(_PLACES) + 2  # it sees its own
            assert left_in_the_host(token) == []
            pids = tree(first.pid)
            host.destroy_sandbox("a")
            assert gone(uid, pids)
            second = host.create_sandbox("b", "probe:Probe", sandbox_path=PROBE)
            assert second.uid == uid
            assert host.call("b", "probe", ("find", token)) == []
        assert left_in_the_host(token) == []
    finally:
        remove_from_the_host(token)


@as_root
def test_two_live_user_sandboxes_do_not_see_each_others_tmp_or_ipc(config: HostConfig) -> None:
    """What one live sandbox run as its own user leaves in ``/tmp``, ``/var/tmp``, ``/dev/shm`` or its IPC
    namespace, another live one does not see (nor could it, with files of mode ``0666``)."""
    token = f"ph-{uuid.uuid4().hex[:12]}"
    try:
        with Host(attrs.evolve(config, isolation="user")) as host:
            host.create_sandbox("a", "probe:Probe", sandbox_path=PROBE)
            host.create_sandbox("b", "probe:Probe", sandbox_path=PROBE)
            assert host.call("a", "probe", ("leave", token)) == "ok"
            assert host.call("b", "probe", ("find", token)) == []
            assert len(host.call("a", "probe", ("find", token))) == len(_PLACES) + 2
    finally:
        remove_from_the_host(token)


@as_root
def test_a_user_sandbox_imports_the_hosts_python_but_sees_nothing_else_of_its_home(config: HostConfig) -> None:
    """A sandbox run as its own user imports any module of the host's interpreter (``decimal``, loaded by no
    one before), even where that lives under a ``0700`` home (pyenv under ``/root`` here); of that home it
    sees only the interpreter's folders, read-only: not the cookie, nor anything else in it."""
    with Host(attrs.evolve(config, isolation="user")) as host:
        host.create_sandbox("a", "probe:Probe", sandbox_path=PROBE)
        found = host.call("a", "probe", ("import", "decimal"))
        assert isinstance(found, str) and found.endswith("decimal.py"), found
        planted = os.path.join(os.path.dirname(os.__file__), "planted")
        assert "Error" in host.call("a", "probe", ("write", planted)) and not os.path.exists(planted)
        assert "Error" in host.call("a", "probe", ("read", str(host.config.credential_file)))
        parents = Path(os.__file__).resolve().parents
        home = next((p for p in reversed(parents) if p.is_dir() and not p.stat().st_mode & 0o001), None)
        if home is None:
            return  # a Python others may read: no home to hide
        shown = host.call("a", "probe", ("listdir", str(home)))
        assert shown == [Path(os.__file__).resolve().relative_to(home).parts[0]], shown


_HOST_IN_A_VENV = """
import json, sys
from plugin_host import Host, HostConfig
out, state, probe, package, secret, tmp = sys.argv[1:]
config = HostConfig(state_dir=state, heartbeat_interval=0.2, hang_timeout=1.0, shutdown_timeout=2.0,
                    call_timeout=10.0, start_timeout=20.0, isolation="user")
with Host(config) as host:
    host.create_sandbox("a", "probe:Probe", sandbox_path=probe)
    seen = {
        "import": host.call("a", "probe", ("import", "lazypkg")),
        "write": host.call("a", "probe", ("write", package + "/planted")),
        "secret": host.call("a", "probe", ("read", secret)),
        "tmp": host.call("a", "probe", ("listdir", tmp)),
    }
with open(out, "w") as target:
    json.dump(seen, target)
"""


@as_root
def test_a_user_sandbox_imports_from_a_virtualenv_under_tmp_but_sees_nothing_else_there(tmp_path: Path) -> None:
    """A host run from a virtualenv under ``/tmp`` (as CI's clone and venv are): its user sandbox imports, at
    call time, a package of that venv's site-packages no process loaded before, under its own fresh ``/tmp``;
    that folder is read-only to it, and of the host's ``/tmp`` it sees only the way to the venv (a file the
    host has next to it stays invisible)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    (site / "lazypkg").mkdir()
    (site / "lazypkg" / "__init__.py").write_text("VALUE = 1\n")
    secret = tmp_path / "secret.txt"
    secret.write_text("host data")
    state, out = tmp_path / "state", tmp_path / "seen.json"
    state.mkdir()
    script = tmp_path / "run_host.py"
    script.write_text(_HOST_IN_A_VENV)
    argv = [str(venv / "bin" / "python"), str(script), str(out), str(state), PROBE, str(site / "lazypkg")]
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([*argv, str(secret), str(tmp_path)], check=True, timeout=120, env=environment)
    seen = json.loads(out.read_text())
    assert seen["import"] == str(site / "lazypkg" / "__init__.py"), seen
    assert "Error" in seen["write"] and not (site / "lazypkg" / "planted").exists()
    assert "Error" in seen["secret"]
    assert seen["tmp"] == ["venv"], seen


def test_a_sandbox_imports_from_the_interpreters_and_the_runtimes_folders_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a sandbox run as its own user is shown of the host's folders (``import_folders``): the interpreter's
    (its prefix, stdlib, site-packages) and the folder holding each runtime package, never an application's
    folder on the import path, be it ``sys.path[0]``, a later entry or the working folder."""
    app, later = tmp_path / "myapp", tmp_path / "lib"
    app.mkdir()
    later.mkdir()
    monkeypatch.syspath_prepend(str(app))
    monkeypatch.setattr(sys, "path", [*sys.path, str(later)])
    monkeypatch.chdir(app)
    shown = namespace.import_folders()
    assert not [f for f in shown if f == str(tmp_path) or f.startswith(f"{tmp_path}/")], shown
    assert str(ROOT) in shown  # the folder holding actors and plugin_host

    def covered(path: str) -> bool:
        real = os.path.realpath(path)
        return any(real == f or real.startswith(f + "/") for f in shown)

    assert covered(sysconfig.get_paths()["stdlib"]) and covered(thespian.__file__) and covered(psutil.__file__)
    barrier = next(p for p in reversed(app.parents) if not p.stat().st_mode & 0o001)  # /tmp/pytest-of-root
    assert namespace.hidden_folders([str(app), str(later)]) == {str(barrier): [str(later), str(app)]}


@as_root
def test_an_application_folder_on_the_import_path_stays_hidden_from_a_user_sandbox(
    config: HostConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The host's own application folder (``sys.path[0]``, under a ``0700`` folder: ``/tmp/pytest-of-root``) with
    its ``.env``: a sandbox run as its own user cannot list it, read it or import from it."""
    app = tmp_path / "myapp"
    app.mkdir()
    (app / ".env").write_text("TOKEN=hunter2\n")
    (app / "appmod.py").write_text("SECRET = 'hunter2'\n")
    monkeypatch.syspath_prepend(str(app))
    with Host(attrs.evolve(config, isolation="user")) as host:
        host.create_sandbox("a", "probe:Probe", sandbox_path=PROBE)
        assert "Error" in host.call("a", "probe", ("listdir", str(app)))
        assert "Error" in host.call("a", "probe", ("read", str(app / ".env")))
        with pytest.raises(PluginHostError, match="appmod"):
            host.call("a", "probe", ("import", "appmod"))


_LOCKS = "/run/lock"


@as_root
@pytest.mark.skipif(not os.path.isdir(_LOCKS), reason="no /run/lock on this machine")
def test_what_a_user_sandbox_leaves_in_run_lock_dies_with_it(config: HostConfig) -> None:
    """``/run/lock`` (``1777``, like every sticky world-writable place of ``TEMPORARIES``) is fresh for a sandbox run
    as its own user: a file it leaves there is not in the host's, and the next sandbox given the same uid (a
    range of one) does not find it."""
    uid, token = free_uid(), f"ph-{uuid.uuid4().hex[:12]}"
    left = os.path.join(_LOCKS, token)
    try:
        with Host(attrs.evolve(config, isolation="user", sandbox_uids=(uid, uid))) as host:
            first = host.create_sandbox("a", "probe:Probe", sandbox_path=PROBE)
            assert host.call("a", "probe", ("write", left)) == "ok"
            assert host.call("a", "probe", ("read", left)) == "ok"  # it sees its own
            assert not os.path.exists(left)
            pids = tree(first.pid)
            host.destroy_sandbox("a")
            assert gone(uid, pids)
            second = host.create_sandbox("b", "probe:Probe", sandbox_path=PROBE)
            assert second.uid == uid
            assert "FileNotFoundError" in host.call("b", "probe", ("read", left))
        assert not os.path.exists(left)
    finally:
        Path(left).unlink(missing_ok=True)


@as_root
def test_a_posix_queue_made_after_private_queues_is_not_in_the_hosts_instance(tmp_path: Path) -> None:
    """Where an ``mqueue`` file system is mounted (``/dev/mqueue`` on systemd hosts; absent here, so the test
    mounts the host's instance in a folder of its own), a process that entered its own mount and IPC namespace
    and called ``private_queues`` on it creates its queue in its namespace's instance: the host's instance, and
    the host's ``mq_open``, never see it."""
    point, token = tmp_path / "mqueue", f"ph-{uuid.uuid4().hex[:12]}"
    point.mkdir()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"mqueue", str(point).encode(), b"mqueue", 0, None) != 0:
        pytest.skip(f"cannot mount an mqueue here: {os.strerror(ctypes.get_errno())}")
    try:
        child = os.fork()
        if child == 0:  # pragma: no cover - the child process
            code = 1
            try:
                namespace.enter(ipc=True)
                namespace.private_queues([str(point)])
                os.close(os.open(point / token, os.O_CREAT | os.O_RDWR, 0o666))  # a queue, through the file system
                code = 0 if os.path.exists(point / token) else 2
            finally:
                os._exit(code)
        assert os.waitpid(child, 0)[1] == 0
        assert not (point / token).exists()
        assert left_in_the_host(token) == []
    finally:
        ctypes.CDLL("librt.so.1").mq_unlink(("/" + token).encode())
        libc.umount2(str(point).encode(), 0)
