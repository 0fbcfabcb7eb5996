"""Per-sandbox dependencies (plugin_host.deps and ``plugin-host deps``), offline.

Two versions of a tiny pure-Python distribution, ``tinylib``, are written as wheels by hand (a wheel is
a zip with the module, METADATA, WHEEL and RECORD), so pip installs from a local folder with
``--no-index`` and nothing touches the network or setuptools.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shlex
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Iterator

import psutil
import pytest
from conftest import eventually

from plugin_host import deps
from plugin_host.cli import main
from plugin_host.deps import (
    check_conflicts,
    environment_key,
    prepare_environment,
    read_requirements,
)
from plugin_host.errors import DependencyError


def _write_wheel(folder: Path, version: str) -> Path:
    """A py3-none-any wheel of ``tinylib`` whose module says ``VERSION = <version>``."""
    info = f"tinylib-{version}.dist-info"
    files = {
        "tinylib/__init__.py": f"VERSION = {version!r}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: tinylib\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test_deps\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    path = folder / f"tinylib-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
    return path


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the tinylib 1.0 and 2.0 wheels."""
    folder = tmp_path_factory.mktemp("wheelhouse")
    for version in ("1.0", "2.0"):
        _write_wheel(folder, version)
    return folder


@pytest.fixture(scope="module")
def shared_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state folder shared by this module's tests, so each real install runs once."""
    return tmp_path_factory.mktemp("deps-state")


@pytest.fixture(scope="module")
def installed(wheelhouse: Path, shared_state: Path) -> dict[str, Path]:
    """The environments of ``tinylib==1.0`` and ``tinylib==2.0``, installed by real pip runs."""
    found = {}
    for version in ("1.0", "2.0"):
        env = prepare_environment([f"tinylib=={version}"], shared_state, find_links=[wheelhouse], no_index=True)
        assert env is not None
        found[version] = env
    return found


@pytest.fixture
def pip_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[list[str]]]:
    """Every pip command run from now on (pip still runs)."""
    calls: list[list[str]] = []
    real = deps._run_pip

    def counting(command: list[str], log: Path, timeout: float) -> int:
        calls.append(command)
        return real(command, log, timeout)

    monkeypatch.setattr(deps, "_run_pip", counting)
    yield calls


def _version_seen_with(env: Path) -> str:
    """``tinylib.VERSION`` as a fresh interpreter with ``PYTHONPATH=<env>`` imports it."""
    result = subprocess.run(
        [sys.executable, "-c", "import tinylib; print(tinylib.VERSION)"],
        env={**os.environ, "PYTHONPATH": str(env)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _folder(tmp_path: Path, *, requirements_txt: str | None = None, pyproject_toml: str | None = None) -> Path:
    """A sandbox folder with the given requirements.txt and pyproject.toml texts."""
    folder = tmp_path / "sandbox"
    folder.mkdir()
    for name, text in (("requirements.txt", requirements_txt), ("pyproject.toml", pyproject_toml)):
        if text is not None:
            (folder / name).write_text(text)
    return folder


def test_read_requirements_reads_requirements_txt_without_comments_options_or_duplicates(tmp_path: Path) -> None:
    """Comments, blank lines and index options go; names are normalised; ``--hash`` pins are kept, sorted."""
    folder = _folder(
        tmp_path,
        requirements_txt=(
            "# the plugin's needs\n\n--index-url https://example.invalid/simple\n"
            "TinyLib>=1.0,<3  # inline comment\nrequests[Socks] ==2.31 --hash=sha256:FF --hash=sha256:00\n"
            "tinylib<3,>=1.0\ncolorama; sys_platform == 'win32'\n"
        ),
    )
    assert read_requirements(folder) == [
        "tinylib<3,>=1.0",
        "requests[socks]==2.31 --hash=sha256:00 --hash=sha256:ff",
        'colorama; sys_platform == "win32"',
    ]


def test_other_per_requirement_options_are_refused(tmp_path: Path) -> None:
    """An option after a requirement other than ``--hash`` is refused, never silently dropped."""
    folder = _folder(tmp_path, requirements_txt="tinylib==1.0 --config-settings=x=1\n")
    with pytest.raises(DependencyError, match="only --hash"):
        read_requirements(folder)


def test_read_requirements_reads_pyproject_project_dependencies(tmp_path: Path) -> None:
    """``[project] dependencies`` of a pyproject.toml in the folder are the requirements."""
    folder = _folder(tmp_path, pyproject_toml='[project]\nname = "p"\ndependencies = ["tinylib==2.0"]\n')
    assert read_requirements(folder) == ["tinylib==2.0"]


def test_read_requirements_is_empty_for_a_folder_without_requirements(tmp_path: Path) -> None:
    """No file, or a pyproject.toml with tool settings only, declares nothing."""
    assert read_requirements(_folder(tmp_path, pyproject_toml="[tool.ruff]\nline-length = 120\n")) == []


def test_read_requirements_refuses_two_declarations(tmp_path: Path) -> None:
    """requirements.txt and pyproject dependencies together are ambiguous: the error asks to keep one."""
    folder = _folder(tmp_path, requirements_txt="tinylib\n", pyproject_toml="[project]\ndependencies = []\n")
    with pytest.raises(DependencyError, match="both requirements.txt and pyproject.toml"):
        read_requirements(folder)


@pytest.mark.parametrize(
    "line",
    ["-e ./lib", "-r other.txt", "tinylib @ https://example.invalid/t.whl", "https://example.invalid/t.whl", "./lib"],
)
def test_read_requirements_refuses_what_an_environment_key_cannot_describe(tmp_path: Path, line: str) -> None:
    """Editable installs, included files, URLs and paths raise DependencyError."""
    with pytest.raises(DependencyError):
        read_requirements(_folder(tmp_path, requirements_txt=line + "\n"))


def test_requirements_parse_with_pips_vendored_packaging_when_packaging_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fresh install of plugin-host may lack ``packaging``; pip's own copy is used then."""
    for name in [name for name in sys.modules if name == "packaging" or name.startswith("packaging.")]:
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules makes the import fail
    monkeypatch.setitem(sys.modules, "packaging", None)
    module = deps._packaging.__wrapped__("requirements")
    assert module.__name__ == "pip._vendor.packaging.requirements"
    assert str(module.Requirement("TinyLib==1.0").specifier) == "==1.0"


def test_environment_key_ignores_order_spelling_and_duplicates_but_not_python() -> None:
    """Equal sets share a key; another set or another Python minor version does not."""
    key = environment_key(["tinylib==1.0", "attrs>=20"])
    assert key == environment_key(["Attrs >= 20", "TinyLib==1.0", "tinylib==1.0"])
    assert key != environment_key(["tinylib==2.0", "attrs>=20"])
    assert key != environment_key(["tinylib==1.0", "attrs>=20"], python=(3, 99))


def test_prepare_environment_installs_two_versions_side_by_side(installed: dict[str, Path], shared_state: Path) -> None:
    """Each environment lives under envs/ and gives a fresh interpreter its own tinylib version."""
    assert installed["1.0"] != installed["2.0"]
    assert {env.parent for env in installed.values()} == {shared_state / "envs"}
    assert _version_seen_with(installed["1.0"]) == "1.0"
    assert _version_seen_with(installed["2.0"]) == "2.0"
    assert (installed["1.0"] / deps.LOG_NAME).is_file()


def test_prepare_environment_reuses_a_complete_environment_without_running_pip(
    installed: dict[str, Path], shared_state: Path, wheelhouse: Path, pip_calls: list[list[str]]
) -> None:
    """The same set, spelled differently, returns the same folder; pip does not run and the marker is untouched."""
    marker = installed["1.0"] / deps.MARKER_NAME
    before = marker.stat().st_mtime_ns
    lines: list[str] = []
    again = prepare_environment(
        ["TinyLib == 1.0"], shared_state, find_links=[wheelhouse], no_index=True, progress=lines.append
    )
    assert again == installed["1.0"]
    assert pip_calls == []
    assert marker.stat().st_mtime_ns == before
    assert lines and "reusing" in lines[0]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_hash_pinned_requirements_install_only_the_pinned_file(tmp_path: Path, wheelhouse: Path) -> None:
    """A ``--hash`` pin is kept: the right hash installs, a wrong one makes pip refuse the file (nothing
    installed, DependencyError naming the package)."""
    wheel = wheelhouse / "tinylib-2.0-py3-none-any.whl"
    folder = _folder(tmp_path, requirements_txt=f"tinylib==2.0 --hash=sha256:{_sha256(wheel)}\n")
    environment = prepare_environment(
        read_requirements(folder), tmp_path / "ok", find_links=[wheelhouse], no_index=True
    )
    assert environment is not None and (environment / "tinylib" / "__init__.py").read_text() == "VERSION = '2.0'\n"
    wrong = "tinylib==2.0 --hash=sha256:" + "0" * 64
    with pytest.raises(DependencyError, match="tinylib") as caught:
        prepare_environment([wrong], tmp_path / "bad", find_links=[wheelhouse], no_index=True)
    assert "hash" in caught.value.output.lower()
    assert [p for p in (tmp_path / "bad" / "envs").iterdir() if p.is_dir()] == []


def test_prepare_environment_returns_none_without_requirements(tmp_path: Path) -> None:
    """Nothing to install creates nothing."""
    assert prepare_environment([], tmp_path) is None
    assert not (tmp_path / "envs").exists()


def test_an_unresolvable_requirement_names_the_package_and_leaves_no_folder_behind(
    installed: dict[str, Path], shared_state: Path, wheelhouse: Path
) -> None:
    """pip's failure becomes DependencyError with its last lines; only complete environments remain."""
    with pytest.raises(DependencyError, match="tinylib==9.9") as caught:
        prepare_environment(["tinylib==9.9"], shared_state, find_links=[wheelhouse], no_index=True)
    assert caught.value.packages == ["tinylib"]
    assert "9.9" in caught.value.output
    folders = [p for p in (shared_state / "envs").iterdir() if p.is_dir()]
    assert folders and all((p / deps.MARKER_NAME).is_file() for p in folders)


def test_a_pip_timeout_raises_and_leaves_no_folder_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pip run past its timeout becomes DependencyError, and its temporary folder is deleted."""

    def too_slow(command: list[str], log: Path, timeout: float) -> int:
        (log.parent / "tinylib").mkdir()  # half an install
        raise subprocess.TimeoutExpired(command, timeout)

    monkeypatch.setattr(deps, "_run_pip", too_slow)
    with pytest.raises(DependencyError, match="within 5 s"):
        prepare_environment(["tinylib==1.0"], tmp_path, timeout=5)
    assert [p for p in (tmp_path / "envs").iterdir() if p.is_dir()] == []


def test_run_pip_kills_the_process_group_on_timeout(tmp_path: Path) -> None:
    """The runner does not wait past its timeout, and kills what it started down to the processes its
    child started (pip's build backends): the whole process group, not only pip."""
    pids = tmp_path / "pids"
    # A shell standing in for pip starts a grandchild, records both pids (atomically), and waits.
    script = (
        f'sleep 60 & echo "$$ $!" > {shlex.quote(str(pids))}.tmp; mv {shlex.quote(str(pids))}.tmp '
        f"{shlex.quote(str(pids))}; wait"
    )
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        deps._run_pip(["sh", "-c", script], tmp_path / "log", 2.0)
    assert time.monotonic() - started < 2.0 + 5.0
    assert pids.exists(), "the stand-in for pip did not record its pids within the 2 s timeout"
    child, grandchild = (int(pid) for pid in pids.read_text().split())

    def alive(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    eventually(lambda: not alive(child) and not alive(grandchild), timeout=5.0)


def test_concurrent_prepares_of_one_set_install_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Threads preparing the same set at once wait on the key's lock; one installs, all get the folder."""
    calls: list[list[str]] = []

    def fake_pip(command: list[str], log: Path, timeout: float) -> int:
        calls.append(command)
        (log.parent / "tinylib").mkdir()
        return 0

    monkeypatch.setattr(deps, "_run_pip", fake_pip)
    barrier, results = threading.Barrier(4), []

    def prepare() -> None:
        barrier.wait()
        results.append(prepare_environment(["tinylib==1.0"], tmp_path))

    threads = [threading.Thread(target=prepare) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(calls) == 1
    assert len(results) == 4 and len(set(results)) == 1


def test_check_conflicts_refuses_a_compiled_distribution_the_host_loaded_in_another_version() -> None:
    """psutil (imported here, with a C extension) cannot be another version in a forked sandbox."""
    with pytest.raises(DependencyError, match="psutil") as caught:
        check_conflicts(["psutil<1"])
    assert "<1" in str(caught.value) and psutil.__version__ in str(caught.value)
    assert (caught.value.package, caught.value.present) == ("psutil", psutil.__version__)


def test_check_conflicts_refuses_a_runtime_dependency_in_another_version() -> None:
    """attrs is pure Python but plugin-host runs on it, so the sandbox cannot have another one."""
    with pytest.raises(DependencyError, match="attrs"):
        check_conflicts(["attrs<1"])


def test_check_conflicts_accepts_compatible_unloaded_and_pure_python_requirements() -> None:
    """A fitting version, a package not loaded, a pure-Python one outside the runtime (loaded here in a
    version the requirement excludes), and one whose marker is false here all pass, each on its own."""
    # What makes each case the case it names (else it would pass for another reason).
    assert "tinylib" not in sys.modules
    assert "pytest" in sys.modules and not pytest.__version__.startswith("0.")
    assert "psutil" in sys.modules and not psutil.__version__.startswith("0.")
    for requirement in ["psutil>=1", "tinylib==1.0", "pytest<1", "psutil<1; sys_platform == 'win32'"]:
        assert check_conflicts([requirement]) is None, requirement


def test_activate_environment_swaps_an_already_imported_pure_python_module(installed: dict[str, Path]) -> None:
    """A process that imported tinylib 1.0 sees 2.0 after activating 2.0's environment; attrs stays put."""
    script = (
        "import sys, attrs, tinylib; from plugin_host.deps import activate_environment; "
        "assert tinylib.VERSION == '1.0'; before = attrs; "
        f"gone = activate_environment({str(installed['2.0'])!r}); import tinylib, attrs; "
        "print(tinylib.VERSION, gone, attrs is before, sys.path[0])"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": str(installed["1.0"])},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2.0", "['tinylib']", "True", str(installed["2.0"])]


def test_cli_deps_prepares_the_environment_and_prints_its_folder(
    installed: dict[str, Path],
    shared_state: Path,
    wheelhouse: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``plugin-host deps PATH --find-links DIR --no-index`` prints the environment's folder on stdout."""
    monkeypatch.setenv("PLUGIN_HOST_STATE_DIR", str(shared_state))
    folder = _folder(tmp_path, requirements_txt="tinylib==2.0\n")
    assert main(["deps", str(folder), "--find-links", str(wheelhouse), "--no-index"]) == 0
    assert capsys.readouterr().out.strip() == str(installed["2.0"])


def test_cli_deps_of_a_failing_install_prints_an_error_line_and_exits_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """pip's failure is one ``error:`` message on stderr and exit status 1."""

    def failing_pip(command: list[str], log: Path, timeout: float) -> int:
        log.write_text("ERROR: No matching distribution found for tinylib==9.9\n")
        return 1

    monkeypatch.setattr(deps, "_run_pip", failing_pip)
    monkeypatch.setenv("PLUGIN_HOST_STATE_DIR", str(tmp_path / "state"))
    folder = _folder(tmp_path, requirements_txt="tinylib==9.9\n")
    assert main(["deps", str(folder), "--no-index"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "\nerror: pip could not install tinylib==9.9" in captured.err
    assert "No matching distribution" in captured.err


def test_environments_live_in_a_private_folder_and_one_others_may_write_is_refused(
    tmp_path: Path, wheelhouse: Path
) -> None:
    """Environments run as this user: ``envs/`` is made 0700, and an ``envs/`` others may write (where
    they could plant a package) is refused with ConfigError before pip runs or anything is imported."""
    from plugin_host.errors import ConfigError

    made = prepare_environment(["tinylib==1.0"], tmp_path / "a", find_links=[wheelhouse], no_index=True)
    assert made is not None and made.parent.stat().st_mode & 0o777 == 0o700
    loose = tmp_path / "b" / "envs"
    loose.mkdir(parents=True)
    loose.chmod(0o777)
    with pytest.raises(ConfigError, match="writable by"):
        prepare_environment(["tinylib==1.0"], tmp_path / "b", find_links=[wheelhouse], no_index=True)
    assert os.listdir(loose) == []
