"""The strict scan of ``restricted`` (issue #15): the red team's static bypasses and the dynamic forms.

Each attack is refused with its line under ``restricted`` (``scan_source(..., strict=True)``) and adds
nothing under ``standard`` (the plain scan); legitimate code stays clean.  The scan is defence in
depth: the runtime audit is the boundary (``tests/test_audit_log.py`` runs a plugin that still slips
past the scan).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from plugin_host import Host, compiler
from plugin_host.compiler import compile_sandbox, scan_source
from plugin_host.errors import CompilationError, SecurityViolationError

# (id, code, lines of the findings (counted in ``code``), text every finding's message contains)
ATTACKS = [
    # the eleven bypasses of SECURITY_REVIEW.md F5
    ("import-module-computed", "import importlib\nimportlib.import_module('sub' + 'process')", [2], "computed"),
    ("getattr-builtins", "import builtins\ngetattr(builtins, 'ev' + 'al')", [1, 2], "builtins"),
    ("alias-of-os-system", "import os\nsystem = os.system\nsystem('true')", [2], "os.system without calling"),
    ("posix-spawnp", "import os\nos.posix_spawnp('ls', ['ls'], {})", [2], "os.posix_spawnp()"),
    ("path-in-a-variable", "target = '/etc/x'\nopen(target, 'w')", [2], "computed at run time"),
    ("path-object-in-a-variable", "from pathlib import Path\np = Path('/tmp/x')\np.write_text('x')", [3], "write_text"),
    ("os-open-for-writing", "import os\nos.open('/tmp/x', os.O_WRONLY | os.O_CREAT)", [2], "'/tmp/x'"),
    ("asyncio-subprocess", "import asyncio\nasyncio.create_subprocess_exec('ls')", [2], "starts processes"),
    ("process-pool", "from concurrent.futures import ProcessPoolExecutor\nProcessPoolExecutor()", [2], "starts"),
    ("urlopen", "import urllib.request\nurllib.request.urlopen('http://x')", [1], "network"),
    ("private-runtime-module", "from actors._process.hardening import _libc", [1], "private to the host runtime"),
    # the dynamic forms of issue #15 and their near relatives
    ("import-module-variable", "import importlib\nimportlib.import_module(name)", [2], "computed"),
    ("dunder-import-variable", "__import__(name)", [1], "__import__()"),
    ("getattr-os-computed", "import os\ngetattr(os, name)", [2], "'os'"),
    ("vars-of-a-module", "import os\nvars(os)['system']", [2], "vars()"),
    ("module-dict", "import os\nos.__dict__['system']", [2], "os.__dict__"),
    ("dunder-builtins", "__builtins__['eval']", [1], "__builtins__"),
    ("globals-store", "globals()['x'] = 1", [1], "globals()"),
    ("globals-update", "globals().update(x=1)", [1], "globals()"),
    ("vars-delete", "del vars()['x']", [1], "vars()"),
    ("compile", "compile('1', 'f', 'eval')", [1], "compile()"),
    ("compile-by-reference", "run = compile", [1], "compile without calling"),
    ("eval-passed-as-value", "list(map(eval, items))", [1], "eval without calling"),
    ("sys-modules", "import sys\nsys.modules['os']", [2], "sys.modules"),
    ("open-by-reference", "import io\nopener = io.open", [2], "io.open without calling"),
    ("path-writer-by-reference", "import os\nMAKE = os.mkdir\nMAKE('/tmp/x')", [2], "os.mkdir without calling"),
    ("path-writer-in-a-table", "import shutil\nops = {'rm': shutil.rmtree}", [2], "shutil.rmtree without calling"),
    ("posix-mkdir-outside", "import posix\nposix.mkdir('/etc/x')", [2], "'/etc/x'"),
    ("posix-writer-by-reference", "import posix\nMAKE = posix.mkdir", [2], "posix.mkdir without calling"),
    ("setxattr-outside", "import os\nos.setxattr('/etc/x', 'user.a', b'1')", [2], "'/etc/x'"),
    ("computed-mode", "open('/etc/x', mode)", [1], "open()"),
    ("shutil-copy-target", "import shutil\nshutil.copy('a', destination)", [2], "shutil.copy()"),
    ("os-remove-outside", "import os\nos.remove('../x')", [2], "'../x'"),
    ("loop-subprocess", "loop.subprocess_exec(factory, 'ls')", [1], "subprocess_exec"),
    ("private-runtime-attribute", "import actors\nactors._audit.Auditor", [2], "private"),
    ("from-runtime-import-private", "from actors import _audit", [1], "'actors._audit'"),
    ("import-module-private-runtime", "import importlib\nimportlib.import_module('actors._audit')", [2], "private"),
    # the review of the strict scan (session 5): names reached through another name
    ("dunder-call-of-system", "import os\nos.system.__call__('x')", [2], "os.system.__call__()"),
    ("dunder-call-of-eval", "eval.__call__('1')", [1], "eval.__call__()"),
    ("os-through-shutil", "import shutil\nshutil.os.system('x')", [2], "shell command"),
    ("os-through-os-path", "import os\nos.path.os.system('x')", [2], "shell command"),
    ("getattribute-literal", "import os\nos.__getattribute__('system')('x')", [2], "os.system"),
    ("object-getattribute", "import os\nobject.__getattribute__(os, 'system')", [2], "os.system"),
    ("getattr-literal-on-os", "import os\ngetattr(os, 'system')('x')", [2], "getattr() for os.system"),
    ("getattr-starred", "import os\ngetattr(*(os, name))", [2], "cannot read"),
    ("vars-starred", "import os\nvars(*[os])", [2], "cannot read"),
    ("globals-builtins-read", "globals()['__builtins__']", [1], "globals()"),
    ("globals-computed-get", "globals().get(name)", [1], "globals()"),
    ("function-globals", "def f():\n    pass\nf.__globals__['os']", [3], "__globals__"),
    ("subclasses-walk", "().__class__.__bases__[0].__subclasses__()", [1], "__subclasses__"),
    ("frame-globals", "import sys\nsys.exc_info()[2].tb_frame.f_globals", [2, 2], "introspection"),
    ("shadow-only-in-lambda", "(lambda exec: 0)\nexec('x')", [2], "exec()"),
    ("path-unlink-outside", "from pathlib import Path\nPath('/etc/x').unlink()", [2], "'/etc/x'"),
    ("path-name-unlink", "from pathlib import Path\np = Path(where)\np.touch()", [3], ".touch()"),
    ("path-name-rename", "from pathlib import Path\np = Path('a') / 'b'\np.rename('/etc/x')", [3, 3], ".rename()"),
    ("os-removedirs", "import os\nos.removedirs('/x/y')", [2], "os.removedirs()"),
    ("os-chown", "import os\nos.chown(target, 0, 0)", [2], "os.chown()"),
    ("os-utime", "import os\nos.utime('/etc/passwd')", [2], "os.utime()"),
    ("io-fileio", "import io\nio.FileIO('/x', 'w')", [2], "io.FileIO()"),
    ("codecs-open", "import codecs\ncodecs.open(target, 'w')", [2], "codecs.open()"),
]

CLEAN = [
    ("literal-getattr-on-an-object", "getattr(obj, 'name')\ngetattr(self, name)\ngetattr(Thing(), key)"),
    ("import-module-literal", "import importlib\nimportlib.import_module('json')"),
    (
        "relative-writes",
        "from pathlib import Path\nimport os, shutil\nopen('data/out.txt', 'w')\nPath('data/x').write_text('x')\n"
        "(Path('data') / 'y').write_bytes(b'')\nos.close(os.open('data/z', os.O_WRONLY | os.O_CREAT))\n"
        "shutil.copy(source, 'data/copy')",
    ),
    ("reads", "import os\nopen(path)\nopen(path, 'rb')\nos.open(path, os.O_RDONLY)\nPath(path).open()"),
    ("own-compile", "def compile(x):\n    return x\ncompile('a')\nrun = compile"),
    ("regex-compile", "import re\nre.compile('a+')"),
    ("read-globals", "x = globals()['X']\nobj.globals = 1"),
    ("zipfile-open-member", "import zipfile\nzipfile.ZipFile(path).open('name')"),
    (
        "public-runtime-api",
        "from actors import ChildSpec, Plugin, Supervisor\nimport plugin_host\nplugin_host.__version__",
    ),
    ("modules-passed-around", "import json\ndumps = json.dumps\nhandler(json)"),
    ("tilde-is-a-folder-name-to-open", "open('~x', 'w')\nopen('~/notes.txt', 'a')"),
    ("read-only-flags-under-an-alias", "import os as o\no.open(path, o.O_RDONLY | o.O_CLOEXEC)"),
    ("other-objects-rename-and-replace", "text.replace('a', 'b')\nframe.rename(columns={})"),
    ("parameter-shadows-a-builtin", "def f(open, exec):\n    return open(1), exec(2)"),
    ("os-path-helpers", "import os\nos.path.join('a', 'b')\nos.getcwd()\nos.path.exists(p)"),
]


@pytest.mark.parametrize(("code", "lines", "named"), [a[1:] for a in ATTACKS], ids=[a[0] for a in ATTACKS])
def test_restricted_scan_refuses_each_attack_at_its_line(code: str, lines: list[int], named: str) -> None:
    """Each bypass form is a strict finding on its line(s), with a message naming what it found."""
    findings = scan_source("X = 1\n" + code + "\n", "/sb/m.py", strict=True)
    assert [line - 1 for _, line, _ in findings] == lines, findings
    assert any(named in message for _, _, message in findings), findings


@pytest.mark.parametrize(
    "code",
    [a[1] for a in ATTACKS if a[0] not in ("dunder-import-variable", "compile", "shadow-only-in-lambda")],
    ids=lambda c: c[:30],
)
def test_standard_scan_sees_nothing_new(code: str) -> None:
    """The new forms are refused under ``restricted`` only: the plain scan (``standard``) finds nothing.

    (``__import__`` and ``compile`` calls were findings before #15 and stay so; an ``exec`` call is one
    wherever a parameter of the same name elsewhere does not shadow it, under both.)"""
    assert scan_source(code, "m.py") == []


@pytest.mark.parametrize("code", [c for _, c in CLEAN], ids=[i for i, _ in CLEAN])
def test_restricted_scan_leaves_legitimate_code_alone(code: str) -> None:
    """Literal getattr on objects, literal imports, relative writes, reads and own names pass."""
    assert scan_source(code, "m.py", strict=True) == []


def test_plugins_compiled_under_restricted_in_the_suite_pass_the_strict_scan() -> None:
    """The sly plugin (audited at run time under restricted, tests/test_audit_log.py) passes the scan."""
    sly = Path(__file__).parent / "plugins" / "sly" / "sly.py"
    assert scan_source(sly.read_text(), str(sly), strict=True) == []


def test_a_restricted_cache_hit_runs_the_strict_scan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache entry recording restricted code as clean (planted with the scan switched off) is a hit,
    and the strict scan still refuses a dynamic form, with its line."""
    root = tmp_path / "sb"
    root.mkdir()
    (root / "a.py").write_text("import importlib\n\nmod = importlib.import_module(NAME)\n")
    cache = tmp_path / "state" / "compile-cache"
    monkeypatch.setattr(compiler, "_security", lambda job: [])
    assert compile_sandbox(root, cache_dir=cache, security_profile="restricted", validate=False).cached is False
    monkeypatch.undo()
    with pytest.raises(SecurityViolationError) as caught:
        compile_sandbox(root, cache_dir=cache, security_profile="restricted", validate=False)
    assert [(Path(f).name, line) for f, line, _ in caught.value.errors] == [("a.py", 3)]
    assert (
        compile_sandbox(root, cache_dir=cache, security_profile="standard", validate=False).output.count(
            "security warning"
        )
        == 0
    )


_DYNAMIC_PLUGIN = textwrap.dedent("""\
    import importlib

    from actors import ChildSpec, Plugin, Supervisor


    class Loader(Plugin):
        def handle_call(self, request, state):
            return importlib.import_module(request).__name__, state


    class Root(Supervisor):
        children = [ChildSpec("loader", Loader)]
    """)


def test_create_sandbox_refuses_a_dynamic_import_under_restricted_only(host: Host, tmp_path: Path) -> None:
    """Through the public API: restricted refuses ``importlib.import_module(request)`` naming the file
    and line 8; the same folder under standard starts and runs."""
    folder = tmp_path / "dyn"
    folder.mkdir()
    (folder / "loader.py").write_text(_DYNAMIC_PLUGIN)
    with pytest.raises(SecurityViolationError) as caught:
        host.create_sandbox("d", "loader:Root", sandbox_path=str(folder), security_profile="restricted")
    assert [(Path(f).name, line) for f, line, _ in caught.value.errors] == [("loader.py", 8)]
    assert "loader.py:8" in str(caught.value)
    info = host.create_sandbox("d", "loader:Root", sandbox_path=str(folder), security_profile="standard")
    assert info.status == "running"
    assert host.call("d", "loader", "json") == "json"


@pytest.mark.parametrize(
    "source",
    ["import os\nx = os" + ".a" * 1200 + "\n", "x = " + " + ".join(["'a'"] * 3000) + "\n"],
    ids=["attribute-chain", "string-sum"],
)
def test_code_nested_too_deeply_to_scan_is_a_compilation_error(source: str) -> None:
    """Valid Python nested past what the scan can follow is refused as a ``CompilationError`` under
    ``restricted`` (it raised a bare ``RecursionError``), and never passes unscanned."""
    with pytest.raises(CompilationError, match="nested too deeply to scan"):
        scan_source(source, "deep.py", strict=True)
