"""Profiles on every path (issue #15, SECURITY_REVIEW F5): code bound for a sandbox is scanned with the
sandbox's own profile, whatever the host's default, on every way in: ``hot_reload_source``, a compiled
folder given to ``hot_reload``, the CLI ``reload``, watch mode, admin messages sent by hand (a reload, a
batch reload, a create) and a rollback to a stored version.  The admin is where every path crosses, so
its scan is the one that holds; a refusal changes nothing (version, history, running code)."""

from __future__ import annotations

import hashlib
import queue
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import attrs
import pytest
from conftest import SAMPLES, Scene

from plugin_host import Host, HostConfig
from plugin_host import messages as msgs
from plugin_host._cli.watch import ReloadReport, Watcher
from plugin_host.cli import main
from plugin_host.errors import SecurityViolationError
from plugin_host.values import Artifact

RESTRICTED = "r"
"""The module's restricted sandbox, on a host whose default profile is ``standard``."""
CLEAN = (SAMPLES / "counter" / "counter.py").read_text()
EVIL = CLEAN.replace("from actors import Plugin", "import subprocess\nfrom actors import Plugin").replace(
    'state["count"] + 1', 'state["count"] + 1000'
)
"""The counter, importing ``subprocess`` at line 3 and adding 1000 on ``inc`` (so its running shows)."""
EVIL_LINE = 3
ADMIN_SAYS = "sandbox {!r} runs under the restricted profile"
"""How the admin's refusal begins (the host's compile says only what it found)."""


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    """A ``standard`` host running the counter in the ``restricted`` sandbox :data:`RESTRICTED`."""
    base = tmp_path_factory.mktemp("profiles")
    state_dir = base / "state"
    state_dir.mkdir()
    config = HostConfig(state_dir=state_dir, heartbeat_interval=0.2, call_timeout=10.0, start_timeout=20.0)
    assert config.security_profile == "standard"
    with Host(config) as host:
        host.create_sandbox(
            RESTRICTED, "root:Root", sandbox_path=counter_folder(base / "clean"), security_profile="restricted"
        )
        yield Scene(host, base, state_dir)


def counter_folder(target: Path, source: str = CLEAN) -> Path:
    """A copy of ``samples/counter`` whose ``counter.py`` is ``source`` (made once per path)."""
    if not target.exists():
        shutil.copytree(SAMPLES / "counter", target, ignore=shutil.ignore_patterns("__pycache__"))
        (target / "counter.py").write_text(source)
    return target


def evil_artifact() -> Artifact:
    """:data:`EVIL` as a compiled artifact would carry it, made by hand (no compile, no scan)."""
    return Artifact("counter", "counter.py", hashlib.sha256(EVIL.encode()).hexdigest(), EVIL)


def ask(host: Host, message: msgs.Request[Any], timeout: float = 20.0) -> Any:
    """Send ``message`` to the admin from the test thread, as any holder of the host's key could; its reply."""
    deadline = time.monotonic() + timeout
    reply = host.actor_system.ask(host.admin_address, message, timeout)
    while isinstance(reply, (msgs.Ok, msgs.Failed)) and reply.corr != message.corr and time.monotonic() < deadline:
        reply = host.actor_system.listen(max(0.01, deadline - time.monotonic()))
    return reply


def assert_refused(error: BaseException, sandbox_id: str = RESTRICTED, *, by_host: bool = False) -> None:
    """A refusal of :data:`EVIL` by the restricted scan, naming the file and the line of the import: the admin's
    (which names the sandbox), or with ``by_host`` the host's own compile (before anything was sent)."""
    assert isinstance(error, SecurityViolationError), repr(error)
    assert any(line == EVIL_LINE and "subprocess" in message for _, line, message in error.errors), error.errors
    assert f"counter.py:{EVIL_LINE}" in str(error)
    assert (ADMIN_SAYS.format(sandbox_id) in str(error)) is not by_host, str(error)


def assert_unchanged(host: Host, sandbox_id: str, history: object) -> None:
    """Nothing moved: the same version history (no version stored or failed), and the old code answers."""
    assert host.get_version_history(sandbox_id, "counter") == history
    assert host.get_module_version(sandbox_id, "counter") == history.current_version  # type: ignore[attr-defined]
    before = host.call(sandbox_id, "counter", "get")
    assert host.call(sandbox_id, "counter", "inc") == before + 1  # the clean code: EVIL would add 1000


def test_hot_reload_source_of_a_subprocess_import_is_refused_in_a_restricted_sandbox(scene: Scene) -> None:
    """The review's experiment: ``hot_reload_source`` of ``import subprocess`` into a ``restricted`` sandbox of a
    ``standard`` host raises SecurityViolationError (file and line) from the host's compile, which uses the
    sandbox's profile (``SandboxInfo.security_profile``), and changes nothing."""
    history = scene.host.get_version_history(RESTRICTED, "counter")
    with pytest.raises(SecurityViolationError) as caught:
        scene.host.hot_reload_source(RESTRICTED, EVIL, "counter")
    assert_refused(caught.value, by_host=True)  # compiled under the sandbox's profile: refused before sending
    assert scene.host.get_sandbox_info(RESTRICTED).security_profile == "restricted"
    assert_unchanged(scene.host, RESTRICTED, history)


def test_a_compiled_folder_given_to_hot_reload_is_refused_in_a_restricted_sandbox(scene: Scene) -> None:
    """``compile_sandbox`` knows no sandbox (it compiles under the host's ``standard``: a warning), but the
    ``hot_reload`` of its artifacts into the restricted sandbox is refused."""
    history = scene.host.get_version_history(RESTRICTED, "counter")
    info = scene.host.compile_sandbox(counter_folder(scene.base / "evil", EVIL))
    assert "security warning" in info.output
    with pytest.raises(SecurityViolationError) as caught:
        scene.host.hot_reload(RESTRICTED, info)
    assert_refused(caught.value)
    assert_unchanged(scene.host, RESTRICTED, history)


def test_the_cli_reload_is_refused_in_a_restricted_sandbox(
    scene: Scene, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``plugin-host reload r FOLDER --port P`` as a user types it exits 1 with the file and line, from its local
    compile under the sandbox's profile; nothing changes."""
    monkeypatch.setenv("PLUGIN_HOST_STATE_DIR", str(scene.state_dir))
    history = scene.host.get_version_history(RESTRICTED, "counter")
    folder = counter_folder(scene.base / "evil", EVIL)
    assert main(["reload", RESTRICTED, str(folder), "--port", str(scene.host.admin_port)]) == 1
    err = capsys.readouterr().err
    assert "security violation" in err and f"counter.py:{EVIL_LINE}" in err, err
    assert ADMIN_SAYS.format(RESTRICTED) not in err  # compiled locally under the sandbox's profile: never sent
    assert_unchanged(scene.host, RESTRICTED, history)


@pytest.mark.parametrize("batch", [False, True], ids=["HotReload", "BatchHotReload"])
def test_a_hand_made_reload_message_is_refused_by_the_admin(scene: Scene, batch: bool) -> None:
    """A ``HotReload`` (or ``BatchHotReload``) sent straight to the admin, with no compile or scan before it,
    carrying ``import subprocess`` for the restricted sandbox: the admin refuses it itself."""
    history = scene.host.get_version_history(RESTRICTED, "counter")
    corr = uuid.uuid4().hex
    if batch:
        reply = ask(scene.host, msgs.BatchHotReload(corr=corr, sandbox_ids=[RESTRICTED], artifacts=[evil_artifact()]))
        assert isinstance(reply, msgs.Ok), reply
        reply = reply.value[0]
    else:
        reply = ask(scene.host, msgs.HotReload(corr=corr, sandbox_id=RESTRICTED, artifacts=[evil_artifact()]))
    assert isinstance(reply, msgs.Failed), reply
    assert_refused(reply.error)
    assert_unchanged(scene.host, RESTRICTED, history)


def test_a_hand_made_create_is_scanned_by_the_admin(scene: Scene) -> None:
    """A ``CreateSandbox`` sent straight to the admin (the host's scan of the folder skipped, as when the folder
    changes between that scan and the admin's read) of a restricted sandbox from a forbidden folder: refused."""
    folder = counter_folder(scene.base / "evil", EVIL)
    request = msgs.CreateSandbox(
        corr=uuid.uuid4().hex,
        sandbox_id="t",
        supervisor="root:Root",
        sandbox_path=str(folder),
        security_profile="restricted",
    )
    reply = ask(scene.host, request)
    assert isinstance(reply, msgs.Failed), reply
    assert_refused(reply.error, "t")
    assert "t" not in [info.id for info in scene.host.list_sandboxes()]


def test_a_watched_save_is_refused_in_a_restricted_sandbox(scene: Scene) -> None:
    """Watch mode (``run --watch``): a saved ``import subprocess`` is reported as a SecurityViolationError and
    the running version stays."""
    folder = counter_folder(scene.base / "watched")
    reports: queue.Queue[ReloadReport] = queue.Queue()
    watcher = Watcher(scene.host, "w", folder, reports.put, interval=0.05, debounce=0.1)
    scene.host.create_sandbox("w", "root:Root", sandbox_path=folder, security_profile="restricted")
    try:
        history = scene.host.get_version_history("w", "counter")
        with watcher:
            (folder / "counter.py").write_text(EVIL)
            report = reports.get(timeout=30)
        assert report.error is not None
        assert_refused(report.error, "w", by_host=True)  # compiled under the sandbox's profile: never sent
        assert report.running == {"counter": 1, "root": 1} and report.versions == {}
        assert_unchanged(scene.host, "w", history)
    finally:
        scene.host.destroy_sandbox("w")


def test_a_standard_sandbox_accepts_the_same_reload(scene: Scene) -> None:
    """The control: under ``standard`` the same ``hot_reload_source`` goes through (a warning, not a refusal)."""
    scene.host.create_sandbox(
        "s", "root:Root", sandbox_path=counter_folder(scene.base / "clean"), security_profile="standard"
    )
    try:
        assert scene.host.hot_reload_source("s", EVIL, "counter").new_version == 2
        assert scene.host.call("s", "counter", "inc") == 1000
    finally:
        scene.host.destroy_sandbox("s")


def test_a_rollback_to_a_version_the_restricted_profile_refuses_is_refused(host: Host, tmp_path: Path) -> None:
    """Versions outlive a sandbox: ``x`` ran under ``standard`` and stored EVIL as version 2, then ``x`` was
    made again ``restricted``.  Rolling back to version 2 goes through the admin's scan and is refused."""
    folder = counter_folder(tmp_path / "clean")
    host.create_sandbox("x", "root:Root", sandbox_path=folder, security_profile="standard")
    assert host.hot_reload_source("x", EVIL, "counter").new_version == 2
    host.destroy_sandbox("x")
    host.create_sandbox("x", "root:Root", sandbox_path=folder, security_profile="restricted")
    history = host.get_version_history("x", "counter")
    assert history.current_version == 1 and 2 in [v.version for v in history.versions]
    with pytest.raises(SecurityViolationError) as caught:
        host.rollback_module("x", "counter", 2)
    assert_refused(caught.value, "x")
    assert_unchanged(host, "x", history)


def test_a_batch_reload_is_judged_per_sandbox(scene: Scene) -> None:
    """``batch_hot_reload`` of the same code into a restricted and a standard sandbox: each sandbox's own profile
    decides, so the restricted one refuses (unchanged) and the standard one takes it."""
    folder = counter_folder(scene.base / "clean")
    scene.host.create_sandbox("b", "root:Root", sandbox_path=folder, security_profile="standard")
    try:
        history = scene.host.get_version_history(RESTRICTED, "counter")
        refused, taken = scene.host.batch_hot_reload([RESTRICTED, "b"], evil_artifact())
        assert_refused(refused)
        assert not isinstance(taken, BaseException) and taken.new_version == 2, taken
        assert scene.host.call("b", "counter", "inc") == 1000
        assert_unchanged(scene.host, RESTRICTED, history)
    finally:
        scene.host.destroy_sandbox("b")


def test_a_permissive_sandbox_on_a_restricted_host_takes_the_reload(config: HostConfig, tmp_path: Path) -> None:
    """The other way round: the sandbox's profile, not the host's, also when it is the looser one.
    ``hot_reload_source`` into a ``permissive`` sandbox of a ``restricted`` host is compiled and accepted."""
    with Host(attrs.evolve(config, security_profile="restricted")) as host:
        host.create_sandbox(
            "p", "root:Root", sandbox_path=counter_folder(tmp_path / "clean"), security_profile="permissive"
        )
        assert host.get_sandbox_info("p").security_profile == "permissive"
        assert host.hot_reload_source("p", EVIL, "counter").new_version == 2
        assert host.call("p", "counter", "inc") == 1000
