"""``plugin_host._audit``: the PEP 578 runtime audit of a sandbox process.

Audit hooks cannot be removed, so every test that installs one runs its plugin code in a
fresh interpreter (``python -c``) and reads back one JSON line per record the ``emit``
callback got, then one line with the name of the exception the plugin code saw.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import attrs
import pytest
from conftest import ROOT

from plugin_host._audit import PROFILES, install
from plugin_host.errors import ConfigError

_SCRIPT = """\
import json, os, resource, socket, subprocess, sys
import attrs
from plugin_host import _audit as audit
TMP = sys.argv[1]
def emit(record):
    print(json.dumps({{"record": attrs.asdict(record)}}), flush=True)
{emit}
control = audit.install("sb-1", {profile!r}, emit)
{setup}
error = None
with control.plugin_code("worker-1"):
    try:
{operation}
    except Exception as exc:
        error = type(exc).__name__
{after}
print(json.dumps({{"error": error}}), flush=True)
"""


@attrs.frozen
class Outcome:
    """What a plugin snippet did: the records emitted and the exception it saw."""

    records: list[dict[str, Any]]
    error: str | None
    """Name of the exception the plugin code got, or None."""


def run_plugin(
    tmp_path: Path, profile: str, operation: str, *, setup: str = "", emit: str = "", after: str = ""
) -> Outcome:
    """Run ``operation`` as plugin code under ``profile`` in a fresh interpreter."""
    code = _SCRIPT.format(
        profile=profile,
        emit=textwrap.dedent(emit),
        setup=textwrap.dedent(setup),
        operation=textwrap.indent(textwrap.dedent(operation).strip(), " " * 8),
        after=textwrap.dedent(after),
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines and "error" in lines[-1], result.stdout + result.stderr
    return Outcome([line["record"] for line in lines[:-1]], lines[-1]["error"])


_CTYPES_CELL = "import ctypes; cell = ctypes.c_int(7); address = ctypes.addressof(cell)"
_COPY_CSV_EXTENSION = """\
import glob, shutil, sysconfig
assert "_csv" not in sys.modules
shutil.copy(glob.glob(os.path.join(sysconfig.get_config_var("DESTSHARED"), "_csv.*"))[0], TMP)
sys.path.insert(0, TMP)
"""
_FORK = """\
pid = os.fork()
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
"""

_A_FILE = "open(os.path.join(TMP, 'a'), 'w').close()"
_NOFILE = "limits = resource.getrlimit(resource.RLIMIT_NOFILE)"

# (id, setup, operation, audit event, start of the detail: "{tmp}" is the test's tmp_path)
OPERATIONS = [
    ("open-for-writing", "", "open(os.path.join(TMP, 'out.txt'), 'w').close()", "open", "{tmp}/out.txt"),
    (
        "os-open-for-appending",
        "",
        "os.close(os.open(os.path.join(TMP, 'log'), os.O_WRONLY | os.O_APPEND | os.O_CREAT))",
        "open",
        "{tmp}/log",
    ),
    ("subprocess", "", "subprocess.run(['true'], check=True)", "subprocess.Popen", "true"),
    ("os-system", "", "os.system('true')", "os.system", "true"),
    # Under standard, echo replaces the interpreter and prints the result line for it.
    ("os-exec", "", """os.execv('/bin/echo', ['echo', '{"error": null}'])""", "os.exec", "/bin/echo: echo"),
    (
        "os-posix-spawn",
        "",
        "os.waitpid(os.posix_spawn('/bin/true', ['true'], os.environ), 0)",
        "os.posix_spawn",
        "/bin/true: true",
    ),
    ("os-fork", "", _FORK, "os.fork", ""),
    (
        "socket-connect",
        "server = socket.create_server(('127.0.0.1', 0))",
        "socket.create_connection(server.getsockname()).close()",
        "socket.connect",
        "127.0.0.1:",
    ),
    ("socket-bind", "", "socket.socket().bind(('127.0.0.1', 0))", "socket.bind", "127.0.0.1:0"),
    (
        "socket-sendto",
        "",
        "socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', 9))",
        "socket.sendto",
        "127.0.0.1:9",
    ),
    ("native-extension-import", _COPY_CSV_EXTENSION, "import _csv", "import", "_csv from {tmp}/_csv."),
    ("ctypes-dlopen", "import ctypes", "ctypes.CDLL('libc.so.6')", "ctypes.dlopen", "libc.so.6"),
    ("ctypes-dlsym", "import ctypes; libc = ctypes.CDLL('libc.so.6')", "libc.getpid", "ctypes.dlsym", "getpid"),
    ("ctypes-cdata", _CTYPES_CELL, "ctypes.c_int.from_address(address)", "ctypes.cdata", "0x"),
    ("ctypes-string-at", _CTYPES_CELL, "ctypes.string_at(address, 4)", "ctypes.string_at", "0x"),
    ("os-kill", "", "os.kill(os.getpid(), 0)", "os.kill", ""),
    ("os-killpg", "", "os.killpg(os.getpgid(0), 0)", "os.killpg", ""),
    ("os-remove", _A_FILE, "os.remove(os.path.join(TMP, 'a'))", "os.remove", "{tmp}/a"),
    ("os-unlink", _A_FILE, "os.unlink(os.path.join(TMP, 'a'))", "os.remove", "{tmp}/a"),
    ("os-rename", _A_FILE, "os.rename(os.path.join(TMP, 'a'), os.path.join(TMP, 'b'))", "os.rename", "{tmp}/a -> "),
    ("os-replace", _A_FILE, "os.replace(os.path.join(TMP, 'a'), os.path.join(TMP, 'b'))", "os.rename", "{tmp}/a -> "),
    ("os-rmdir", "os.mkdir(os.path.join(TMP, 'd'))", "os.rmdir(os.path.join(TMP, 'd'))", "os.rmdir", "{tmp}/d"),
    ("os-mkdir", "", "os.mkdir(os.path.join(TMP, 'd'))", "os.mkdir", "{tmp}/d"),
    ("os-symlink", "", "os.symlink(TMP, os.path.join(TMP, 'l'))", "os.symlink", "{tmp} -> {tmp}/l"),
    ("os-chmod", "", "os.chmod(TMP, 0o700)", "os.chmod", "{tmp}"),
    ("setrlimit", _NOFILE, "resource.setrlimit(resource.RLIMIT_NOFILE, limits)", "resource.setrlimit", "resource "),
    ("prlimit", _NOFILE, "resource.prlimit(0, resource.RLIMIT_NOFILE, limits)", "resource.prlimit", "pid 0 "),
    ("read-outside", "", "open(sys.executable, 'rb').close()", "open", "{executable} (read)"),
]


def _expected(detail: str, tmp_path: Path) -> str:
    """The start of a record's detail: the test's folder and the interpreter filled in."""
    return detail.format(tmp=tmp_path, executable=sys.executable)


OPERATION_CASES = [pytest.param(*case[1:], id=case[0]) for case in OPERATIONS]


@pytest.mark.parametrize(("setup", "operation", "event", "detail"), OPERATION_CASES)
def test_standard_profile_records_each_audited_operation(
    tmp_path: Path, setup: str, operation: str, event: str, detail: str
) -> None:
    """Under ``standard`` the operation succeeds and leaves one record with its event and detail."""
    outcome = run_plugin(tmp_path, "standard", operation, setup=setup)
    assert outcome.error is None
    assert [(r["event"], r["actor"], r["sandbox_id"], r["blocked"]) for r in outcome.records] == [
        (event, "worker-1", "sb-1", False)
    ]
    assert outcome.records[0]["detail"].startswith(_expected(detail, tmp_path))


@pytest.mark.parametrize(("setup", "operation", "event", "detail"), OPERATION_CASES)
def test_restricted_profile_refuses_each_audited_operation(
    tmp_path: Path, setup: str, operation: str, event: str, detail: str
) -> None:
    """Under ``restricted`` the plugin gets PermissionError and the record says blocked."""
    outcome = run_plugin(tmp_path, "restricted", operation, setup=setup)
    assert outcome.error == "PermissionError"
    assert [(r["event"], r["blocked"]) for r in outcome.records] == [(event, True)]
    assert outcome.records[0]["detail"].startswith(_expected(detail, tmp_path))


def test_restricted_profile_leaves_no_file_behind(tmp_path: Path) -> None:
    """A refused open for writing creates nothing."""
    run_plugin(tmp_path, "restricted", "open(os.path.join(TMP, 'out.txt'), 'w').close()")
    assert not (tmp_path / "out.txt").exists()


def test_permissive_profile_records_nothing(tmp_path: Path) -> None:
    """Under ``permissive`` every operation runs and no record is emitted."""
    operation = """\
        open(os.path.join(TMP, 'out.txt'), 'w').close()
        subprocess.run(['true'], check=True)
        socket.socket().bind(('127.0.0.1', 0))
        import _csv
        import ctypes
        ctypes.CDLL('libc.so.6').getpid()
    """
    outcome = run_plugin(tmp_path, "permissive", operation, setup=_COPY_CSV_EXTENSION)
    assert outcome == Outcome([], None)


def test_nothing_is_recorded_or_refused_outside_plugin_code(tmp_path: Path) -> None:
    """The runtime's main thread before and after the plugin's callback writes and connects freely."""
    outside = "open(os.path.join(TMP, '{0}'), 'w').close(); socket.socket().bind(('127.0.0.1', 0))"
    outcome = run_plugin(tmp_path, "restricted", "pass", setup=outside.format("before"), after=outside.format("after"))
    assert outcome == Outcome([], None)
    assert (tmp_path / "before").exists() and (tmp_path / "after").exists()


def test_reading_the_stdlib_and_importing_stdlib_modules_is_not_recorded(tmp_path: Path) -> None:
    """Reading the interpreter's own library and system files plain stdlib code needs, and importing
    Python or interpreter-shipped extension modules pass under restricted."""
    operation = """\
        open(os.__file__, 'rb').close()
        os.close(os.open(os.__file__, os.O_RDONLY))
        open(os.devnull).close()
        import csv  # loads the _csv extension from the interpreter's own lib-dynload
        import mimetypes, zoneinfo
        mimetypes.guess_type('a.html')
        zoneinfo.ZoneInfo('UTC')
        import traceback; traceback.format_stack()
    """
    outcome = run_plugin(tmp_path, "restricted", operation, setup="assert '_csv' not in sys.modules")
    assert outcome == Outcome([], None)


def test_an_exception_from_emit_does_not_break_the_operation(tmp_path: Path) -> None:
    """A failing sink is ignored: the write happens under standard, is refused under restricted."""
    failing = "def emit(record):\n    raise RuntimeError('sink down')\n"
    operation = "open(os.path.join(TMP, 'out.txt'), 'w').close()"
    assert run_plugin(tmp_path, "standard", operation, emit=failing) == Outcome([], None)
    assert (tmp_path / "out.txt").exists()
    refused = run_plugin(tmp_path, "restricted", operation.replace("out.txt", "other.txt"), emit=failing)
    assert refused == Outcome([], "PermissionError")
    assert not (tmp_path / "other.txt").exists()


def test_what_emit_itself_does_is_neither_recorded_nor_refused(tmp_path: Path) -> None:
    """emit may write a log file under restricted without recursing into the hook."""
    logging_emit = """\
        def emit(record):
            with open(os.path.join(TMP, 'audit.log'), 'a') as log:
                log.write(json.dumps(attrs.asdict(record)) + '\\n')
    """
    outcome = run_plugin(tmp_path, "restricted", "socket.socket().bind(('127.0.0.1', 0))", emit=logging_emit)
    assert outcome == Outcome([], "PermissionError")
    logged = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    assert [(r["event"], r["blocked"]) for r in logged] == [("socket.bind", True)]


def test_install_hands_out_its_control_once_per_process(tmp_path: Path) -> None:
    """A second install, by the runtime or by plugin code, is refused; there is still one hook."""
    setup = """\
        for profile in ('standard', 'permissive'):
            try:
                audit.install('sb-1', profile, emit)
            except PermissionError:
                pass
            else:
                raise AssertionError('a second control')
    """
    operation = """\
        try:
            audit.install('sb-1', 'permissive', emit)
        except PermissionError:
            pass
        socket.socket().bind(('127.0.0.1', 0))
    """
    outcome = run_plugin(tmp_path, "standard", operation, setup=setup)
    assert [r["event"] for r in outcome.records] == ["socket.bind"]


def test_threads_started_by_the_plugin_are_audited_while_it_runs(tmp_path: Path) -> None:
    """An operation in a plugin thread is refused and recorded under the running actor."""
    operation = """\
        import threading
        seen = []
        def bind():
            try:
                socket.socket().bind(('127.0.0.1', 0))
            except PermissionError:
                seen.append('refused')
        thread = threading.Thread(target=bind)
        thread.start()
        thread.join()
        assert seen == ['refused']
    """
    outcome = run_plugin(tmp_path, "restricted", operation)
    assert outcome.error is None
    assert [(r["event"], r["actor"]) for r in outcome.records] == [("socket.bind", "worker-1")]


def test_runtime_work_inside_plugin_code_is_exempt_through_the_control_only(tmp_path: Path) -> None:
    """Runtime code called by the plugin (a sibling call's sockets) runs unaudited inside ``runtime()``."""
    operation = """\
        with control.runtime():
            socket.socket().bind(('127.0.0.1', 0))
        socket.socket().bind(('127.0.0.2', 0))
    """
    outcome = run_plugin(tmp_path, "standard", operation)
    assert [r["detail"] for r in outcome.records] == ["127.0.0.2:0"]


def test_a_thread_outliving_its_callback_stays_audited_and_runtime_threads_do_not(tmp_path: Path) -> None:
    """A plugin thread still running after the callback is refused; a thread the runtime marks is not."""
    operation = """\
        import threading
        go, seen = threading.Event(), []
        def late():
            go.wait()
            try:
                socket.socket().bind(('127.0.0.1', 0))
            except PermissionError:
                seen.append('refused')
        def watchdog():
            with control.runtime_thread():
                socket.socket().bind(('127.0.0.3', 0))
        plugin_thread = threading.Thread(target=late)
        plugin_thread.start()
    """
    after = """\
        go.set()
        plugin_thread.join()
        assert seen == ['refused'], seen
        runtime_thread = threading.Thread(target=watchdog, name='plugin-host-cpu-budget')
        runtime_thread.start()
        runtime_thread.join()
    """
    outcome = run_plugin(tmp_path, "restricted", operation, after=after)
    assert outcome.error is None
    assert [(r["event"], r["detail"], r["actor"]) for r in outcome.records] == [
        ("socket.bind", "127.0.0.1:0", "worker-1")
    ]


def test_long_details_are_truncated(tmp_path: Path) -> None:
    """A detail stays under about 200 characters, however long the command."""
    outcome = run_plugin(tmp_path, "standard", "os.system('true ' + 'x' * 1000)")
    (record,) = outcome.records
    assert len(record["detail"]) <= 200 and record["detail"].startswith("true xxx")


def test_an_unknown_profile_is_a_config_error() -> None:
    """The profile is checked at construction (no hook is installed here)."""
    with pytest.raises(ConfigError) as caught:
        install("sb-1", "lenient", lambda record: None)
    assert caught.value.field == "profile"  # type: ignore[attr-defined]
    assert set(PROFILES) == {"restricted", "standard", "permissive"}


def test_interpreter_extensions_that_reach_native_code_stay_audited(tmp_path: Path) -> None:
    """``_ctypes`` ships with the interpreter yet its import is refused under restricted."""
    outcome = run_plugin(tmp_path, "restricted", "import ctypes", setup="assert '_ctypes' not in sys.modules")
    assert outcome.error == "PermissionError"
    assert [(r["event"], r["detail"].split(" from ")[0]) for r in outcome.records] == [("import", "_ctypes")]


def test_a_process_forked_by_plugin_code_stays_audited_and_cannot_claim_the_audit(tmp_path: Path) -> None:
    """A child a plugin forks (the fork is recorded) cannot install its own, unaudited, control, and
    what it does is still recorded.  A child the runtime forks claims its own."""
    operation = """\
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                audit.install('sb-1', 'standard', emit)
                code = 3
            except PermissionError:
                pass
            try:
                socket.socket().bind(('127.0.0.1', 0))
            except PermissionError:
                code = code or 4
            os._exit(code)
        assert os.waitpid(pid, 0)[1] == 0
    """
    after = """\
        pid = os.fork()
        if pid == 0:
            mine = audit.install('sb-1', 'standard', lambda record: None)
            os._exit(0 if mine.profile == 'standard' else 5)
        assert os.waitpid(pid, 0)[1] == 0
    """
    outcome = run_plugin(tmp_path, "standard", operation, after=after)
    assert outcome.error is None
    assert [r["event"] for r in outcome.records] == ["os.fork", "socket.bind"]


def test_a_signal_handler_the_plugin_installs_runs_audited_even_when_runtime_code_is_interrupted(
    tmp_path: Path,
) -> None:
    """A handler installed by plugin code runs audited when the signal arrives in the runtime's code
    (outside plugin code, even inside ``runtime()``); one the runtime installed runs unaudited."""
    operation = """\
        import signal
        seen = []
        def plugin_handler(signum, frame):
            try:
                socket.socket().bind(('127.0.0.1', 0))
            except PermissionError:
                seen.append('refused')
        signal.signal(signal.SIGUSR1, plugin_handler)
    """
    after = """\
        with control.runtime():
            os.kill(os.getpid(), signal.SIGUSR1)
        assert seen == ['refused'], seen
        signal.signal(signal.SIGUSR2, lambda signum, frame: socket.socket().bind(('127.0.0.3', 0)))
        os.kill(os.getpid(), signal.SIGUSR2)
    """
    outcome = run_plugin(tmp_path, "restricted", operation, after=after)
    assert outcome.error is None
    assert [(r["event"], r["detail"]) for r in outcome.records] == [("socket.bind", "127.0.0.1:0")]


def test_a_trace_function_that_would_run_in_runtime_code_is_refused(tmp_path: Path) -> None:
    """``sys.settrace``/``sys.setprofile`` would call plugin code on every line the runtime runs."""
    outcome = run_plugin(tmp_path, "restricted", "sys.settrace(lambda *args: None)")
    assert outcome.error == "PermissionError"
    assert [(r["event"], r["blocked"]) for r in outcome.records] == [("sys.settrace", True)]
