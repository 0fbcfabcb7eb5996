"""The frame authentication of ``plugin_host._wire``: keys, tags, the restricted decoder, and the pin on
the Thespian internals it patches."""

from __future__ import annotations

import hashlib
import importlib
import io
import os
import pickle
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import thespian
from conftest import ROOT

from plugin_host import _wire
from plugin_host.errors import PluginError
from plugin_host.messages import Failed, Ok

# sha256 of each Thespian 4.0.1 file whose internals plugin-host patches or copies (see _wire.PATCHED and
# _client.launcher.apply_bind_patch).  A new Thespian must be read again before these change.
THESPIAN_FILES = {
    "transport/TCPTransport.py": "303b9a9b3871ca949f70c5f57654fc8147e44f8d0e9981c55902a1b0f16a2c59",
    "transport/streamBuffer.py": "3aa2191109c9aec9b7c96a6617eb7799dbe63e866de0d403075eb11e8f53f850",
    "transport/IPBase.py": "ff75cc8eb35019a3783b9ee3d8e8720c9fe4d6a6c3219fef7e1934b85c359a69",
    "actorManager.py": "ef63efe7ab4f9b5efa085671aa51696d727876415b0b06c699ab33b84095121a",
    "admin/adminCore.py": "7a805625903e45bbe29fc4891b6c1cef2e5f99fa08bd1ff5e04cb7b84057fb65",
    "logdirector.py": "d756ac5d9496a848f2715b69ed517eeec893e40619ea9ae720dfb7cd91d5b90e",
    "utilis.py": "69b676a1b7c148f40f9365a600868b3db7783a639cd55528e78798d35b70b21b",
}


def keyring() -> _wire.Keyring:
    """A host keyring from a fixed test credential."""
    return _wire.Keyring(_wire.host_key_from_cookie(b"a test credential of 32 bytes...."))


def from_sandbox(keys: _wire.Keyring, principal: _wire.Principal, payload: bytes) -> tuple[_wire.Principal, Any]:
    """What a host process makes of ``payload`` sent, sealed in its own key, by ``principal``'s sandbox."""
    return keys.decode(keys.seal(principal.kid, payload).partition(b">")[2])


@pytest.mark.parametrize("relative", sorted(THESPIAN_FILES))
def test_the_patched_thespian_files_are_the_ones_the_patch_was_written_for(relative: str) -> None:
    """Each Thespian file whose internals are patched is byte for byte the 4.0.1 one the patch copies."""
    path = Path(thespian.__file__).parent / "system" / relative
    assert hashlib.sha256(path.read_bytes()).hexdigest() == THESPIAN_FILES[relative], (
        f"Thespian's {relative} changed: re-read plugin_host/_wire.py (PATCHED) against it before upgrading"
    )


def test_every_patched_name_exists_in_thespian() -> None:
    """Every name in ``_wire.PATCHED`` resolves in the installed Thespian (a rename fails here, loudly)."""
    for module_name, names in _wire.PATCHED.items():
        module = importlib.import_module(module_name)
        for name in names:
            obj = module
            for part in name.split("."):
                assert hasattr(obj, part), f"{module_name}.{name} is gone"
                obj = getattr(obj, part)


def test_thespian_is_pinned_exactly() -> None:
    """setup.cfg pins the Thespian release the patch was written for, exactly."""
    assert "thespian==4.0.1" in (ROOT / "setup.cfg").read_text().replace(" ", "")


def test_a_sealed_frame_opens_with_its_principal_and_a_changed_byte_is_refused() -> None:
    """A sandbox-signed frame opens on a host keyring as that sandbox; one flipped bit anywhere fails."""
    keys = keyring()
    alice = _wire.new_sandbox_principal("alice")
    wire = keys.seal(alice.kid, pickle.dumps(("addr", Ok(1, "c1"))))
    frame = wire.partition(b">")[2]
    principal, (_, message) = keys.decode(frame)
    assert principal == alice and principal.sandbox_id == "alice" and message == Ok(1, "c1")
    for index in (0, 5, len(frame) // 2, len(frame) - 1):
        tampered = bytearray(frame)
        tampered[index] ^= 1
        with pytest.raises(_wire.Rejected) as caught:
            keys.decode(bytes(tampered))
        assert caught.value.reason == "unauthenticated"


def test_another_credential_cannot_open_a_frame() -> None:
    """A host with another cookie refuses the frame (a convention member with the wrong credential)."""
    frame = keyring().seal(b"h", pickle.dumps("hello")).partition(b">")[2]
    other = _wire.Keyring(_wire.host_key_from_cookie(b"another credential, 32 bytes ...."))
    with pytest.raises(_wire.Rejected, match="wrong tag"):
        other.open(frame)


def test_a_sandbox_keyring_holds_its_own_key_only() -> None:
    """After ``become_sandbox`` the host key is zeroed; host and other sandboxes' frames no longer open."""
    host = keyring()
    alice, bob = _wire.new_sandbox_principal("alice"), _wire.new_sandbox_principal("bob")
    to_bob = host.seal(bob.kid, pickle.dumps("for bob")).partition(b">")[2]
    from_host = host.seal(b"h", pickle.dumps("host")).partition(b">")[2]
    for_alice = host.seal(alice.kid, pickle.dumps("for alice")).partition(b">")[2]
    sandbox = keyring()
    held = sandbox.host_key
    sandbox.become_sandbox(alice)
    assert held == bytearray(len(held)) and not sandbox.is_host and sandbox.own == alice
    assert sandbox.decode(for_alice) == (alice, "for alice")
    for frame in (to_bob, from_host):
        with pytest.raises(_wire.Rejected, match="does not hold"):
            sandbox.decode(frame)
    with pytest.raises(ValueError):
        sandbox.seal(b"h", b"x")  # it cannot speak as the host
    with pytest.raises(ValueError):
        _ = sandbox.host_key
    assert sandbox.kid_for(object()) == alice.kid  # whatever the target, it signs as itself


def test_a_sandbox_frame_with_a_crafted_pickle_is_refused_without_running_it(tmp_path: Path) -> None:
    """A host process decodes a sandbox's frame with the restricted unpickler: a ``__reduce__`` payload
    never runs (the marker stays absent) and the frame is refused."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple:
            return (exec, (f"open({str(marker)!r}, 'w').write('ran')",))

    keys = keyring()
    alice = _wire.new_sandbox_principal("alice")
    for payload in (
        pickle.dumps(("addr", Evil())),
        pickle.dumps(("addr", Ok(Evil(), "c"))),
        pickle.dumps(os.system),
        pickle.dumps(("a", Failed(PluginError("x"), "c")))[:-1],
    ):
        frame = keys.seal(alice.kid, payload).partition(b">")[2]
        with pytest.raises(_wire.Rejected) as caught:
            keys.decode(frame)
        assert caught.value.reason == "refused" and caught.value.principal == alice
    assert not marker.exists()
    # The host's own frames are trusted (they may carry any pickle): that is why only it holds its key.
    frame = keys.seal(b"h", pickle.dumps(("a", Failed(PluginError("boom", actor="x"), "c")))).partition(b">")[2]
    assert keys.decode(frame)[1][1].error.actor == "x"


def test_plugin_host_messages_values_and_errors_pass_the_restricted_decoder() -> None:
    """What a sandbox legitimately sends (replies, errors with context, sets, addresses) decodes."""
    from thespian.actors import ActorAddress
    from thespian.system.transport.IPBase import TCPv4ActorAddress

    keys = keyring()
    alice = _wire.new_sandbox_principal("alice")
    address = ActorAddress(TCPv4ActorAddress("127.0.0.1", 4242, external=True))
    message = (address, Failed(PluginError("boom", type_name="KeyError", actor="a"), "c7"))
    principal, (sender, reply) = from_sandbox(keys, alice, pickle.dumps(message))
    assert sender == address and reply.error.type_name == "KeyError" and reply.corr == "c7"
    value = {"a": {1, 2}, "b": frozenset({3}), "c": bytearray(b"x"), "d": 1j}
    assert from_sandbox(keys, alice, pickle.dumps(("x", Ok(value, "c"))))[1][1].value == value


def test_a_frame_larger_than_the_limit_is_refused_before_it_is_buffered() -> None:
    """A declared size over ``MAX_FRAME_BYTES`` fails at once (no memory is held for it)."""
    _wire.install()
    from thespian.system.transport import TCPTransport

    buffer = TCPTransport.ReceiveBuffer(TCPTransport.serializer.loads)
    with pytest.raises(ValueError, match="limit"):
        buffer.addMore(b"%d>PH1" % (_wire.MAX_FRAME_BYTES + 1))
    ok = TCPTransport.ReceiveBuffer(TCPTransport.serializer.loads)
    ok.addMore(b"3>abc")
    assert ok.completed() == (b"abc", b"")  # buffers hand the raw frame to the checking transport


def test_principal_ids_are_unique_per_incarnation_and_name_their_sandbox() -> None:
    """Two incarnations of one sandbox id get different keys; the id reads back (unicode included)."""
    first, second = _wire.new_sandbox_principal("ünïcode id"), _wire.new_sandbox_principal("ünïcode id")
    assert first != second and first.sandbox_id == second.sandbox_id == "ünïcode id"
    assert _wire.HOST.is_host and _wire.HOST.sandbox_id is None and not first.is_host


def test_the_restricted_decoder_rebuilds_bytearrays_from_bytes_only() -> None:
    """A 40-byte frame cannot make a host process allocate a gigabyte: ``bytearray(n)`` and ``complex(str)``
    are refused, a pickled bytearray still decodes."""
    keys = keyring()
    alice = _wire.new_sandbox_principal("alice")
    huge = b"\x80\x04cbuiltins\nbytearray\nJ\x00\x00\x00@\x85R."  # bytearray(1 << 30)
    parse = b"\x80\x04cbuiltins\ncomplex\nX\x03\x00\x00\x001+2\x85R."  # complex("1+2")
    for payload in (huge, parse):
        with pytest.raises(_wire.Rejected, match="refused"):
            from_sandbox(keys, alice, payload)
    value = ("a", Ok(bytearray(b"xyz"), "c"))
    assert from_sandbox(keys, alice, pickle.dumps(value))[1] == value


def test_the_receive_buffer_keeps_thespians_behaviour_over_many_chunks() -> None:
    """The in-place buffer gives Thespian's results: the frame across many chunks, the bytes after it kept
    as extra, and no size header within 24 bytes refused."""
    _wire.install()
    from thespian.system.transport import TCPTransport

    frame = bytes(range(256)) * 400
    data = b"%d>" % len(frame) + frame + b"next"
    buffer = TCPTransport.ReceiveBuffer(TCPTransport.serializer.loads)
    for start in range(0, len(data), 1000):
        buffer.addMore(data[start : start + 1000])
    assert buffer.isDone() and buffer.completed() == (frame, b"next")
    garbage = TCPTransport.ReceiveBuffer(TCPTransport.serializer.loads)
    with pytest.raises(ValueError, match="no frame size"):
        for _ in range(30):
            garbage.addMore(b"9")


def test_routes_are_forgotten_and_a_sandbox_claims_only_its_own_addresses() -> None:
    """A route names the sandbox an address belongs to; a frame's declared address proves nothing else."""
    keys = keyring()
    alice, bob = _wire.new_sandbox_principal("alice"), _wire.new_sandbox_principal("bob")
    address = type("Details", (), {"sockname": ("127.0.0.1", 4000)})()
    keys.route(address, alice)
    assert keys.claims(address, alice) and not keys.claims(address, bob)
    assert keys.kid_for(address) == alice.kid
    keys.forget(address)
    assert not keys.claims(address, alice) and keys.kid_for(address) == b"h"


def _shared_tuples(depth: int) -> bytes:
    """A pickle of ``depth`` tuples, each holding the one before twice, put in a set (which hashes it)."""
    out = b"\x80\x04)\x94"
    for level in range(depth):
        out += b"h%ch%c\x86\x94" % (level, level)
    return out + b"\x8f\x94(h%c\x90." % depth


def test_a_frame_that_unfolds_without_end_is_refused_at_once() -> None:
    """A 400-byte frame of shared tuples (2**64 objects once unfolded; hashing it never ends) is refused
    before anything hashes it, while a frame with a few shared references and a large plain value,
    both unfolding small, still decode through the two decoding paths."""
    keys = keyring()
    alice = _wire.new_sandbox_principal("alice")
    refused_at_once(keys, alice, _shared_tuples(64))
    assert from_sandbox(keys, alice, _shared_tuples(8))[1] == {_nested(8)}
    shared = ["the same ghost string"] * 3000  # thousands of GETs: the watched (pure Python) path
    value = ("addr", Ok({"rows": shared, "more": [{"name": "x", "tags": ["a"]}] * 50}, "c"))
    payload = pickle.dumps(value)
    assert not _wire._unfolds_small(payload)
    assert from_sandbox(keys, alice, payload)[1] == value


def _nested(depth: int) -> tuple:
    inner: tuple = ()
    for _ in range(depth):
        inner = (inner, inner)
    return inner


def test_the_opcode_count_reads_pickles_as_the_unpickler_does() -> None:
    """The fast bound's opcode walk agrees with ``pickletools`` on every protocol and argument kind; it
    says "not a pickle" (so the watched path decides) for a truncated one."""
    import pickletools

    value = {
        "list": [1, 2, 3] * 50,
        "text": "x\ny",
        "big": 2**3000,
        "bytes": b"\x00" * 300,
        "float": 1.5,
        "set": frozenset({1}),
        "shared": ["same"] * 3,
        "wide": "é" * 300,
        "neg": -(2**70),
    }
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        data = pickle.dumps(value, protocol=protocol)
        ops = list(pickletools.genops(data))
        sharing = sum(op.name in ("GET", "BINGET", "LONG_BINGET", "DUP") for op, _, _ in ops)
        assert _wire._count_opcodes(data) == (len(ops), sharing), protocol
        assert _wire._count_opcodes(data[:-1]) is None


def test_named_states_cross_from_a_sandbox_and_a_state_that_does_not_exist_is_refused() -> None:
    """A root reports its children with :mod:`plugin_host.states` members: they decode in a host process as
    the same members; a frame naming a state no enum has is refused, not turned into a new value."""
    from plugin_host.states import ChildStatus
    from plugin_host.values import ChildInfo

    keys = keyring()
    alice = _wire.new_sandbox_principal("alice")
    info = ChildInfo("c1", 42, 0, "counter", 1, ChildStatus.RESTARTING)
    _, decoded = from_sandbox(keys, alice, pickle.dumps(("addr", info)))
    assert decoded[1] == info and decoded[1].status is ChildStatus.RESTARTING
    assert repr(decoded[1]).count("status='restarting'") == 1  # shown as the plain string it was
    forged = pickle.dumps(("addr", info)).replace(b"restarting", b"overlord!!")
    with pytest.raises(_wire.Rejected):
        from_sandbox(keys, alice, forged)


def _everything_a_sandbox_may_name() -> list[tuple[str, str]]:
    """Every (module, name) the restricted decoder resolves: the allowed modules' classes, the allowed names,
    the safe constructors."""
    import inspect

    names = set(_wire._ALLOWED_NAMES) | set(_wire._SAFE_CONSTRUCTORS)
    for module in _wire._ALLOWED_MODULES:
        loaded = importlib.import_module(module)
        names |= {(module, n) for n, v in vars(loaded).items() if inspect.isclass(v) and v.__module__ == module}
    return sorted(names)


@pytest.mark.parametrize("unpickler", ["_FastSandboxUnpickler", "_SandboxUnpickler"])
def test_a_frame_cannot_rewrite_a_class_function_or_state_it_names(unpickler: str) -> None:
    """A pickle BUILD aimed at what a frame fetched by name (a class, ``errors._rebuild``, a safe
    constructor) or at a shared enum member (a state, ``socket.AF_INET``) is refused, by both unpicklers,
    and leaves it unchanged: one frame rewrote ``ChildStatus.RUNNING`` or ``ActorAddress.__eq__`` for the
    whole host process.  A legitimate frame still decodes."""
    reader = getattr(_wire, unpickler)

    def load(payload: bytes) -> Any:
        return reader(io.BytesIO(payload)).load()

    targets = _everything_a_sandbox_may_name()
    assert len(targets) > 60 and ("plugin_host.errors", "_rebuild") in targets
    for module, name in targets:
        glob = b"c" + module.encode() + b"\n" + name.encode() + b"\n"
        for state in (b"}X\x06\x00\x00\x00pwned_K\x01s", b"N}X\x06\x00\x00\x00__eq__Ns\x86"):
            with pytest.raises(Exception):  # noqa: B017 - any refusal: the point is that nothing changed
                load(b"\x80\x02" + glob + state + b"b.")
        target = getattr(importlib.import_module(module), name)
        assert not hasattr(target, "pwned_"), (module, name)
    for member in (
        b"cplugin_host.states\nChildStatus\nX\x07\x00\x00\x00running\x85R",
        b"csocket\nAddressFamily\nK\x02\x85R",
    ):
        with pytest.raises(Exception):  # noqa: B017
            load(b"\x80\x02" + member + b"}X\x06\x00\x00\x00_value_K\x01sb.")
    from plugin_host.states import ChildStatus

    assert ChildStatus.RUNNING.value == "running" and socket.AF_INET.value == 2
    from plugin_host.values import ChildInfo

    info = ChildInfo("c1", 42, 0, "counter", 1, ChildStatus.RUNNING)
    assert load(pickle.dumps(info)) == info  # an ordinary frame still goes through


def test_a_log_record_with_fields_of_the_wrong_type_is_refused_and_a_good_one_is_rebuilt() -> None:
    """A sandbox's log record is rebuilt from typed fields: a non-string logger name (which made the host's
    logger fail), a NaN time and a huge line number are refused; a long dotted name (logging keeps a
    placeholder per prefix: 20 such records took 514 MiB) is logged under plugin-host's name; an ``extra=``
    field that would shadow a LogRecord method is dropped while a plain one is kept; the message passes."""
    import logging

    keys = keyring()
    alice = _wire.new_sandbox_principal("alice")
    for bad in (
        logging.makeLogRecord({"name": 42, "msg": "x", "levelno": 20}),
        logging.makeLogRecord({"name": "p", "msg": "x", "levelno": 20, "created": float("nan")}),
        logging.makeLogRecord({"name": "p", "msg": "x", "levelno": 20, "lineno": 10**400}),
    ):
        with pytest.raises(_wire.Rejected, match="wrong type"):
            from_sandbox(keys, alice, pickle.dumps(("addr", bad)))
    good = logging.makeLogRecord(
        {"name": "plugin", "msg": "hello", "levelno": 20, "levelname": "INFO", "getMessage": "shadow", "request": "r-1"}
    )
    _, (_, record) = from_sandbox(keys, alice, pickle.dumps(("addr", good)))
    assert record.getMessage() == "hello" and record.name == "plugin" and record.request == "r-1"
    dotted = logging.makeLogRecord({"name": "x." * 4995, "msg": "kept", "levelno": 20})
    _, (_, record) = from_sandbox(keys, alice, pickle.dumps(("addr", dotted)))
    assert record.name == "plugin_host.sandbox" and record.getMessage() == "kept"


def test_a_sandboxs_log_extras_that_are_not_plain_arrive_as_their_text() -> None:
    """What a sandbox sends of a log record's ``extra=`` fields is what the host keeps: a list, a dict and a
    plugin's own object (even one whose ``repr`` raises) arrive as text, plain numbers and strings as they
    are, and the record's own fields (message, traceback) stay Thespian's to format."""
    import logging

    class Thing:
        def __repr__(self) -> str:
            return "<a thing of the plugin>"

    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    keys = keyring()
    alice = _wire.new_sandbox_principal("alice")
    try:
        raise ValueError("boom")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.makeLogRecord(
        {
            "name": "plugin",
            "msg": "%s items",
            "args": (3,),
            "levelno": 40,
            "levelname": "ERROR",
            "exc_info": exc_info,
            "items": [1, 2],
            "where": {"a": 1},
            "thing": Thing(),
            "broken": Broken(),
            "count": 3,
            "label": "x",
        }
    )
    _wire._extras_as_text(record)
    assert record.exc_info == exc_info and record.args == (3,)  # Thespian's own to format, next
    record.exc_text, record.exc_info = "Traceback ... ValueError: boom", None
    record.msg, record.args = record.getMessage(), None
    _, (_, received) = from_sandbox(keys, alice, pickle.dumps(("addr", record)))
    assert (received.items, received.where, received.thing) == ("[1, 2]", "{'a': 1}", "<a thing of the plugin>")
    assert received.broken == "<Broken that cannot be shown>" and (received.count, received.label) == (3, "x")
    assert received.getMessage() == "3 items" and "ValueError: boom" in received.exc_text


def test_frames_being_received_are_bounded_per_process_and_released_when_done() -> None:
    """All connections together may announce at most ``MAX_BUFFERED_BYTES`` of unfinished frames (a third
    256 MiB frame is refused while two are pending, with no memory taken for them); a frame received whole,
    or a connection dropped half-way, gives its share back. An idle incoming connection is closed after
    ``INCOMING_PERIOD_SECONDS`` (Thespian's constant, patched)."""
    import datetime
    import gc

    _wire.install()
    from thespian.system.transport import TCPTransport

    def buffer() -> object:
        return TCPTransport.ReceiveBuffer(TCPTransport.serializer.loads)

    start = _wire._buffering[0]
    first, second = buffer(), buffer()
    first.addMore(b"%d>" % _wire.MAX_FRAME_BYTES)
    second.addMore(b"%d>" % _wire.MAX_FRAME_BYTES)
    with pytest.raises(ValueError, match="being received already"):
        buffer().addMore(b"10>")
    del second  # a connection dropped half-way
    gc.collect()
    small = buffer()
    small.addMore(b"3>abc")
    assert small.completed() == (b"abc", b"") and _wire._buffering[0] == start + _wire.MAX_FRAME_BYTES
    del first
    gc.collect()
    assert _wire._buffering[0] == start
    assert TCPTransport.MAX_INCOMING_SOCKET_PERIOD == datetime.timedelta(seconds=_wire.INCOMING_PERIOD_SECONDS)


def get(index: int) -> bytes:
    """The pickle opcode that fetches memo entry ``index`` (LONG_BINGET)."""
    return b"j" + struct.pack("<I", index)


def text(value: str) -> bytes:
    """The pickle opcode that pushes a short string (SHORT_BINUNICODE)."""
    return b"\x8c" + bytes([len(value)]) + value.encode()


def refused_at_once(keys: _wire.Keyring, principal: _wire.Principal, payload: bytes) -> None:
    """A host process refuses ``payload`` from the sandbox as unfolding too far, within seconds."""
    start = time.monotonic()
    with pytest.raises(_wire.Rejected, match="million"):
        from_sandbox(keys, principal, payload)
    assert time.monotonic() - start < 5


def _filled_late(depth: int) -> bytes:
    """Empty ``Ok`` objects, each fetched while still empty, then filled with the one before twice (BUILD)
    and the last put in a set: sizes seen at a fetch must not be trusted once a BUILD changes them."""
    out = b"\x80\x04" + b"cplugin_host.messages\nOk\n)\x81\x940" * (depth + 1)
    out += get(0) + b"}(" + text("value") + b"K\x01" + text("corr") + text("c") + b"ub0"
    for level in range(1, depth + 1):
        out += get(level) + b"}(" + text("value") + get(level - 1) + text("corr") + get(level - 1) + b"ub0"
    return out + b"\x8f(" + get(depth) + b"\x90."


def test_shared_references_are_measured_when_fetched_even_if_filled_in_later() -> None:
    """Objects fetched while empty and filled in afterwards (a 4 KB frame unfolding into 2**64 objects) are
    refused at once; the same shape kept small still decodes, and so does a list that holds itself (a cycle
    counts once: it cannot be hashed), through the watched decoder too."""
    keys = keyring()
    alice = _wire.new_sandbox_principal("alice")
    refused_at_once(keys, alice, _filled_late(64))
    assert isinstance(from_sandbox(keys, alice, _filled_late(6))[1], set)
    cyclic = b"\x80\x04]\x94h\x00a" + b"h\x00" * 40 + b"0" * 40 + b"."  # a list in itself, fetched 41 times
    assert not _wire._unfolds_small(cyclic)
    decoded = from_sandbox(keys, alice, cyclic)[1]
    assert decoded[0] is decoded


def test_a_forked_child_does_not_inherit_the_frames_its_parent_was_receiving() -> None:
    """Thespian forks actors from inside a handler: a parent holding 512 MiB of announced frames (a stranger's
    half-sent headers) must not leave its child unable to receive; the child's counter starts at 0, and
    dropping the parent's buffers there gives nothing back twice."""
    import gc

    _wire.install()
    from thespian.system.transport import TCPTransport

    held = [TCPTransport.ReceiveBuffer(TCPTransport.serializer.loads) for _ in range(2)]
    for each in held:
        each.addMore(b"%d>" % _wire.MAX_FRAME_BYTES)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave at once
        try:
            fresh = _wire._buffering[0]
            incoming = TCPTransport.ReceiveBuffer(TCPTransport.serializer.loads)
            incoming.addMore(b"5>hello")
            held.clear()
            gc.collect()
            os.write(write, f"{fresh} {incoming.completed()[0]!r} {_wire._buffering[0]}".encode())
        finally:
            os._exit(0)
    os.close(write)
    report = os.read(read, 200).decode()
    os.waitpid(pid, 0)
    os.close(read)
    assert report == "0 b'hello' 0"
    del held
    gc.collect()


def test_the_error_rebuilder_a_sandbox_may_call_builds_plugin_host_errors_only() -> None:
    """``errors._rebuild`` is allowed in sandbox frames (it rebuilds a PluginHostError); called with another
    allowed class (``socket.AddressFamily``) it would rename ``socket.AF_INET`` in the host process: refused,
    and the enum stays as it was."""
    import socket

    from plugin_host.errors import _rebuild

    class Rename:
        def __reduce__(self) -> tuple:
            return (_rebuild, (socket.AddressFamily, 2, {"_name_": "PWNED", "_value_": 10}))

    keys = keyring()
    alice = _wire.new_sandbox_principal("alice")
    with pytest.raises(_wire.Rejected, match="not a plugin-host error class"):
        from_sandbox(keys, alice, pickle.dumps(("addr", Rename())))
    assert socket.AF_INET.name == "AF_INET" and socket.AF_INET.value == 2


def test_checking_shared_references_costs_linear_time_and_takes_legitimate_sharing() -> None:
    """A million-item list fetched a thousand times, and structures hidden in an address's attributes (a
    2**40 chain of shared tuples in ``af``), are settled in seconds, not hours: the first by sizes kept
    between fetches (it decodes), the second refused; a large row shared 45 times inside replies decodes."""

    address = b"cthespian.system.transport.IPBase\nTCPv4ActorAddress\n)\x81}("
    hidden = (
        b"\x80\x04)\x94"
        + b"".join(
            address + text("af") + get(level - 1) + get(level - 1) + b"\x86" + text("sockname") + b"K\x00ub\x94"
            for level in range(1, 41)
        )
        + b"\x8f("
        + get(40)
        + b"\x90."
    )
    refetched = b"\x80\x04]\x94(" + b"N" * 999_990 + b"e" + b"h\x000" * 1000 + b"."
    keys = keyring()
    alice = _wire.new_sandbox_principal("alice")
    start = time.monotonic()
    with pytest.raises(_wire.Rejected, match="million"):
        from_sandbox(keys, alice, hidden)
    assert len(from_sandbox(keys, alice, refetched)[1]) == 999_990
    row = [f"s{index}" for index in range(100_000)]
    value = ("addr", [Ok(row, str(index)) for index in range(45)])
    assert from_sandbox(keys, alice, pickle.dumps(value))[1] == value
    assert time.monotonic() - start < 10
