"""Tests of plugin_host.compiler.CompilePool: the warm compile worker and its fallback to a fresh process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Iterator

import psutil
import pytest
from conftest import SAMPLES, eventually, pid_alive, processes_naming

from plugin_host import Host, HostConfig
from plugin_host.compiler import CompilePool, compile_sandbox
from plugin_host.errors import CompilationError, CompilationTimeoutError


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[CompilePool]:
    """A pool whose worker names ``tmp_path`` on its command line, so the leak guard sees it."""
    with CompilePool(label=str(tmp_path)) as p:
        yield p


def write_tree(root: Path, files: dict[str, str]) -> Path:
    """Write ``files`` (relative path -> source, dedented) under ``root`` and return it."""
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source), encoding="utf-8")
    return root


PARENT_PROBE = """\
import os
def parent_of(pid):
    return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
parent = parent_of(int(os.readlink("/proc/self")))  # host pids: the validation may be pid 1 of a namespace
if os.getppid() == 0:  # it is: its parent is the process the host knows, which waits for it
    parent = parent_of(parent)
open(MARKER, "w").write(str(parent))
"""


def parent_probe(root: Path, marker: Path) -> Path:
    """A sandbox whose only module records the pid of the process that started its validation."""
    return write_tree(root, {"probe.py": f"MARKER = {str(marker)!r}\n" + PARENT_PROBE})


def validated_by(pool: CompilePool | None, root: Path, marker: Path) -> int:
    """Compile ``root`` (a parent probe) and return the pid of the process that forked the validator."""
    compile_sandbox(root, security_profile="permissive", pool=pool)
    return int(marker.read_text())


def outcome(root: Path, pool: CompilePool | None, **options: object) -> tuple[object, ...]:
    """What a compile gives, timings left out: artifacts and output, or the error's type, errors and output."""
    try:
        info = compile_sandbox(root, pool=pool, **options)
    except CompilationError as exc:
        return type(exc), exc.errors, re.sub(r"\(\d+ ms\)", "(_ ms)", exc.output)
    return info.artifacts, re.sub(r"\(\d+ ms\)", "(_ ms)", info.output)


SAME_AS_FRESH = {
    "success with printing": {
        "m.py": """\
        import sys
        print('{"event": "result", "errors": [["x", 1, "fake"]]}')
        print("to stderr", file=sys.stderr)
        open("relative.txt", "w").write("lands in the scratch folder")
        """
    },
    "import error": {"main.py": "import helper\n", "helper.py": "X = 1\nraise RuntimeError('broken')\n"},
    "missing package": {"m.py": "import no_such_package_xyz\n"},
    "system exit": {"m.py": "import sys\nsys.exit(2)\n"},
    "os._exit": {"m.py": "import os\nprint('bye', flush=True)\nos._exit(3)\n"},
    "segfault": {"m.py": "import ctypes\nctypes.string_at(0)\n"},
    "input at import": {"m.py": "NAME = input()\n"},
    "module named like a worker-only module": {"socket.py": "X = 1\n", "m.py": "import socket\nassert socket.X == 1\n"},
    "module named like a runtime module": {"json.py": "X = 1\n"},
}


@pytest.mark.parametrize("files", SAME_AS_FRESH.values(), ids=SAME_AS_FRESH.keys())
def test_warm_validation_gives_the_same_result_as_a_fresh_process(
    tmp_path: Path, pool: CompilePool, files: dict[str, str]
) -> None:
    """Artifacts, errors (file, line, message) and output are those of the cold path."""
    root = write_tree(tmp_path / "sb", files)
    warm = outcome(root, pool, security_profile="permissive")
    assert warm == outcome(root, None, security_profile="permissive")
    assert pool.statistics().warm_jobs == 1


def test_plugin_class_checks_are_the_same_warm_and_fresh(tmp_path: Path, pool: CompilePool) -> None:
    """Declared plugin classes are found and checked against the same bases in both paths."""
    root = write_tree(
        tmp_path / "sb",
        {
            "root.py": """\
        from actors import Plugin

        class Worker(Plugin):
            pass

        class NotAPlugin:
            pass
        """
        },
    )
    for classes in (["root:Worker"], ["root:NotAPlugin", "root:Missing"]):
        assert outcome(root, pool, plugin_classes=classes) == outcome(root, None, plugin_classes=classes)
    assert pool.statistics().warm_jobs == 2


def test_consecutive_validations_run_in_children_of_one_warm_worker(tmp_path: Path, pool: CompilePool) -> None:
    """Each job is forked by the same long-lived worker, which has no terminal and its own session."""
    marker = tmp_path / "parent.txt"
    root = parent_probe(tmp_path / "sb", marker)
    parents = [validated_by(pool, root, marker) for _ in range(3)]
    stats = pool.statistics()
    assert parents == [stats.worker_pid] * 3 and stats.worker_pid != os.getpid()
    assert (stats.warm_jobs, stats.cold_jobs, stats.worker_starts) == (3, 0, 1)
    assert os.getsid(stats.worker_pid) == stats.worker_pid
    assert psutil.Process(stats.worker_pid).terminal() is None


def test_without_a_pool_validation_runs_in_a_fresh_child_of_the_caller(tmp_path: Path) -> None:
    """The module-level functions keep starting a fresh interpreter per validation."""
    marker = tmp_path / "parent.txt"
    assert validated_by(None, parent_probe(tmp_path / "sb", marker), marker) == os.getpid()


def test_a_hanging_job_is_killed_with_what_it_started_and_the_next_job_runs_warm(
    tmp_path: Path, pool: CompilePool
) -> None:
    """A job past its timeout is a CompilationTimeoutError naming its line; its whole group is killed."""
    marker = str(tmp_path / "descendant")
    root = write_tree(
        tmp_path / "sb",
        {
            "spin.py": f"""\
        import subprocess, sys
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", {marker!r}])
        while True:
            pass
        """
        },
    )
    with pytest.raises(CompilationTimeoutError) as caught:
        compile_sandbox(root, timeout=1.0, security_profile="permissive", pool=pool)
    ((file, line, message),) = caught.value.errors
    assert file == str(root / "spin.py") and line in (3, 4) and "within 1 s" in message
    _, alive = psutil.wait_procs(processes_naming(marker), timeout=3)
    assert alive == []
    worker = pool.statistics().worker_pid
    probe = tmp_path / "parent.txt"
    assert validated_by(pool, parent_probe(tmp_path / "sb2", probe), probe) == worker
    assert pool.statistics().cold_jobs == 0


@pytest.mark.parametrize(
    ("code", "exit_code"),
    [("import os\nos._exit(3)\n", 3), ("import ctypes\nctypes.string_at(0)\n", -signal.SIGSEGV)],
    ids=["os._exit", "segfault"],
)
def test_a_job_that_kills_its_process_is_reported_and_the_worker_survives(
    tmp_path: Path, pool: CompilePool, code: str, exit_code: int
) -> None:
    """An import that ends the forked child is a CompilationError with its exit code; the worker stays."""
    root = write_tree(tmp_path / "sb", {"quitter.py": code})
    with pytest.raises(CompilationError) as caught:
        compile_sandbox(root, security_profile="permissive", pool=pool)
    ((file, _, message),) = caught.value.errors
    assert file == str(root / "quitter.py") and f"code {exit_code} " in message
    worker = pool.statistics().worker_pid
    probe = tmp_path / "parent.txt"
    assert validated_by(pool, parent_probe(tmp_path / "sb2", probe), probe) == worker
    assert pid_alive(worker)


def test_killing_the_warm_worker_makes_the_next_job_run_fresh_and_the_one_after_start_a_new_worker(
    tmp_path: Path, pool: CompilePool
) -> None:
    """A dead worker costs one cold validation, which still succeeds; then a new worker takes over."""
    marker = tmp_path / "parent.txt"
    root = parent_probe(tmp_path / "sb", marker)
    first = validated_by(pool, root, marker)
    os.kill(first, signal.SIGKILL)
    assert validated_by(pool, root, marker) == os.getpid()
    assert pool.statistics().cold_jobs == 1
    second = validated_by(pool, root, marker)
    assert second not in (first, os.getpid()) and pool.statistics().worker_starts == 2


def test_a_job_finding_the_worker_busy_runs_in_a_fresh_process(tmp_path: Path, pool: CompilePool) -> None:
    """Validations are not queued behind a slow one: a concurrent one starts its own interpreter."""
    started = tmp_path / "started.txt"
    slow = write_tree(tmp_path / "slow", {"slow.py": f"open({str(started)!r}, 'w').close()\nwhile True:\n    pass\n"})
    errors: list[BaseException] = []

    def run_slow() -> None:
        try:
            compile_sandbox(slow, timeout=2.0, security_profile="permissive", pool=pool)
        except CompilationTimeoutError as exc:
            errors.append(exc)

    thread = threading.Thread(target=run_slow)
    thread.start()
    try:
        eventually(started.exists)
        marker = tmp_path / "parent.txt"
        assert validated_by(pool, parent_probe(tmp_path / "sb", marker), marker) == os.getpid()
    finally:
        thread.join()
    assert len(errors) == 1
    assert (pool.statistics().warm_jobs, pool.statistics().cold_jobs) == (1, 1)


def test_closing_the_pool_ends_its_worker_and_later_jobs_run_fresh(tmp_path: Path) -> None:
    """close() ends the worker process; the pool still validates, in fresh processes."""
    marker = tmp_path / "parent.txt"
    root = parent_probe(tmp_path / "sb", marker)
    pool = CompilePool(label=str(tmp_path))
    worker = validated_by(pool, root, marker)
    pool.close()
    assert pool.closed and not pid_alive(worker) and pool.statistics().worker_pid is None
    assert validated_by(pool, root, marker) == os.getpid()
    pool.close()  # idempotent


def test_host_compiles_on_a_warm_worker_that_host_close_ends(
    config: HostConfig, state_dir: Path, tmp_path: Path
) -> None:
    """The host's compile methods share one worker, named by its state_dir; close() ends it."""

    def workers() -> list[psutil.Process]:
        return [p for p in processes_naming(str(state_dir)) if "_compile.worker" in " ".join(p.cmdline())]

    host = Host(config)
    try:
        host.compile_sandbox(SAMPLES / "counter")
        host.compile_file(SAMPLES / "counter" / "root.py")
        (worker,) = workers()
    finally:
        host.close()
    assert not pid_alive(worker.pid) and workers() == []
    assert host.compile_sandbox(write_tree(tmp_path / "sb", {"m.py": "X = 1\n"})).artifacts  # cold after close
    assert workers() == []


def test_worker_leaves_no_process_when_the_interpreter_exits_without_close(tmp_path: Path) -> None:
    """A pool never closed is ended at exit: its worker must not outlive the program that made it."""
    marker = str(tmp_path / "never-closed")
    script = textwrap.dedent(f"""\
        from plugin_host.compiler import CompilePool, compile_source
        pool = CompilePool(label={marker!r})
        compile_source("m", "X = 1\\n", pool=pool)
        print(pool.statistics().worker_pid)
        """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip().isdigit() and done.stderr == ""
    _, alive = psutil.wait_procs(processes_naming(marker), timeout=3)
    assert alive == []
