"""Per-sandbox dependencies: read a sandbox's requirements, install them once, refuse what cannot work.

An environment is a plain ``pip install --target`` folder, ``<state_dir>/envs/<key>``, that a sandbox's
processes put first on their import path (:func:`activate_environment`).  The key hashes the normalised
requirements and the Python minor version, so identical sets are shared between sandboxes and reused
across restarts.  A folder under ``envs/`` is complete by construction: pip installs into a hidden
temporary sibling, a marker file is written last, and the folder is renamed into place in one step; a
failed or timed-out install deletes the temporary folder, so no half-installed environment is ever seen.

Requirements are parsed with ``packaging``; where it is not installed, pip's vendored copy is used, since
pip is needed to install anything anyway.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import importlib.machinery
import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

from ._store import statedir as _statedir
from .errors import DependencyError

if TYPE_CHECKING:
    from packaging.requirements import Requirement

__all__ = [
    "LOG_NAME",
    "MARKER_NAME",
    "activate_environment",
    "check_conflicts",
    "copy_readable",
    "read_runtime_metadata",
    "environment_key",
    "environment_requirements",
    "prepare_environment",
    "read_requirements",
]

MARKER_NAME = ".plugin-host-env.json"
"""Written last into an environment: its presence means the install completed."""
LOG_NAME = ".pip-install.log"
"""pip's output, kept inside the environment it built."""

_RUNTIME = ("thespian", "cloudpickle", "attrs", "psutil", "rich")
# pip treats these as "use another file": the environment key would no longer describe what is installed.
_REFUSED_OPTIONS = ("-e", "-r", "-c", "--editable", "--requirement", "--constraint")
_COMMENT = re.compile(r"(^|\s)#.*$")
_TAIL_LINES = 20
_NOT_MODULES = ("__pycache__", "bin")  # pip --target puts console scripts in bin/


def read_requirements(path: str | os.PathLike[str]) -> list[str]:
    """The requirements a sandbox folder declares, normalised, in declaration order without duplicates.

    They come from ``requirements.txt`` or from ``[project] dependencies`` of a ``pyproject.toml`` in the
    folder.  In ``requirements.txt``, comments, blank lines and option lines (``--index-url``, ``--pre``...)
    are skipped: where to install from is ``HostConfig.find_links`` / ``no_index``.  Editable installs,
    ``-r``/``-c`` includes, direct URL references and paths are refused, because the environment key hashes
    the requirement text and could not tell when what they point to changes.

    Args:
        path: the sandbox folder.

    Returns:
        Normalised requirement strings (``"tinylib==1.0"``); empty when the folder declares none.

    Raises:
        DependencyError: the folder is missing, both files declare requirements, a file is malformed, or a
            requirement is refused.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise DependencyError(f"{folder} is not a folder", path=str(folder))
    text_file, toml_file = folder / "requirements.txt", folder / "pyproject.toml"
    from_toml = _pyproject_dependencies(toml_file) if toml_file.is_file() else None
    if text_file.is_file() and from_toml is not None:
        raise DependencyError(
            f"{folder} declares requirements in both requirements.txt and pyproject.toml; keep only one of them",
            path=str(folder),
        )
    lines, source = (_requirements_lines(text_file), text_file) if text_file.is_file() else (from_toml or [], toml_file)
    return list(dict.fromkeys(_normalise(line, str(source)) for line in lines))


def environment_key(
    requirements: Iterable[str], *, python: tuple[int, int] = (sys.version_info.major, sys.version_info.minor)
) -> str:
    """The name of the environment of a set of requirements: equal sets share one environment.

    Args:
        requirements: requirement strings, in any order and spelling (``Tiny_Lib==1.0`` equals
            ``tinylib==1.0``); duplicates count once.
        python: the Python ``(major, minor)`` the environment is for.

    Returns:
        A hex SHA-256 of the normalised, sorted set and the Python version.

    Raises:
        DependencyError: a requirement does not parse.
    """
    lines = sorted({_normalise(text, "requirement") for text in requirements})
    return hashlib.sha256("\n".join([f"python {python[0]}.{python[1]}", *lines]).encode()).hexdigest()


def check_conflicts(requirements: Iterable[str]) -> None:
    """Refuse requirements that this (host) process has already imported in an incompatible version.

    Only distributions that cannot differ in a process forked from this one count: those shipping
    compiled extensions (an extension module cannot be unloaded or loaded twice) and plugin-host's own
    runtime dependencies with theirs (the sandbox's processes run plugin-host itself with them).  Other,
    pure-Python distributions are accepted: the sandbox's environment goes first on its import path.  A
    module the sandbox root has *already* imported before its environment is on ``sys.path`` cannot be
    swapped that way, though; :func:`activate_environment` forgets such modules, but objects created from
    them before keep their old code.  Requirements whose environment marker is false here are skipped.

    Args:
        requirements: requirement strings.

    Raises:
        DependencyError: naming each conflicting package, the wanted specifier and the present version
            (``package``, ``wanted`` and ``present`` hold the first; ``conflicts`` all of them).
    """
    imported = _imported_distributions()
    conflicts: list[tuple[str, str, str]] = []
    for text in requirements:
        requirement = _parse(text, "requirement")
        name = _canonical_name(requirement.name)
        if name not in imported or not _applies(requirement):
            continue
        present = importlib.metadata.version(imported[name])
        if requirement.specifier.contains(present, prereleases=True):
            continue
        if name in _runtime_closure() or _has_extensions(imported[name]):
            conflicts.append((name, str(requirement.specifier), present))
    if conflicts:
        listed = "; ".join(
            f"{name} {wanted} is wanted but {present} is already loaded by the host"
            for name, wanted, present in conflicts
        )
        raise DependencyError(
            f"requirements conflict with the host: {listed} (a compiled extension or a "
            "dependency of plugin-host cannot differ in a sandbox process)",
            package=conflicts[0][0],
            wanted=conflicts[0][1],
            present=conflicts[0][2],
            conflicts=conflicts,
        )


def prepare_environment(
    requirements: Iterable[str],
    state_dir: str | os.PathLike[str],
    *,
    find_links: Sequence[str | os.PathLike[str]] = (),
    no_index: bool = False,
    timeout: float = 600.0,
    progress: Callable[[str], None] | None = None,
) -> Path | None:
    """Install requirements into their environment under ``state_dir``, or reuse it when complete.

    A complete environment is reused without running pip at all.  Otherwise pip installs into a
    temporary folder, under a per-key file lock (concurrent callers in threads or processes install once
    and the others wait for it), which then replaces the final folder atomically.

    Args:
        requirements: requirement strings (see :func:`read_requirements`).
        state_dir: the host's state folder; environments live in its ``envs/``.
        find_links: folders or URLs of wheels, passed to pip as ``--find-links``.
        no_index: install from ``find_links`` only (offline use).
        timeout: seconds pip may run before it is killed.
        progress: called with short status lines (what is installed, reused, how long it took).

    Returns:
        The environment folder to put first on ``sys.path``, or ``None`` when there are no requirements.

    Raises:
        ConfigError: ``state_dir`` or its ``envs/`` is not private to this user.
        DependencyError: a requirement does not parse, pip failed (``packages`` names them, ``output`` holds
            pip's last lines) or timed out.
    """
    wanted = sorted({_normalise(text, "requirement") for text in requirements})
    if not wanted:
        return None
    report = progress or _ignore
    # Environments run as this user: their folder is checked like state_dir (another user's, or one others
    # may write, is refused) and private.
    envs = _statedir.private_folder(_statedir.prepare(Path(state_dir)) / "envs")
    final = envs / environment_key(wanted)
    if not (final / MARKER_NAME).is_file():
        with _locked(envs / f".{final.name}.lock"):
            if not (final / MARKER_NAME).is_file():  # else another caller installed it while we waited
                _discard_leftovers(final)
                _install(wanted, final, [os.fspath(link) for link in find_links], no_index, timeout, report)
                return final
    report(f"reusing environment {final.name[:12]} for {', '.join(wanted)}")
    return final


def environment_requirements(environment: str | os.PathLike[str]) -> list[str]:
    """The requirements a prepared environment was installed from (another system installs them itself).

    Raises:
        DependencyError: the folder is not a complete environment.
    """
    try:
        record = json.loads((Path(environment) / MARKER_NAME).read_text(encoding="utf-8"))
        return [str(text) for text in record["requirements"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DependencyError(f"{environment} is not a complete environment: {exc}", path=str(environment)) from None


def activate_environment(environment: str | os.PathLike[str]) -> list[str]:
    """Put an environment first on this process's import path, forgetting the modules it shadows.

    Meant for a sandbox root right after it is forked, before plugin code runs.  Already imported
    modules that the environment also provides are removed from ``sys.modules`` so the next import finds
    the environment's copy, but only pure-Python ones outside plugin-host's runtime: a compiled extension
    cannot be loaded twice, and the runtime's modules must stay the ones the process runs on
    (:func:`check_conflicts` has made sure their versions fit).  Modules of no known distribution (the
    standard library, plugin-host itself) are never touched.

    Args:
        environment: a folder returned by :func:`prepare_environment`.

    Returns:
        The names of the modules forgotten.
    """
    folder = Path(environment)
    # Decided before the folder is on sys.path: the host's own metadata says what is compiled or runtime.
    names = _evictable(_top_level_names(folder) & {name.partition(".")[0] for name in list(sys.modules)})
    forgotten = [name for name in list(sys.modules) if name.partition(".")[0] in names]
    for name in forgotten:
        del sys.modules[name]
    if os.fspath(folder) in sys.path:
        sys.path.remove(os.fspath(folder))
    sys.path.insert(0, os.fspath(folder))
    importlib.invalidate_caches()
    return forgotten


def _ignore(line: str) -> None:
    """The default progress callback."""


@cache
def _packaging(submodule: str) -> ModuleType:
    for package in ("packaging", "pip._vendor.packaging"):
        try:
            return importlib.import_module(f"{package}.{submodule}")
        except ImportError:
            continue
    raise DependencyError("reading requirements needs the 'packaging' library (pip install 'packaging>=23')")


def _split_hashes(text: str, source: str) -> tuple[str, list[str]]:
    """A requirement line without its ``--hash`` options, and those hashes (pip's hash-checking mode)."""
    requirement, _, options = text.partition(" --")
    hashes = []
    for option in filter(None, (part.strip() for part in f"--{options}".split(" --") if options)):
        name, _, value = option.lstrip("-").partition("=")
        if name != "hash" or not re.fullmatch(r"(sha256|sha384|sha512):[0-9a-fA-F]+", value.strip()):
            raise DependencyError(
                f"{source}: {text!r}: only --hash=sha256:... options may follow a requirement", requirement=text
            )
        hashes.append(value.strip().lower())
    return requirement.strip(), sorted(set(hashes))


def _parse(text: str, source: str) -> Requirement:
    text = _split_hashes(text, source)[0]
    module = _packaging("requirements")
    try:
        requirement: Requirement = module.Requirement(text)
    except module.InvalidRequirement as exc:
        raise DependencyError(
            f"{source}: {text!r} is not a requirement ({exc}); URLs, paths and editable "
            "installs are refused, publish a wheel in a find_links folder instead",
            requirement=text,
        ) from None
    return requirement


def _canonical_name(name: str) -> str:
    canonical: str = _packaging("utils").canonicalize_name(name)
    return canonical


def _normalise(text: str, source: str) -> str:
    """One spelling per requirement: canonical names, sorted extras and specifiers, the marker, then its
    sorted ``--hash`` pins (kept: with any of them pip checks every download against its pins)."""
    hashes = "".join(f" --hash={digest}" for digest in _split_hashes(text, source)[1])
    requirement = _parse(text, source)
    if requirement.url:
        raise DependencyError(
            f"{source}: {text!r} is a direct URL reference, which the environment key could "
            "not follow; publish a wheel in a find_links folder instead",
            requirement=text,
        )
    extras = ",".join(sorted(_canonical_name(extra) for extra in requirement.extras))
    marker = f"; {requirement.marker}" if requirement.marker is not None else ""
    return (
        f"{_canonical_name(requirement.name)}{f'[{extras}]' if extras else ''}{requirement.specifier}{marker}{hashes}"
    )


def _applies(requirement: Requirement) -> bool:
    # "extra" is undefined outside an extra's context and would make evaluate() raise.
    return requirement.marker is None or bool(requirement.marker.evaluate({"extra": ""}))


def _requirements_lines(file: Path) -> list[str]:
    try:
        text = file.read_text(encoding="utf-8").replace("\\\n", "")  # pip's line continuation
    except (OSError, UnicodeDecodeError) as exc:
        raise DependencyError(f"cannot read {file}: {exc}", path=str(file)) from None
    found = []
    for raw in text.splitlines():
        line = _COMMENT.sub("", raw).strip()
        if line.startswith(_REFUSED_OPTIONS):
            raise DependencyError(
                f"{file}: {line!r} is refused: list the requirements themselves (editable "
                "installs and included files cannot be hashed into an environment key)",
                path=str(file),
                requirement=line,
            )
        if line and not line.startswith("-"):
            found.append(line)
    return found


def _pyproject_dependencies(file: Path) -> list[str] | None:
    """``[project] dependencies``, or ``None`` when the file declares none (it may hold tool settings only)."""
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise DependencyError(f"cannot read {file}: {exc}", path=str(file)) from None
    project = data.get("project")
    if not isinstance(project, dict) or "dependencies" not in project:
        return None
    dependencies = project["dependencies"]
    if not isinstance(dependencies, list) or not all(isinstance(item, str) for item in dependencies):
        raise DependencyError(f"{file}: [project] dependencies must be a list of strings", path=str(file))
    return dependencies


def _imported_distributions() -> dict[str, str]:
    """Canonical name -> distribution name, for every distribution a top-level module of is imported."""
    top_level = {name.partition(".")[0] for name in list(sys.modules)}
    mapping = importlib.metadata.packages_distributions()
    return {_canonical_name(dist): dist for module in top_level & mapping.keys() for dist in mapping[module]}


@cache
def _runtime_closure() -> frozenset[str]:
    """plugin-host's runtime dependencies and all of theirs, as canonical names."""
    try:
        roots = list(importlib.metadata.requires("plugin-host") or ())
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        roots = []
    seen: set[str] = {"plugin-host"}
    pending = [*roots, *_RUNTIME]
    while pending:
        requirement = _parse(pending.pop(), "plugin-host's dependencies")
        name = _canonical_name(requirement.name)
        if name in seen or not _applies(requirement):
            continue
        seen.add(name)
        try:
            pending.extend(importlib.metadata.requires(name) or ())
        except importlib.metadata.PackageNotFoundError:
            continue
    return frozenset(seen)


def _has_extensions(distribution: str) -> bool:
    files = importlib.metadata.distribution(distribution).files or ()
    return any(str(file).endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)) for file in files)


def _top_level_names(folder: Path) -> set[str]:
    """The top-level modules and packages a ``--target`` folder provides."""
    names = set()
    for entry in folder.iterdir():
        if entry.name.startswith(".") or entry.name.endswith((".dist-info", ".data")) or entry.name in _NOT_MODULES:
            continue
        names.add(entry.name.partition(".")[0] if entry.is_file() else entry.name)
    return names


def read_runtime_metadata() -> None:
    """Read now what :func:`activate_environment` needs of the host's own installation (plugin-host's
    dependencies, the ``packaging`` library): a sandbox root does so before it switches to a uid of its own,
    which may not be allowed to read that installation (a Python under a ``0700`` home)."""
    _packaging("requirements")
    _packaging("utils")
    _runtime_closure()


def _evictable(names: set[str]) -> set[str]:
    if not names:  # nothing the environment provides is loaded: no metadata to read
        return set()
    mapping = importlib.metadata.packages_distributions()
    runtime = _runtime_closure()
    return {
        name
        for name in names
        if name in mapping
        and not any(_canonical_name(dist) in runtime or _has_extensions(dist) for dist in mapping[name])
    }


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    # flock locks belong to the open file description, so two threads of one process exclude each
    # other as well as two processes do; the kernel drops the lock if the holder dies.
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _discard_leftovers(final: Path) -> None:
    """Under the key's lock: whatever is there for this key and not complete was abandoned by a crash."""
    for leftover in final.parent.glob(f".{final.name}.tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    if final.exists():
        shutil.rmtree(final, ignore_errors=True)


def _install(
    wanted: list[str], final: Path, find_links: list[str], no_index: bool, timeout: float, report: Callable[[str], None]
) -> None:
    started = time.monotonic()
    report(f"installing {', '.join(wanted)} into environment {final.name[:12]}")
    temporary = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        _pip_install(wanted, temporary, find_links, no_index, timeout)
        _write_marker(temporary, wanted)
        _move_into_place(temporary, final)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    report(f"installed in {time.monotonic() - started:.1f} s: {final}")


def _pip_install(wanted: list[str], target: Path, find_links: list[str], no_index: bool, timeout: float) -> None:
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--target",
        str(target),
        "--no-user",
        "--disable-pip-version-check",
        "--no-input",
    ]
    command += ["--no-index"] if no_index else []
    for link in find_links:
        command += ["--find-links", link]
    packages = [_canonical_name(_parse(text, "requirement").name) for text in wanted]
    if any(_split_hashes(text, "requirement")[1] for text in wanted):
        # Pins only work from a requirements file; with one, pip refuses anything unpinned or mismatched.
        pinned = target / ".requirements.txt"
        pinned.write_text("".join(f"{text}\n" for text in wanted), encoding="utf-8")
        arguments = ["--require-hashes", "-r", str(pinned)]
    else:
        arguments = list(wanted)
    try:
        code = _run_pip([*command, *arguments], target / LOG_NAME, timeout)
    except subprocess.TimeoutExpired:
        raise DependencyError(
            f"pip did not install {', '.join(packages)} within {timeout:g} s and was killed",
            packages=packages,
            requirements=wanted,
            output=_tail(target / LOG_NAME),
        ) from None
    if code != 0:
        output = _tail(target / LOG_NAME)
        raise DependencyError(
            f"pip could not install {', '.join(wanted)} (packages: {', '.join(packages)}; "
            f"exit status {code}); its last lines:\n{output}",
            packages=packages,
            requirements=wanted,
            output=output,
        )


PIP_IN_OWN_SESSION = True
"""Whether pip runs in a session of its own (so a timeout kills its build backends too).  A sandbox
process installing on a member sets it to ``False``: pip then stays in the sandbox's process group
and dies with the sandbox (a destroy, a lost host) instead of outliving it."""


def _run_pip(command: list[str], log: Path, timeout: float) -> int:
    """Run pip with its output in ``log``; a seam, so tests can count or fake installs."""
    own_session = PIP_IN_OWN_SESSION
    with open(log, "wb") as output:
        # A file, not a pipe: nobody reads a pipe while we wait, and a full one would hang pip.
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, start_new_session=own_session
        )
        try:
            return process.wait(timeout)
        except BaseException:
            try:
                if own_session:
                    os.killpg(process.pid, signal.SIGKILL)
                else:
                    process.kill()
            except ProcessLookupError:
                pass
            process.wait()
            raise


def _tail(log: Path) -> str:
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-_TAIL_LINES:])


def _write_marker(folder: Path, wanted: list[str]) -> None:
    record = {"requirements": wanted, "python": list(sys.version_info[:2]), "created": time.time()}
    (folder / MARKER_NAME).write_text(json.dumps(record, indent=2), encoding="utf-8")


def _move_into_place(temporary: Path, final: Path) -> None:
    try:
        os.replace(temporary, final)  # atomic: the final folder appears complete or not at all
    except OSError as exc:
        if not (final / MARKER_NAME).is_file():
            raise DependencyError(f"cannot move the new environment into {final}: {exc}", path=str(final)) from None
        # Another process (one not holding our lock) finished the same set first: keep its folder.
        shutil.rmtree(temporary, ignore_errors=True)


def copy_readable(environment: str | os.PathLike[str], target: Path) -> None:
    """Copy a dependency environment to ``target`` (which must not exist), readable by every user: folders
    ``0755``, files ``0644`` (``0755`` if executable), symlinks as they are; for a process of another uid that
    cannot read ``state_dir`` (a sandbox or a validation run as a user of its own).  The copy belongs to the
    caller (root): that uid may read it, never change it."""
    shutil.copytree(environment, target, symlinks=True)
    for folder, _, files in os.walk(target):
        os.chmod(folder, 0o755)
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, 0o755 if os.stat(path).st_mode & 0o100 else 0o644)
