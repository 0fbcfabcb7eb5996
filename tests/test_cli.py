"""The ``plugin-host`` command line: the demo, ``run``, and the operator commands."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from plugin_host import Host
from plugin_host._demo import samples_folder
from plugin_host._system import free_port
from plugin_host.cli import main

from conftest import ROOT, pid_alive, sample


@pytest.fixture
def cli_env(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment for ``plugin-host`` runs: hosts keep their state under the test's tmp_path."""
    monkeypatch.setenv("PLUGIN_HOST_STATE_DIR", str(state_dir))
    return {**os.environ, "PLUGIN_HOST_STATE_DIR": str(state_dir)}


def start_cli(args: list[str], out: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start ``python -m plugin_host.cli ARGS`` with its output in a file (daemons inherit it)."""
    with open(out, "wb") as sink:
        return subprocess.Popen([sys.executable, "-m", "plugin_host.cli", *args], cwd=ROOT, env=env,
                                stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT)


def wait_for_text(path: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> str:
    """Wait until the file ``path`` contains ``text`` (the process announces it is ready)."""
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        assert proc.poll() is None, f"exited early with {proc.returncode}: {path.read_text()}"
        assert time.monotonic() < deadline, f"{text!r} never appeared: {path.read_text()}"
        time.sleep(0.05)
    return path.read_text()


def test_demo_runs_the_guided_tour_and_exits_zero(cli_env: dict[str, str], tmp_path: Path) -> None:
    """``plugin-host demo`` creates, crashes, restarts and fails sandboxes, then cleans up."""
    out = tmp_path / "demo.txt"
    with open(out, "wb") as sink:
        done = subprocess.run([sys.executable, "-m", "plugin_host.cli", "demo"], cwd=ROOT, env=cli_env,
                              stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT, timeout=120)
    text = out.read_text()
    assert done.returncode == 0, text
    assert "[1, 2, 3]" in text and "'pong' from pid" in text
    assert "'fragile' is now failed" in text and "reached max restart intensity" in text
    assert "Done." in text and "\x1b[" not in text  # not a terminal: plain text


def test_demo_fallback_samples_load_when_the_repository_samples_are_missing(host: Host, tmp_path: Path) -> None:
    """Without ``samples/`` next to the package, the demo's own copies load and behave alike."""
    with samples_folder(tmp_path / "missing") as folder:
        assert folder != tmp_path / "missing"
        host.create_sandbox("counter", "root:Root", sandbox_path=folder / "counter")
        host.create_sandbox("crashy", "root:Root", sandbox_path=folder / "crashy")
        host.create_sandbox("fragile", "root:Fragile", sandbox_path=folder / "crashy")
    assert host.call("counter", "counter", "inc") == 1
    assert host.call("crashy", "crashy", "ping") == "pong"
    assert host.call("fragile", "steady", "inc") == 1


def test_status_json_lists_the_sandboxes_of_a_running_host(host: Host, cli_env: dict[str, str],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """``status --json`` reads the sandboxes through the admin port and leaves the host running."""
    host.create_sandbox("s1", "root:Root", sandbox_path=sample("counter"))
    host.create_sandbox("s2", "root:Root", sandbox_path=sample("crashy"))
    assert main(["status", "--port", str(host.admin_port), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(s["id"], s["status"]) for s in listed] == [("s1", "running"), ("s2", "running")]
    assert [c["name"] for c in listed[1]["children"]] == ["crashy", "steady"]
    assert host.call("s1", "counter", "inc") == 1


def test_status_prints_a_table_of_the_sandboxes(host: Host, cli_env: dict[str, str],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Plain ``status`` prints one row per sandbox with its status and children."""
    host.create_sandbox("s1", "root:Root", sandbox_path=sample("counter"))
    assert main(["status", "--port", str(host.admin_port)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("s1"))
    assert row.split()[:4] == ["s1", "running", "0", "counter"]


def test_destroy_stops_a_sandbox_of_a_running_host(host: Host, cli_env: dict[str, str],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """``destroy ID --port N`` stops that sandbox's processes; the host and its other sandboxes stay."""
    info = host.create_sandbox("s1", "root:Root", sandbox_path=sample("counter"))
    host.create_sandbox("s2", "root:Root", sandbox_path=sample("counter"))
    assert main(["destroy", "s1", "--port", str(host.admin_port)]) == 0
    assert "destroyed 's1'" in capsys.readouterr().out
    assert [s.id for s in host.list_sandboxes()] == ["s2"]
    assert not any(pid_alive(c.pid) for c in info.children if c.pid)
    assert host.call("s2", "counter", "inc") == 1


def test_destroy_of_an_unknown_sandbox_prints_one_error_line_and_exits_one(
        host: Host, cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    """A ``SandboxNotFoundError`` from the host becomes ``error: ...`` on stderr and exit code 1."""
    assert main(["destroy", "nope", "--port", str(host.admin_port)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nope" in err and len(err.strip().splitlines()) == 1


def test_status_against_a_port_without_a_host_exits_one(cli_env: dict[str, str],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Operator commands never start a system: nothing listening is an error, not a new host."""
    assert main(["status", "--port", str(free_port("127.0.0.1"))]) == 1
    assert capsys.readouterr().err.startswith("error: no plugin host listens")


@pytest.mark.parametrize("argv", [["bogus"], [], ["status"], ["destroy", "x", "--port", "many"]],
                         ids=["unknown-command", "no-command", "missing-port", "bad-port"])
def test_a_usage_error_exits_two(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Unknown commands and bad arguments are usage errors: exit code 2 and a usage line."""
    assert main(argv) == 2
    assert "usage: plugin-host" in capsys.readouterr().err


def test_run_serves_a_sandbox_until_sigterm_then_closes_cleanly(cli_env: dict[str, str], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """``run`` prints the sandbox and admin port, answers operators, and exits 0 on SIGTERM."""
    port, out = free_port("127.0.0.1"), tmp_path / "run.txt"
    proc = start_cli(["run", sample("counter"), "--supervisor", "root:Root", "--id", "served",
                      "--admin-port", str(port)], out, cli_env)
    try:
        text = wait_for_text(out, "serving", proc)
        assert f"admin port: {port}" in text and "served" in text
        assert main(["status", "--port", str(port), "--json"]) == 0
        assert [s["id"] for s in json.loads(capsys.readouterr().out)] == ["served"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, out.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_run_with_a_bad_supervisor_reports_the_error_and_exits_one(cli_env: dict[str, str],
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A sandbox that cannot start is one ``error:`` line and exit code 1; the host is closed."""
    assert main(["run", sample("counter"), "--supervisor", "root:Missing"]) == 1
    assert capsys.readouterr().err.startswith("error: ")


def test_importing_plugin_host_and_its_cli_does_not_import_rich() -> None:
    """``rich`` is imported only when a command runs, never by importing the package."""
    code = "import sys, plugin_host, plugin_host.cli; sys.exit(any(m.split('.')[0] == 'rich' for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
