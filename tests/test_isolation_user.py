"""``isolation="user"`` (issue #15, item 3): a sandbox as its own Unix user.

Every process of such a sandbox (root, supervisors, workers) runs as a uid of its own, given out by
the admin from ``HostConfig.sandbox_uids`` and locked machine-wide under ``/run/plugin-host``; its
plugin cannot signal or read another sandbox's processes or the host's, nor read the cookie or write
in the ``state_dir``; it can write its own scratch folder; calls, casts and reloads work as ever; and
destroy and ``Host.close`` end every process and give the uid back.  Without the privilege to switch
uids the create fails with ``ConfigError``, never silently as the host's uid.

These switch uids for real: CI runs as root.  The plugin's ``os.kill`` sends signal 0 (a permission
check that harms nothing, should the isolation be missing).
"""

from __future__ import annotations

import fcntl
import json
import os
import pwd
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Iterator

import attrs
import psutil
import pytest
from conftest import eventually, pid_alive
from test_deps import _write_wheel
from test_deps_host import plugin_folder

from plugin_host import Host, HostConfig
from plugin_host.errors import ConfigError, LimitExceededError, SandboxNotFoundError

PROBE = os.path.join(os.path.dirname(__file__), "plugins", "isolation")
USERS_DIR = Path("/run/plugin-host")
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching uids needs root (CI runs as root)")


def tree(root_pid: int) -> list[int]:
    """The sandbox root and every process below it."""
    root = psutil.Process(root_pid)
    return [root_pid, *(child.pid for child in root.children(recursive=True))]


def ids_of(pid: int, field: str = "Uid") -> tuple[int, ...]:
    """Real, effective, saved and filesystem ids of ``pid`` (``Uid`` or ``Gid``), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return tuple(int(n) for n in line.split()[1:])
    raise AssertionError(f"no {field} line for {pid}")


def lock_held(uid: int) -> bool:
    """Whether some process holds the lock of ``uid`` (this one takes it for an instant to find out)."""
    path = USERS_DIR / f"uid-{uid}.lock"
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # drops the lock this process took
    return False


def gone(uid: int, pids: list[int]) -> bool:
    """Nothing of a sandbox is left: no process of it, its uid's lock free, its folder removed."""
    return not any(pid_alive(pid) for pid in pids) and not lock_held(uid) and not (USERS_DIR / f"uid-{uid}").exists()


def free_uid() -> int:
    """A uid of the default range nobody uses now (no passwd entry, no process, no lock), from the top."""
    busy = {uid for proc in psutil.process_iter(["uids"]) for uid in (proc.info["uids"] or ())}
    for uid in range(65519, 61183, -1):
        try:
            pwd.getpwuid(uid)
            continue
        except KeyError:
            pass
        if uid not in busy and not lock_held(uid):
            return uid
    raise AssertionError("no free uid in 61184-65519")


@pytest.fixture
def user_host(config: HostConfig) -> Iterator[Host]:
    """A host whose sandboxes are their own users by default."""
    with Host(attrs.evolve(config, isolation="user")) as host:
        yield host


@as_root
def test_two_sandboxes_run_as_two_distinct_non_root_uids(host: Host) -> None:
    """Every process of each sandbox (its root, its supervisor, its workers, ``Host.run``'s) runs as the
    sandbox's own uid and gid, real, effective, saved and filesystem alike, with no supplementary group; two
    sandboxes get two uids, neither the host's; ``SandboxInfo`` says so; the monitor still samples them.
    The host's default stays ``"process"``."""
    a = host.create_sandbox("a", "root:Root", sandbox_path=PROBE, isolation="user")
    b = host.create_sandbox("b", "root:Root", sandbox_path=PROBE, isolation="user")
    assert (a.isolation, b.isolation) == ("user", "user")
    assert a.uid is not None and b.uid is not None and a.uid != b.uid
    assert 61184 <= a.uid <= 65519 and 61184 <= b.uid <= 65519  # the default range: never 0, never the host's
    for info in (a, b):
        pids = tree(info.pid)
        assert len(pids) >= 4, pids  # root, the probe worker, the nested supervisor and its worker
        for pid in pids:
            assert ids_of(pid) == (info.uid,) * 4, pid
            assert ids_of(pid, "Gid") == (info.uid,) * 4, pid
            groups = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if "Groups:" in line)
            assert groups.split() == ["Groups:"], groups
        assert host.call(info.id, "probe", "who")["uid"] == info.uid
        assert host.call(info.id, "inner", "who")["uid"] == info.uid
        assert host.run(info.id, os.getresuid) == (info.uid,) * 3  # Host.run's process too
        usage = host.resource_usage(info.id)  # the monitor (root, in the host) still reads them
        assert {actor.pid for actor in usage.actors} >= set(tree(info.pid)[1:]) and usage.total_rss_bytes > 0
    plain = host.create_sandbox("c", "probe:Probe", sandbox_path=PROBE)
    assert (plain.isolation, plain.uid) == ("process", None)
    assert ids_of(host.call("c", "probe", "who")["pid"])[0] == os.geteuid()


@as_root
def test_a_sandbox_cannot_reach_another_sandbox_the_host_or_the_state_dir(user_host: Host, tmp_path: Path) -> None:
    """Sandbox A's plugin cannot signal or ptrace B's worker, the admin or the host application (EPERM), nor
    read their ``/proc/<pid>/environ``, nor read the cookie, nor write in the ``state_dir``, nor use what it
    would inherit from the admin (the registry database's descriptors, the host's listening sockets); it
    writes its own scratch folder; calls, casts, a hot reload and a whole-sandbox restart still work, as
    the same uid."""
    host = user_host
    a = host.create_sandbox("a", "probe:Probe", sandbox_path=PROBE)
    host.create_sandbox("b", "probe:Probe", sandbox_path=PROBE)
    b_worker = host.call("b", "probe", "who")["pid"]
    admin = psutil.Process(a.pid).ppid()
    for target in (b_worker, admin, os.getpid()):
        assert "PermissionError" in host.call("a", "probe", ("kill", target)), target
        assert "PermissionError" in host.call("a", "probe", ("read", f"/proc/{target}/environ")), target
        assert "Operation not permitted" in host.call("a", "probe", ("ptrace", target)), target
    state_dir = Path(host.config.state_dir)
    assert host.config.credential_file.exists()
    # Refused by its mode (0700), or not there at all: a state_dir in /tmp or a 0700 home (the cookie's default
    # place) is hidden by the sandbox's own mount namespace (tests/test_attack_namespace.py).
    unreachable = ("PermissionError", "FileNotFoundError")
    assert host.call("a", "probe", ("read", str(host.config.credential_file))).startswith(unreachable)
    assert host.call("a", "probe", ("write", str(state_dir / "planted"))).startswith(unreachable)
    assert not (state_dir / "planted").exists()
    assert host.call("a", "probe", ("inherited", str(state_dir.resolve()))) == []  # the registry's database: closed
    assert len(host.call("a", "probe", ("listening", None))) == 1  # its own: none of the host's processes'
    outcome, path = host.call("a", "probe", ("scratch", None))
    assert outcome == "ok" and Path(path).read_bytes() == b"mine" and Path(path).stat().st_uid == a.uid

    host.cast("a", "probe", 5)
    assert eventually(lambda: host.call("a", "probe", "who")["count"] == 5)
    folder = tmp_path / "v2"
    shutil.copytree(PROBE, folder)
    source = folder / "probe.py"
    source.write_text(source.read_text().replace('TAG = "v1"', 'TAG = "v2"'))
    assert host.hot_reload("a", host.compile_sandbox(folder)).new_version == 2
    after = host.call("a", "probe", "who")
    assert (after["tag"], after["uid"], after["count"]) == ("v2", a.uid, 5)
    again = host.restart_sandbox("a")
    assert again.uid == a.uid and all(ids_of(pid)[0] == a.uid for pid in tree(again.pid))
    assert host.call("a", "probe", "who")["tag"] == "v2"


@as_root
def test_its_dependency_environment_is_read_as_its_own_user_before_and_after_a_reload(
    config: HostConfig, tmp_path: Path
) -> None:
    """A sandbox's requirements (installed in ``state_dir/envs``, ``0700``, which stays so) are importable by
    its own uid, at its start and after a reload that changes them (each a root-owned copy in its folder)."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for version in ("1.0", "2.0"):
        _write_wheel(wheels, version)
    folder = Path(plugin_folder(tmp_path / "s", "tinylib==1.0"))
    offline = attrs.evolve(config, find_links=(str(wheels),), no_index=True, isolation="user")
    with Host(offline) as host:
        info = host.create_sandbox("s", "uses:Root", sandbox_path=str(folder))
        assert host.call("s", "uses", "v") == "1.0"
        assert all(ids_of(pid)[0] == info.uid for pid in tree(info.pid))
        (folder / "requirements.txt").write_text("tinylib==2.0\n")
        host.hot_reload("s", host.compile_sandbox(str(folder)))
        assert host.call("s", "uses", "v") == "2.0"
        assert (Path(host.config.state_dir) / "envs").stat().st_mode & 0o077 == 0  # never loosened


@as_root
def test_a_user_sandboxs_output_goes_to_a_file_of_its_own_not_the_hosts_launcher_log(user_host: Host) -> None:
    """The standard output and error of every process of a user sandbox (what a plugin prints, a fault dump)
    are ``output.log`` in its own folder, not the host's launcher log that every other process of the host
    writes (a plugin could overwrite, truncate or fill that through them); the file goes with the uid."""
    info = user_host.create_sandbox("a", "root:Root", sandbox_path=PROBE)
    output = Path("/run/plugin-host", f"uid-{info.uid}", "output.log")
    for pid in tree(info.pid):
        assert {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in (1, 2)} == {str(output)}, pid
    marker = f"printed by a user sandbox {os.getpid()}"
    user_host.run("a", lambda: print(marker, flush=True))
    assert marker in output.read_text()
    launcher = Path(user_host.config.state_dir, "logs", f"launcher-{user_host.admin_port}.log")
    assert launcher.exists() and marker not in launcher.read_text()
    user_host.destroy_sandbox("a")
    assert not output.exists()


@as_root
def test_destroy_and_close_end_every_process_and_give_the_uid_back(config: HostConfig) -> None:
    """``destroy_sandbox`` ends every process of the sandbox, removes its folder and frees its uid's lock;
    ``Host.close`` does the same for every sandbox left.  A sandbox may still ask for the host's uid
    (``isolation="process"`` overrides the host's default ``"user"``)."""
    with Host(attrs.evolve(config, isolation="user")) as host:
        a = host.create_sandbox("a", "root:Root", sandbox_path=PROBE)
        b = host.create_sandbox("b", "root:Root", sandbox_path=PROBE)
        assert a.uid is not None and b.uid is not None
        a_pids, b_pids = tree(a.pid), tree(b.pid)
        assert lock_held(a.uid) and lock_held(b.uid)
        host.destroy_sandbox("a")
        assert gone(a.uid, a_pids)
        assert lock_held(b.uid) and all(pid_alive(pid) for pid in b_pids)
        plain = host.create_sandbox("c", "probe:Probe", sandbox_path=PROBE, isolation="process")
        assert (plain.isolation, plain.uid) == ("process", None)
    assert gone(b.uid, b_pids)


@as_root
def test_an_exhausted_uid_range_fails_the_create_and_leaves_nothing(config: HostConfig) -> None:
    """With one uid in ``sandbox_uids``, a second sandbox's create fails with ``LimitExceededError`` naming
    the range, and leaves no record and no process; once the first is destroyed its uid is free again."""
    uid = free_uid()
    with Host(attrs.evolve(config, isolation="user", sandbox_uids=(uid, uid))) as host:
        a = host.create_sandbox("a", "probe:Probe", sandbox_path=PROBE)
        assert a.uid == uid
        admin = psutil.Process(psutil.Process(a.pid).ppid())
        before = {child.pid for child in admin.children()}
        with pytest.raises(LimitExceededError, match=f"sandbox_uids \\({uid}-{uid}\\)") as caught:
            host.create_sandbox("b", "probe:Probe", sandbox_path=PROBE)
        assert caught.value.limit == "sandbox_uids"
        assert [info.id for info in host.list_sandboxes()] == ["a"]
        with pytest.raises(SandboxNotFoundError):
            host.get_sandbox_info("b")
        assert {child.pid for child in admin.children()} == before  # the admin forked no root for it
        host.destroy_sandbox("a")
        assert host.create_sandbox("b", "probe:Probe", sandbox_path=PROBE).uid == uid


_WITHOUT_SETUID = textwrap.dedent(
    """
    import json, os, sys
    import psutil
    from plugin_host import Host, HostConfig
    from plugin_host.errors import ConfigError

    state_dir, probe, out = sys.argv[1:4]
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    result = {"uid": os.geteuid(), "cap_eff": status["CapEff"].strip()}

    def mine():
        return sorted(p.pid for p in psutil.process_iter(["cmdline"]) if state_dir in " ".join(p.info["cmdline"] or ()))

    with Host(HostConfig(state_dir=state_dir, heartbeat_interval=0.2, hang_timeout=1.0)) as host:
        before = mine()
        try:
            host.create_sandbox("u", "probe:Probe", sandbox_path=probe, isolation="user")
            result["create"] = "created"
        except ConfigError as exc:
            result["create"] = str(exc)
            result["field"] = exc.field
        result["sandboxes"] = [info.id for info in host.list_sandboxes()]
        result["new_processes"] = sorted(set(mine()) - set(before))
        result["plain"] = host.create_sandbox("p", "probe:Probe", sandbox_path=probe).isolation
    with open(out, "w") as target:
        json.dump(result, target)
    """
)


def _without_setuid() -> None:
    """In the child, before exec: CAP_CHOWN, CAP_SETGID and CAP_SETUID leave the bounding set, so the host
    it runs (and its actor system) is root without them, as in a container that dropped them."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (0, 6, 7):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "PR_CAPBSET_DROP")


@as_root
def test_without_the_privilege_isolation_user_is_a_config_error(state_dir: Path, tmp_path: Path) -> None:
    """A host without CAP_SETUID/CAP_SETGID/CAP_CHOWN (root whose bounding set lacks them) refuses
    ``isolation="user"`` at ``create_sandbox`` with ``ConfigError`` saying why, and leaves no record and no
    process behind; a sandbox of the host's uid still starts."""
    out, log = tmp_path / "result.json", tmp_path / "host.log"
    with open(log, "wb") as sink:
        subprocess.run(
            [sys.executable, "-c", _WITHOUT_SETUID, str(state_dir), PROBE, str(out)],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=sink,
            preexec_fn=_without_setuid,
            timeout=120,
            check=False,
        )
    assert out.exists(), log.read_text()
    result = json.loads(out.read_text())
    assert result["uid"] == 0 and not int(result["cap_eff"], 16) & 0b11000001
    assert "isolation='user' needs root or CAP_SETUID" in result["create"], result
    assert "without CAP_SETUID, CAP_SETGID, CAP_CHOWN" in result["create"], result
    assert result["field"] == "isolation"
    assert result["sandboxes"] == [] and result["new_processes"] == []
    assert result["plain"] == "process"


def test_a_bad_isolation_value_is_a_config_error(host: Host) -> None:
    """``"users"``, ``3`` or ``""`` as ``isolation`` (of a sandbox or the host), or a bad ``sandbox_uids``,
    raise ``ConfigError`` naming the field; no sandbox is made."""
    for bad in ("users", 3, ""):
        with pytest.raises(ConfigError, match="isolation must be one of process, user") as caught:
            host.create_sandbox("x", "probe:Probe", sandbox_path=PROBE, isolation=bad)  # type: ignore[arg-type]
        assert caught.value.field == "isolation"
        with pytest.raises(ConfigError, match="isolation must be one of process, user"):
            HostConfig(isolation=bad)  # type: ignore[arg-type]
    for uids in ((0, 10), (10, 5), (5,), "a-b", (1.5, 3)):
        with pytest.raises(ConfigError, match="sandbox_uids") as caught:
            HostConfig(sandbox_uids=uids)  # type: ignore[arg-type]
        assert caught.value.field == "sandbox_uids"
    assert host.list_sandboxes() == []
