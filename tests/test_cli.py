"""The ``plugin-host`` command line: the demo, ``run``, and the operator commands."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, SAMPLES, eventually, pid_alive, sample
from rich.console import Console

from plugin_host import Host, cli
from plugin_host._cli import status as _status
from plugin_host._cli.demo import samples_folder
from plugin_host._client.operator import AdminClient
from plugin_host._client.system import free_port
from plugin_host.cli import main
from plugin_host.messages import Blob, Call, unblob
from plugin_host.values import SandboxInfo

AUDIT = ROOT / "tests" / "plugins" / "audit"


@pytest.fixture
def cli_env(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment for ``plugin-host`` runs: hosts keep their state under the test's tmp_path."""
    monkeypatch.setenv("PLUGIN_HOST_STATE_DIR", str(state_dir))
    return {**os.environ, "PLUGIN_HOST_STATE_DIR": str(state_dir)}


def start_cli(args: list[str], out: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start ``python -m plugin_host.cli ARGS`` with its output in a file (daemons inherit it)."""
    with open(out, "wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "plugin_host.cli", *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


def wait_for_text(path: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> str:
    """Wait until the file ``path`` contains ``text`` (the process announces it is ready)."""
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        assert proc.poll() is None, f"exited early with {proc.returncode}: {path.read_text()}"
        assert time.monotonic() < deadline, f"{text!r} never appeared: {path.read_text()}"
        time.sleep(0.05)
    return path.read_text()


def tree_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def copy_counter(target: Path, step: int = 1) -> Path:
    """A copy of ``samples/counter`` whose counter adds ``step`` on ``inc``."""
    shutil.copytree(SAMPLES / "counter", target, ignore=shutil.ignore_patterns("__pycache__"))
    source = (target / "counter.py").read_text()
    (target / "counter.py").write_text(source.replace('state["count"] + 1', f'state["count"] + {step}'))
    return target


def test_demo_runs_the_guided_tour_and_exits_zero(cli_env: dict[str, str], state_dir: Path, tmp_path: Path) -> None:
    """``plugin-host demo`` creates, crashes, restarts, reloads, rolls back and fails sandboxes, then cleans up."""
    out, samples = tmp_path / "demo.txt", tree_digest(SAMPLES)
    with open(out, "wb") as sink:
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "plugin_host.cli", "demo"],
            cwd=ROOT,
            env=cli_env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            timeout=120,
        )
    text = out.read_text()
    assert done.returncode == 0, text
    assert time.monotonic() - started < 20, "the tour must stay short"
    assert "[1, 2, 3]" in text and "'pong' from pid" in text
    assert "'fragile' is now failed" in text and "reached max restart intensity" in text
    assert "Done." in text and "\x1b[" not in text  # not a terminal: plain text
    assert tree_digest(SAMPLES) == samples and list(state_dir.iterdir()) == []  # nothing left behind


def test_demo_reloads_with_state_kept_refuses_a_failing_reload_and_rolls_back(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """The reload steps: count by 10 from the old count, a raising code_change changes nothing, rollback to 1."""
    out = tmp_path / "demo.txt"
    with open(out, "wb") as sink:
        done = subprocess.run(
            [sys.executable, "-m", "plugin_host.cli", "demo"],
            cwd=ROOT,
            env=cli_env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            timeout=120,
        )
    text = out.read_text()
    assert done.returncode == 0, text
    assert "hot_reload -> version 1 -> 2" in text and "-> 13 (was 3)" in text
    assert "migrated its state from version 1 to 2" in text
    assert "HotReloadError" in text and "version 3 cannot migrate" in text
    assert "still version 2, still counting by 10: inc -> 23" in text
    assert "builtins.MemoryError" in text and "limit_breached events; 'bomb' is failed" in text
    assert "rollback_module('counter', 'counter', 1) -> version 2 -> 1; inc -> 34" in text
    final = text.split("Roll 'counter' back")[1].split("> Create sandbox 'fragile'")[0]
    rows = [line.split()[:2] for line in final.splitlines() if line.strip()[:1].isdigit()]
    assert rows == [["3", "failed"], ["2", "previous"], ["1", "current"]]


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


def test_status_json_lists_the_sandboxes_of_a_running_host(
    host: Host, cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """``status --json`` reads the sandboxes through the admin port and leaves the host running."""
    host.create_sandbox("s1", "root:Root", sandbox_path=sample("counter"))
    host.create_sandbox("s2", "root:Root", sandbox_path=sample("crashy"))
    assert main(["status", "--port", str(host.admin_port), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(s["id"], s["status"]) for s in listed] == [("s1", "running"), ("s2", "running")]
    assert [c["name"] for c in listed[1]["children"]] == ["crashy", "steady"]
    assert host.call("s1", "counter", "inc") == 1


def actor_rows(out: str, sandbox_id: str) -> dict[str, list[str]]:
    """The rows of sandbox ``sandbox_id`` in a status table, by actor:
    [pid, rss MiB, cpu s, messages, restarts, version, node]."""
    rows = [line.split() for line in out.splitlines()]
    return {row[2]: row[3:] for row in rows if len(row) == 10 and row[0] == sandbox_id}


def fake_terminal(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """Make the CLI print to a wide in-memory terminal (stdout only); return what it wrote."""
    screen, real = io.StringIO(), cli._console
    terminal = Console(file=screen, force_terminal=True, width=200)
    monkeypatch.setattr(cli, "_console", lambda stderr=False: real(stderr=True) if stderr else terminal)
    return screen


def test_status_once_prints_a_row_per_actor_with_its_pid_and_memory(
    host: Host, cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """``status --once`` prints sandbox, status, actor, pid, memory, CPU, messages, restarts and version per actor."""
    info = host.create_sandbox("s1", "root:Root", sandbox_path=sample("counter"))
    assert main(["status", "--port", str(host.admin_port), "--once"]) == 0
    out = capsys.readouterr().out
    rows = actor_rows(out, "s1")
    assert {actor: row[0] for actor, row in rows.items()} == {
        "(root)": str(info.pid),
        "counter": str(info.children[0].pid),
    }
    assert all(float(row[1]) > 1.0 and float(row[2]) >= 0.0 for row in rows.values())  # MiB resident, CPU seconds
    assert rows["counter"][3:] == ["0", "0", "1", info.node] and "running" in out


def test_status_json_includes_the_usage_of_each_actor(
    host: Host, cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """``status --json`` gives each sandbox its ``usage``: pid, rss, CPU, messages and restarts per actor."""
    info = host.create_sandbox("s1", "root:Root", sandbox_path=sample("counter"))
    assert main(["status", "--port", str(host.admin_port), "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    usage = listed["usage"]
    assert usage["sandbox_id"] == "s1" and usage["total_rss_bytes"] > 0
    pids = {actor["name"]: actor["pid"] for actor in usage["actors"]}
    assert pids == {"(root)": info.pid, "counter": info.children[0].pid}
    assert all(actor["rss_bytes"] > 0 and actor["restarts"] == 0 for actor in usage["actors"])


def test_status_audit_lists_a_file_write_of_a_standard_sandbox(
    host: Host, cli_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``status --audit`` prints the audit records (time, sandbox, actor, event, detail); ``--json`` too."""
    host.create_sandbox("std", "nosy:Root", sandbox_path=AUDIT)
    host.create_sandbox("quiet", "root:Root", sandbox_path=sample("counter"))
    target = tmp_path / "written.txt"
    assert host.call("std", "nosy", ("write", str(target))) == "done"
    eventually(lambda: any(r.event == "open" for r in host.audit_log("std")))
    port = str(host.admin_port)
    assert main(["status", "--port", port, "--audit"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert any(row[2:5] == ["std", "nosy", "open"] for row in rows if len(row) >= 5)
    assert main(["status", "--port", port, "--audit", "--sandbox", "std", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    write = next(r for r in records if r["event"] == "open")
    assert str(target) in write["detail"] and (write["sandbox_id"], write["actor"], write["blocked"]) == (
        "std",
        "nosy",
        False,
    )
    assert main(["status", "--port", port, "--audit", "--sandbox", "quiet"]) == 0
    assert "no audit records" in capsys.readouterr().out


def test_status_audit_of_an_unknown_sandbox_exits_one(
    host: Host, cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """``--audit --sandbox ID`` of no such sandbox is one ``error:`` line naming it."""
    assert main(["status", "--port", str(host.admin_port), "--audit", "--sandbox", "nope"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nope" in err and len(err.strip().splitlines()) == 1


def test_status_live_frame_has_a_summary_a_row_per_actor_and_failure_reasons(
    host: Host, cli_env: dict[str, str]
) -> None:
    """One frame of the live view: the totals line, the actor rows, and a failed sandbox's reason."""
    info = host.create_sandbox("s1", "root:Root", sandbox_path=sample("counter"))
    failed = SandboxInfo("broken", "failed", "root:Root", 0.0, 5, reason="reached max restart intensity\ntraceback")
    with AdminClient(host.admin_port) as client:
        snapshot = _status._snapshot(client) + [(failed, None)]
    screen = Console(file=io.StringIO(), width=200)
    screen.print(_status._live_frame(snapshot, host.admin_port))
    out = screen.file.getvalue()  # type: ignore[attr-defined]
    assert f"plugin host on port {host.admin_port}: 2 sandbox(es)" in out and "Ctrl-C quits" in out
    assert actor_rows(out, "s1")["counter"][0] == str(info.children[0].pid)
    assert actor_rows(out, "broken") == {"-": ["-"] * 7}
    assert "broken: reached max restart intensity" in out and "traceback" not in out


def test_status_on_a_terminal_redraws_until_ctrl_c_then_exits_zero(
    host: Host, cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a terminal ``status`` is a live view that refreshes every ``--interval`` seconds; Ctrl-C ends it."""
    info = host.create_sandbox("s1", "root:Root", sandbox_path=sample("counter"))
    screen, pauses = fake_terminal(monkeypatch), []

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(_status, "_pause", pause)
    assert main(["status", "--port", str(host.admin_port), "--interval", "0.5"]) == 0
    assert (
        pauses == [0.5, 0.5] and screen.getvalue().count("Ctrl-C quits") >= 2
    )  # two frames (rich redraws the last on exit)
    assert str(info.children[0].pid) in screen.getvalue() and "\x1b[" in screen.getvalue()


def test_status_live_view_exits_one_when_the_host_goes_away(
    cli_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A host that stops between two refreshes ends the live view with one ``error:`` line and exit code 1."""
    port, out = free_port("127.0.0.1"), tmp_path / "run.txt"
    proc = start_cli(["run", sample("counter"), "--supervisor", "root:Root", "--admin-port", str(port)], out, cli_env)
    try:
        wait_for_text(out, "serving", proc)
        screen = fake_terminal(monkeypatch)

        def stop_host(seconds: float) -> None:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0, out.read_text()

        monkeypatch.setattr(_status, "_pause", stop_host)
        assert main(["status", "--port", str(port)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "went away" in err and len(err.strip().splitlines()) == 1
        assert "counter" in screen.getvalue()  # the frame drawn before it went
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_destroy_stops_a_sandbox_of_a_running_host(
    host: Host, cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """``destroy ID --port N`` stops that sandbox's processes; the host and its other sandboxes stay."""
    info = host.create_sandbox("s1", "root:Root", sandbox_path=sample("counter"))
    host.create_sandbox("s2", "root:Root", sandbox_path=sample("counter"))
    assert main(["destroy", "s1", "--port", str(host.admin_port)]) == 0
    assert "destroyed 's1'" in capsys.readouterr().out
    assert [s.id for s in host.list_sandboxes()] == ["s2"]
    assert not any(pid_alive(c.pid) for c in info.children if c.pid)
    assert host.call("s2", "counter", "inc") == 1


def test_destroy_of_an_unknown_sandbox_prints_one_error_line_and_exits_one(
    host: Host, cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A ``SandboxNotFoundError`` from the host becomes ``error: ...`` on stderr and exit code 1."""
    assert main(["destroy", "nope", "--port", str(host.admin_port)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nope" in err and len(err.strip().splitlines()) == 1


def test_status_against_a_port_without_a_host_exits_one(
    cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Operator commands never start a system: no host of the state_dir on that port is an error, not a new host."""
    assert main(["status", "--port", str(free_port("127.0.0.1"))]) == 1
    assert capsys.readouterr().err.startswith("error: no plugin host runs on port")


def test_status_shows_the_frames_and_requests_the_host_refused(
    host: Host, cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A frame without the host's credential sent to its admin port shows up in ``status`` (its line under
    the table) and in ``Host.nodes``; the JSON output stays the list of sandboxes."""
    import socket

    assert main(["status", "--once"]) == 0
    assert "security: 0 frame(s) rejected, 0 request(s) denied" in capsys.readouterr().out
    with socket.create_connection(("127.0.0.1", host.admin_port), timeout=5) as sock:
        sock.sendall(b"11>not a frame")
        assert sock.recv(10) == b""  # dropped, unanswered
    eventually(lambda: host.nodes()[0].rejected_frames == 1)
    assert main(["status", "--once"]) == 0
    assert "security: 1 frame(s) rejected, 0 request(s) denied" in capsys.readouterr().out
    assert main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_status_finds_the_host_of_its_state_dir_without_a_port(
    host: Host, cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """The state_dir's runtime file names the running host: no ``--port`` is needed (``--state-dir`` picks it)."""
    host.create_sandbox("s1", "root:Root", sandbox_path=sample("counter"))
    assert main(["status", "--json"]) == 0
    assert [s["id"] for s in json.loads(capsys.readouterr().out)] == ["s1"]
    assert main(["status", "--json", "--state-dir", str(host.config.state_dir)]) == 0
    assert [s["id"] for s in json.loads(capsys.readouterr().out)] == ["s1"]


def test_a_port_that_is_no_plugin_host_gets_nothing_and_fails_within_a_second(
    cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """An operator command aimed at another service fails in under a second, and sends it nothing at all
    (never a pickle to an unknown service, never a long hang)."""
    import socket
    import threading

    accepted: list[bytes] = []
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(1.5)

        def serve() -> None:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                accepted.append(conn.recv(100))

        thread = threading.Thread(target=serve)
        thread.start()
        start = time.monotonic()
        code = main(["status", "--port", str(server.getsockname()[1])])
        elapsed = time.monotonic() - start
        thread.join()
    assert code == 1 and elapsed < 1.0, elapsed
    assert capsys.readouterr().err.startswith("error: no plugin host runs on port")
    assert accepted == []


def test_a_host_of_another_version_is_refused_before_anything_is_sent(
    host: Host, cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """The runtime file's version must be this one's: otherwise a one-line error, nothing sent."""
    runtime = Path(host.config.state_dir) / "run" / f"{host.admin_port}.json"
    info = json.loads(runtime.read_text())
    runtime.write_text(json.dumps({**info, "version": "0.0.1"}))
    try:
        assert main(["status"]) == 1
        assert capsys.readouterr().err.strip().endswith("runs plugin-host 0.0.1; this is 0.1.0: use the same version")
    finally:
        runtime.write_text(json.dumps(info))
    assert main(["status", "--json"]) == 0


def test_an_operator_with_another_credential_is_refused(
    host: Host, cli_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cookie file that is not the host's: the host refuses the first (signed) frame; one error line, fast."""
    other = tmp_path / "other-cookie"
    other.write_text("a" * 64)
    other.chmod(0o600)
    start = time.monotonic()
    assert main(["destroy", "nope", "--cookie-file", str(other)]) == 1
    assert time.monotonic() - start < 2.0
    err = capsys.readouterr().err
    assert err.startswith(f"error: the plugin host on 127.0.0.1:{host.admin_port} refused the credential {other}")
    assert host.list_sandboxes() == []


@pytest.mark.parametrize(
    "argv",
    [["bogus"], [], ["destroy", "x", "--port", "many"], ["status", "--port", "1", "--interval", "0"]],
    ids=["unknown-command", "no-command", "bad-port", "zero-interval"],
)
def test_a_usage_error_exits_two(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Unknown commands and bad arguments are usage errors: exit code 2 and a usage line."""
    assert main(argv) == 2
    assert "usage: plugin-host" in capsys.readouterr().err


def test_run_serves_a_sandbox_until_sigterm_then_closes_cleanly(
    cli_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``run`` prints the sandbox and admin port, answers operators, and exits 0 on SIGTERM."""
    port, out = free_port("127.0.0.1"), tmp_path / "run.txt"
    proc = start_cli(
        ["run", sample("counter"), "--supervisor", "root:Root", "--id", "served", "--admin-port", str(port)],
        out,
        cli_env,
    )
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


def test_run_with_a_bad_supervisor_reports_the_error_and_exits_one(
    cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A sandbox that cannot start is one ``error:`` line and exit code 1; the host is closed."""
    assert main(["run", sample("counter"), "--supervisor", "root:Missing"]) == 1
    assert capsys.readouterr().err.startswith("error: ")


def test_importing_plugin_host_and_its_cli_does_not_import_rich() -> None:
    """``rich`` is imported only when a command runs, never by importing the package."""
    code = "import sys, plugin_host, plugin_host.cli; sys.exit(any(m.split('.')[0] == 'rich' for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_compile_prints_the_artifacts_of_a_folder(cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    """``compile PATH`` needs no host: a table of modules with checksums, the compiler's output, exit 0."""
    assert main(["compile", sample("counter")]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip().startswith(("counter", "root"))}
    checksum = hashlib.sha256((SAMPLES / "counter" / "counter.py").read_bytes()).hexdigest()
    assert rows["counter"][1:3] == ["counter.py", checksum[:12]] and rows["root"][1] == "root.py"
    assert "validated 2 of 2 module(s)" in out and "compiled 2 module(s)" in out


def test_compile_of_a_broken_folder_names_the_file_and_line_and_exits_one(
    cli_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A syntax error is a ``CompilationError``: one ``error:`` report naming file and line, exit code 1."""
    folder = copy_counter(tmp_path / "broken")
    (folder / "counter.py").write_text("def broken(:\n")
    assert main(["compile", str(folder)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"{folder / 'counter.py'}:1" in err


def test_reload_rollback_and_history_drive_a_running_host(
    host: Host, cli_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``reload`` swaps new code in with the state kept, ``rollback`` goes back, ``history --json`` shows both."""
    host.create_sandbox("s", "root:Root", sandbox_path=copy_counter(tmp_path / "v1"))
    port = str(host.admin_port)
    assert host.call("s", "counter", "inc") == 1
    assert main(["reload", "s", str(copy_counter(tmp_path / "v2", step=10)), "--port", port]) == 0
    assert "reloaded s/counter: version 1 -> 2; actors updated: counter" in capsys.readouterr().out
    assert host.call("s", "counter", "inc") == 11
    assert main(["rollback", "s", "counter", "1", "--port", port]) == 0
    assert "rolled back s/counter: version 2 -> 1" in capsys.readouterr().out
    assert host.call("s", "counter", "inc") == 12
    assert main(["history", "s", "counter", "--port", port, "--json"]) == 0
    history = json.loads(capsys.readouterr().out)
    assert (history["current_version"], history["total_versions"]) == (1, 2)
    assert [(v["version"], v["status"]) for v in history["versions"]] == [(2, "previous"), (1, "current")]
    assert history["versions"][0]["checksum"] == host.list_module_versions("s", "counter")[0].checksum


def test_history_prints_a_table_newest_first(
    host: Host, cli_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Plain ``history`` prints version, status, load time and checksum prefix per version."""
    host.create_sandbox("s", "root:Root", sandbox_path=copy_counter(tmp_path / "v1"))
    host.hot_reload("s", host.compile_sandbox(copy_counter(tmp_path / "v2", step=10)))
    assert main(["history", "s", "counter", "--port", str(host.admin_port)]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    versions = host.list_module_versions("s", "counter")
    assert [(r[0], r[1], r[-1]) for r in rows] == [(str(v.version), v.status, v.checksum[:12]) for v in versions]
    assert "current version 2, 2 stored" in out


def test_reload_of_a_broken_folder_never_reaches_the_host(
    host: Host, cli_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``reload`` compiles first: a failing import exits 1 and the running version stays."""
    host.create_sandbox("s", "root:Root", sandbox_path=copy_counter(tmp_path / "v1"))
    broken = copy_counter(tmp_path / "v2")
    (broken / "counter.py").write_text("import does_not_exist_anywhere\n")
    assert main(["reload", "s", str(broken), "--port", str(host.admin_port)]) == 1
    assert "does_not_exist_anywhere" in capsys.readouterr().err
    assert host.get_version_history("s", "counter").total_versions == 1


def test_rollback_to_an_unknown_version_exits_one(
    host: Host, cli_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ``VersionNotFoundError`` from the host is one ``error:`` line and exit code 1."""
    host.create_sandbox("s", "root:Root", sandbox_path=copy_counter(tmp_path / "v1"))
    assert main(["rollback", "s", "counter", "7", "--port", str(host.admin_port)]) == 1
    assert capsys.readouterr().err.startswith("error: ") and host.get_module_version("s", "counter") == 1


def admin_call(port: int, request: object) -> object:
    """Call the ``counter`` actor of sandbox ``w`` through the admin port of a host in another process."""
    with AdminClient(port) as client:
        return unblob(client.request(Call(sandbox_id="w", name="counter", request=Blob.dump(request)), 15))


def running_version(port: int, module: str) -> int:
    """The version of ``module`` that sandbox ``w`` runs, read through the admin port."""
    with AdminClient(port) as client:
        return client.list_sandboxes()[0].modules[module]


def test_run_watch_hot_reloads_on_save_and_reports_a_broken_save(cli_env: dict[str, str], tmp_path: Path) -> None:
    """``run --watch`` reloads each save (state kept), reports a broken one in place of reloading, stops on SIGTERM."""
    folder, port, out = copy_counter(tmp_path / "w"), free_port("127.0.0.1"), tmp_path / "run.txt"
    proc = start_cli(
        ["run", str(folder), "--supervisor", "root:Root", "--watch", "--admin-port", str(port)], out, cli_env
    )
    try:
        wait_for_text(out, "serving", proc)
        assert admin_call(port, "inc") == 1
        copy_counter(tmp_path / "v2", step=10)
        shutil.copy(tmp_path / "v2" / "counter.py", folder / "counter.py")
        eventually(lambda: running_version(port, "counter") == 2, timeout=30)
        assert admin_call(port, "inc") == 11  # the new code, from the old count
        wait_for_text(out, "reloaded counter v1 -> v2; actors updated: counter", proc)
        (folder / "counter.py").write_text("def broken(:\n")
        text = wait_for_text(out, "reload failed", proc)
        assert "the running version stays (counter v2, root v1)" in text and "CompilationError" in text
        assert admin_call(port, "inc") == 21 and running_version(port, "counter") == 2  # version 2 still answers
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, out.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
