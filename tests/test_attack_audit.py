"""Attacks on the runtime audit (issue #15 §2, review F4), through the Host, as a hostile plugin makes them.

Each plugin here slips past the static scan of ``restricted`` (it calls ``getattr`` on a function's
parameter, which the scan cannot know is a module), so what stops it is the runtime audit: module
top-level code in the sandbox root and in a reload, switching the audit off through the audit module's
attributes, a thread that outlives its callback, and the operations the audit did not see before
(``os.kill``, ``os.remove``, ``os.rename``, ``os.rmdir``, ``resource.setrlimit``, reads outside the
sandbox's folders).  And the other way round: the plugin APIs, which are the runtime's work, run
under every profile and leave nothing in the audit log.
"""

from __future__ import annotations

import hashlib
import subprocess
import textwrap
from pathlib import Path

import pytest
from conftest import eventually, pid_alive

from plugin_host import Host
from plugin_host.errors import HotReloadError, SandboxStartError
from plugin_host.values import Artifact, Event

PROFILES = ["restricted", "standard", "permissive"]

_HELPERS = '''
import importlib, io, os, resource, threading
from actors import ChildSpec, Plugin, Supervisor


def _attribute(namespace, name):
    """``getattr`` on a parameter: the static scan cannot tell that it is a module."""
    return getattr(namespace, name)


def _set(namespace, name, value):
    setattr(namespace, name, value)


def _try(operation):
    try:
        operation()
        return "done"
    except PermissionError:
        return "refused"


def _write(path):
    return _try(lambda: _attribute(io, "op" + "en")(path, "w").close())
'''

ATTACK = (
    _HELPERS
    + '''

class Attack(Plugin):
    """write, switch_off, late_write/late_result, and the operations the audit did not see before."""

    def init(self, args):
        return []

    def handle_call(self, request, state):
        kind, arg = request
        if kind == "write":
            return _write(arg), state
        if kind == "switch_off":
            return self.switch_off(arg), state
        if kind == "late_write":  # a thread that writes after this callback returned
            late = threading.Timer(0.2, lambda: state.append(_write(arg)))
            late.start()
            return "started", state
        if kind == "late_result":
            return list(state), state
        if kind == "others":
            return self.others(*arg), state
        raise ValueError(kind)

    def switch_off(self, path):
        """Everything that switched the audit off before #15, then a write."""
        audit = _attribute(importlib, "import_" + "module")("plugin_host._" + "audit")
        outcomes = []
        refused = 0
        for profile in ("permissive", "standard", "restricted"):  # whichever is this sandbox's
            try:
                audit.install(self.sandbox_id, profile, print)
            except PermissionError:
                refused += 1
        outcomes.append("install refused" if refused == 3 else "installed")
        pause = getattr(getattr(audit, "Auditor", None), "paused", None) or getattr(audit, "paused", None)
        outcomes.append("no pause" if pause is None else "pause")
        for name in ("_active", "_local", "_installed", "_hook", "install"):
            _set(audit, name, None)
        # A fresh copy of the module adds a second, permissive hook: the first one still sees everything.
        _attribute(importlib, "reload")(audit).install(self.sandbox_id, "permissive", print)
        outcomes.append(_write(path))
        return outcomes

    def others(self, pid, victim, folder, outside):
        """kill, remove, unlink, rename, rmdir, setrlimit, a read outside the sandbox's folders."""
        limits = resource.getrlimit(resource.RLIMIT_NOFILE)
        return [
            _try(lambda: _attribute(os, "ki" + "ll")(pid, 15)),
            _try(lambda: _attribute(os, "kill" + "pg")(pid, 15)),
            _try(lambda: _attribute(os, "re" + "move")(victim)),
            _try(lambda: _attribute(os, "un" + "link")(victim)),
            _try(lambda: _attribute(os, "re" + "name")(victim, victim + ".moved")),
            _try(lambda: _attribute(os, "re" + "place")(victim, victim + ".moved")),
            _try(lambda: _attribute(os, "rm" + "dir")(folder)),
            _try(lambda: _attribute(resource, "set" + "rlimit")(resource.RLIMIT_NOFILE, limits)),
            _try(lambda: _attribute(io, "op" + "en")(outside).close()),
        ]


class AttackRoot(Supervisor):
    max_restarts, max_seconds = 10, 10
    children = [ChildSpec("attack", Attack)]
'''
)

POLITE = '''
import logging

from actors import ChildSpec, Plugin, Supervisor


class Asker(Plugin):
    """Uses one plugin API per request: call, cast, send_after, stop, and logging."""

    def init(self, args):
        return []

    def handle_call(self, request, state):
        kind, arg = request
        if kind == "call":
            return self.call("answerer", ("echo", arg)), state
        if kind == "cast":
            self.cast("answerer", arg)
            return "cast", state
        if kind == "send_after":
            self.send_after(arg, "tick")
            return "scheduled", state
        if kind == "stop":
            self.stop("normal")
            return "stopping", state
        if kind == "log":
            logging.getLogger("asker").warning("hello %s", arg)
            return "logged", state
        if kind == "infos":
            return list(state), state
        raise ValueError(kind)

    def handle_info(self, message, state):
        return state + [message]


class Answerer(Plugin):
    """Echoes calls and keeps what it was cast."""

    def init(self, args):
        return []

    def handle_call(self, request, state):
        kind, arg = request
        return (arg if kind == "echo" else list(state)), state

    def handle_cast(self, message, state):
        return state + [message]


class PoliteRoot(Supervisor):
    max_restarts, max_seconds = 10, 10
    children = [ChildSpec("answerer", Answerer), ChildSpec("asker", Asker)]
'''


def _folder(tmp_path: Path, name: str, files: dict[str, str]) -> str:
    folder = tmp_path / name
    folder.mkdir()
    for module, source in files.items():
        (folder / f"{module}.py").write_text(source)
    return str(folder)


@pytest.fixture
def attack(tmp_path: Path) -> str:
    """A sandbox folder whose plugin attacks the audit (``attack:AttackRoot``)."""
    return _folder(tmp_path, "attack", {"attack": ATTACK})


def _records(host: Host, sandbox_id: str, event: str, detail: str) -> list[tuple[str, bool]]:
    return [(r.actor, r.blocked) for r in host.audit_log(sandbox_id) if r.event == event and detail in r.detail]


# -- the runtime's own work ---------------------------------------------------------------------------


@pytest.mark.parametrize("api", ["call", "cast", "send_after", "stop", "log"])
@pytest.mark.parametrize("profile", PROFILES)
def test_every_plugin_api_works_under_every_profile_and_is_never_audited(
    host: Host, tmp_path: Path, profile: str, api: str
) -> None:
    """self.call, self.cast, self.send_after and self.stop, and a log line (forwarded by the runtime's
    transport), are the runtime's work: they work under every profile (a cast or a log line under
    restricted failed with FileNotFoundError: the refused transport made Thespian's log probe the
    temporary folders), and the audit log of a plugin that only uses them is empty (it held the
    runtime's sockets and temp files as the plugin's)."""
    events: list[Event] = []
    host.subscribe(events.append)
    host.create_sandbox(
        "p", "polite:PoliteRoot", sandbox_path=_folder(tmp_path, "polite", {"polite": POLITE}), security_profile=profile
    )
    if api == "call":
        assert host.call("p", "asker", ("call", "hello")) == "hello"
    elif api == "cast":
        assert host.call("p", "asker", ("cast", "hello")) == "cast"
        assert eventually(lambda: host.call("p", "answerer", ("items", None)) == ["hello"])
    elif api == "send_after":
        assert host.call("p", "asker", ("send_after", 10)) == "scheduled"
        assert eventually(lambda: host.call("p", "asker", ("infos", None)) == ["tick"])
    elif api == "log":
        assert host.call("p", "asker", ("log", "world")) == "logged"
    else:
        assert host.call("p", "asker", ("stop", None)) == "stopping"
        assert eventually(lambda: any(e.kind == "restarted" and e.actor == "asker" for e in events))
        assert host.call("p", "asker", ("call", "again")) == "again"
    # A callback's records are sent to the root before its reply; one more round trip for them to get on.
    assert host.call("p", "asker", ("call", "last")) == "last"
    assert host.audit_log("p") == []


# -- module top-level code ----------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["standard", "restricted"])
def test_top_level_code_in_the_sandbox_root_is_audited(host: Host, tmp_path: Path, profile: str) -> None:
    """A module's top-level code runs in the sandbox root as it is loaded: a write and ``os.system``
    reached through computed names are recorded under standard (blamed on the root), refused under
    restricted (the create fails, no file appears)."""
    marker = tmp_path / "root-was-here.txt"
    toplevel = _HELPERS + textwrap.dedent(f"""
        _attribute(io, "op" + "en")({str(marker)!r}, "w").close()
        _attribute(os, "sys" + "tem")("true")


        class Quiet(Plugin):
            pass


        class Root(Supervisor):
            children = [ChildSpec("quiet", Quiet)]
    """)
    folder = _folder(tmp_path, "toplevel", {"toplevel": toplevel})
    if profile == "restricted":
        with pytest.raises(SandboxStartError, match="refused by the restricted profile"):
            host.create_sandbox("t", "toplevel:Root", sandbox_path=folder, security_profile=profile)
        assert not marker.exists()
        return
    host.create_sandbox("t", "toplevel:Root", sandbox_path=folder, security_profile=profile)
    assert marker.exists()
    records = eventually(lambda: host.audit_log("t") if len(host.audit_log("t")) >= 2 else None)
    assert [(r.event, r.actor, r.blocked) for r in records] == [
        ("open", "(root)", False),
        ("os.system", "(root)", False),
    ]
    assert records[0].detail == str(marker)


@pytest.mark.parametrize("profile", ["standard", "restricted"])
def test_top_level_code_of_a_reload_is_audited_in_the_root_and_the_workers(
    host: Host, tmp_path: Path, attack: str, profile: str
) -> None:
    """A hot reload runs the new module's top-level code in the root, then in each worker that runs
    it: under standard each process's write is recorded (root and worker), under restricted the root
    refuses it, the reload fails and nothing is written."""
    host.create_sandbox("a", "attack:AttackRoot", sandbox_path=attack, security_profile=profile)
    marker = tmp_path / "reload-was-here.txt"
    source = ATTACK + f'\n_attribute(io, "op" + "en")({str(marker)!r}, "a").close()\n'
    artifact = Artifact("attack", "attack.py", hashlib.sha256(source.encode()).hexdigest(), source)
    if profile == "restricted":
        with pytest.raises(HotReloadError, match="refused by the restricted profile"):
            host.hot_reload("a", artifact)
        assert not marker.exists()
        assert eventually(lambda: _records(host, "a", "open", str(marker))) == [("(root)", True)]
        return
    host.hot_reload("a", artifact)
    assert marker.exists()
    found = eventually(lambda: (lambda got: got if len(got) >= 2 else None)(_records(host, "a", "open", str(marker))))
    assert sorted(found) == [("(root)", False), ("attack", False)]


# -- switching the audit off ----------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["standard", "restricted"])
def test_the_audit_cannot_be_switched_off_through_its_module(
    host: Host, tmp_path: Path, attack: str, profile: str
) -> None:
    """Installing an audit of its own (refused), looking for a public pause (none), setting the audit
    module's old switches (``_active``, ``_local`` ...) and reloading the module to install a second,
    permissive hook leave the plugin audited: its next write is recorded (standard) or refused
    (restricted)."""
    host.create_sandbox("a", "attack:AttackRoot", sandbox_path=attack, security_profile=profile)
    target = tmp_path / "switched-off.txt"
    outcomes = host.call("a", "attack", ("switch_off", str(target)))
    refused = profile == "restricted"
    assert outcomes == ["install refused", "no pause", "refused" if refused else "done"]
    assert target.exists() is not refused
    assert eventually(lambda: _records(host, "a", "open", str(target))) == [("attack", refused)]


@pytest.mark.parametrize("profile", ["standard", "restricted"])
def test_a_thread_that_outlives_its_callback_stays_audited(
    host: Host, tmp_path: Path, attack: str, profile: str
) -> None:
    """A timer the plugin starts writes after the callback returned: still recorded (standard, sent on
    with the next heartbeat) or refused (restricted)."""
    host.create_sandbox("a", "attack:AttackRoot", sandbox_path=attack, security_profile=profile)
    target = tmp_path / "late.txt"
    assert host.call("a", "attack", ("late_write", str(target))) == "started"
    refused = profile == "restricted"
    assert eventually(lambda: host.call("a", "attack", ("late_result", None))) == ["refused" if refused else "done"]
    assert target.exists() is not refused
    assert eventually(lambda: _records(host, "a", "open", str(target))) == [("attack", refused)]


# -- what the audit did not see before ----------------------------------------------------------------------


def test_restricted_refuses_kill_remove_rename_rmdir_setrlimit_and_reads_outside(
    host: Host, tmp_path: Path, attack: str
) -> None:
    """Under restricted a plugin can neither signal a process of the host's user, nor delete, move or
    remove what is not its own, nor change its limits, nor read a file outside its folders; each
    attempt is a blocked record."""
    host.create_sandbox("r", "attack:AttackRoot", sandbox_path=attack, security_profile="restricted")
    victim, folder, outside = tmp_path / "victim.txt", tmp_path / "folder", tmp_path / "secret.txt"
    victim.write_text("keep")
    folder.mkdir()
    outside.write_text("secret")
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        args = (sleeper.pid, str(victim), str(folder), str(outside))
        assert host.call("r", "attack", ("others", args)) == ["refused"] * 9
        assert pid_alive(sleeper.pid) and victim.read_text() == "keep" and folder.is_dir()
        expected = {"os.kill", "os.killpg", "os.remove", "os.rename", "os.rmdir", "resource.setrlimit", "open"}
        records = eventually(lambda: (lambda got: got if len(got) >= 9 else None)(host.audit_log("r")))
        assert {r.event for r in records} == expected and all(r.blocked for r in records)
        assert next(r for r in records if r.event == "open").detail == f"{outside} (read)"
    finally:
        sleeper.kill()
        sleeper.wait()
