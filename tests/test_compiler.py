"""Tests of plugin_host.compiler: isolation, errors, timeouts, cache, dependencies, security scan."""

from __future__ import annotations

import hashlib
import os
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from plugin_host import compiler
from plugin_host.codeload import read_sandbox_folder
from plugin_host.compiler import compile_file, compile_sandbox, compile_source, dependents, scan_source
from plugin_host.errors import CompilationError, CompilationTimeoutError, ConfigError, SecurityViolationError


def write_tree(root: Path, files: dict[str, str]) -> Path:
    """Write ``files`` (relative path -> source, dedented) under ``root`` and return it."""
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source), encoding="utf-8")
    return root


def live_processes_naming(marker: str) -> list[psutil.Process]:
    """Live, non-zombie processes whose command line contains ``marker``."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and marker in " ".join(proc.info["cmdline"] or ()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def messages(errors: list[tuple[str, int, str]]) -> str:
    """All messages of an error list, one string, for substring checks."""
    return "\n".join(message for _, _, message in errors)


# -- compilation and validation --------------------------------------------------------------


def test_compile_sandbox_returns_an_artifact_per_module_with_its_checksum(tmp_path: Path) -> None:
    """Each module becomes an Artifact with its dotted name, absolute path, sha256 and source."""
    root = write_tree(tmp_path / "sb", {"a.py": "import pkg.b\n", "pkg/__init__.py": "", "pkg/b.py": "X = 1\n"})
    info = compile_sandbox(root)
    assert [a.module for a in info.artifacts] == ["a", "pkg", "pkg.b"]
    b = info.artifacts[2]
    assert b.path == str(root / "pkg" / "b.py")
    assert b.source == "X = 1\n"
    assert b.checksum == hashlib.sha256(b"X = 1\n").hexdigest()
    assert info.cached is False and info.compilation_time > 0
    assert "validated 3 of 3" in info.output


def test_syntax_errors_are_listed_for_every_file(tmp_path: Path) -> None:
    """Every broken file is reported at once, each with its line, and nothing is imported."""
    files = {"good.py": "X = 1\n", "bad1.py": "x = 1\ndef f(:\n", "bad2.py": "\n\nif True\n"}
    root = write_tree(tmp_path / "sb", files)
    with pytest.raises(CompilationError) as caught:
        compile_sandbox(root)
    found = sorted((Path(f).name, line) for f, line, _ in caught.value.errors)
    assert found == [("bad1.py", 2), ("bad2.py", 3)]


def test_import_time_exception_is_reported_with_its_file_and_line(tmp_path: Path) -> None:
    """An exception raised at import names the module file and line that raised it."""
    root = write_tree(
        tmp_path / "sb",
        {
            "main.py": "import helper\n",
            "helper.py": """\
            VALUE = 1


            raise RuntimeError("broken helper")
            """,
        },
    )
    with pytest.raises(CompilationError) as caught:
        compile_sandbox(root)
    assert caught.value.errors == [(str(root / "helper.py"), 4, "RuntimeError: broken helper")]


def test_missing_third_party_import_is_reported_at_the_import_line(tmp_path: Path) -> None:
    """An ImportError for a package that is not installed points at the import statement."""
    root = write_tree(tmp_path / "sb", {"m.py": "import json\nimport no_such_package_xyz\n"})
    with pytest.raises(CompilationError) as caught:
        compile_sandbox(root)
    ((file, line, message),) = caught.value.errors
    assert (file, line) == (str(root / "m.py"), 2) and "no_such_package_xyz" in message


def test_import_time_infinite_loop_times_out_and_leaves_no_process(tmp_path: Path) -> None:
    """A top-level endless loop is killed at the timeout, with everything it started."""
    marker = str(tmp_path)
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
    start = time.monotonic()
    with pytest.raises(CompilationTimeoutError) as caught:
        compile_sandbox(root, timeout=1.0, security_profile="permissive")
    assert time.monotonic() - start < 1.0 + 2.0
    assert isinstance(caught.value, TimeoutError)
    ((file, line, message),) = caught.value.errors
    assert file == str(root / "spin.py") and line in (3, 4) and "within 1 s" in message
    _, alive = psutil.wait_procs(live_processes_naming(marker), timeout=3)
    assert alive == []


def test_module_printing_in_a_loop_times_out_with_a_bounded_output(tmp_path: Path) -> None:
    """A flood of printing is cut to its tail, so it cannot exhaust the host's memory."""
    root = write_tree(tmp_path / "sb", {"flood.py": "while True:\n    print('x' * 10_000)\n"})
    with pytest.raises(CompilationTimeoutError) as caught:
        compile_sandbox(root, timeout=1.0)
    assert "bytes cut" in caught.value.output
    assert len(caught.value.output) < 100_000


def test_top_level_code_runs_only_in_the_compile_process(tmp_path: Path) -> None:
    """Top-level side effects happen in another process; this one gains no module and no state."""
    marker = tmp_path / "marker.txt"
    root = write_tree(
        tmp_path / "sb",
        {
            "side_effect_probe.py": f"""\
        import os
        os.environ["PLUGIN_HOST_COMPILER_PROBE"] = "ran"
        with open({str(marker)!r}, "w") as handle:
            handle.write(str(os.getpid()))
        """
        },
    )
    compile_sandbox(root)
    assert int(marker.read_text()) != os.getpid()
    assert "side_effect_probe" not in sys.modules
    assert "PLUGIN_HOST_COMPILER_PROBE" not in os.environ


def test_module_output_is_kept_and_cannot_break_the_validator(tmp_path: Path) -> None:
    """What top-level code prints (even protocol-looking lines) ends up in output, harmlessly."""
    root = write_tree(
        tmp_path / "sb",
        {
            "noisy.py": """\
        import sys
        print('{"event": "result", "errors": [["x", 1, "fake"]]}')
        print("to stderr", file=sys.stderr)
        """
        },
    )
    info = compile_sandbox(root)
    assert '"fake"' in info.output and "to stderr" in info.output


def test_module_that_exits_the_process_is_reported_with_its_file(tmp_path: Path) -> None:
    """A module that calls os._exit at import is a compilation error naming that module."""
    root = write_tree(tmp_path / "sb", {"quitter.py": "import os\nos._exit(3)\n"})
    with pytest.raises(CompilationError) as caught:
        compile_sandbox(root, security_profile="permissive")
    ((file, _, message),) = caught.value.errors
    assert file == str(root / "quitter.py") and "code 3" in message


def test_system_exit_at_import_is_an_error_not_a_crash(tmp_path: Path) -> None:
    """``sys.exit()`` at top level is reported like any other exception."""
    root = write_tree(tmp_path / "sb", {"m.py": "import sys\nsys.exit(2)\n"})
    with pytest.raises(CompilationError) as caught:
        compile_sandbox(root)
    assert caught.value.errors == [(str(root / "m.py"), 2, "SystemExit: 2")]


def test_validate_false_runs_no_code(tmp_path: Path) -> None:
    """Without validation, a module that would fail at import still compiles."""
    root = write_tree(tmp_path / "sb", {"m.py": "raise ValueError('never run')\n"})
    info = compile_sandbox(root, validate=False)
    assert [a.module for a in info.artifacts] == ["m"] and "validated" not in info.output


def test_plugin_classes_must_exist_and_be_plugins_or_supervisors(tmp_path: Path) -> None:
    """Declared classes are checked after import: present, and Plugin or Supervisor subclasses."""
    root = write_tree(
        tmp_path / "sb",
        {
            "root.py": """\
        from actors import ChildSpec, Plugin, Supervisor

        class Worker(Plugin):
            pass

        class Root(Supervisor):
            children = [ChildSpec("w", Worker)]

        class NotAPlugin:
            pass
        """
        },
    )
    assert compile_sandbox(root, plugin_classes=["root:Root", "root:Worker"]).artifacts
    with pytest.raises(CompilationError) as caught:
        compile_sandbox(root, plugin_classes=["root:NotAPlugin", "root:Missing"])
    (file1, line1, message1), (_, _, message2) = caught.value.errors
    assert (file1, line1) == (str(root / "root.py"), 9) and "not a subclass" in message1
    assert "root:Missing not found" in message2


def test_malformed_plugin_class_name_is_rejected(tmp_path: Path) -> None:
    """A plugin class name must read ``module:Class``."""
    root = write_tree(tmp_path / "sb", {"m.py": "X = 1\n"})
    with pytest.raises(CompilationError):
        compile_sandbox(root, plugin_classes=["m.Root"])


def test_invalid_security_profile_or_timeout_raises_config_error(tmp_path: Path) -> None:
    """Unknown profiles and non-positive timeouts are configuration errors naming the field."""
    root = write_tree(tmp_path / "sb", {"m.py": "X = 1\n"})
    with pytest.raises(ConfigError) as caught:
        compile_sandbox(root, security_profile="lenient")
    assert caught.value.field == "security_profile"
    with pytest.raises(ConfigError):
        compile_source("m", "X = 1\n", timeout=0)


def test_non_utf8_source_is_a_compilation_error(tmp_path: Path) -> None:
    """Latin-1 bytes in a file or given as source are reported, not decoded wrongly."""
    root = tmp_path / "sb"
    root.mkdir()
    (root / "m.py").write_bytes(b"NAME = '\xe9t\xe9'\n")
    with pytest.raises(CompilationError) as caught:
        compile_sandbox(root)
    assert caught.value.errors[0][0].endswith("m.py")
    with pytest.raises(CompilationError):
        compile_source("m", b"NAME = '\xe9'\n")


def test_missing_folder_is_a_compilation_error(tmp_path: Path) -> None:
    """Compiling a folder that does not exist raises CompilationError, as the Host API says."""
    with pytest.raises(CompilationError):
        compile_sandbox(tmp_path / "nope")


def test_compile_source_checks_the_module_and_every_module_that_imports_it(tmp_path: Path) -> None:
    """New source for one module is validated against the sandbox's other modules."""
    root = write_tree(
        tmp_path / "sb",
        {"lib.py": "def helper():\n    return 1\n", "user.py": "from lib import helper\nVALUE = helper()\n"},
    )
    table = read_sandbox_folder(root)
    info = compile_source("lib", "def helper():\n    return 2\n", sandbox_sources=table)
    assert [(a.module, a.path) for a in info.artifacts] == [("lib", str(root / "lib.py"))]
    with pytest.raises(CompilationError) as caught:
        compile_source("lib", "def renamed():\n    return 2\n", sandbox_sources=table)
    ((file, line, message),) = caught.value.errors
    assert (file, line) == (str(root / "user.py"), 1) and "helper" in message


def test_compile_file_compiles_one_file_with_its_folder_importable(tmp_path: Path) -> None:
    """A file inside a package gets its dotted name and may import its siblings."""
    root = write_tree(
        tmp_path / "sb",
        {"pkg/__init__.py": "", "pkg/base.py": "K = 3\n", "pkg/user.py": "from .base import K\nassert K == 3\n"},
    )
    info = compile_file(root / "pkg" / "user.py")
    assert [a.module for a in info.artifacts] == ["pkg.user"]
    with pytest.raises(CompilationError):
        compile_file(root / "pkg" / "missing.py")


# -- cache ---------------------------------------------------------------------------------


def test_unchanged_tree_is_served_from_the_cache_without_a_subprocess(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second compile of the same tree is a fast cache hit with the same artifacts and output."""
    root = write_tree(tmp_path / "sb", {"a.py": "import b\n", "b.py": "import os\nos.system('true')\n"})
    cache = tmp_path / "state" / "compile-cache"
    first = compile_sandbox(root, cache_dir=cache)
    monkeypatch.setattr(compiler, "run_validator", lambda *a, **k: pytest.fail("a cache hit started a process"))
    second = compile_sandbox(root, cache_dir=cache)
    assert (first.cached, second.cached) == (False, True)
    assert second.compilation_time < first.compilation_time
    assert second.artifacts == first.artifacts and second.output == first.output
    assert "security warning" in second.output


def test_editing_one_file_revalidates_it_and_its_importers_only(tmp_path: Path) -> None:
    """After an edit, only the changed module and the modules importing it are imported again."""
    root = write_tree(tmp_path / "sb", {"a.py": "import b\n", "b.py": "X = 1\n", "c.py": "Y = 1\n"})
    cache = tmp_path / "state"
    compile_sandbox(root, cache_dir=cache)
    (root / "b.py").write_text("X = 2\n")
    info = compile_sandbox(root, cache_dir=cache)
    assert info.cached is False and "validated 2 of 3" in info.output
    (root / "b.py").write_text("raise KeyError('x')\n")
    with pytest.raises(CompilationError):
        compile_sandbox(root, cache_dir=cache)
    (root / "b.py").write_text("X = 2\n")
    assert compile_sandbox(root, cache_dir=cache).cached is True


def test_a_cache_entry_never_skips_the_security_scan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache entry saying restricted code is clean (planted by whoever can write the cache, here made by
    compiling once with the scan switched off) is a cache hit, and the scan still refuses the code."""
    root = write_tree(tmp_path / "sb", {"a.py": "import subprocess\n"})
    cache = tmp_path / "state" / "compile-cache"
    monkeypatch.setattr(compiler, "_security", lambda job: [])
    assert compile_sandbox(root, cache_dir=cache, security_profile="restricted").cached is False
    monkeypatch.undo()
    with pytest.raises(SecurityViolationError, match="subprocess"):
        compile_sandbox(root, cache_dir=cache, security_profile="restricted")


def test_corrupt_cache_files_are_ignored(tmp_path: Path) -> None:
    """Garbage in every cache file means a recompile, never a crash."""
    root = write_tree(tmp_path / "sb", {"a.py": "X = 1\n"})
    cache = tmp_path / "state"
    compile_sandbox(root, cache_dir=cache)
    for entry in cache.iterdir():
        entry.write_bytes(b"\x00{not json")
    info = compile_sandbox(root, cache_dir=cache)
    assert info.cached is False and "validated 1 of 1" in info.output
    assert compile_sandbox(root, cache_dir=cache).cached is True


def test_compiling_never_writes_into_the_source_tree(tmp_path: Path) -> None:
    """The source folder is byte-for-byte untouched, and a cache inside it is refused."""
    root = write_tree(tmp_path / "sb", {"a.py": "import b\nopen('relative.txt', 'w').write('x')\n", "b.py": ""})
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    compile_sandbox(root, cache_dir=tmp_path / "state")
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    with pytest.raises(ConfigError) as caught:
        compile_sandbox(root, cache_dir=root / ".cache")
    assert caught.value.field == "cache_dir"


# -- dependencies --------------------------------------------------------------------------


def test_dependents_lists_the_module_then_its_importers_in_dependency_order(tmp_path: Path) -> None:
    """Direct, transitive, from-imports and relative imports count; unrelated modules do not."""
    root = write_tree(
        tmp_path / "sb",
        {
            "base.py": "",
            "mid.py": "from base import thing\n",
            "top.py": "import mid\nimport base\n",
            "pkg/__init__.py": "from .inner import *\n",
            "pkg/inner.py": "from .. import x\nfrom mid import y\n",
            "other.py": "import json\nbase_name = 'base'\n",
        },
    )
    table = read_sandbox_folder(root)
    assert dependents(table, "base") == ["base", "mid", "pkg.inner", "top", "pkg"]
    assert dependents(table, "other") == ["other"]
    assert dependents(table, "gone") == ["gone"]


def test_dependents_survives_import_cycles(tmp_path: Path) -> None:
    """Two modules importing each other are both listed, the asked one first."""
    root = write_tree(tmp_path / "sb", {"a.py": "import b\n", "b.py": "import a\n", "c.py": "import b\n"})
    assert dependents(read_sandbox_folder(root), "a") == ["a", "b", "c"]


# -- security scan -------------------------------------------------------------------------

FORBIDDEN = [
    ("import subprocess", "'subprocess'"),
    ("import socket as s", "'socket'"),
    ("from ctypes import CDLL", "'ctypes'"),
    ("import multiprocessing.pool", "'multiprocessing.pool'"),
    ("import os\nos.system('ls')", "os.system()"),
    ("import os as o\no.popen('ls')", "os.popen()"),
    ("from os import execv\nexecv('/bin/ls', [])", "os.execv()"),
    ("import os\nos.spawnl(os.P_WAIT, '/bin/ls')", "os.spawnl()"),
    ("import os\nos.fork()", "os.fork()"),
    ("eval('1 + 1')", "eval()"),
    ("exec('x = 1')", "exec()"),
    ("compile('1', 'f', 'eval')", "compile()"),
    ("__import__('json')", "__import__()"),
    ("open('/etc/passwd', 'w')", "'/etc/passwd'"),
    ("open('../../escape.txt', mode='a')", "'../../escape.txt'"),
    ("import importlib\nimportlib.import_module('socket')", "'socket'"),
    ("from pathlib import Path\nPath('/tmp/out').write_text('x')", "'/tmp/out'"),
]


@pytest.mark.parametrize(("code", "named"), FORBIDDEN, ids=[c.splitlines()[-1] for c, _ in FORBIDDEN])
def test_scan_finds_each_forbidden_construct_at_its_line(code: str, named: str) -> None:
    """Each construct the restricted profile forbids is found, on the line where it is."""
    source = "X = 1\n" + code + "\n"
    findings = scan_source(source, "/sb/m.py")
    assert len(findings) == 1, findings
    file, line, message = findings[0]
    assert (file, line) == ("/sb/m.py", 1 + len(code.splitlines()))
    assert named in message


def test_restricted_profile_rejects_every_finding_with_file_and_line(tmp_path: Path) -> None:
    """Under ``restricted`` the compile fails before any code runs, listing all findings."""
    marker = tmp_path / "ran.txt"
    root = write_tree(
        tmp_path / "sb",
        {
            "a.py": f"open({str(marker)!r}, 'w')\nimport subprocess\n",
            "b.py": "X = 1\n\nY = eval('X')\n",
        },
    )
    with pytest.raises(SecurityViolationError) as caught:
        compile_sandbox(root, security_profile="restricted")
    assert [(Path(f).name, line) for f, line, _ in caught.value.errors] == [("a.py", 1), ("a.py", 2), ("b.py", 3)]
    assert isinstance(caught.value, CompilationError) and not marker.exists()


def test_standard_profile_reports_findings_as_warnings_in_output(tmp_path: Path) -> None:
    """Under ``standard`` the same findings are warning lines and the compile succeeds."""
    root = write_tree(tmp_path / "sb", {"a.py": "import socket\n"})
    info = compile_sandbox(root, security_profile="standard")
    assert f"{root / 'a.py'}:1: security warning: imports 'socket'" in info.output


def test_permissive_profile_does_not_scan(tmp_path: Path) -> None:
    """Under ``permissive`` nothing is reported."""
    root = write_tree(tmp_path / "sb", {"a.py": "import socket\nX = eval('1')\n"})
    info = compile_sandbox(root, security_profile="permissive")
    assert "security" not in info.output.replace("profile permissive", "")


def test_scan_has_no_false_positives_on_names_strings_and_other_objects() -> None:
    """Words inside names, strings and comments, other objects' methods and safe calls pass."""
    source = textwrap.dedent("""\
        import re
        from mypkg import socket_helpers
        from . import subprocess_tools
        subprocess_count = 0
        evaluate = "eval(x) exec os.system('rm') import subprocess"
        # import subprocess; os.system("x")
        class Shell:
            def system(self, cmd): return cmd
            def exec(self): return None
        Shell().system("ls")
        Shell().exec()
        pattern = re.compile("a+")
        def compile(x): return x
        compile("shadowed builtin")
        open("data/out.txt", "w")
        open("/etc/hosts")
        open("notes...txt", "a")
        """)
    assert scan_source(source, "m.py") == []


def test_scan_of_invalid_source_is_a_compilation_error() -> None:
    """The scan needs an AST; broken source is reported as such."""
    with pytest.raises(CompilationError):
        scan_source("def (:", "m.py")


@pytest.mark.parametrize("pool", [False, True], ids=["fresh", "warm-pool"])
def test_top_level_code_in_the_validator_runs_under_the_sandboxs_audit(tmp_path: Path, pool: bool) -> None:
    """The validator imports a module's top-level code under the sandbox's profile (a fresh validator
    and one forked from the warm pool alike): ``restricted`` refuses a read outside the sandbox that
    the static scan lets through, failing the compile at its line; ``standard`` lets it run and lists
    it in the output; ``permissive`` records nothing."""
    secret = tmp_path / "secret.txt"
    secret.write_text("host data")
    root = write_tree(tmp_path / "sb", {"a.py": f"import pathlib\nDATA = pathlib.Path({str(secret)!r}).read_text()\n"})
    warm = compiler.CompilePool(label=str(tmp_path)) if pool else None
    try:
        with pytest.raises(CompilationError) as caught:
            compile_sandbox(root, security_profile="restricted", pool=warm)
        assert ("a.py", 2) in [(Path(f).name, line) for f, line, _ in caught.value.errors]
        assert "PermissionError" in str(caught.value)
        standard = compile_sandbox(root, security_profile="standard", pool=warm)
        assert f"open {secret}" in standard.output
        permissive = compile_sandbox(root, security_profile="permissive", pool=warm)
        assert "recorded by the runtime audit" not in permissive.output
    finally:
        if warm is not None:
            warm.close()
