"""Red team: the attacks of SECURITY_REVIEW.md F1, F2, F3, F7 and F9, each tried and each failing.

Another local user sends crafted pickles to every port of a host and tries the operator API; a
plugin in sandbox A sends every admin request about sandbox B, and control messages straight to
B's root, worker and the host's monitor; state folders that others control are refused.  Each
test asserts the attack changed nothing: no code ran, B's state, code, history and processes are
the same, and the host still answers.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import pickle
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, Callable

import attrs
import cloudpickle
import psutil
import pytest
from conftest import eventually, pid_alive, sample
from thespian.actors import ActorAddress, ActorExitRequest
from thespian.system.transport.IPBase import TCPv4ActorAddress

from actors import _messages as m
from plugin_host import Host, HostConfig, ResourceLimits, _wire
from plugin_host import messages as msgs
from plugin_host.errors import ConfigError, PluginError, PluginHostError, StateDirInUseError
from plugin_host.messages import GetSandboxCode, HostBoot, HostBreach, HostShutdown
from plugin_host.values import Artifact, AuditRecord, Event

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another local user (CI runs as root)")


def run_as_nobody(fn: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Run ``fn`` in a child forked from this process that dropped to uid/gid 65534; return its JSON result."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            result: Any = {"ok": fn()}
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            result = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(write, json.dumps(result).encode())
        os._exit(0)
    os.close(write)
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([read], [], [], deadline - time.monotonic())
            if not ready:
                break
            chunk = os.read(read, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(read)
        if not data:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert data, "the other user's process gave no answer in time"
    result = json.loads(data)
    assert "ok" in result, result["error"]
    return result


def listening_ports(pids: list[int]) -> dict[int, int]:
    """port -> pid of every TCP socket listening in these processes."""
    ports = {}
    for pid in pids:
        try:
            for conn in psutil.Process(pid).net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    ports[conn.laddr.port] = pid
        except psutil.Error:
            continue
    return ports


def address(port: int) -> ActorAddress:
    """A Thespian address for a loopback port (as an attacker who read /proc/net/tcp would make one)."""
    return ActorAddress(TCPv4ActorAddress("127.0.0.1", port, external=True))


class _Exploit:
    """Unpickling this runs code: it writes its marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({self.marker!r}, 'a').write('ran in ' + str(__import__('os').getpid()) + '\\n')",))


def host_key(config: HostConfig) -> bytes:
    """The host key, derived from the state_dir's credential as the host does."""
    return bytes(_wire.host_key_from_cookie(config.credential_file.read_bytes().strip()))


# -- another local user ----------------------------------------------------------------------------


@as_root
def test_another_local_user_runs_no_code_through_any_port_and_cannot_drive_the_host(
    host: Host, config: HostConfig, tmp_path: Path
) -> None:
    """F1/F2: uid 65534 sends crafted pickles (a raw Thespian frame, a forged plugin-host frame) to every
    listening port of the host's processes, the application's included: no code runs, the host still
    answers and counts the frames; the same user cannot use the operator API either."""
    host.create_sandbox("c", "root:Root", sandbox_path=sample("counter"))
    assert host.call("c", "counter", "inc") == 1
    marker = tmp_path / "pwned.txt"
    ports = listening_ports([os.getpid()] + [p.pid for p in host._system.process_tree()])
    assert len(ports) >= 6 and any(pid == os.getpid() for pid in ports.values())  # the app's own ports too
    payload = pickle.dumps(("sender", _Exploit(marker)))
    forged = _wire.MAGIC + b"\x00\x01h" + bytes(32) + payload  # the host's key id, a made-up tag

    def attack() -> dict[str, Any]:
        answers = {}
        for port in ports:
            for frame in (payload, forged):
                with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                    sock.sendall(b"%d>" % len(frame) + frame)
                    sock.settimeout(0.5)  # a dropped frame closes at once; an idle endpoint reads it later
                    try:
                        answers[f"{port}-{len(frame)}"] = sock.recv(100).decode("latin-1")
                    except OSError as exc:
                        answers[f"{port}-{len(frame)}"] = type(exc).__name__
        operator = {}
        for attempt in ({}, {"port": host.admin_port}):
            try:
                from plugin_host._client.operator import AdminClient

                AdminClient(config=HostConfig(state_dir=config.state_dir), **attempt).list_sandboxes()
                operator[str(attempt)] = "listed the sandboxes"
            except PluginHostError as exc:
                operator[str(attempt)] = f"{type(exc).__name__}: {exc}"
        return {"answers": answers, "operator": operator}

    result = run_as_nobody(attack)["ok"]
    assert host.call("c", "counter", "inc") == 2  # also runs this thread's context: its port reads its frames
    assert not marker.exists(), marker.read_text()
    # Closed unanswered (dropped), or not read yet by an idle context (dropped when it next runs): never an ACK.
    assert set(result["answers"].values()) <= {"", "TimeoutError"}, result["answers"]
    closed = sum(answer == "" for answer in result["answers"].values())
    assert closed >= len(result["answers"]) // 2  # idle ones: a context not in use, a worker's call endpoint
    assert all("listed" not in text and "ermission denied" in text for text in result["operator"].values()), result[
        "operator"
    ]
    assert eventually(lambda: host.nodes()[0].rejected_frames >= closed, timeout=10)


@as_root
def test_another_user_with_a_cookie_of_their_own_is_refused(host: Host, tmp_path: Path) -> None:
    """F2: an operator API pointed at the host's port with another credential fails fast with a clear
    error (one signed probe the host refuses), and the host records the refused frame."""
    own = Path(tempfile.mkdtemp(prefix="plugin-host-theirs-"))  # where uid 65534 can go (tmp_path is root's)
    os.chown(own, NOBODY, NOBODY)
    port = host.admin_port
    (Path(host.config.state_dir) / "run" / f"{port}.json").read_text()  # the host published itself

    def attach() -> str:
        from plugin_host._client.system import ActorSystemHandle
        from plugin_host._store import statedir as _statedir

        config = HostConfig(state_dir=own)
        _statedir.prepare(own)
        _statedir.cookie(config.credential_file, create=True)
        start = time.monotonic()
        try:
            ActorSystemHandle(config).attach_existing(port)
        except PluginHostError as exc:
            return f"{type(exc).__name__} after {time.monotonic() - start:.2f} s: {exc}"
        return "attached"

    try:
        outcome = run_as_nobody(attach)["ok"]
    finally:
        shutil.rmtree(own)
    assert outcome.startswith("CredentialError after 0.") and "refused the credential" in outcome, outcome
    assert eventually(lambda: host.nodes()[0].rejected_frames >= 1)


# -- a plugin against its neighbours -------------------------------------------------------------------

ATTACKER = textwrap.dedent('''
    import cloudpickle
    from actors import Plugin, Supervisor, ChildSpec


    class Attacker(Plugin):
        """Sends whatever it is given, from inside the sandbox, and keeps every answer."""

        def init(self, args):
            return []

        def handle_call(self, request, state):
            if request == "answers":
                return [describe(m) for m in state], state
            for target, message in cloudpickle.loads(request):
                if isinstance(message, tuple) and message[0] == "exploit":
                    message = ("sender", Exploit(message[1]))  # made here: unpickling it runs code
                if isinstance(message, tuple) and message[0] == "later":  # ("later", ms, [messages])
                    self.send_after(message[1], ("send", target, message[2]))
                    continue
                self._ph_runtime._worker.send(target, message)
            return len(state), state

        def handle_info(self, message, state):
            if isinstance(message, tuple) and message[:1] == ("send",):
                for each in message[2]:
                    self._ph_runtime._worker.send(message[1], each)
                return state
            return state + [message]


    class Exploit:
        """Unpickling this (anywhere) runs code: it writes its marker file."""

        def __init__(self, marker):
            self.marker = marker

        def __reduce__(self):
            return (exec, (f"open({self.marker!r}, 'a').write('ran in ' + str(__import__('os').getpid()))",))


    def describe(message):
        """(type, error type, corr, text) of an answer; an event's text is its kind and sandbox."""
        event = getattr(message, "event", None)
        text = f"{event.kind} {event.sandbox_id}" if event is not None else str(
            getattr(message, "error", getattr(message, "value", "")))
        error = type(getattr(message, "error", None)).__name__
        return type(message).__name__, error, getattr(message, "corr", None), text


    class Root(Supervisor):
        children = [ChildSpec("attacker", Attacker)]
''')


@pytest.fixture
def attacker(tmp_path: Path) -> str:
    """A sandbox folder whose plugin sends raw Thespian messages (what a hostile plugin can do)."""
    folder = tmp_path / "attacker"
    folder.mkdir()
    (folder / "attacker.py").write_text(ATTACKER)
    return str(folder)


@attrs.frozen
class Victim:
    """What must not change in sandbox B."""

    count: int
    root_pid: int | None
    worker_pid: int
    history: list[tuple[int, str, str]]
    status: str


def victim_state(host: Host) -> Victim:
    """B as the host sees it (the call reads without changing its count)."""
    info = host.get_sandbox_info("b")
    history = host.get_version_history("b", "counter")
    return Victim(
        host.call("b", "counter", "get"),
        info.pid,
        host.call("b", "counter", "pid"),
        [(v.version, v.status, v.checksum) for v in history.versions],
        info.status,
    )


def test_a_plugin_cannot_read_rewrite_or_destroy_another_sandbox(host: Host, attacker: str, tmp_path: Path) -> None:
    """F3/F9: every admin request sandbox A sends about B (or the host) is refused with AccessDeniedError and
    a ``denied`` event; control messages sent straight to B's root and worker, and a Watch to every host
    port, are dropped unread; a crafted pickle runs nowhere.  B's count, code, history and processes stay."""
    events: list[Event] = []
    host.subscribe(events.append)
    host.create_sandbox("a", "attacker:Root", sandbox_path=attacker)
    host.create_sandbox("b", "root:Root", sandbox_path=sample("counter"))
    for _ in range(5):
        host.call("b", "counter", "inc")
    before = victim_state(host)
    marker = tmp_path / "pwned.txt"
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        ports = listening_ports([p.pid for p in host._system.process_tree()])
        b_root = address(next(port for port, pid in ports.items() if pid == before.root_pid))
        b_worker = address(next(port for port, pid in ports.items() if pid == before.worker_pid))
        admin = host.admin_address
        evil = "class Counter:\n    pass\n"
        artifact = Artifact("counter", "counter.py", hashlib.sha256(evil.encode()).hexdigest(), evil)
        steal = msgs.Blob.dump(lambda state, old, new: {"count": 1000})
        requests = [
            msgs.DestroySandbox(sandbox_id="b"),
            msgs.RestartSandbox(sandbox_id="b"),
            HostShutdown(),
            msgs.CreateSandbox(sandbox_id="c", supervisor="root:Root", sandbox_path=sample("counter")),
            msgs.BatchCreate(specs=[]),
            msgs.BatchDestroy(sandbox_ids=["b"]),
            msgs.HotReload(sandbox_id="b", artifacts=[artifact], state_handler=steal),
            msgs.RollbackModule(sandbox_id="b", module="counter", version=1),
            msgs.BatchHotReload(sandbox_ids=["b"], artifacts=[artifact]),
            GetSandboxCode(sandbox_id="b"),
            msgs.GetSandboxInfo(sandbox_id="b"),
            msgs.ListSandboxes(),
            msgs.ListNodes(),
            msgs.LookupActor(sandbox_id="b", name="counter"),
            msgs.Call(sandbox_id="b", name="counter", request="inc"),
            msgs.Cast(sandbox_id="b", name="counter", message="inc"),
            msgs.Run(sandbox_id="b", fn=msgs.Blob.dump(lambda: 1)),
            msgs.GetAuditLog(sandbox_id="b"),
            msgs.GetResourceUsage(sandbox_id="b"),
            msgs.GetVersionHistory(sandbox_id="b", module="counter"),
            msgs.ListModuleVersions(sandbox_id="b", module="counter"),
            msgs.GetModuleVersion(sandbox_id="b", module="counter"),
            msgs.GetAuditLog(sandbox_id="a"),
            msgs.Run(sandbox_id="a", fn=msgs.Blob.dump(lambda: 1)),
        ]
        requests = [attrs.evolve(r, corr=f"r{i}") for i, r in enumerate(requests)]
        reports = [
            m.SandboxStatus("b", "failed", reason="forged"),
            m.TreeEvent("b", "crashed", "counter", "forged"),
            m.Sample("b", "counter", "max_memory_mb", 1.0, 1.0),
            HostBreach("b", "counter", "max_mailbox", 1, 1),
            m.Usage({"counter": 10**6}, "b"),
            m.AuditRecords("b", (AuditRecord("b", "counter", "open", "forged", time.time(), True),)),
            m.RootGone("b", before.root_pid or 0),
        ]
        unreadable = [
            HostBoot("boot", os.getpid(), 0.0, HostConfig()),  # a class no sandbox may send
            ("exploit", str(marker)),
        ]
        to_admin = [(admin, message) for message in requests + reports + unreadable]
        to_b = [
            (b_root, m.Stop()),
            (b_root, msgs.Run(sandbox_id="b", fn=msgs.Blob.dump(lambda: 1), corr="x1")),
            (b_root, m.Route("counter", msgs.Cast(sandbox_id="b", name="counter", message="reset"))),
            (b_worker, m.LoadCode("r", {}, [], {}, cloudpickle.dumps(lambda s, o, n: {"count": 1000}), False, 5.0)),
            (b_worker, msgs.Call(sandbox_id="b", name="counter", request="inc", corr="x2")),
            (b_worker, ActorExitRequest()),
            (b_root, ActorExitRequest()),
        ]
        watch = m.Watch("b", {"counter": sleeper.pid}, ResourceLimits(max_memory_mb=0.001, max_cpu_seconds=0.001), 0.1)
        to_monitor = [(address(port), watch) for port in ports]  # whichever of them is the monitor
        sent = host.call("a", "attacker", cloudpickle.dumps(to_admin + to_b + to_monitor))
        assert sent == 0

        def answered() -> list[tuple[str, str, str, str]] | None:
            answers = host.call("a", "attacker", "answers")
            return answers if {a[2] for a in answers} >= {r.corr for r in requests} else None

        answers = eventually(answered, timeout=20)
        replies = {corr: (kind, error, text) for kind, error, corr, text in answers}
        for request in requests:
            kind, error, text = replies[request.corr]
            assert (kind, error) == ("Failed", "AccessDeniedError"), (request, replies[request.corr])
            assert type(request).__name__ in text
        expected = {type(r).__name__ for r in requests + reports}
        denied = eventually(
            lambda: (lambda found: found if {e.details["request"] for e in found} >= expected else None)(
                [e for e in events if e.kind == "denied"]
            )
        )
        assert {e.sandbox_id for e in denied} == {"a"}
        assert eventually(lambda: host.nodes()[0].rejected_frames >= 1)  # the pickle, and B's processes' drops
        time.sleep(1.5)  # a Watch that got through would have its first sample and kill by now
        assert victim_state(host) == before
        assert host.get_sandbox_info("b").status == "running" and host.get_sandbox_info("a").status == "running"
        assert pid_alive(sleeper.pid) and sleeper.poll() is None
        assert not marker.exists()
        assert not any(
            e.sandbox_id == "b" and e.kind in ("crashed", "failed", "limit_breached", "reloaded", "stopped", "lost")
            for e in events
        )
        assert host.audit_log("b") == []
        assert host.nodes()[0].denied_requests >= len(requests)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_sandbox_may_ask_about_itself_and_hears_its_own_events_only(host: Host, attacker: str) -> None:
    """What a sandbox may do through the protocol: its own info and lookups, and a subscription that
    brings its own events only (B's crash never reaches A; A's own ``denied`` event does)."""
    host.create_sandbox("a", "attacker:Root", sandbox_path=attacker)
    host.create_sandbox("b", "root:Root", sandbox_path=sample("crashy"))
    admin = host.admin_address
    own = [
        msgs.GetSandboxInfo(sandbox_id="a", corr="i"),
        msgs.LookupActor(sandbox_id="a", name="attacker", corr="l"),
        msgs.Subscribe(corr="s"),
    ]
    host.call("a", "attacker", cloudpickle.dumps([(admin, r) for r in own]))
    answers = eventually(lambda: (lambda got: got if len(got) >= 3 else None)(host.call("a", "attacker", "answers")))
    assert sorted((kind, corr) for kind, _, corr, _ in answers) == [("Ok", "i"), ("Ok", "l"), ("Ok", "s")]
    texts = {corr: text for _, _, corr, text in answers}
    assert "SandboxInfo(id='a'" in texts["i"] and "'attacker'" in texts["l"]
    with pytest.raises(PluginHostError):
        host.call("b", "crashy", "raise")  # B's events: crashed, restarted
    host.call("a", "attacker", cloudpickle.dumps([(admin, msgs.DestroySandbox(sandbox_id="b", corr="d"))]))
    answers = eventually(lambda: (lambda got: got if len(got) >= 5 else None)(host.call("a", "attacker", "answers")))
    time.sleep(0.3)  # anything else on its way arrives meanwhile
    rest = host.call("a", "attacker", "answers")[3:]
    assert sorted((kind, text) for kind, _, _, text in rest) == [
        ("EventNotice", "denied a"),
        ("Failed", rest[0][3] if rest[0][0] == "Failed" else rest[1][3]),
    ]
    assert not any(text.endswith(" b") for _, _, _, text in rest)


def test_a_sandbox_lying_about_its_own_processes_cannot_point_the_monitor_or_the_admin_at_another(
    host: Host, attacker: str
) -> None:
    """A sandbox may report on itself, but the pids it reports are checked: the monitor enforces limits only
    on descendants of a verified root, and the admin kills a local root's group by the pid it forked, never
    a reported one.  A stranger's CPU-burning process named as the sandbox's worker and root survives the
    limit and the sandbox's destroy."""
    host.create_sandbox("a", "attacker:Root", sandbox_path=attacker, limits={"max_cpu_seconds": 0.3})
    burner = subprocess.Popen([os.sys.executable, "-c", "while True: pass"], start_new_session=True)
    try:
        info = host.get_sandbox_info("a")
        lie = m.SandboxStatus(
            "a", "running", children=(attrs.evolve(info.children[0], pid=burner.pid),), directory={}, pid=burner.pid
        )
        host.call("a", "attacker", cloudpickle.dumps([(host.admin_address, lie)]))
        eventually(lambda: psutil.Process(burner.pid).cpu_times().user > 2.5, timeout=20)  # 2+ monitor rounds
        assert burner.poll() is None
        host.destroy_sandbox("a")
        assert burner.poll() is None and pid_alive(burner.pid)
    finally:
        burner.kill()
        burner.wait()


INTRUDERS = str(Path(__file__).parent / "plugins" / "intruders")


def test_a_root_is_its_sandboxs_from_the_fork_so_no_sandbox_can_reach_it_while_it_starts(
    host: Host, tmp_path: Path
) -> None:
    """A sandbox watching for new ports sends each one, as it appears, a StartChild whose spec runs code:
    a root takes its own sandbox's key as it is forked, so none of them ever reads it (a root that still
    held the host key until its start message took it on the first try)."""
    marker = tmp_path / "pwned.txt"
    host.create_sandbox("a", "racer:Root", sandbox_path=INTRUDERS)
    host.call("a", "racer", (str(marker), 10.0))
    for index in range(5):
        host.create_sandbox(f"b{index}", "root:Root", sandbox_path=sample("counter"))
        assert host.call(f"b{index}", "counter", "inc") == 1
    assert not marker.exists(), marker.read_text()


def test_a_sandbox_cannot_take_over_the_connection_the_host_uses_to_reach_another(host: Host) -> None:
    """A sandbox that connects to the admin naming another sandbox's root as its address never gets what
    the host then sends that root (a run, with the application's function), and the run goes through."""
    host.create_sandbox("b", "root:Root", sandbox_path=sample("counter"))
    host.create_sandbox("intruder", "hijacker:Root", sandbox_path=INTRUDERS)
    ports = listening_ports([p.pid for p in host._system.process_tree()])
    b_root = next(port for port, pid in ports.items() if pid == host.get_sandbox_info("b").pid)
    admin = host.admin_address.addressDetails.sockname[1]  # the admin actor's own port
    host.call("intruder", "hijacker", (admin, b_root, "intruder", 5.0))
    # The admin acknowledges the frame and closes: the connection is not taken as the way to B's root
    # (it was, and the admin's answer, then everything it sent B's root, went down it).
    assert eventually(
        lambda: (lambda loot: loot if "closed" in loot else None)(host.call("intruder", "hijacker", "loot"))
    ) == ["own", "closed"]
    secret = "the application's secret"
    assert host.run("b", lambda: len(secret), timeout=5) == len(secret)


def test_a_sandbox_cannot_make_the_admin_keep_a_growing_list_for_it(host: Host) -> None:
    """Subscriptions and waiting lookups of one sandbox are capped (each made-up sender would otherwise cost
    the admin a send per event, for ever): the ones past the cap are denied."""
    events: list[Event] = []
    host.subscribe(events.append)
    host.create_sandbox("intruder", "hijacker:Root", sandbox_path=INTRUDERS)
    subscribes = [msgs.Subscribe(corr=f"s{i}") for i in range(12)]
    admin = host.admin_address.addressDetails.sockname[1]  # the admin actor's own port
    assert host.call("intruder", "flooder", (admin, subscribes)) == 12
    denied = eventually(lambda: [e for e in events if e.kind == "denied" and e.details["request"] == "Subscribe"])
    time.sleep(0.3)
    assert len([e for e in events if e.kind == "denied" and e.details["request"] == "Subscribe"]) == 12 - 8
    assert "already has 8 subscriptions" in denied[0].reason


def test_an_answer_a_sandbox_sends_a_host_actor_is_never_answered(host: Host, attacker: str) -> None:
    """An ``Ok`` or ``Failed`` a sandbox sends the admin is dropped without an answer (answering answers lets
    two actors bounce Faileds for ever); a request sent after them is answered, so nothing is pending."""
    host.create_sandbox("a", "attacker:Root", sandbox_path=attacker)
    admin = host.admin_address
    sent = [
        msgs.Failed(PluginError("bounce"), "f"),
        msgs.Ok("bounce", "o"),
        msgs.GetSandboxInfo(sandbox_id="a", corr="after"),
    ]
    host.call("a", "attacker", cloudpickle.dumps([(admin, message) for message in sent]))
    answers = eventually(
        lambda: (lambda got: got if any(corr == "after" for _, _, corr, _ in got) else None)(
            host.call("a", "attacker", "answers")
        )
    )
    assert [(kind, corr) for kind, _, corr, _ in answers if kind in ("Ok", "Failed")] == [("Ok", "after")]


def test_audit_records_a_sandbox_reports_are_its_own_and_bounded(host: Host, attacker: str) -> None:
    """A sandbox may report its own audit records, but not grow the admin's memory through them or write in
    another's name: at most 1,000 are kept, each text cut to 1,000 characters, each filed under its own id."""
    host.create_sandbox("a", "attacker:Root", sandbox_path=attacker)
    huge = AuditRecord("b", "x" * 2_000, "open", "y" * 5_000, 1.0, False)
    report = m.AuditRecords("a", (huge,) * 1500)
    host.call("a", "attacker", cloudpickle.dumps([(host.admin_address, report)]))
    # The plugin's own records (its socket.connect) may arrive first: wait for the reported batch.
    log = eventually(lambda: (lambda got: got if len(got) >= 1000 else None)(host.audit_log("a")))
    assert len(log) == 1000
    assert {r.sandbox_id for r in log} == {"a"} and max(len(r.detail) for r in log) == 1000
    assert sum(len(r.actor) == 1000 for r in log) >= 990  # the plugin's own operations are audited too


def test_a_sandbox_of_another_host_sharing_the_cookie_cannot_act_as_a_namesake(
    config: HostConfig, attacker: str, tmp_path: Path
) -> None:
    """Two hosts started with one cookie file verify each other's frames, yet a sandbox is its incarnation's
    key, not its name: host 1's sandbox "a" asking host 2's admin to call host 2's own "a" is refused."""
    shared = attrs.evolve(config, cookie_file=tmp_path / "cookie")
    with (
        Host(attrs.evolve(shared, state_dir=tmp_path / "one")) as one,
        Host(attrs.evolve(shared, state_dir=tmp_path / "two")) as two,
    ):
        one.create_sandbox("a", "attacker:Root", sandbox_path=attacker)
        two.create_sandbox("a", "root:Root", sandbox_path=sample("counter"))
        call = msgs.Call(sandbox_id="a", name="counter", request="inc", corr="x")
        one.call("a", "attacker", cloudpickle.dumps([(two.admin_address, call)]))
        answers = eventually(lambda: one.call("a", "attacker", "answers"))
        assert [(kind, error) for kind, error, corr, _ in answers if corr == "x"] == [("Failed", "AccessDeniedError")]
        assert two.call("a", "counter", "inc") == 1


SLOW = textwrap.dedent("""
    import time
    from actors import Plugin


    class Slow(Plugin):
        def handle_call(self, request, state):
            time.sleep(request)
            return "the real reply", state
""")


def test_a_sandbox_cannot_forge_the_reply_to_a_call_to_another_sandbox(
    host: Host, attacker: str, tmp_path: Path
) -> None:
    """A plugin that knows where the application waits and which correlation id comes next sends a forged
    ``Ok`` while the application waits on another sandbox, and asks the admin to answer there for it: the
    application takes the real reply only (the admin answers a sandbox's request to that sandbox alone)."""
    folder = tmp_path / "slow"
    folder.mkdir()
    (folder / "slow.py").write_text(SLOW)
    host.create_sandbox("a", "attacker:Root", sandbox_path=attacker)
    host.create_sandbox("b", "slow:Slow", sandbox_path=str(folder))
    assert host.call("b", "slow", 0) == "the real reply"
    context = host._system.context_of_this_thread()._systemBase.transport.myAddress  # this thread's replies
    prefix, number = host._system.new_corr().rsplit("-", 1)
    corrs = [f"{prefix}-{int(number) + step}" for step in range(1, 6)]
    forged = [msgs.Ok("forged", corr) for corr in corrs]
    # ... and the same through the admin: a request of its own whose answer should go to the application
    reflected = [msgs.Call(sandbox_id="a", name="nobody", request=1, reply_to=context, corr=corr) for corr in corrs]
    host.call(
        "a",
        "attacker",
        cloudpickle.dumps([(context, ("later", 300, forged)), (host.admin_address, ("later", 300, reflected))]),
    )
    assert host.call("b", "slow", 0.7) == "the real reply"  # the forgeries arrived meanwhile, signed by A
    assert host.call("b", "slow", 0) == "the real reply"  # none of them answers a later call either


def test_plain_plugin_values_refuse_a_plugins_objects(config: HostConfig, attacker: str, tmp_path: Path) -> None:
    """With ``plugin_values="plain"`` a reply or run result that is not builtin data is PluginError and is
    never unpickled here (a plugin object whose unpickling runs code runs nothing); plain data passes."""
    marker = tmp_path / "pwned.txt"
    evil = f'if request == "evil":\n            return Exploit({str(marker)!r}), state\n        '
    module = Path(attacker) / "attacker.py"
    module.write_text(ATTACKER.replace('if request == "answers":', evil + 'if request == "answers":'))
    with Host(attrs.evolve(config, plugin_values="plain")) as host:
        host.create_sandbox("a", "attacker:Root", sandbox_path=attacker)
        assert host.call("a", "attacker", "answers") == []
        with pytest.raises(PluginError) as caught:
            host.call("a", "attacker", "evil")
        assert caught.value.type_name == "NotPlainData"
        with pytest.raises(PluginError, match="not plain data"):
            host.run("a", lambda: __import__("attacker").Exploit(str(marker)))
        assert host.run("a", lambda: {"ok": [1, 2.5, b"x", None]}) == {"ok": [1, 2.5, b"x", None]}
    assert not marker.exists()
    with Host(config) as trusting:  # the default takes objects: the same reply runs its code here
        trusting.create_sandbox("a", "attacker:Root", sandbox_path=attacker)
        trusting.call("a", "attacker", "evil")
    assert marker.exists()


# -- keys in memory ------------------------------------------------------------------------------------


def memory_holds(pid: int, needle: bytes) -> bool:
    """Whether ``needle`` appears anywhere in the readable memory of process ``pid``."""
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            span, perms = line.split()[:2]
            start, end = (int(x, 16) for x in span.split("-"))
            if "r" not in perms or end - start > 1 << 30:
                continue
            try:
                mem.seek(start)
                if needle in mem.read(end - start):
                    return True
            except (OSError, ValueError, OverflowError):
                continue
    return False


def test_sandbox_processes_hold_no_host_key_and_no_other_sandboxs_key(
    host: Host, config: HostConfig, attacker: str
) -> None:
    """The root wipes the host key (and every key it derived) before plugin code runs; workers are forked
    from it: neither the host key nor sandbox B's key is anywhere in A's root or worker memory."""
    host.create_sandbox("a", "attacker:Root", sandbox_path=attacker)
    host.create_sandbox("b", "root:Root", sandbox_path=sample("counter"))
    key = host_key(config)
    host.call("b", "counter", "inc")
    b_kid = host._caller.refs[("b", "counter")].kid
    b_key = hmac.digest(key, b"plugin-host/1 sandbox key\0" + b_kid, "sha256")
    assert memory_holds(os.getpid(), key)  # the scan finds keys where they are: the application holds it
    info = host.get_sandbox_info("a")
    a_pids = [info.pid, *(child.pid for child in info.children)]
    b_root = host.get_sandbox_info("b").pid
    for pid in a_pids:
        assert not memory_holds(pid, key), f"the host key is in sandbox A's process {pid}"
        assert not memory_holds(pid, b_key), f"sandbox B's key is in sandbox A's process {pid}"
    assert not memory_holds(b_root, key)


# -- the state folder -------------------------------------------------------------------------------------


def test_a_second_host_on_the_same_state_dir_is_refused_and_changes_nothing(host: Host, config: HostConfig) -> None:
    """F-3: one host per state_dir: the second gets StateDirInUseError naming the folder and the first's pid;
    the first runs on, its registry untouched."""
    host.create_sandbox("c", "root:Root", sandbox_path=sample("counter"))
    registry = (Path(config.state_dir) / "registry.sqlite3").read_bytes()
    with pytest.raises(StateDirInUseError) as caught:
        Host(config)
    assert str(config.state_dir) in str(caught.value) and str(os.getpid()) in str(caught.value)
    assert host.call("c", "counter", "inc") == 1
    assert (Path(config.state_dir) / "registry.sqlite3").read_bytes() == registry


def test_a_killed_hosts_lock_is_taken_over(tmp_path: Path) -> None:
    """A host SIGKILLed leaves its lock file; the next host on that state_dir starts (the kernel dropped it)."""
    state = tmp_path / "state"
    script = tmp_path / "app.py"
    script.write_text(
        f"from plugin_host import Host\nh = Host(state_dir={str(state)!r})\nprint('up', flush=True)\n"
        "import time\ntime.sleep(60)\n"
    )
    proc = subprocess.Popen([os.sys.executable, str(script)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
        with pytest.raises(StateDirInUseError):
            Host(state_dir=state)
    finally:
        proc.kill()
        proc.wait()
    with Host(state_dir=state, heartbeat_interval=0.2, hang_timeout=1.0) as second:
        assert second.list_sandboxes() == []
    eventually(
        lambda: not [p for p in psutil.process_iter(["cmdline"]) if str(state) in " ".join(p.info["cmdline"] or ())],
        timeout=10,
    )  # the killed host's system ended itself


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o722])
def test_a_state_dir_others_may_write_is_refused(tmp_path: Path, mode: int) -> None:
    """F7: a state_dir writable by group or others is refused with ConfigError saying why; nothing starts."""
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(mode)
    with pytest.raises(ConfigError, match="writable by") as caught:
        Host(state_dir=state)
    assert caught.value.field == "state_dir"
    assert sorted(os.listdir(state)) == []


@as_root
def test_a_state_dir_of_another_user_with_a_planted_cache_entry_is_refused(tmp_path: Path) -> None:
    """F7: a state_dir another user owns (and filled: a compile-cache entry, an environment) is refused by
    the host and by the compiler before anything is read from it."""
    from plugin_host._client.operator import compile_path

    state = tmp_path / "state"
    (state / "compile-cache").mkdir(parents=True)
    (state / "compile-cache" / "planted.json").write_text("{}")
    for path in (state, state / "compile-cache", state / "compile-cache" / "planted.json"):
        os.chown(path, NOBODY, NOBODY)
    state.chmod(0o700)
    with pytest.raises(ConfigError, match="owned by uid 65534"):
        Host(state_dir=state)
    with pytest.raises(ConfigError, match="owned by uid 65534"):
        compile_path(sample("counter"), HostConfig(state_dir=state))


@as_root
def test_a_state_dir_reached_through_another_users_symlink_is_refused(tmp_path: Path) -> None:
    """F7: a symlink on the way to state_dir that another user owns (they choose where it points: say, into
    ~/.ssh) is refused before anything is written where it leads; this user's own symlink is followed, and
    the host's ``config.state_dir`` is then the real folder."""
    target = tmp_path / "private"
    target.mkdir(mode=0o700)
    planted = tmp_path / "planted"
    planted.symlink_to(target)
    os.lchown(planted, NOBODY, NOBODY)
    with pytest.raises(ConfigError, match="symlink owned by uid 65534") as caught:
        Host(state_dir=planted / "state")
    assert caught.value.field == "state_dir" and os.listdir(target) == []
    hop = tmp_path / "hop"  # this user's symlink to the stranger's: followed, and refused there
    hop.symlink_to(planted)
    with pytest.raises(ConfigError, match="symlink owned by uid 65534"):
        Host(state_dir=hop)
    assert os.listdir(target) == []
    own = tmp_path / "own"
    own.symlink_to(target)
    with Host(state_dir=own) as host:
        assert host.config.state_dir == target and (target / "cookie").is_file()


def test_a_state_dir_whose_way_the_checks_cannot_see_is_refused(tmp_path: Path) -> None:
    """'..' after a folder that does not exist yet (made by the host, it would lead past the checks) and a
    chain of more than 40 symlinks (the kernel's own limit; checked in linear time) are refused with
    ConfigError before anything is made; '..' through folders that exist is fine."""
    import time

    with pytest.raises(ConfigError, match="does not exist yet") as caught:
        Host(state_dir=tmp_path / "missing" / ".." / "state")
    assert caught.value.field == "state_dir" and not (tmp_path / "missing").exists()
    (tmp_path / "L45").mkdir()
    for index in range(44, -1, -1):
        (tmp_path / f"L{index}").symlink_to(f"L{index + 1}/../L{index + 1}")
    start = time.monotonic()
    with pytest.raises(ConfigError, match="too many levels of symlinks"):
        Host(state_dir=tmp_path / "L0")
    assert time.monotonic() - start < 5
    with Host(state_dir=tmp_path / "L45" / ".." / "fine") as host:
        assert host.config.state_dir == tmp_path / "fine"


def test_an_existing_state_dir_keeps_its_mode_and_what_the_host_puts_in_it_is_private(tmp_path: Path) -> None:
    """A state_dir the user made readable (shared on purpose) is not changed, yet every folder and file the
    host makes in it (registry, logs, cookie, runtime files, caches) is private to this user."""
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o755)
    with Host(state_dir=state) as host:
        host.create_sandbox("c", "root:Root", sandbox_path=sample("counter"))
        assert host.call("c", "counter", "inc") == 1
        host.compile_sandbox(sample("counter"))
        made = list(state.rglob("*"))
    assert stat_mode(state) == 0o755
    assert {"cookie", "registry.sqlite3", "logs", "run", "compile-cache"} <= {path.name for path in made}
    loose = [f"{path} {stat_mode(path):o}" for path in made if path.exists() and stat_mode(path) & 0o077]
    assert not loose


def stat_mode(path: Path) -> int:
    """Permission bits of ``path``."""
    return path.stat().st_mode & 0o777


def test_a_symlink_planted_for_a_log_file_is_not_followed(tmp_path: Path) -> None:
    """F7: a symlink where a log of the next host will be is replaced, never written through."""
    state, target = tmp_path / "state", tmp_path / "target.txt"
    (state / "logs").mkdir(parents=True, mode=0o700)
    state.chmod(0o700)
    target.write_text("original content\n")
    port = _free_port()
    for name in ("launcher", "actors", "thespian", "rejected", "thespian-app"):
        os.symlink(target, state / "logs" / f"{name}-{port}.log")
    with Host(state_dir=state, admin_port=port) as host:
        host.create_sandbox("c", "root:Root", sandbox_path=sample("counter"))
        assert host.call("c", "counter", "inc") == 1
    assert target.read_text() == "original content\n"
    assert not any(p.is_symlink() for p in (state / "logs").iterdir())


def test_the_state_folder_and_its_files_are_private(config: HostConfig, tmp_path: Path) -> None:
    """F7: a state_dir the host makes and its folders are 0700; the registry (every plugin's source), logs,
    cookie and runtime file are 0600; the host's own Thespian log is in state_dir, not a fixed name in /tmp."""
    state = tmp_path / "made-by-the-host"
    with Host(attrs.evolve(config, state_dir=state)) as host:
        host.create_sandbox("c", "root:Root", sandbox_path=sample("counter"))
        host.call("c", "counter", "inc")
        check_private(state, host.admin_port)


def check_private(state: Path, port: int | None) -> None:
    """``state`` and all in it are this user's alone; the files a running host keeps there exist."""
    for path in [state, *state.rglob("*")]:
        mode = path.stat().st_mode & 0o777
        if path.is_dir():
            assert mode & 0o077 == 0, f"{path} is {mode:o}"
        else:
            assert mode & 0o077 == 0, f"{path} is {mode:o}"
    assert (state / "cookie").exists() and (state / "run" / f"{port}.json").exists()
    assert (state / "logs" / f"thespian-app-{port}.log").exists()
    from thespian.system import utilis

    assert utilis._thesplog_file.startswith(str(state))


def test_a_loose_cookie_file_is_refused(tmp_path: Path) -> None:
    """Like ssh with a loose key: a credential others may read is refused (ConfigError, field cookie_file)."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    cookie = state / "cookie"
    cookie.write_text("x" * 64)
    cookie.chmod(0o644)
    with pytest.raises(ConfigError, match="others may read") as caught:
        Host(state_dir=state)
    assert caught.value.field == "cookie_file"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
