"""Attacks a sandbox's seccomp filter holds (issue #15): no namespaces, no mounts, no tracing of another sandbox.

A plugin runs as uid 0 without capabilities when the host runs as root (CI does).  Without the filter it can
make a user namespace, in which it holds every capability, mount the cgroup v1 hierarchies again writable
and lift its own group's limits; with it, that and every other call of ``plugin_host._confine.REFUSED_SYSCALLS``
is refused with ``EPERM``, ``clone3`` gets ``ENOSYS`` (the C library falls back to ``clone``), and fork,
threads and ``subprocess`` work as ever.  Every process of a sandbox is non-dumpable: another sandbox of the
same uid cannot trace it or read its memory.  The attacks run in a child the plugin forks, which answers
through a pipe and ends at once; nothing outlives the call.  Skipped, with the reason, where this machine
cannot filter (no libseccomp) or, for the cgroup attack, make groups (not root).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from plugin_host import Host, HostConfig, ResourceLimits
from plugin_host._cgroup import support as cgroup_support
from plugin_host._confine import syscall_filter_support as support
from plugin_host.errors import ConfigError

SYSCALLS = os.path.join(os.path.dirname(__file__), "plugins", "syscalls")
REASON = support()
GROUPS = cgroup_support()
filtering = pytest.mark.skipif(REASON is not None, reason=f"no syscall filter here: {REASON}")
with_groups = pytest.mark.skipif(
    isinstance(GROUPS, str) or GROUPS.version != 1,
    reason=f"no control groups here: {GROUPS}"
    if isinstance(GROUPS, str)
    else "the attack remounts a cgroup v1 hierarchy",
)
user_namespaces = pytest.mark.skipif(
    not Path("/proc/sys/user/max_user_namespaces").exists()
    or Path("/proc/sys/user/max_user_namespaces").read_text().strip() == "0",
    reason="this kernel makes no user namespaces: the attack cannot be tried",
)


def seccomp_mode(pid: int) -> int:
    """The ``Seccomp:`` field of ``pid`` (0 none, 2 a filter)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Seccomp:"):
            return int(line.split()[1])
    raise AssertionError(f"no Seccomp line for {pid}")


def own_seccomp_mode() -> int:
    """Run by ``Host.run`` in the sandbox: the runner process's own ``Seccomp:`` field."""
    return seccomp_mode(os.getpid())


def pids_max(host: Host, sandbox_id: str) -> str:
    """``pids.max`` of the sandbox's group, read from the host's side."""
    pid = host.get_sandbox_info(sandbox_id).pid
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    path = next(line.split(":", 2)[2] for line in lines if ":pids:" in line)
    return (Path("/sys/fs/cgroup/pids") / path.lstrip("/") / "pids.max").read_text().strip()


def processes_of(host: Host, sandbox_id: str) -> list[int]:
    """The sandbox's root and its actors."""
    info = host.get_sandbox_info(sandbox_id)
    assert info.pid is not None
    return [info.pid, *(child.pid for child in info.children if child.pid is not None)]


@filtering
@with_groups
@user_namespaces
def test_a_plugin_cannot_remount_its_control_group_writable_through_a_user_namespace(config: HostConfig) -> None:
    """The review's seal bypass: the plugin (uid 0, no capabilities) unshares a user, mount and cgroup namespace,
    mounts the cgroup v1 ``pids`` hierarchy again and writes ``max`` into its own group's ``pids.max``.  The
    filter refuses the ``unshare`` with ``EPERM``, and ``pids.max`` stays 50."""
    with Host(config) as host:
        host.create_sandbox("a", "syscaller:Root", sandbox_path=SYSCALLS, limits=ResourceLimits(max_tasks=50))
        assert pids_max(host, "a") == "50"
        assert host.call("a", "syscaller", "bypass") == {"unshare": "EPERM"}
        assert pids_max(host, "a") == "50"


@filtering
def test_namespaces_are_refused_while_fork_threads_and_spawn_work(config: HostConfig) -> None:
    """In a plugin: ``unshare``, ``setns``, ``clone(CLONE_NEWUSER)``, ``io_uring_setup`` and ``pidfd_getfd``
    get ``EPERM``, ``clone3`` ``ENOSYS``; ``fork``, a thread, ``os.posix_spawn`` and ``subprocess`` of
    ``/bin/true`` work.  Every process of the sandbox (root, worker, ``Host.run``'s runner) has the filter."""
    with Host(config) as host:
        host.create_sandbox("a", "syscaller:Root", sandbox_path=SYSCALLS)
        assert host.call("a", "syscaller", "namespaces") == {
            "unshare": "EPERM",
            "setns": "EPERM",
            "clone": "EPERM",
            "clone3": "ENOSYS",
            "io_uring_setup": "EPERM",
            "pidfd_getfd": "EPERM",
        }
        assert host.call("a", "syscaller", "ordinary") == {
            "fork": 7,
            "thread": 1,
            "posix_spawn": 0,
            "subprocess": 0,
            "subprocess_vfork": 0,
        }
        assert all(seccomp_mode(pid) == 2 for pid in processes_of(host, "a"))
        assert host.run("a", own_seccomp_mode) == 2


@filtering
def test_a_sandbox_cannot_trace_or_read_another_sandboxs_processes(config: HostConfig) -> None:
    """Two sandboxes of the host's uid (``isolation="process"``): A's plugin cannot ``ptrace`` B's worker or
    root, nor ``process_vm_readv`` from them (``EPERM``), nor open their ``/proc/<pid>/mem`` or ``environ``
    (``EACCES``: they are non-dumpable); B runs on, and the host still reads their figures."""
    with Host(config, monitor_interval=0.1) as host:
        host.create_sandbox("a", "syscaller:Root", sandbox_path=SYSCALLS)
        host.create_sandbox("b", "syscaller:Root", sandbox_path=SYSCALLS)
        for target in processes_of(host, "b"):
            assert host.call("a", "syscaller", ("reach", target)) == {
                "ptrace": "EPERM",
                "process_vm_readv": "EPERM",
                "mem": "EACCES",
                "environ": "EACCES",
            }
        assert host.call("b", "syscaller", "pid") in processes_of(host, "b")
        usage = host.resource_usage("b")
        assert usage.actors and all(actor.rss_bytes > 0 for actor in usage.actors)


@with_groups
@user_namespaces
def test_with_syscall_filter_off_the_seal_bypass_and_namespaces_work(config: HostConfig) -> None:
    """``syscall_filter="off"``: no filter in the sandbox's processes, and the bypass the filter stops works:
    the plugin lifts its own ``pids.max`` from 50 to ``max``; ``unshare`` and ``clone(CLONE_NEWUSER)`` work and
    ``clone3`` is the kernel's (``EINVAL`` for its empty arguments, not ``ENOSYS``)."""
    with Host(config, syscall_filter="off") as host:
        host.create_sandbox("a", "syscaller:Root", sandbox_path=SYSCALLS, limits=ResourceLimits(max_tasks=50))
        assert all(seccomp_mode(pid) == 0 for pid in processes_of(host, "a"))
        assert host.call("a", "syscaller", "bypass") == {"unshare": "ok", "mount": "ok", "raise": "ok"}
        assert pids_max(host, "a") == "max"
        found = host.call("a", "syscaller", "namespaces")
        assert found["unshare"] == "ok" and found["clone"] == "ok" and found["clone3"] == "EINVAL"
        assert found["io_uring_setup"] == found["pidfd_getfd"] == "ok"  # the filter is what refuses them


def test_required_without_libseccomp_is_a_config_error_and_auto_goes_on(
    config: HostConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a machine without libseccomp (``pyseccomp`` fails as it does there, from a module first on the import
    path the actor system gets from the host): ``syscall_filter="required"`` fails ``Host`` with ``ConfigError``
    naming the field and the reason; ``"auto"`` runs sandboxes without the filter and says why once in the log."""
    fake = tmp_path / "no-libseccomp"
    fake.mkdir()
    (fake / "pyseccomp.py").write_text('raise RuntimeError("Unable to find libseccomp")\n')
    monkeypatch.syspath_prepend(str(fake))
    try:
        Host(config, syscall_filter="required").close()
    except ConfigError as exc:
        assert exc.field == "syscall_filter" and "libseccomp" in str(exc)
    else:
        pytest.fail("a host that cannot filter started with syscall_filter='required'")
    with Host(config) as host:
        host.create_sandbox("a", "syscaller:Root", sandbox_path=SYSCALLS)
        host.create_sandbox("b", "syscaller:Root", sandbox_path=SYSCALLS)
        assert all(seccomp_mode(pid) == 0 for pid in processes_of(host, "a") + processes_of(host, "b"))
        logs = host.config.state_dir / "logs"
    text = "".join(path.read_text() for path in logs.glob("actors-*.log"))
    assert text.count("sandboxes run without a syscall filter") == 1
