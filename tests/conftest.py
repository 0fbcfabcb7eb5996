"""Shared fixtures: hosts on fresh ports with fast heartbeats, and the process-leak guard.

Every process of a host's actor system carries the launcher's command line, which names
the host's ``state_dir``; each test gets its own ``state_dir`` under ``tmp_path``, so a
process whose command line names it after the test is a leak, and fails the test.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import attrs
import psutil
import pytest

from plugin_host import Host, HostConfig

if TYPE_CHECKING:
    from plugin_host._cgroup import Support

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"


def processes_naming(marker: str) -> list[psutil.Process]:
    """Live processes whose command line contains ``marker``."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if marker in " ".join(proc.info["cmdline"] or ()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """A state folder private to the test (registry, logs)."""
    path = tmp_path / "state"
    path.mkdir()
    return path


@pytest.fixture(autouse=True)
def no_leaked_processes(tmp_path: Path) -> Iterator[None]:
    """Fail the test if any process of a host it started outlives it."""
    yield
    marker = str(tmp_path)
    leaked = processes_naming(marker)
    if leaked:
        gone, alive = psutil.wait_procs(leaked, timeout=5)
        for proc in alive:
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass
        if alive:
            pytest.fail(f"test left {len(alive)} process(es) behind: {[p.pid for p in alive]}")


@pytest.fixture
def config(state_dir: Path) -> HostConfig:
    """A fast-reacting configuration for tests."""
    return HostConfig(
        state_dir=state_dir,
        heartbeat_interval=0.2,
        hang_timeout=1.0,
        shutdown_timeout=2.0,
        call_timeout=10.0,
        start_timeout=20.0,
    )


@pytest.fixture
def host(config: HostConfig) -> Iterator[Host]:
    """A running host on multiprocTCPBase (a fresh free port), closed after the test."""
    with Host(config) as h:
        yield h


def sample(name: str) -> str:
    """Path of a sample plugin folder."""
    return str(SAMPLES / name)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (and is not a zombie)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def terminate(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM a process this test started, as an operator would; SIGKILL it if it does not stop in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def eventually(condition, timeout: float = 10.0, interval: float = 0.02):
    """Poll ``condition`` through the public API until it returns a truthy value; return it.

    Used where the host offers no event to wait on (e.g. siblings restarted by a strategy).
    """
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


@attrs.frozen
class Scene:
    """A module-scoped host and its folders: ``base`` (the module's private folder) and its ``state_dir``."""

    host: Host
    base: Path
    state_dir: Path


DETACHED_GRANDCHILD = """
    import os, time
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            print(os.getpid(), flush=True)
            time.sleep(60)
        os._exit(0)
    time.sleep(60)
"""
"""Code (for a process a test starts) whose grandchild, detached with ``setsid`` after a double fork, prints
its pid: it leaves its parent's process tree and group, not its control group."""


def cgroup_v1_only(found: Support | str) -> pytest.MarkDecorator:
    """Skip a module whose tests read this machine's cgroup v1 hierarchies where ``found`` (``support()``) is
    no such machine: groups cannot be made here (its reason), or they are v2 (``tests/test_cgroup_v2.py``)."""
    if isinstance(found, str):
        return pytest.mark.skip(reason=found)
    return pytest.mark.skipif(
        found.version != 1, reason="these tests read cgroup v1 hierarchies (v2: test_cgroup_v2.py)"
    )


def kill_every_process_naming(mark: str, rounds: int = 50) -> None:
    """SIGKILL every live process whose command line names ``mark`` (a test's own), again until none is left:
    a process forking in a loop forks as it is killed."""
    for _ in range(rounds):
        procs = processes_naming(mark)
        if not procs:
            return
        for proc in procs:
            try:
                proc.kill()
            except psutil.Error:
                pass
        time.sleep(0.01)
