"""``plugin_host.codeload``: reading sandbox folders, syntax checks, and the per-sandbox finder.

Finders are installed only in child interpreters, so this process's ``sys.modules`` and
``sys.meta_path`` stay untouched.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from plugin_host import codeload
from plugin_host.codeload import CodeTable, ModuleSource, SandboxFinder, check_syntax, read_sandbox_folder
from plugin_host.errors import CompilationError, SandboxStartError


def write(root: Path, files: dict[str, str]) -> Path:
    """Create ``files`` (relative path -> source) under ``root``; return ``root``."""
    for relative, source in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source), encoding="utf-8")
    return root


def run_in_child(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a fresh interpreter whose working folder is ``cwd``."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=60, cwd=cwd
    )


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """An empty working folder for child interpreters, so sandbox files are not on their path."""
    path = tmp_path / "cwd"
    path.mkdir()
    return path


def test_read_sandbox_folder_finds_top_level_modules_and_packages(tmp_path: Path) -> None:
    """Top-level ``.py`` files, ``pkg/__init__.py`` and ``pkg/sub.py`` become modules by plain name."""
    root = write(
        tmp_path / "sb",
        {
            "root.py": "X = 1\n",
            "pkg/__init__.py": "",
            "pkg/sub.py": "Y = 2\n",
            "pkg/inner/__init__.py": "",
            "pkg/inner/leaf.py": "Z = 3\n",
        },
    )
    table = read_sandbox_folder(root)
    assert set(table.modules) == {"root", "pkg", "pkg.sub", "pkg.inner", "pkg.inner.leaf"}
    assert table.modules["pkg"].is_package and table.modules["pkg.inner"].is_package
    assert not table.modules["root"].is_package and not table.modules["pkg.sub"].is_package
    assert table.modules["pkg.sub"].source == "Y = 2\n"
    assert table.modules["root"].path == str((root / "root.py").resolve())


def test_read_sandbox_folder_accepts_a_string_path(tmp_path: Path) -> None:
    """The folder may be given as ``str``."""
    root = write(tmp_path / "sb", {"a.py": ""})
    assert set(read_sandbox_folder(str(root)).modules) == {"a"}


def test_read_sandbox_folder_skips_pycache_hidden_and_non_package_folders(tmp_path: Path) -> None:
    """``__pycache__``, hidden folders and folders without ``__init__.py`` contribute no module."""
    root = write(
        tmp_path / "sb",
        {
            "main.py": "",
            "__pycache__/main.py": "",
            ".hidden/__init__.py": "",
            ".hidden/secret.py": "",
            "scripts/tool.py": "",
            "notpkg/pkg/__init__.py": "",
            "notpkg/pkg/mod.py": "",
            "pkg/__init__.py": "",
            "pkg/__pycache__/sub.py": "",
            "pkg/.cache/x.py": "",
            "pkg/data/loose.py": "",
        },
    )
    assert set(read_sandbox_folder(root).modules) == {"main", "pkg"}


def test_read_sandbox_folder_skips_files_that_are_not_module_names(tmp_path: Path) -> None:
    """Files such as ``my-script.py`` or ``.hidden.py`` cannot be imported and are skipped."""
    root = write(tmp_path / "sb", {"good.py": "", "my-script.py": "", ".hidden.py": "", "2fast.py": ""})
    assert set(read_sandbox_folder(root).modules) == {"good"}


def test_read_sandbox_folder_raises_compilation_error_for_non_utf8_file(tmp_path: Path) -> None:
    """A file that is not UTF-8 text is reported as a ``CompilationError`` naming the file."""
    root = write(tmp_path / "sb", {"good.py": ""})
    (root / "latin.py").write_bytes("name = 'caf\u00e9'\n".encode("latin-1"))
    with pytest.raises(CompilationError) as info:
        read_sandbox_folder(root)
    assert [Path(e[0]).name for e in info.value.errors] == ["latin.py"]
    assert "latin.py" in str(info.value)


def test_read_sandbox_folder_raises_sandbox_start_error_for_missing_folder(tmp_path: Path) -> None:
    """A folder that does not exist cannot start a sandbox."""
    with pytest.raises(SandboxStartError, match="does not exist"):
        read_sandbox_folder(tmp_path / "missing")


def test_read_sandbox_folder_raises_sandbox_start_error_for_a_file(tmp_path: Path) -> None:
    """A path to a file rather than a folder is refused."""
    write(tmp_path, {"lonely.py": ""})
    with pytest.raises(SandboxStartError):
        read_sandbox_folder(tmp_path / "lonely.py")


def test_read_sandbox_folder_raises_sandbox_start_error_for_empty_folder(tmp_path: Path) -> None:
    """An empty folder holds no module to run."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(SandboxStartError, match="no Python module"):
        read_sandbox_folder(tmp_path / "empty")


def test_read_sandbox_folder_raises_sandbox_start_error_when_only_skipped_files_exist(tmp_path: Path) -> None:
    """A folder whose only sources are in skipped places counts as empty."""
    root = write(tmp_path / "sb", {"__pycache__/a.py": "", "scripts/b.py": "", "README.txt": ""})
    with pytest.raises(SandboxStartError):
        read_sandbox_folder(root)


def test_check_syntax_accepts_valid_code(tmp_path: Path) -> None:
    """Valid modules pass without running any code (a module that would leave a file when run leaves none)."""
    ran = tmp_path / "ran"
    root = write(
        tmp_path / "sb", {"checked_only.py": f"open({str(ran)!r}, 'w').close()\n", "pkg/__init__.py": "x = 1\n"}
    )
    assert check_syntax(read_sandbox_folder(root)) is None
    assert not ran.exists()
    assert "checked_only" not in sys.modules


def test_check_syntax_reports_every_broken_file_with_its_line(tmp_path: Path) -> None:
    """All syntax errors are reported at once, each with its file and line."""
    root = write(
        tmp_path / "sb",
        {
            "ok.py": "x = 1\n",
            "first.py": "a = 1\ndef f(:\n    pass\n",
            "pkg/__init__.py": "",
            "pkg/second.py": "a = 1\nb = 2\nif True\n    pass\n",
        },
    )
    with pytest.raises(CompilationError) as info:
        check_syntax(read_sandbox_folder(root))
    found = sorted((Path(file).name, line) for file, line, _ in info.value.errors)
    assert found == [("first.py", 2), ("second.py", 3)]
    assert all(message for _, _, message in info.value.errors)
    text = str(info.value)
    assert "first.py:2" in text and "second.py:3" in text


def test_check_syntax_reports_null_bytes_as_compilation_error() -> None:
    """A source with a NUL byte is a compilation error, not a crash."""
    table = CodeTable({"nul": ModuleSource("nul", "/virtual/nul.py", "x = 1\x00\n")})
    with pytest.raises(CompilationError) as info:
        check_syntax(table)
    assert [e[0] for e in info.value.errors] == ["/virtual/nul.py"]


def test_module_source_checksum_is_sha256_of_the_text() -> None:
    """``ModuleSource.checksum`` is the hex sha256 of the UTF-8 source."""
    import hashlib

    source = ModuleSource("m", "/m.py", "print('é')\n")
    assert source.checksum == hashlib.sha256("print('é')\n".encode()).hexdigest()


def test_code_table_wire_form_round_trips(tmp_path: Path) -> None:
    """``as_wire`` / ``from_wire`` give back an equal table, and the wire form is plain picklable data."""
    table = read_sandbox_folder(write(tmp_path / "sb", {"a.py": "A = 1\n", "p/__init__.py": "", "p/b.py": ""}))
    wire = pickle.loads(pickle.dumps(table.as_wire()))
    assert CodeTable.from_wire(wire) == table


def test_sandbox_finder_serves_modules_and_packages_by_plain_name(tmp_path: Path, elsewhere: Path) -> None:
    """In a fresh interpreter the finder imports modules, packages and relative imports from the table."""
    root = write(
        tmp_path / "sb",
        {
            "app.py": "import pkg\nfrom pkg.sub import VALUE\nRESULT = (pkg.TOTAL, VALUE)\n",
            "pkg/__init__.py": "from .sub import VALUE\nfrom . import helper\nTOTAL = VALUE + helper.BASE\n",
            "pkg/sub.py": "from .helper import BASE\nVALUE = BASE + 1\n",
            "pkg/helper.py": "BASE = 41\n",
        },
    )
    result = run_in_child(
        f"""
        import json, sys
        from plugin_host.codeload import SandboxFinder, install, read_sandbox_folder
        before = set(sys.modules)
        finder = install(read_sandbox_folder({str(root)!r}))
        import app
        assert sys.meta_path[0] is finder
        assert isinstance(app.__spec__.loader, SandboxFinder)
        import pkg
        print(json.dumps({{
            "result": app.RESULT, "file": app.__file__, "pkg_file": pkg.__file__,
            "is_pkg": hasattr(pkg, "__path__"), "package": sys.modules["pkg.sub"].__package__,
            "new": sorted(set(sys.modules) - before - {{"json"}}),
        }}))
    """,
        elsewhere,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["result"] == [83, 42]
    assert out["file"] == str((root / "app.py").resolve())
    assert out["pkg_file"] == str((root / "pkg" / "__init__.py").resolve())
    assert out["is_pkg"] is True
    assert out["package"] == "pkg"
    assert {"app", "pkg", "pkg.sub", "pkg.helper"} <= set(out["new"])


def test_sandbox_finder_declines_names_it_does_not_hold() -> None:
    """``find_spec`` returns ``None`` for a module outside its table, leaving it to other finders."""
    finder = SandboxFinder(CodeTable({"mine": ModuleSource("mine", "/v/mine.py", "")}))
    assert finder.find_spec("json") is None
    assert finder.find_spec("mine.sub") is None
    assert finder.find_spec("mine").origin == "/v/mine.py"


def test_sandbox_finder_serves_code_that_exists_only_in_the_table(elsewhere: Path) -> None:
    """A module whose path is not a file on disk still imports (the table is the source of truth)."""
    result = run_in_child(
        """
        from plugin_host.codeload import CodeTable, ModuleSource, install
        install(CodeTable({"ghost": ModuleSource("ghost", "/nowhere/ghost.py", "WHO = 'ghost'\\n")}))
        import ghost
        print(ghost.WHO, ghost.__file__)
    """,
        elsewhere,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ghost", "/nowhere/ghost.py"]


def test_traceback_from_a_served_module_shows_its_path_and_source_line(elsewhere: Path) -> None:
    """A traceback through served code names the module's path and quotes the failing line."""
    source = "def fail():\n    value = 1\n    raise ValueError('kaboom')  # the failing line\n"
    result = run_in_child(
        f"""
        import traceback
        from plugin_host.codeload import CodeTable, ModuleSource, install
        install(CodeTable({{"boom": ModuleSource("boom", "/virtual/sb/boom.py", {source!r})}}))
        import boom
        try:
            boom.fail()
        except ValueError:
            print(traceback.format_exc())
    """,
        elsewhere,
    )
    assert result.returncode == 0, result.stderr
    assert 'File "/virtual/sb/boom.py", line 3, in fail' in result.stdout
    assert "raise ValueError('kaboom')  # the failing line" in result.stdout


def test_traceback_shows_the_served_source_not_the_file_on_disk(tmp_path: Path, elsewhere: Path) -> None:
    """When the file on disk differs from the table, tracebacks quote the code that actually ran."""
    root = write(tmp_path / "sb", {"mod.py": "def f():\n    raise KeyError('served')\n"})
    result = run_in_child(
        f"""
        import traceback
        from pathlib import Path
        from plugin_host.codeload import install, read_sandbox_folder
        install(read_sandbox_folder({str(root)!r}))
        Path({str(root / "mod.py")!r}).write_text("def f():\\n    pass  # edited on disk\\n")
        import mod
        try:
            mod.f()
        except KeyError:
            print(traceback.format_exc())
    """,
        elsewhere,
    )
    assert result.returncode == 0, result.stderr
    assert "raise KeyError('served')" in result.stdout
    assert "edited on disk" not in result.stdout


def _refuse(table: CodeTable, protected: tuple[str, ...] = ()) -> SandboxStartError:
    """Call ``install`` expecting a refusal; undo any finder it installs by mistake."""
    before = list(sys.meta_path)
    try:
        with pytest.raises(SandboxStartError) as info:
            finder = codeload.install(table, protected=protected)
            sys.meta_path.remove(finder)
    finally:
        sys.meta_path[:] = before
    return info.value


def test_install_refuses_a_module_this_process_already_imported() -> None:
    """A sandbox module named like an imported module (``os``) would shadow it and is refused."""
    assert "os" in sys.modules
    error = _refuse(CodeTable({"os": ModuleSource("os", "/v/os.py", ""), "fine": ModuleSource("fine", "/v/f.py", "")}))
    assert error.modules == ["os"]
    assert "os" in str(error)


def test_install_refuses_protected_names_and_their_submodules() -> None:
    """Protected top-level names are refused even when not imported yet, including sub-modules."""
    table = CodeTable(
        {
            "vendorlib": ModuleSource("vendorlib", "/v/vendorlib/__init__.py", "", True),
            "vendorlib.extra": ModuleSource("vendorlib.extra", "/v/vendorlib/extra.py", ""),
            "own": ModuleSource("own", "/v/own.py", ""),
        }
    )
    assert "vendorlib" not in sys.modules
    error = _refuse(table, protected=("vendorlib",))
    assert error.modules == ["vendorlib", "vendorlib.extra"]


def test_install_refusal_leaves_meta_path_unchanged() -> None:
    """A refused install adds no finder to ``sys.meta_path``."""
    before = list(sys.meta_path)
    with pytest.raises(SandboxStartError):
        codeload.install(CodeTable({"sys": ModuleSource("sys", "/v/sys.py", "")}))
    assert sys.meta_path == before


def test_install_puts_the_finder_first_on_meta_path(elsewhere: Path) -> None:
    """An installed finder takes precedence over the path finder (checked in a child interpreter)."""
    result = run_in_child(
        """
        import sys
        from plugin_host.codeload import CodeTable, ModuleSource, install
        finder = install(CodeTable({"only_here": ModuleSource("only_here", "/v/only_here.py", "")}))
        print(sys.meta_path.index(finder))
    """,
        elsewhere,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0"


def test_package_folder_wins_over_a_module_file_of_the_same_name(tmp_path: Path) -> None:
    """As in Python, ``a/__init__.py`` shadows ``a.py``: the table serves the package, never the module."""
    root = write(tmp_path / "sb", {"a.py": "X = 'module'\n", "a/__init__.py": "X = 'package'\n", "a/sub.py": ""})
    table = read_sandbox_folder(root)
    assert sorted(table.modules) == ["a", "a.sub"]
    assert table.modules["a"].is_package
    assert table.modules["a"].source == "X = 'package'\n"
    assert table.modules["a"].path == str((root / "a" / "__init__.py").resolve())
