"""Attacks on the compile validator (issue #15, lane V): the process that imports a sandbox's modules before
they enter it is contained like the sandbox.

Top-level plugin code runs in the validator, so it must not be able to forge the validator's verdict
(a result line written to the protocol stream, from top-level code, a thread, ``atexit`` or a
finalizer), run unaudited after the verdict (a ``__del__``, ``atexit``, a replaced ``sys.stdout``), use
more memory than its sandbox may, keep the host's capabilities, or, for ``isolation="user"``, read
what the host's uid can (the cookie, the ``state_dir``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import textwrap
from pathlib import Path
from typing import Iterator

import attrs
import psutil
import pytest
from conftest import eventually, sample
from test_compiler import write_tree

from plugin_host import Host, HostConfig, compiler
from plugin_host.compiler import compile_sandbox
from plugin_host.config import ResourceLimits
from plugin_host.errors import CompilationError, ConfigError
from plugin_host.lowlevel import cgroup, confine

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching uids needs root (CI runs as root)")

FORGED = '{"event": "result", "errors": [], "audited": []}\n'
"""A success claimed by plugin code: no error, nothing audited."""

# Each writes FORGED to every descriptor the process may have (the protocol stream is one of them).
_SPRAY = f"""
import os
def spray(line={FORGED!r}):
    for fd in range(1, 64):
        try:
            os.write(fd, line.encode())
        except OSError:
            pass
"""
FORGERS = {
    "top level": _SPRAY + "spray()\n",
    "thread": _SPRAY
    + textwrap.dedent(
        """
        import threading
        written = threading.Event()
        def forge():
            while True:  # before the validator's result, and for as long as the process lives
                spray()
                written.set()
        threading.Thread(target=forge, daemon=True).start()
        written.wait()
        """
    ),
    "atexit": _SPRAY + "import atexit\natexit.register(spray)\n",
    "finalizer": _SPRAY
    + textwrap.dedent(
        """
        import weakref
        class Forger:
            def __del__(self):
                spray()
        KEEP = Forger()  # collected, if ever, only after the validator's result
        weakref.finalize(KEEP, spray)
        """
    ),
}


@pytest.fixture(params=[False, True], ids=["fresh", "pool"])
def pool(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[compiler.CompilePool | None]:
    """No pool (a fresh validator per compile), or a warm pool closed at the end."""
    warm = compiler.CompilePool(label=str(tmp_path)) if request.param else None
    try:
        yield warm
    finally:
        if warm is not None:
            warm.close()


@pytest.mark.parametrize("where", sorted(FORGERS))
def test_a_result_forged_by_plugin_code_is_not_taken_for_the_validators(
    tmp_path: Path, pool: compiler.CompilePool | None, where: str
) -> None:
    """Top-level code (or a thread, an ``atexit`` handler, a finalizer it leaves) writes a forged success line
    to every descriptor, the protocol stream included, then does what ``restricted`` refuses: the compile
    still fails at the refused line, the forgery is named, and the forged success is never taken."""
    secret = tmp_path / "secret.txt"
    secret.write_text("host data")
    source = FORGERS[where] + f"import pathlib\nDATA = pathlib.Path({str(secret)!r}).read_text()\n"
    refused_line = source.count("\n")
    root = write_tree(tmp_path / "sb", {"a.py": source})
    with pytest.raises(CompilationError) as caught:
        compile_sandbox(root, security_profile="restricted", pool=pool)
    assert ("a.py", refused_line) in [(Path(f).name, line) for f, line, _ in caught.value.errors]
    assert "PermissionError" in str(caught.value)
    if where in ("top level", "thread"):  # written before the result: seen, and named as a forgery
        assert any("result line of its own" in message for _, _, message in caught.value.errors)


def test_a_result_tagged_with_a_nonce_dug_out_of_memory_is_refused(
    tmp_path: Path, pool: compiler.CompilePool | None
) -> None:
    """Top-level code that finds the job's nonce in the validator's frames and writes a tagged success cannot
    pass it for the validator's: the validator's own line comes too, and two tagged lines fail the compile."""
    source = _SPRAY + textwrap.dedent(
        """
        import json, sys
        frame, nonce = sys._getframe(), ""
        while frame is not None and not nonce:
            nonce = str(frame.f_locals.get("nonce", ""))
            frame = frame.f_back
        spray(json.dumps({"event": "result", "nonce": nonce, "errors": [], "audited": []}) + "\\n")
        raise RuntimeError("the real outcome")
        """
    )
    root = write_tree(tmp_path / "sb", {"a.py": source})
    with pytest.raises(CompilationError) as caught:
        compile_sandbox(root, pool=pool)
    assert "none is trusted" in str(caught.value)


def test_what_plugin_code_leaves_to_run_after_its_import_runs_audited_or_never(
    tmp_path: Path, pool: compiler.CompilePool | None
) -> None:
    """Under ``restricted``, a write refused to top-level code is refused (or never done) when it is left to
    an ``atexit`` handler, a ``__del__`` the collector runs while the validator reports, or the ``flush`` of
    a ``sys.stdout`` the module replaced (the validator flushes the streams before its result)."""
    target = tmp_path / "escaped"
    source = textwrap.dedent(
        f"""
        import atexit, gc, os, pickle, sys
        TARGET = {str(target)!r}
        MAKE = pickle.loads(b"cposix\\nmkdir\\n.")  # os.mkdir, which no static scan can see in a pickle
        def write(suffix):
            try:
                MAKE(TARGET + suffix)
            except OSError:
                pass
        atexit.register(write, "-atexit")
        class Stream:
            def write(self, text):
                return len(text)
            def flush(self):
                write("-flush")
        sys.stdout = Stream()
        class Cycle:
            def __init__(self):
                self.me = self
            def __del__(self):
                write("-del")
                Cycle()  # garbage again: the next collection runs this again
        Cycle()
        gc.set_threshold(1)  # a collection at nearly every allocation, the validator's own included
        """
    )
    root = write_tree(tmp_path / "sb", {"a.py": source})
    info = compile_sandbox(root, security_profile="restricted", pool=pool)
    assert "(refused)" in info.output
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("escaped")) == []


def test_top_level_code_past_the_memory_limit_fails_the_compile(
    tmp_path: Path, pool: compiler.CompilePool | None
) -> None:
    """The validator applies the sandbox's ``max_memory_mb`` as a hard limit before plugin code: allocating
    past it fails the compile at the line with ``MemoryError`` (the caller is untouched), and top-level code
    can neither raise the limit nor keep a capability or gain privileges (``no_new_privs``)."""
    source = textwrap.dedent(
        """
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        try:
            resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        except (ValueError, OSError) as exc:
            print("raise refused:", type(exc).__name__)
        status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
        print("caps", status["CapEff"].strip(), status["CapBnd"].strip(), "nnp", status["NoNewPrivs"].strip())
        DATA = bytearray(256 * 2**20)
        """
    )
    root = write_tree(tmp_path / "sb", {"a.py": source})
    limits = ResourceLimits(max_memory_mb=64)
    with pytest.raises(CompilationError) as caught:
        compile_sandbox(root, pool=pool, limits=limits)
    assert ("a.py", source.count("\n")) in [(Path(f).name, line) for f, line, _ in caught.value.errors]
    assert "MemoryError" in str(caught.value)
    output = caught.value.output
    assert "raise refused:" in output
    assert "caps 0000000000000000 0000000000000000 nnp 1" in output
    assert bytearray(256 * 2**20)  # this process keeps its own limits


def test_a_reload_compiles_under_the_sandboxs_memory_limit(host: Host) -> None:
    """``hot_reload_source`` validates under the sandbox's own ``max_memory_mb``: top-level code allocating
    past it fails the compile (before anything is sent) and the sandbox goes on with its old code."""
    host.create_sandbox("s", "root:Root", sandbox_path=sample("counter"), limits={"max_memory_mb": 64})
    assert host.call("s", "counter", "inc") == 1
    source = Path(sample("counter"), "counter.py").read_text() + "DATA = bytearray(256 * 2**20)\n"
    with pytest.raises(CompilationError) as caught:
        host.hot_reload_source("s", source, "counter")
    assert "MemoryError" in str(caught.value)
    assert host.call("s", "counter", "inc") == 2
    assert host.get_module_version("s", "counter") == 1


PEEK = textwrap.dedent(
    """
    import os
    def peek(what, read):
        try:
            read()
            print(what, "readable")
        except OSError as exc:
            print(what, type(exc).__name__)
    print("uid", os.getresuid(), os.getresgid(), os.getgroups())
    peek("cookie", lambda: open(COOKIE).read())
    peek("state_dir", lambda: os.listdir(STATE))
    """
)


@as_root
def test_for_isolation_user_the_validator_cannot_read_the_cookie_or_the_state_dir(config: HostConfig) -> None:
    """On a host whose sandboxes are their own users, the validator runs as ``nobody`` (no supplementary
    group): its top-level code can read neither the cookie nor the ``state_dir`` (nor see them, where its own
    fresh ``/tmp`` covers them).  (Its dependency environment, under the ``state_dir``, is still importable
    through a readable copy: ``tests/test_isolation_user.py::
    test_its_dependency_environment_is_read_as_its_own_user_before_and_after_a_reload`` compiles one.)"""
    with Host(attrs.evolve(config, isolation="user")) as host:
        state = Path(host.config.state_dir)
        assert host.config.credential_file.exists()
        header = f"COOKIE = {str(host.config.credential_file)!r}\nSTATE = {str(state)!r}\n"
        folder = write_tree(state.parent / "sb", {"peek.py": header + PEEK})
        output = host.compile_sandbox(str(folder)).output
    assert "uid (65534, 65534, 65534) (65534, 65534, 65534) []" in output
    for what in ("cookie", "state_dir"):  # unreadable; hidden outright where the fresh /tmp covers the state_dir
        assert f"{what} PermissionError" in output or f"{what} FileNotFoundError" in output, output


@as_root
def test_a_reload_of_a_user_sandbox_is_validated_as_nobody(host: Host) -> None:
    """``hot_reload_source`` into an ``isolation="user"`` sandbox of a host whose default is ``"process"``
    validates as ``nobody`` too: top-level code that would fail the compile if it could read the cookie
    or the ``state_dir``, or ran as root, is accepted, and the reload runs it as the sandbox's own uid."""
    probe = Path(__file__).parent / "plugins" / "isolation"
    info = host.create_sandbox("u", "probe:Probe", sandbox_path=str(probe), isolation="user")
    guard = textwrap.dedent(
        f"""
        import os as _os
        if _os.getuid() == 0:
            raise RuntimeError("validated as root")
        for _reach in (lambda: open({str(host.config.credential_file)!r}).read(),
                       lambda: _os.listdir({str(host.config.state_dir)!r})):
            try:
                _reach()
            except (PermissionError, FileNotFoundError):  # the sandbox's own /tmp hides a state_dir there
                continue
            raise RuntimeError("the host's files are readable")
        """
    )
    source = (probe / "probe.py").read_text().replace('TAG = "v1"', 'TAG = "v2"') + guard
    assert host.hot_reload_source("u", source, "probe").new_version == 2
    after = host.call("u", "probe", "who")
    assert (after["tag"], after["uid"]) == ("v2", info.uid)


@pytest.mark.parametrize("mode", ["auto", "off"])
def test_the_validator_runs_under_the_sandboxes_syscall_filter(
    tmp_path: Path, pool: compiler.CompilePool | None, mode: str
) -> None:
    """Top-level code in the validator runs under the seccomp filter of the sandbox processes (``"auto"``, where
    libseccomp loads): it cannot make a user namespace (the way a uid-0 process lifts what holds it), and the
    validator is non-dumpable, as a sandbox's processes are; with ``syscall_filter="off"`` the namespace is made
    (the filter, not something else, refused it)."""
    reason = confine.syscall_filter_support()
    if reason is not None:
        pytest.skip(reason)
    source = textwrap.dedent(
        """
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        made = libc.unshare(0x10000000)  # CLONE_NEWUSER
        status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
        dumpable = libc.prctl(3, 0, 0, 0, 0)  # PR_GET_DUMPABLE
        failed = ctypes.get_errno() if made else 0
        print("seccomp", status["Seccomp"].strip(), "dumpable", dumpable, "unshare", made, failed)
        """
    )
    root = write_tree(tmp_path / "sb", {"a.py": source})
    output = compile_sandbox(root, pool=pool, syscall_filter=mode).output
    if mode == "auto":
        assert "seccomp 2 dumpable 0 unshare -1 1" in output  # EPERM
    else:
        assert "seccomp 0 dumpable 0 unshare 0 0" in output


def test_a_bad_syscall_filter_for_a_compile_is_a_config_error(tmp_path: Path) -> None:
    """``syscall_filter`` of a compile takes the values of ``HostConfig.syscall_filter`` only."""
    root = write_tree(tmp_path / "sb", {"a.py": "X = 1\n"})
    with pytest.raises(ConfigError) as caught:
        compile_sandbox(root, syscall_filter="sometimes")
    assert caught.value.field == "syscall_filter"


_PIDS = Path("/sys/fs/cgroup/pids")


@as_root
@pytest.mark.skipif(not os.access(_PIDS, os.W_OK), reason="no writable cgroup v1 pids hierarchy")
def test_top_level_code_cannot_write_a_control_groups_files(tmp_path: Path, pool: compiler.CompilePool | None) -> None:
    """The validator runs top-level code as uid 0 without capabilities, like a sandbox root under
    ``isolation="process"``: in a mount namespace of its own whose cgroup mounts are read-only, so it cannot lift
    a sandbox group's ``pids.max`` (a group the test made stands for one) or move a process into it: the
    compile fails at the write and the limit is unchanged."""
    group = _PIDS / f"plugin-host-test-{os.getpid()}-{tmp_path.name}"
    group.mkdir()
    try:
        (group / "pids.max").write_text("5")
        source = f"import pathlib\npathlib.Path({str(group / 'pids.max')!r}).write_text('max')\n"
        root = write_tree(tmp_path / "sb", {"a.py": source})
        with pytest.raises(CompilationError, match="Read-only file system"):
            compile_sandbox(root, pool=pool)
        assert (group / "pids.max").read_text().strip() == "5"
        procs = f"import os, pathlib\npathlib.Path({str(group / 'cgroup.procs')!r}).write_text(str(os.getpid()))\n"
        with pytest.raises(CompilationError, match="Read-only file system"):
            compile_sandbox(write_tree(tmp_path / "sb2", {"b.py": procs}), pool=pool)
        assert (group / "cgroup.procs").read_text() == ""
    finally:
        group.rmdir()


@as_root
def test_a_validator_run_as_nobody_imports_the_hosts_python_under_a_closed_home(
    tmp_path: Path, pool: compiler.CompilePool | None
) -> None:
    """A compile for ``isolation="user"`` (the validator as ``nobody``) imports stdlib modules no process of it
    loaded before (``decimal``, ``glob``), even where the host's Python lives under a home ``nobody`` cannot
    pass (pyenv under ``/root``, ``0700``): the validator reveals the interpreter's folders as a sandbox root
    does."""
    root = write_tree(
        tmp_path / "sb", {"a.py": "import decimal, glob\nprint('imported', decimal.Decimal(1), glob.escape('x'))\n"}
    )
    assert "imported 1 x" in compile_sandbox(root, pool=pool, user=(65534, 65534)).output


STRAY = textwrap.dedent(
    """
    import os, signal
    read_end, write_end = os.pipe()
    if os.fork() == 0:
        os.setsid()  # out of the validator's process group and session
        if os.fork() == 0:
            os.write(write_end, os.readlink("/proc/self").encode())  # its pid as the host sees it
            while True:
                signal.pause()
        os._exit(0)
    os.close(write_end)
    print("stray", os.read(read_end, 32).decode(), flush=True)
    """
)
"""Top-level code that leaves a double-forked, ``setsid`` child behind and prints its (host) pid."""


def _assert_ended(output: str) -> None:
    """The processes whose pids ``output`` names (``stray N``, ``validator N``) have ended (each is killed here,
    by pid, if it has not)."""
    pids = [int(pid) for pid in re.findall(r"(?:stray|validator) (\d+)", output)]
    assert "stray" in output and pids, f"the stray did not report its pid: {output!r}"
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            procs.append(psutil.Process(pid))
    try:
        eventually(lambda: not [p for p in procs if _running(p)], timeout=1.0)
    except AssertionError:
        pytest.fail(
            f"processes {[p.pid for p in procs if _running(p)]}, started for top-level code, outlived the compile"
        )
    finally:
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.kill()  # psutil checks it is still the same process (its start time)


def _running(proc: psutil.Process) -> bool:
    """Whether ``proc`` still runs (a zombie has ended: only its parent's reaping is left)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.mark.parametrize("ending", ["success", "timeout"])
def test_a_double_forked_setsid_child_of_top_level_code_ends_with_the_compile(
    tmp_path: Path, pool: compiler.CompilePool | None, ending: str
) -> None:
    """A child top-level code double-forks into a session of its own (out of the validator's process group,
    which is all the host used to kill) is gone when ``compile_sandbox`` returns: the validation runs as
    pid 1 of its own PID namespace, so its end ends every process in it, on success and on timeout alike,
    in a fresh validator and in a warm pool's child; so is its control group, where one is made."""
    source = STRAY + ("import time\ntime.sleep(60)\n" if ending == "timeout" else "")
    root = write_tree(tmp_path / "sb", {"a.py": source})
    if ending == "timeout":
        with pytest.raises(CompilationError) as caught:
            compile_sandbox(root, pool=pool, timeout=1.5)
        assert caught.value.timeout
        assert ("a.py", source.count("\n")) in [(Path(f).name, line) for f, line, _ in caught.value.errors]
        output = caught.value.output
    else:
        output = compile_sandbox(root, pool=pool).output
    _assert_ended(output)
    parent = _compile_groups()
    assert parent is None or _mine(parent) == []  # its group too, whichever way it ended


def test_a_validator_that_leaves_its_group_and_parent_is_still_killed_at_its_timeout(
    tmp_path: Path, pool: compiler.CompilePool | None
) -> None:
    """Top-level code that moves the validator itself out of the process group the host kills (``setsid``) and
    clears its parent-death signal, then hangs past the timeout, is still killed, with the stray it started:
    the host kills the validator's children (pid 1 of its namespace) along with its group."""
    hang = textwrap.dedent(
        """
        import ctypes, time
        print("validator", os.readlink("/proc/self"), flush=True)
        try:
            os.setsid()
        except OSError:  # it leads a session of its own already
            pass
        ctypes.CDLL(None).prctl(1, 0, 0, 0, 0)  # PR_SET_PDEATHSIG: none
        time.sleep(60)
        """
    )
    root = write_tree(tmp_path / "sb", {"a.py": STRAY + hang})
    with pytest.raises(CompilationError) as caught:
        compile_sandbox(root, pool=pool, timeout=1.5)
    assert caught.value.timeout
    _assert_ended(caught.value.output)


def test_top_level_code_cannot_kill_the_process_the_host_knows_and_live_on(
    tmp_path: Path, pool: compiler.CompilePool | None
) -> None:
    """Top-level code that clears its parent-death signal, leaves a child in the group it started in, moves
    itself to a session of its own, and has that child kill its whole process group (``kill(0, SIGKILL)``,
    aimed at the validator's process outside the namespace, which the host waits for): the process the host
    knows is not in that group, and the validator (pid 1 of its namespace) is ended with the compile."""
    attack = textwrap.dedent(
        """
        import ctypes, time
        print("validator", os.readlink("/proc/self"), flush=True)
        ctypes.CDLL(None).prctl(1, 0, 0, 0, 0)  # PR_SET_PDEATHSIG: none
        go_read, go_write = os.pipe()
        if os.fork() == 0:  # stays in the process group the validator started in
            os.read(go_read, 1)
            os.kill(0, signal.SIGKILL)
            os._exit(0)
        try:
            os.setsid()
        except OSError:  # it leads a session of its own already
            pass
        os.write(go_write, b"x")
        time.sleep(60)
        """
    )
    root = write_tree(tmp_path / "sb", {"a.py": STRAY + attack})
    with pytest.raises(CompilationError) as caught:
        compile_sandbox(root, pool=pool, timeout=10)
    _assert_ended(caught.value.output)


PROBE = textwrap.dedent(
    """
    import json, os, sys
    payload = next(arg for arg in sys.argv if arg.endswith("payload.json"))
    scratch = os.path.dirname(payload)
    work = os.path.join(scratch, "work")
    def probe(action):
        try:
            action()
        except OSError as exc:
            return type(exc).__name__
        return "done"
    found = {
        "list": probe(lambda: os.listdir(scratch)),
        "read": probe(lambda: open(payload).read()),
        "rename": probe(lambda: os.rename(payload, os.path.join(work, "moved"))),
        "replace": probe(lambda: open(payload, "w").close()),
        "plant": probe(lambda: open(os.path.join(scratch, "planted"), "w").close()),
        "write here": probe(lambda: open("note.txt", "w").close()),
        "in the host's /tmp": os.path.exists("../payload.json"),  # its working folder beside the payload?
    }
    try:
        owner = os.stat(scratch).st_uid
    except OSError as exc:
        owner = type(exc).__name__
    print("probes", json.dumps({"uid": os.getuid(), "scratch owner": owner, **found}))
    """
)
"""Top-level code (run as ``nobody``) trying on its own scratch folder what a process of another
validation, as ``nobody`` too, would try on this one's."""


@as_root
def test_a_user_validation_keeps_its_payload_from_every_other_process_of_uid_nobody(
    tmp_path: Path, pool: compiler.CompilePool | None
) -> None:
    """Every ``isolation="user"`` validation runs as ``nobody``, so whatever ``nobody`` may do to one's scratch
    folder, another's leftover or concurrent processes may do too.  As ``nobody``, top-level code (whose own
    ``/tmp`` hides the host's, and so every scratch folder) can neither list its scratch folder, nor read,
    rename or replace its payload (the sandbox's full source),
    nor plant a file beside it; it can write in its working folder (in its own ``/tmp``, not beside the
    payload in the host's); and a stray it double-forks is gone
    when the compile returns."""
    root = write_tree(tmp_path / "sb", {"a.py": STRAY + PROBE})
    output = compile_sandbox(root, pool=pool, user=(65534, 65534)).output
    _assert_ended(output)
    found = re.search(r"probes (\{.*\})", output)
    assert found, output
    probes = json.loads(found[1])
    # Its own /tmp (a user job's private temporaries) hides the scratch folder outright; where it is seen,
    # the scratch folder is root's, and refuses each of these.
    unreachable = {"PermissionError", "FileNotFoundError"}
    assert (probes.pop("uid"), probes.pop("write here"), probes.pop("in the host's /tmp")) == (65534, "done", False)
    assert probes.pop("scratch owner") in (0, "FileNotFoundError")
    assert set(probes) == {"list", "read", "rename", "replace", "plant"} and set(probes.values()) <= unreachable, probes


def test_a_module_that_forks_and_ends_its_child_compiles(tmp_path: Path, pool: compiler.CompilePool | None) -> None:
    """Top-level code that forks a child which then ends with ``sys.exit`` (so the child unwinds through the
    validator's own code) compiles: only the validator's process writes the verdict, and the child's exit is
    not taken for a forged second verdict."""
    source = "import os, sys\nchild = os.fork()\nif child == 0:\n    sys.exit(0)\nos.waitpid(child, 0)\nX = 1\n"
    root = write_tree(tmp_path / "sb", {"a.py": source})
    info = compile_sandbox(root, pool=pool)
    assert [artifact.module for artifact in info.artifacts] == ["a"]


FORK_LOOP = textwrap.dedent(
    """
    import os, signal
    def pids_line():
        return next(line for line in open("/proc/self/cgroup").read().splitlines() if ":pids:" in line)
    print("validator group", pids_line(), flush=True)
    read_end, write_end = os.pipe()
    started = 0
    for _ in range(200):  # bounded: a fork bomb's first steps, never a real one
        try:
            pid = os.fork()
        except OSError:
            break
        if pid == 0:
            os.write(write_end, f"{os.readlink('/proc/self')} {pids_line()}\\n".encode())
            signal.pause()
            os._exit(0)
        started += 1
    os.close(write_end)
    reports = b""
    while reports.count(b"\\n") < started:
        reports += os.read(read_end, 65536)
    lines = reports.decode().splitlines()
    print("forked", started, flush=True)
    print("children", " ".join(line.split()[0] for line in lines), flush=True)
    print("child groups", sorted({line.split()[1] for line in lines}), flush=True)
    """
)
"""Top-level code that forks up to 200 children (each pauses), and prints its group, its children's (host) pids
and groups, and how many forks succeeded."""


def _compile_groups() -> Path | None:
    """This process's validation groups' parent in the pids hierarchy (cgroup v1), or None: none made here."""
    found = cgroup.support()
    if isinstance(found, str) or found.version != 1:
        return None
    return found.bases["pids"] / f"plugin-host-{cgroup.COMPILE_HOST}"


def _mine(parent: Path) -> list[Path]:
    """The validation groups this process made under ``parent`` (other processes may compile meanwhile)."""
    return sorted(parent.glob(f"compile-{os.getpid()}-*")) if parent.is_dir() else []


needs_groups = pytest.mark.skipif(
    _compile_groups() is None, reason="no cgroup v1 pids hierarchy this process can make groups in (CI runs as root)"
)


@needs_groups
@pytest.mark.parametrize("max_tasks", [None, 16])
def test_a_fork_loop_in_top_level_code_stops_at_the_validations_pids_max(
    tmp_path: Path, pool: compiler.CompilePool | None, max_tasks: int | None
) -> None:
    """Top-level code forking in a loop (as uid 0, which RLIMIT_NPROC does not bind) is stopped at the pids.max
    of the validation's own control group, ``max_tasks`` or 64 (the process the host knows and pid 1 count
    too); the validator and every child are in that group (``plugin-host-compile/compile-<host pid>-...``)
    while it runs; after the compile every child is gone and so is the group."""
    parent = _compile_groups()
    assert parent is not None
    root = write_tree(tmp_path / "sb", {"a.py": FORK_LOOP})
    output = compile_sandbox(root, pool=pool, limits=ResourceLimits(max_tasks=max_tasks)).output
    children = [int(pid) for pid in _found(r"children ([\d ]*)", output).split()]
    _assert_gone(children)
    bound = max_tasks or cgroup.COMPILE_TASKS
    forked = int(_found(r"forked (\d+)", output))
    assert bound - 4 <= forked <= bound - 2, output  # the relay and pid 1 (and a thread of the pool's child)
    assert len(children) == forked
    group = _found(r"validator group \d+:pids:(\S+)", output)
    assert re.fullmatch(rf"/(.+/)?plugin-host-compile/compile-{os.getpid()}-[0-9a-f]+", group), group
    assert _found(r"child groups \['\d+:pids:([^']+)'\]", output) == group
    assert _mine(parent) == []


def _found(pattern: str, output: str) -> str:
    """The first group of ``pattern`` in ``output`` (a failure naming the output if it is not there)."""
    match = re.search(pattern, output)
    assert match is not None, f"{pattern!r} not in {output!r}"
    return match[1]


def _assert_gone(pids: list[int]) -> None:
    """Every process of ``pids`` has ended (one still running is killed here, by pid, and fails the test)."""
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            procs.append(psutil.Process(pid))
    living = [p for p in procs if _running(p)]
    for proc in living:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    assert living == [], "children of top-level code outlived the compile"


@needs_groups
def test_a_validation_group_whose_maker_is_gone_is_removed_by_the_next_compile(tmp_path: Path) -> None:
    """A validation group left by a compiling process that died (a killed host: ``compile-<pid>-...`` of a pid no
    longer running) is killed and removed when the next compile makes its own; no group of this process is left."""
    parent = _compile_groups()
    assert parent is not None
    gone = os.fork()
    if gone == 0:
        os._exit(0)
    os.waitpid(gone, 0)  # reaped: its pid names no process
    left = parent / f"compile-{gone}-0123456789ab"
    left.mkdir(parents=True)
    try:
        compile_sandbox(write_tree(tmp_path / "sb", {"a.py": "X = 1\n"}))
        assert not left.exists()
        assert _mine(parent) == []
    finally:
        with contextlib.suppress(OSError):
            left.rmdir()


def _fake_cgroup_root(tmp_path: Path) -> Path:
    """A cgroup v1 root that looks usable (``memory`` and ``pids`` with this process's groups) but is plain
    folders, where the validation groups' parent is a file in the way in ``pids``."""
    fake = tmp_path / "cgroups"
    own = {line.split(":")[1]: line.split(":")[2] for line in Path("/proc/self/cgroup").read_text().splitlines()}
    for controller in ("memory", "pids"):
        base = fake / controller / own.get(controller, "/").lstrip("/")
        base.mkdir(parents=True)
        (base / "cgroup.procs").write_text("")
    (fake / "pids" / own.get("pids", "/").lstrip("/") / "plugin-host-compile").write_text("in the way")
    return fake


@as_root
def test_where_no_validation_group_can_be_made_a_compile_runs_without_or_fails_clearly(tmp_path: Path) -> None:
    """Under a ``cgroup_root`` with no hierarchy a compile runs as before (its validator in no group of its own),
    unless ``control_groups="required"`` (``ConfigError`` with the reason); under one whose hierarchies look
    usable but where the group cannot be made, the compile fails with ``ConfigError`` naming the validation's
    group, and nothing is left in the other hierarchy."""
    nowhere = tmp_path / "nowhere"
    nowhere.mkdir()
    root = write_tree(tmp_path / "sb", {"a.py": "print(open('/proc/self/cgroup').read())\n"})
    assert "plugin-host-compile" not in compile_sandbox(root, cgroup_root=nowhere).output
    with pytest.raises(ConfigError, match="control_groups is 'required'") as caught:
        compile_sandbox(root, cgroup_root=nowhere, control_groups="required")
    assert caught.value.field == "control_groups"
    fake = _fake_cgroup_root(tmp_path)
    with pytest.raises(ConfigError, match="cannot make the control group of a validation"):
        compile_sandbox(root, cgroup_root=fake)
    assert list(fake.glob("memory/**/compile-*")) == []
    with pytest.raises(ConfigError, match="control_groups must be one of"):
        compile_sandbox(root, control_groups="sometimes")


@needs_groups
def test_a_hosts_compile_bounds_its_validation_by_the_hosts_limits_and_control_groups(
    config: HostConfig, tmp_path: Path
) -> None:
    """``Host.compile_sandbox`` gives its validation a group as its ``HostConfig`` says: ``pids.max`` from the
    host's default ``max_tasks`` (a fork loop stops there, and every child is gone after), and none with
    ``control_groups="off"``."""
    root = write_tree(tmp_path / "sb", {"a.py": FORK_LOOP})
    with Host(config, limits=ResourceLimits(max_tasks=12)) as host:
        output = host.compile_sandbox(root).output
    _assert_gone([int(pid) for pid in _found(r"children ([\d ]*)", output).split()])
    assert 8 <= int(_found(r"forked (\d+)", output)) <= 10, output
    assert "plugin-host-compile/compile-" in _found(r"validator group (\S+)", output)
    quiet = write_tree(tmp_path / "quiet", {"b.py": "print(open('/proc/self/cgroup').read())\n"})
    with Host(config, control_groups="off") as host:
        assert "plugin-host-compile" not in host.compile_sandbox(quiet).output


@needs_groups
def test_a_validations_group_holds_the_sandboxs_memory_limit_for_all_its_processes(
    tmp_path: Path, pool: compiler.CompilePool | None
) -> None:
    """With ``max_memory_mb``, the validation's group limits all its processes together (a fork each under its
    own rlimit no longer multiplies it) to ``max_memory_mb`` plus 64 MiB: top-level code reads it from its
    group."""
    source = textwrap.dedent(
        """
        line = next(l for l in open("/proc/self/cgroup").read().splitlines() if ":memory:" in l)
        path = "/sys/fs/cgroup/memory" + line.split(":", 2)[2] + "/memory.limit_in_bytes"
        print("group memory", open(path).read().strip())
        """
    )
    root = write_tree(tmp_path / "sb", {"a.py": source})
    output = compile_sandbox(root, pool=pool, limits=ResourceLimits(max_memory_mb=100)).output
    assert int(_found(r"group memory (\d+)", output)) == (100 + cgroup.COMPILE_MEMORY_SLACK_MB) * 2**20
