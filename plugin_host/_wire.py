"""Authenticated frames on Thespian's TCP transport: who sent a frame, checked before it is unpickled.

Thespian's TCP transport unpickles the first frame of any connection, so anyone who can reach a
port of an actor system runs code there.  This module puts a principal and an HMAC-SHA256 tag on
every frame (ACKs included) and checks the tag in constant time before anything is unpickled.

Keys are principals:

- the **host** key, derived from the credential file (``HostConfig.cookie_file``), is held by the
  processes that run only plugin-host's code: the application's ``Host``, the Thespian admin and
  logger, the admin, registry and monitor actors (and ``plugin-host`` operator commands);
- each **sandbox** incarnation has a key of its own, derived from the host key and its key id
  (``s`` + a random nonce + the sandbox id), so every host process can derive it without any key
  travelling.  A sandbox root switches to its sandbox key, wiping the host key and every key it
  derived, before any plugin code runs; its supervisors and workers are forked from it.

A frame signed with sandbox X's key is either from X or from the host *for* X: host processes
sign what they send to a process of X with X's key (``signing_for`` and the routes of the root
addresses).  So a sandbox process verifies with the one key it holds and cannot speak as the host
or as another sandbox; host processes accept every key and learn the sender's principal from the
key that verified the frame (never from the address the frame declares).  Host processes decode
sandbox frames with an unpickler restricted to plugin-host's message and value classes, so an
authenticated sandbox cannot run code in them with a crafted pickle.

A frame that fails is dropped (an unauthenticated one without an answer; a refused one with
Thespian's ``ACK+DATAERR``), and each drop is appended as a JSON line to a rejection log that
the admin turns into events.  Transports made without a keyring (a raw Thespian system in the
same process, the bench's baseline) behave exactly as Thespian does.

The patch touches Thespian internals: :data:`PATCHED` lists them, Thespian is pinned exactly,
and ``tests/test_wire.py`` fails loudly if any of them changes.
"""

from __future__ import annotations

import ctypes
import datetime
import enum
import hmac
import io
import json
import logging
import math
import os
import pickle
import pickletools
import secrets
import socket
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

__all__ = [
    "HOST",
    "KID_REQUIREMENT",
    "MAX_BUFFERED_BYTES",
    "MAX_FRAME_BYTES",
    "PATCHED",
    "Keyring",
    "Principal",
    "Rejected",
    "RejectionTail",
    "host_key_from_cookie",
    "install",
    "keys_for_new_systems",
    "new_sandbox_principal",
    "probe",
    "process_keys",
    "sender_principal",
    "set_process_keys",
    "signing_for",
]

MAGIC = b"PH1"
_HOST_LABEL = b"plugin-host/1 host key\0"
_SANDBOX_LABEL = b"plugin-host/1 sandbox key\0"
_TAG = 32
_HEADER = len(MAGIC) + 2  # magic, then the key id's length (2 bytes, big-endian)
_PROBE = "plugin-host/1 probe"
KID_REQUIREMENT = "plugin_host.kid"
"""The requirement that carries a sandbox root's key id (hex) to the admin of the system that creates
it, so that what that admin sends the root (an exit request at shutdown) is signed for it.  Not a
capability: placement ignores it."""
MAX_FRAME_BYTES = 256 * 2**20
"""Frames above this are refused before they are buffered (an unauthenticated peer could
otherwise make a process hold any amount of memory until its tag is checked)."""
MAX_BUFFERED_BYTES = 2 * MAX_FRAME_BYTES
"""What one process buffers of frames not received whole yet, all connections together; past it a
new frame is refused (a tag is checked only once its frame is whole)."""
INCOMING_PERIOD_SECONDS = 60
"""An incoming connection is closed after this long without a whole frame (Thespian: 7 minutes)."""
_CACHE_LIMIT = 4096  # derived keys, ACK frames and expected children kept per process
_ROUTE_LIMIT = 1 << 16

PATCHED = {
    "thespian.system.transport.TCPTransport": (
        "serializer",
        "ReceiveBuffer",
        "MAX_INCOMING_SOCKET_PERIOD",
        "TCPTransport.__init__",
        "TCPTransport.external_transport_clone",
        "TCPTransport.serializer",
        "TCPTransport._addedDataToIncoming",
        "TCPTransport._check_XMIT_4_done",
    ),
    "thespian.system.actorManager": ("ActorManager._handleOneMessage", "ActorManager._pendingActorReady"),
    "thespian.system.admin.adminCore": ("AdminCore.h_PendingActor", "AdminCore._pendingActorReady"),
    "thespian.system.systemCommon": ("systemCommonBase._handleChildExited",),
    "thespian.system.logdirector": ("ThespianLogForwardHandler.handle",),
    "thespian.system.utilis": ("_thesplog_file", "_thesplog_old_file"),
}
"""The Thespian names this module replaces or wraps (4.0.1)."""


class Principal:
    """Who signed a frame: the host, or one incarnation of a sandbox (its key id says which)."""

    __slots__ = ("kid",)

    def __init__(self, kid: bytes) -> None:
        self.kid = kid

    @property
    def is_host(self) -> bool:
        """Whether this is the host principal."""
        return self.kid == b"h"

    @property
    def sandbox_id(self) -> str | None:
        """The sandbox this principal is an incarnation of (``None`` for the host)."""
        return None if self.is_host else self.kid[9:].decode("utf-8", "replace")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Principal) and other.kid == self.kid

    def __hash__(self) -> int:
        return hash(self.kid)

    def __repr__(self) -> str:
        return "Principal(host)" if self.is_host else f"Principal(sandbox {self.sandbox_id!r}, {self.kid[1:9].hex()})"


HOST = Principal(b"h")
"""The host principal."""


def new_sandbox_principal(sandbox_id: str) -> Principal:
    """A fresh principal for one incarnation of ``sandbox_id`` (a random nonce, so a later one differs)."""
    return Principal(b"s" + secrets.token_bytes(8) + sandbox_id.encode("utf-8"))


def host_key_from_cookie(cookie: bytes) -> bytearray:
    """The host key: HMAC-SHA256 of a fixed label under the credential (a mutable buffer, so it can be wiped)."""
    return bytearray(hmac.digest(cookie, _HOST_LABEL, "sha256"))


class Rejected(Exception):  # noqa: N818 - a refusal the transport counts, named as the README names it
    """A frame was dropped: ``unauthenticated`` (no key of ours made its tag), ``refused`` (content a
    sandbox may not send), or ``ignored`` (a Thespian message a sandbox's runtime sends by itself)."""

    def __init__(self, reason: str, detail: str, principal: Principal | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.principal = reason, detail, principal


# -- the rejection log -------------------------------------------------------------------------


class _RejectionLog:
    """Appends one JSON line per dropped frame (at most ``_BURST`` a second; the rest are counted)."""

    _BURST = 20

    def __init__(self, fd: int | None) -> None:
        self.fd = fd
        self.window = 0
        self.written = 0
        self.suppressed = 0

    def close(self) -> None:
        """Stop recording (close the descriptor); later drops are only counted."""
        fd, self.fd = self.fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def record(self, rejected: Rejected, peer: str) -> None:
        now = time.time()
        if int(now) != self.window:
            self.window, self.written = int(now), 0
        if self.fd is None or self.written >= self._BURST:
            self.suppressed += 1
            return
        self.written += 1
        line = {
            "time": now,
            "pid": os.getpid(),
            "peer": peer,
            "reason": rejected.reason,
            "detail": rejected.detail[:300],
            "count": 1 + self.suppressed,
        }
        if rejected.principal is not None and not rejected.principal.is_host:
            line["sandbox"] = rejected.principal.sandbox_id
        self.suppressed = 0
        try:
            os.write(self.fd, (json.dumps(line) + "\n").encode())  # O_APPEND: one line, one write
        except OSError:
            pass


class RejectionTail:
    """Reads the lines processes appended to a rejection log since the last read (the admin, each tick)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0
        self.total = 0
        """Frames dropped since the log began (each line counts the ones it stands for)."""
        self._partial = b""

    def read(self) -> list[dict[str, Any]]:
        """The records appended since the last call (an incomplete last line waits for the next)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return []
        try:
            data = os.pread(fd, 1 << 20, self.offset)
        finally:
            os.close(fd)
        self.offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        records = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict):
                continue
            try:
                count = int(record.get("count", 1))
            except (TypeError, ValueError):
                continue
            self.total += count
            records.append(record)
        return records


# -- keys ------------------------------------------------------------------------------------


def _wipe(data: bytes) -> None:
    """Overwrite an (immutable) bytes object's buffer: a key must not linger in freed memory."""
    if sys.implementation.name == "cpython" and data:
        ctypes.memset(id(data) + sys.getsizeof(b"") - 1, 0, len(data))


class Keyring:
    """The keys one process holds, the routes it signs by, and the log of what it dropped.

    Args:
        host_key: the host key (a ``bytearray``; it is wiped when the process becomes a sandbox's).
        log_fd: where dropped frames are recorded (an ``O_APPEND`` descriptor), or ``None``.
    """

    def __init__(self, host_key: bytearray, log_fd: int | None = None) -> None:
        self._host_key: bytearray | None = host_key
        self._own = HOST
        self._macs: dict[bytes, Any] = {b"h": hmac.new(host_key, digestmod="sha256")}
        """Pre-keyed HMAC states by key id (copied per frame); no derived key is kept as bytes."""
        self._acks: dict[bytes, tuple[bytes, bytes]] = {}
        self._routes: dict[Any, bytes] = {}
        self._expected: dict[int, bytes] = {}
        self.next_child: Principal | None = None
        """Set while a sandbox root is forked (see :meth:`forking`)."""
        self.log = _RejectionLog(log_fd)

    @property
    def own(self) -> Principal:
        """The principal this process speaks as."""
        return self._own

    @property
    def is_host(self) -> bool:
        """Whether this process holds the host key (and so every sandbox's)."""
        return self._host_key is not None

    @property
    def host_key(self) -> bytearray:
        """The host key itself (to hand to the launcher over a pipe).

        Raises:
            ValueError: this process is a sandbox's.
        """
        if self._host_key is None:
            raise ValueError("a sandbox process holds no host key")
        return self._host_key

    # -- keys -------------------------------------------------------------------------------

    def _mac(self, kid: bytes) -> Any:
        """The keyed HMAC state of ``kid`` (``None``: a key this process does not hold)."""
        mac = self._macs.get(kid)
        if mac is not None or self._host_key is None or not kid.startswith(b"s") or len(kid) < 10:
            return mac  # a sandbox process holds its own key only
        if len(self._macs) >= _CACHE_LIMIT:
            self._macs = {b"h": self._macs[b"h"]}
            self._acks.clear()
        mac = self._macs[kid] = self._keyed(kid)
        return mac

    def _keyed(self, kid: bytes) -> Any:
        assert self._host_key is not None
        key = hmac.digest(self._host_key, _SANDBOX_LABEL + kid, "sha256")
        try:
            return hmac.new(key, digestmod="sha256")
        finally:
            _wipe(key)  # the key lives on in the HMAC state only

    def become_sandbox(self, principal: Principal) -> None:
        """Hold ``principal``'s key only, from now on: the host key and every derived key are wiped.

        Raises:
            ValueError: ``principal`` is the host, or this process no longer holds the host key.
        """
        if principal.is_host or self._host_key is None:
            raise ValueError("only a host process can become a sandbox's, once")
        own = self._keyed(principal.kid)
        self._host_key[:] = bytes(len(self._host_key))  # zero the buffer itself, not a copy
        self._host_key = None
        self._macs = {principal.kid: own}  # the other states are freed (OpenSSL clears them)
        # The rejection log stays open: a sandbox's processes count the frames they refuse there. Plugin
        # code could write lines to it too (as it could open it: same uid); a sandbox with a uid of its
        # own (containment) will need a pipe to the host instead.
        self._acks.clear()
        self._routes.clear()
        self._expected.clear()
        self._own = principal

    # -- frames -----------------------------------------------------------------------------

    def seal(self, kid: bytes, payload: bytes) -> bytes:
        """The wire form of ``payload`` signed with ``kid``'s key: Thespian's ``N>`` size header, then the frame."""
        template = self._mac(kid)
        if template is None:
            raise ValueError(f"no key for {Principal(kid)!r} in this process")
        head = MAGIC + len(kid).to_bytes(2, "big") + kid
        mac = template.copy()
        mac.update(head)
        mac.update(payload)
        return b"".join((b"%d>" % (len(head) + _TAG + len(payload)), head, mac.digest(), payload))

    def open(self, frame: bytes) -> tuple[Principal, memoryview]:
        """Check a frame's tag and return its principal and payload (still pickled).

        Raises:
            Rejected: not a plugin-host frame, an unknown key id, or a wrong tag.
        """
        if frame[: len(MAGIC)] != MAGIC or len(frame) < _HEADER:
            raise Rejected("unauthenticated", "not a plugin-host frame")
        end = _HEADER + int.from_bytes(frame[len(MAGIC) : _HEADER], "big")
        kid = bytes(frame[_HEADER:end])
        template = self._mac(kid)
        if template is None or len(frame) < end + _TAG:
            raise Rejected("unauthenticated", "a key id this process does not hold")
        view = memoryview(frame)
        mac = template.copy()
        mac.update(view[:end])
        mac.update(view[end + _TAG :])
        if not hmac.compare_digest(view[end : end + _TAG], mac.digest()):
            raise Rejected("unauthenticated", "wrong tag (another credential?)")
        return Principal(kid), view[end + _TAG :]

    def decode(self, frame: bytes) -> tuple[Principal, Any]:
        """:meth:`open`, then unpickle: restricted when a host process reads a sandbox's frame.

        Raises:
            Rejected: the frame is not authentic, or holds a class a sandbox may not send.
        """
        principal, payload = self.open(frame)
        if principal.is_host or not self.is_host:
            return principal, pickle.loads(payload)
        try:
            raw = bytes(payload)
            reader = _FastSandboxUnpickler if _unfolds_small(raw) else _SandboxUnpickler
            decoded = reader(io.BytesIO(raw)).load()
        except _Ignored as exc:
            raise Rejected("ignored", str(exc), principal) from None
        except Exception as exc:  # noqa: BLE001 - any decoding failure drops the frame
            raise Rejected("refused", f"{type(exc).__name__}: {exc}", principal) from None
        message = decoded[1] if isinstance(decoded, tuple) and len(decoded) == 2 else None
        kind = type(message).__name__
        if isinstance(message, logging.LogRecord):
            clean = _clean_log_record(message)
            if clean is None:
                raise Rejected("refused", "a log record with fields of the wrong type or size", principal)
            return principal, (decoded[0], clean)
        if kind == "ChildActorExited" and not self.claims(getattr(message, "childAddress", None), principal):
            # A sandbox's root may say it exits (its parent waits for that at shutdown); nobody else.
            raise Rejected("refused", "a ChildActorExited about another process", principal)
        if kind == "EndpointConnected" and self._expected.get(getattr(message, "childInstance", -1)) != principal.kid:
            # A root reports in to the parent that forked it with its key; no one else can be that child.
            raise Rejected("refused", "an EndpointConnected for a child that is not this sandbox's", principal)
        return principal, decoded

    def ack(self, principal: Principal, error: bool = False) -> bytes:
        """Thespian's ``ACK`` (or ``ACK+DATAERR``) control frame, signed for ``principal``."""
        pair = self._acks.get(principal.kid)
        if pair is None:
            if len(self._acks) >= _CACHE_LIMIT:
                self._acks.clear()
            pair = self._acks[principal.kid] = (
                self.seal(principal.kid, pickle.dumps("ACK")),
                self.seal(principal.kid, pickle.dumps("ACK+DATAERR")),
            )
        return pair[1] if error else pair[0]

    # -- routes: which key a frame to an address is signed with ------------------------------

    def kid_for(self, target: Any) -> bytes:
        """The key id for a frame to ``target``: an explicit :func:`signing_for`, a route, else our own."""
        if self._host_key is None:
            return self._own.kid
        where = _where(target)
        overrides = getattr(_local, "signing", None)
        if overrides and where in overrides:
            return overrides[where]  # type: ignore[no-any-return]
        return self._routes.get(where, self._own.kid)

    def expect_child(self, child: Any, principal: Principal) -> None:
        """Sign everything to the child just created (its local address, or Thespian's instance number
        of it) for ``principal``, once its real address is known (Thespian may queue messages until then)."""
        instance = (
            child
            if isinstance(child, int)
            else getattr(getattr(child, "addressDetails", None), "addressInstanceNum", None)
        )
        if isinstance(instance, int) and self._host_key is not None:
            if len(self._expected) >= _CACHE_LIMIT:  # creations that failed: their entry is never used
                self._expected.pop(next(iter(self._expected)))
            self._expected[instance] = principal.kid

    def child_ready(self, instance: Any, address: Any) -> None:
        """Thespian resolved a child's address: give it the route :meth:`expect_child` asked for."""
        kid = self._expected.pop(instance, None) if isinstance(instance, int) else None
        if kid is not None:
            self.route(address, Principal(kid))

    def route(self, address: Any, principal: Principal) -> None:
        """Sign everything to ``address`` for ``principal`` from now on (a host process only)."""
        where = _where(address)
        if where is not None and self._host_key is not None:
            if len(self._routes) >= _ROUTE_LIMIT:  # only if exits went unseen: routes are forgotten on exit
                self._routes.pop(next(iter(self._routes)))
            self._routes[where] = principal.kid

    def claims(self, address: Any, principal: Principal) -> bool:
        """Whether ``address`` is one of ``principal``'s (routed to it), not just one its frame names."""
        return self._routes.get(_where(address)) == principal.kid

    @contextmanager
    def forking(self, principal: Principal) -> Iterator[None]:
        """A child forked meanwhile is ``principal``'s: it takes that key, and only it, as it starts."""
        self.next_child = principal
        try:
            yield
        finally:
            self.next_child = None

    def forget(self, address: Any) -> None:
        """Drop the route to ``address`` (its process is gone; the port may be reused)."""
        self._routes.pop(_where(address), None)


def _where(address: Any) -> Any:
    """The (ip, port) an address sends to, whatever form (ActorAddress or its details) it takes."""
    details = getattr(address, "addressDetails", address)
    return getattr(details, "sockname", None)


# -- the restricted decoder for sandbox frames in host processes -----------------------------------

_ALLOWED_MODULES = (
    "plugin_host.messages",
    "plugin_host.values",
    "plugin_host.errors",
    "plugin_host.states",
    "actors._messages",
)
_ALLOWED_NAMES = {
    ("plugin_host.errors", "_rebuild"),  # PluginHostError.__reduce__: cls(message), then its __dict__
    ("plugin_host.config", "ResourceLimits"),
    ("thespian.actors", "ActorAddress"),
    ("thespian.system.transport.IPBase", "TCPv4ActorAddress"),
    ("socket", "AddressFamily"),
    ("socket", "SocketKind"),  # inside an address
    ("logging", "LogRecord"),
    ("thespian.actors", "ChildActorExited"),  # a root's goodbye to its parent: checked in Keyring.decode
    ("thespian.system.messages.multiproc", "EndpointConnected"),  # a root reporting in: checked there too
    ("builtins", "set"),
    ("builtins", "frozenset"),
}


def _bytearray(data: Any = b"") -> bytearray:
    """``bytearray`` as pickle rebuilds one (from its bytes), never ``bytearray(n)``: n zero bytes on request."""
    if not isinstance(data, bytes):
        raise pickle.UnpicklingError("a bytearray is rebuilt from bytes only")
    return bytearray(data)


def _complex(real: Any = 0.0, imag: Any = 0.0) -> complex:
    """``complex`` from two numbers only (parsing a huge string costs time)."""
    if not all(isinstance(part, (int, float)) and not isinstance(part, bool) for part in (real, imag)):
        raise pickle.UnpicklingError("a complex is rebuilt from numbers only")
    return complex(real, imag)


_SAFE_CONSTRUCTORS: dict[tuple[str, str], Any] = {
    ("builtins", "bytearray"): _bytearray,
    ("builtins", "complex"): _complex,
}


_IGNORED_NAMES = {("thespian.actors", "DeadEnvelope")}
"""What a sandbox's Thespian runtime sends host processes by itself and nobody needs: dead letters.
Acknowledged and dropped, not logged."""


class _Ignored(pickle.UnpicklingError):
    """A Thespian message a sandbox sends without meaning harm (see :data:`_IGNORED_NAMES`)."""


_EXPANDED_LIMIT = 1_000_000
"""Objects a sandbox frame may unfold into through shared references (a 300-byte pickle of tuples
that hold the previous one twice unfolds into 2**64 and hashes for ever)."""


class _BoundedMemo(dict):
    """The unpickler's memo, refusing a shared reference to something that unfolds too large.

    Sizes found are kept for later references until something they were found in changes (see
    :func:`_watching`): an object fetched while small may be filled in afterwards (BUILD,
    SETITEMS...). The children walked to find sizes are budgeted per frame (:data:`_WALK_BUDGET`),
    so neither refetching nor changing a large structure can make the checks cost more."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: dict[int, int] = {}
        self.walked = 0

    def __getitem__(self, key: Any) -> Any:
        found = super().__getitem__(key)
        size, walked = _unfolded_size(found, self.sizes, _WALK_BUDGET - self.walked)
        self.walked += walked
        if size > _EXPANDED_LIMIT:
            raise pickle.UnpicklingError("a structure that unfolds past a million objects")
        return found

    def __setitem__(self, key: Any, value: Any) -> None:
        if key in self:
            self.sizes.clear()  # the object it held may be freed, and its id taken by another
        super().__setitem__(key, value)


_WALK_BUDGET = 4 * _EXPANDED_LIMIT
"""Children the checks of one frame's shared references may walk in all."""


def _unfolded_size(root: Any, sizes: dict[int, int], budget: int) -> tuple[int, int]:
    """How many objects ``root`` holds counting every path (shared ones as often as they are reached;
    a reference back to an object being counted, a cycle, counts one), and how many children were
    walked to find out (objects already in ``sizes`` are not walked again; new sizes are added).

    Raises:
        pickle.UnpicklingError: finding out would walk more than ``budget`` children.
    """
    open_ids: set[int] = set()
    pending = [root]
    walked = 0
    while pending:
        obj = pending[-1]
        if id(obj) in sizes:
            pending.pop()
            continue
        children = _children(obj)
        if id(obj) not in open_ids:
            open_ids.add(id(obj))
            walked += len(children)
            if walked > budget:
                raise pickle.UnpicklingError("a frame whose shared references cost too much to check")
            missing = [child for child in children if id(child) not in sizes and id(child) not in open_ids]
            if missing:
                pending.extend(missing)
                continue
        pending.pop()
        open_ids.discard(id(obj))
        sizes[id(obj)] = min(_EXPANDED_LIMIT + 1, 1 + sum(sizes.get(id(child), 1) for child in children))
    return sizes[id(root)], walked


def _watching(load: Callable[[Any], None]) -> Callable[[Any], None]:
    """An opcode that changes the object on top of the stack: sizes found before no longer hold if
    they were found in it (if it was never measured, nothing measured holds it)."""

    def run(self: Any) -> None:
        load(self)
        if self.stack and id(self.stack[-1]) in self.memo.sizes:
            self.memo.sizes.clear()

    return run


def _children(obj: Any) -> list[Any]:
    if isinstance(obj, (tuple, list, set, frozenset)):
        return list(obj)
    if isinstance(obj, dict):
        return [*obj.keys(), *obj.values()]
    found = [getattr(obj, field.name, None) for field in obj.__attrs_attrs__] if hasattr(obj, "__attrs_attrs__") else []
    if isinstance(obj, BaseException):
        found += obj.args
    if isinstance(getattr(obj, "__dict__", None), dict):  # addresses, log records, errors' context
        found += list(vars(obj).values())
    return found


def _refuse_dup(self: Any) -> None:
    raise pickle.UnpicklingError("DUP is not used by Python's pickler")  # sharing without the memo


def _unfolds_small(raw: bytes) -> bool:
    """Whether ``raw`` surely unfolds into at most :data:`_EXPANDED_LIMIT` objects.

    A pickle of ``n`` opcodes with ``g`` shared references (GET, DUP) unfolds into at most
    ``n * 2**g`` objects (a tree plus ``g`` edges has at most ``2**g`` paths to a node); a large
    frame may unfold to four times its opcodes (``g <= 2``). The bytes
    that could be such opcodes bound ``g`` at C speed; when that is not enough the opcodes are
    walked. ``False`` sends the frame to the slower :class:`_SandboxUnpickler`, which watches its memo.
    """
    if len(raw) * 2 ** min(64, sum(map(raw.count, _SHARING_BYTES))) <= _EXPANDED_LIMIT:
        return True
    counted = _count_opcodes(raw)
    # A large frame has paid for its own size: it may unfold to a few times that, not to a million more.
    return counted is not None and counted[0] * 2 ** min(counted[1], 64) <= max(_EXPANDED_LIMIT, 4 * counted[0])


_SHARING_BYTES = (b"h", b"j", b"g", b"2")  # BINGET, LONG_BINGET, GET, DUP
_SHARING = frozenset(byte[0] for byte in _SHARING_BYTES)
_SKIP: list[int | None] = [None] * 256
"""Per opcode byte: the bytes of its argument (>= 0), or how to find them (< 0, pickletools' codes)."""
for _op in pickletools.opcodes:
    _SKIP[ord(_op.code)] = _op.arg.n if _op.arg is not None else 0
_PAIRS = frozenset(ord(code) for code in "ci")  # GLOBAL and INST: two lines of argument
_LENGTH_BYTES = {
    pickletools.TAKEN_FROM_ARGUMENT1: 1,
    pickletools.TAKEN_FROM_ARGUMENT4: 4,
    pickletools.TAKEN_FROM_ARGUMENT4U: 4,
    pickletools.TAKEN_FROM_ARGUMENT8U: 8,
}


def _count_opcodes(raw: bytes) -> tuple[int, int] | None:
    """(opcodes, shared references) up to STOP, read as the unpickler reads them; ``None`` if not a pickle."""
    at, ops, shared, end = 0, 0, 0, len(raw)
    stop = pickle.STOP[0]
    try:
        while at < end:
            code = raw[at]
            skip = _SKIP[code]
            at += 1
            ops += 1
            if code in _SHARING:
                shared += 1
            if skip is None:
                return None
            if skip >= 0:
                at += skip
            elif skip == pickletools.UP_TO_NEWLINE:
                at = raw.index(b"\n", at) + 1
                if code in _PAIRS:
                    at = raw.index(b"\n", at) + 1
            else:
                width = _LENGTH_BYTES[skip]
                at += width + int.from_bytes(raw[at : at + width], "little")
            if code == stop:
                return ops, shared
    except ValueError:  # no newline
        return None
    return None


class _SandboxUnpickler(pickle._Unpickler):
    """Unpickles only plugin-host's own message, value and error classes, addresses and log records.

    Pure Python, unlike ``pickle.Unpickler``, so that its memo can be watched: a shared reference
    (the only way a small pickle unfolds into a huge structure) is refused past a million objects,
    before anything hashes it. Frames that cannot unfold that far take :class:`_FastSandboxUnpickler`.
    """

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.DUP[0]] = _refuse_dup
    for _code in (pickle.BUILD, pickle.SETITEM, pickle.SETITEMS, pickle.APPEND, pickle.APPENDS, pickle.ADDITEMS):
        dispatch[_code[0]] = _watching(dispatch[_code[0]])
    del _code

    def __init__(self, file: Any) -> None:
        super().__init__(file)
        self.memo = _BoundedMemo()

    def find_class(self, module: str, name: str) -> Any:
        return _find_sandbox_class(module, name)


class _FastSandboxUnpickler(pickle.Unpickler):
    """The same classes as :class:`_SandboxUnpickler`, at C speed, for frames :func:`_unfolds_small` clears."""

    def find_class(self, module: str, name: str) -> Any:
        return _find_sandbox_class(module, name)


def _find_sandbox_class(module: str, name: str) -> Any:
    if (module, name) in _SAFE_CONSTRUCTORS:
        return _hardened(_SAFE_CONSTRUCTORS[module, name])
    if (module, name) in _IGNORED_NAMES:
        raise _Ignored(f"{module}.{name}")
    if (module, name) in _ALLOWED_NAMES or module in _ALLOWED_MODULES:
        found = (
            getattr(sys.modules.get(module) or __import__(module, fromlist=["_"]), name, None)
            if "." not in name
            else None
        )
        if (module, name) in _ALLOWED_NAMES or (isinstance(found, type) and found.__module__ == module):
            return _hardened(found)
    raise pickle.UnpicklingError(f"a sandbox may not send {module}.{name}")


def _hardened(found: Any) -> Any:
    """``found``, made to refuse a pickle BUILD aimed at itself (or, for an enum, at one of its members).

    Both unpicklers apply a BUILD through the target's ``__setstate__`` or, without one, by writing its
    ``__dict__`` and attributes: aimed at a class, a function or an enum member a frame fetched by name
    (shared by the whole process), that would rewrite it for every later frame and for the process's own
    code.  A class gets a ``__setstate__`` taking an instance (called on the class, it lacks an argument and
    raises); an enum, and a function, one that always refuses.  Instances are built as before.
    """
    if found in _HARDENED:
        return found
    guard: Any = None
    if isinstance(found, type) and issubclass(found, enum.Enum):
        guard = _refuse_build
    elif isinstance(found, type):
        guard = None if getattr(found, "__setstate__", None) is not None else _plain_setstate
    elif callable(found):
        guard = _refuse_build
    if guard is not None:
        try:
            setattr(found, "__setstate__", guard)  # noqa: B010 - a dunder of a class that is not ours
        except (TypeError, AttributeError):
            pass  # a builtin: nothing can be written on it, BUILD included
    _HARDENED.add(found)
    return found


_HARDENED: set[Any] = set()


def _refuse_build(*_: Any) -> None:
    raise pickle.UnpicklingError("a sandbox may not rewrite what it names (pickle BUILD on a shared object)")


def _plain_setstate(self: Any, state: Any) -> None:
    """What pickle's BUILD does without a ``__setstate__``, for a fresh instance, refusing dunder names."""
    slots = None
    if isinstance(state, tuple) and len(state) == 2:
        state, slots = state
    for part in (state, slots):
        if part is not None and not (
            isinstance(part, dict) and all(isinstance(key, str) and not key.startswith("__") for key in part)
        ):
            raise pickle.UnpicklingError(f"a malformed state for {type(self).__name__}")
    if state:
        self.__dict__.update(state)
    for key, value in (slots or {}).items():
        setattr(self, key, value)


_LOG_FIELDS: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "msg": (str,),
    "levelname": (str,),
    "levelno": (int,),
    "pathname": (str,),
    "filename": (str,),
    "module": (str,),
    "lineno": (int,),
    "funcName": (str, type(None)),
    "created": (float, int),
    "msecs": (float, int),
    "relativeCreated": (float, int),
    "thread": (int, type(None)),
    "threadName": (str, type(None)),
    "processName": (str, type(None)),
    "process": (int, type(None)),
    "exc_text": (str, type(None)),
    "stack_info": (str, type(None)),
    "actorAddress": (str,),
}
"""What a log record from a sandbox may carry, and of which types (a record with a name that is not a
string made the logger fail, and after 20 failures a second Thespian's logger exits)."""
_LOG_EXTRA_VALUES = (str, int, float, bool, type(None))
_LOG_EXTRAS = 32  # a plugin's ``extra=`` fields kept per record
_LOG_TEXT = 10_000  # characters kept of any text field


def _clean_log_record(record: Any) -> Any:
    """A fresh record of the fields of :data:`_LOG_FIELDS`, each of its type, or ``None``.

    A plugin's ``extra=`` fields (sent as text, see ``ThespianLogForwardHandler.handle`` in
    :func:`install`) are kept when plain, up to :data:`_LOG_EXTRAS`; none may shadow a name of
    ``LogRecord`` itself (a ``getMessage`` that is a string breaks every handler)."""
    fields: dict[str, Any] = {}
    extras = 0
    for name, value in vars(record).items():
        kinds = _LOG_FIELDS.get(name)
        if kinds is not None and not isinstance(value, kinds):
            return None
        if kinds is None:
            if not (
                isinstance(name, str)
                and name.isidentifier()
                and not name.startswith("_")
                and not hasattr(logging.LogRecord, name)
                and isinstance(value, _LOG_EXTRA_VALUES)
                and extras < _LOG_EXTRAS
            ):
                continue
            extras += 1
        fields[name] = value[:_LOG_TEXT] if isinstance(value, str) else value
    name = fields.get("name")
    if (
        not isinstance(name, str)
        or not isinstance(fields.get("levelno"), int)
        or not all(_sane_number(fields.get(key)) for key in _LOG_NUMBERS)
    ):
        return None
    if name not in _LOG_NAMES_SEEN:
        # Each new name is a logger kept for ever, and a dotted one a placeholder per prefix too: a long
        # one, or one past the first few hundred, is logged under a name of ours instead.
        if len(name) > _LOG_NAME or name.count(".") > _LOG_NAME_DOTS or len(_LOG_NAMES_SEEN) >= _LOG_NAMES:
            fields["name"] = _LOG_FOLDED
        else:
            _LOG_NAMES_SEEN.add(name)
    return logging.makeLogRecord({**fields, "args": None, "exc_info": None})


_LOG_NAME, _LOG_NAME_DOTS, _LOG_NAMES = 200, 10, 1024  # a logger name's length and dots; names a process takes
_LOG_FOLDED = "plugin_host.sandbox"
_LOG_NAMES_SEEN: set[str] = set()
_LOG_NUMBERS = ("levelno", "lineno", "created", "msecs", "relativeCreated", "thread", "process")


def _sane_number(value: Any) -> bool:
    """No number a handler would choke on formatting (a NaN time, a 10**400 line)."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isfinite(value) and abs(value) < 1e13
    return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**64


# -- which keyring a transport uses -----------------------------------------------------------------

_local = threading.local()
_process_keys: Keyring | None = None


def set_process_keys(keys: Keyring | None) -> None:
    """The keyring of every transport this process (and every process forked from it) makes.

    The launcher sets it before Thespian starts, so the admin, the logger and every actor
    inherit it.  An application process leaves it unset and uses :func:`keys_for_new_systems`.
    """
    global _process_keys
    _process_keys = keys


def process_keys() -> Keyring | None:
    """This process's keyring (``None`` in a process that is not part of an actor system)."""
    return _process_keys


@contextmanager
def keys_for_new_systems(keys: Keyring | None) -> Iterator[None]:
    """Transports created in this thread meanwhile (an ``ActorSystem()``) use ``keys``; their clones follow."""
    previous = getattr(_local, "creating", _UNSET)
    _local.creating = keys
    try:
        yield
    finally:
        if previous is _UNSET:
            del _local.creating
        else:
            _local.creating = previous


_UNSET = object()


@contextmanager
def signing_for(address: Any, principal: Principal) -> Iterator[None]:
    """Frames this thread sends to ``address`` meanwhile are signed for ``principal`` (a host process
    talking to a sandbox's process, or answering one)."""
    where = _where(address)
    if where is None:  # not a resolved TCP address: nothing to sign for
        yield
        return
    table = getattr(_local, "signing", None)
    if table is None:
        table = _local.signing = {}
    previous = table.get(where)
    table[where] = principal.kid
    try:
        yield
    finally:
        if previous is None:
            table.pop(where, None)
        else:
            table[where] = previous


def sender_principal() -> Principal:
    """Who signed the message the current actor is handling (its own process's principal for a
    message it sent itself, such as a timer or Thespian's report of a child's exit)."""
    principal = getattr(_local, "principal", None)
    if principal is not None:
        return principal  # type: ignore[no-any-return]
    return _process_keys.own if _process_keys is not None else HOST


def envelope_principal(envelope: Any, keys: Keyring | None) -> Principal:
    """The principal of a received envelope (an application context reads replies this way)."""
    found = getattr(envelope, "_ph_principal", None)
    if found is not None:
        return found  # type: ignore[no-any-return]
    return keys.own if keys is not None else HOST


def probe(address: tuple[str, int], keys: Keyring, timeout: float = 1.0) -> bool:
    """Whether the plugin-host system listening at ``address`` accepts ``keys`` (one signed frame).

    Returns ``False`` when it refuses them; raises ``OSError`` when nothing answers at all.
    """
    frame = keys.seal(keys.own.kid, pickle.dumps(_PROBE))
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(frame)
        data = b""
        while b">" not in data[:24]:
            chunk = sock.recv(4096)
            if not chunk:
                return False  # closed without an answer: our tag did not verify there
            data += chunk
        size, _, rest = data.partition(b">")
        while len(rest) < int(size):
            chunk = sock.recv(4096)
            if not chunk:
                return False
            rest += chunk
    try:
        principal, answer = keys.decode(rest[: int(size)])
    except Rejected:
        return False
    return principal == keys.own and answer == "ACK"


# -- the Thespian patch ----------------------------------------------------------------------------

_installed = False


def install() -> None:
    """Patch Thespian's TCP transport in this process (idempotent); forked processes inherit it."""
    global _installed
    if _installed:
        return
    from thespian.system import actorManager, logdirector, systemCommon
    from thespian.system.admin import adminCore
    from thespian.system.transport import TCPTransport as tcp

    originals = {
        "init": tcp.TCPTransport.__init__,
        "clone": tcp.TCPTransport.external_transport_clone,
        "one": actorManager.ActorManager._handleOneMessage,
        "ready": actorManager.ActorManager._pendingActorReady,
        "log": logdirector.ThespianLogForwardHandler.handle,
        "pending": adminCore.AdminCore.h_PendingActor,
        "admin_ready": adminCore.AdminCore._pendingActorReady,
        "exited": systemCommon.systemCommonBase._handleChildExited,
    }

    def __init__(self: Any, *args: Any) -> None:
        creating = getattr(_local, "creating", _UNSET)
        self._ph_keys = _process_keys if creating is _UNSET else creating
        originals["init"](self, *args)

    def external_transport_clone(self: Any) -> Any:
        with keys_for_new_systems(getattr(self, "_ph_keys", None)):
            return originals["clone"](self)

    def _handleOneMessage(self: Any, envelope: Any) -> Any:
        previous = getattr(_local, "principal", None)
        _local.principal = getattr(envelope, "_ph_principal", None)
        try:
            return originals["one"](self, envelope)
        finally:
            _local.principal = previous

    def _pendingActorReady(
        self: Any,
        childInstance: Any,
        actualAddress: Any,
        isMyChild: bool = True,
    ) -> Any:
        _quietly(lambda: _keys_of(self).child_ready(childInstance, actualAddress))
        return originals["ready"](self, childInstance, actualAddress, isMyChild)

    def h_PendingActor(self: Any, envelope: Any) -> Any:
        # A system's admin creating an actor another admin asked for (a sandbox root on a convention
        # member): the request carries the root's key id, so the child takes its key at fork and what
        # this admin sends it is signed for it.
        keys, principal = _keys_of(self), _requested_principal(envelope)
        if keys is None or principal is None:
            return originals["pending"](self, envelope)
        with keys.forking(principal):
            result = originals["pending"](self, envelope)
        pending = getattr(self, "_pendingChildren", None)
        for instance, requests in pending.items() if isinstance(pending, dict) else ():
            if requests and requests[0] is envelope:
                keys.expect_child(instance, principal)
        return result

    def admin_pending_ready(self: Any, childInstance: Any, actualAddress: Any) -> Any:
        _quietly(lambda: _keys_of(self).child_ready(childInstance, actualAddress))
        return originals["admin_ready"](self, childInstance, actualAddress)

    def _handleChildExited(self: Any, childAddress: Any) -> Any:
        _quietly(lambda: _keys_of(self).forget(childAddress))  # its port may serve someone else next
        return originals["exited"](self, childAddress)

    def handle(self: Any, record: Any) -> Any:
        keys = _process_keys
        if keys is not None and not keys.is_host:
            _quietly(lambda: _extras_as_text(record))
        return originals["log"](self, record)

    tcp.serializer = _RawFrames()
    tcp.MAX_INCOMING_SOCKET_PERIOD = datetime.timedelta(seconds=INCOMING_PERIOD_SECONDS)
    tcp.ReceiveBuffer = _bounded_receive_buffer()
    tcp.TCPTransport.__init__ = __init__
    tcp.TCPTransport.external_transport_clone = external_transport_clone
    tcp.TCPTransport.serializer = _serialize
    tcp.TCPTransport._addedDataToIncoming = _added_data_to_incoming
    tcp.TCPTransport._check_XMIT_4_done = _check_xmit_4_done
    actorManager.ActorManager._handleOneMessage = _handleOneMessage
    actorManager.ActorManager._pendingActorReady = _pendingActorReady
    adminCore.AdminCore.h_PendingActor = h_PendingActor
    adminCore.AdminCore._pendingActorReady = admin_pending_ready
    systemCommon.systemCommonBase._handleChildExited = _handleChildExited
    logdirector.ThespianLogForwardHandler.handle = handle
    os.register_at_fork(after_in_child=_take_the_childs_key)
    os.register_at_fork(after_in_child=_buffering_starts_afresh)
    _installed = True


def _extras_as_text(record: logging.LogRecord) -> None:
    """Turn a sandbox's log record's ``extra=`` fields that :func:`_clean_log_record` would drop (anything
    but :data:`_LOG_EXTRA_VALUES`: lists, the plugin's own objects...) into their text, before it is sent.

    The record's own fields are left to Thespian, which formats the message and the traceback."""
    for name, value in list(vars(record).items()):
        if name not in _RECORD_FIELDS and not isinstance(value, _LOG_EXTRA_VALUES):
            try:
                text = repr(value)
            except Exception:  # noqa: BLE001 - a plugin's __repr__ may raise anything
                text = f"<{type(value).__name__} that cannot be shown>"
            setattr(record, name, text[:_LOG_TEXT])


_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
"""What a ``LogRecord`` carries of its own (anything else on a record came from ``extra=``)."""


def _keys_of(manager: Any) -> Any:
    return getattr(getattr(manager, "transport", None), "_ph_keys", None)


def _requested_principal(envelope: Any) -> Principal | None:
    wanted = getattr(getattr(envelope, "message", None), "targetActorReq", None)
    kid = wanted.get(KID_REQUIREMENT) if isinstance(wanted, dict) else None
    try:
        return Principal(bytes.fromhex(kid)) if isinstance(kid, str) and kid.startswith("73") else None
    except ValueError:
        return None


def _quietly(action: Callable[[], Any]) -> None:
    """Run bookkeeping of ours inside Thespian's loop: it never breaks Thespian's own."""
    try:
        action()
    except Exception:  # noqa: BLE001 - see above
        pass


def _take_the_childs_key() -> None:
    """In a child just forked to be a sandbox's root: hold that sandbox's key only, before anything else runs."""
    keys = _process_keys
    if keys is not None and keys.next_child is not None:
        principal, keys.next_child = keys.next_child, None
        keys.become_sandbox(principal)


class _RawFrames:
    """Replaces the transport's module-level ``serializer``: receive buffers hand back the raw frame
    (the transport methods below check and decode it); ``dumps`` is plain pickle."""

    loads = staticmethod(bytes)
    dumps = staticmethod(pickle.dumps)


def _bounded_receive_buffer() -> type:
    from thespian.system.transport.streamBuffer import ReceiveBuffer

    class BoundedReceiveBuffer(ReceiveBuffer):
        """Thespian's receive buffer (same states and results), growing in place instead of copying itself
        on every chunk, and refusing a declared size over :data:`MAX_FRAME_BYTES` before buffering it."""

        _size: int | None
        _extra: bytes
        _blen: int

        def __init__(self, serializer: Any = bytes) -> None:
            super().__init__(serializer)
            self._buf = bytearray()
            self._counted, self._pid = 0, 0

        def __del__(self) -> None:
            self._release()  # a connection dropped half-way

        def _release(self) -> None:
            if self._counted and self._pid == os.getpid():  # a parent's buffer, inherited by a fork, is not ours
                _buffering[0] -= self._counted
            self._counted = 0

        def completed(self) -> Any:
            if self._size is not None and self._blen == self._size:
                self._release()  # whole: it is the frame's receiver's memory now, not a stranger's
            return super().completed()

        def addMore(self, buf: bytes) -> None:
            if self._size is not None:
                if len(self._buf) == self._size:
                    self._extra += buf
                else:
                    want = self._size - len(self._buf)
                    self._buf += buf[:want]
                    if len(buf) > want:
                        self._extra = bytes(buf[want:])
                self._blen = len(self._buf)
                return
            mark = buf.find(b">")
            if mark < 0:
                self._buf += buf
                self._blen = 1  # Thespian's "something arrived" before the size is known
                if len(self._buf) > _SIZE_DIGITS:
                    raise ValueError("no frame size in the first bytes")
                return
            size = int(bytes(self._buf) + buf[:mark])
            if not 0 <= size <= MAX_FRAME_BYTES:
                raise ValueError(f"a frame of {size} bytes is over the {MAX_FRAME_BYTES}-byte limit")
            if _buffering[0] + size > MAX_BUFFERED_BYTES:
                raise ValueError(f"{_buffering[0]} bytes of frames are being received already")
            _buffering[0] += size
            self._counted, self._pid = size, os.getpid()
            rest = buf[mark + 1 :]
            self._size, self._buf = size, bytearray(rest[:size])
            self._blen = len(self._buf)
            if len(rest) > size:
                self._extra = bytes(rest[size:])

    return BoundedReceiveBuffer


_SIZE_DIGITS = 24  # Thespian's "N>" header: a frame size never needs more digits
_buffering = [0]  # bytes of frames this process is receiving (announced sizes), across connections


def _buffering_starts_afresh() -> None:
    """After a fork: the parent's frames in progress are not the child's to count (nor to release)."""
    _buffering[0] = 0


def _serialize(self: Any, intent: Any) -> bytes:
    """``TCPTransport.serializer``: the pickled envelope, sealed for the target's principal."""
    payload = pickle.dumps((self.myAddress, intent.message))
    keys: Keyring | None = getattr(self, "_ph_keys", None)  # none: made before the patch, or raw
    if keys is None:
        return b"%d>" % len(payload) + payload
    kid = intent._ph_kid = keys.kid_for(intent.targetAddr)
    return keys.seal(kid, payload)


def _peer(sock: Any) -> str:
    try:
        host, port = sock.getpeername()[:2]
        return f"{host}:{port}"
    except (OSError, AttributeError, ValueError):
        return "?"


def _decode(keys: Keyring | None, buffer: Any) -> tuple[Principal | None, Any]:
    """A completed receive buffer's content (decoded once, even when two paths read it)."""
    done = getattr(buffer, "_ph_decoded", None)
    if done is None:
        raw, _ = buffer.completed()
        if keys is None:  # a raw transport (a buffer made before the patch holds the value already)
            done = (None, pickle.loads(raw) if isinstance(raw, (bytes, bytearray)) else raw)
        else:
            done = keys.decode(raw)
        buffer._ph_decoded = done
    return done


def _added_data_to_incoming(
    self: Any,
    inc: Any,
    skipFinish: bool = False,
    has_exclusive_flag: bool = False,
) -> Any:
    """``TCPTransport._addedDataToIncoming`` (Thespian 4.0.1), with the frame checked before it is decoded."""
    from thespian.system.transport import ReceiveEnvelope
    from thespian.system.transport.TCPTransport import (
        ackDataErrMsg,
        ackMsg,
        err_send_connreset,
        isControlMessage,
        thesplog,
    )

    if not inc.receivedAllData():
        return inc
    keys: Keyring | None = getattr(self, "_ph_keys", None)  # none: made before the patch, or raw
    principal: Principal | None = None
    rdata: Any = ""
    try:
        principal, rdata = _decode(keys, inc._rData)
        if keys is not None and rdata == _PROBE:
            inc.socket.send(keys.ack(principal))  # type: ignore[arg-type]
            inc.close()
            return None
        if isControlMessage(rdata):
            raise ValueError('Error: received control message "%s"; expecting incoming data.' % (str(rdata)))
        envelope = ReceiveEnvelope(*rdata)
    except Rejected as rejected:
        assert keys is not None
        if rejected.reason != "ignored":
            keys.log.record(rejected, _peer(inc.socket))
        if rejected.principal is not None:  # authentic but refused: tell the sender, in its key
            _send_quietly(inc.socket, keys.ack(rejected.principal, error=rejected.reason != "ignored"))
        inc.close()
        return None
    except Exception:  # noqa: BLE001 - Thespian's own data-error path
        import traceback

        thesplog(
            'OUCH!  Error deserializing received data: %s  (rdata="%s")',
            traceback.format_exc(),
            rdata,
            level=logging.ERROR,
        )
        _send_quietly(inc.socket, ackDataErrMsg if keys is None or principal is None else keys.ack(principal, True))
        inc.close()
        return None
    try:
        inc.socket.send(ackMsg if keys is None or principal is None else keys.ack(principal))
    except socket.error as err:
        if err_send_connreset(err):
            thesplog("Remote %s closed socket before ACK could be sent", inc.socket, level=logging.WARNING)
        else:
            raise
    if principal is not None:
        envelope._ph_principal = principal
    inc.fromAddress = rdata[0]
    self._processReceivedEnvelope(envelope, has_exclusive_flag=has_exclusive_flag)
    # Thespian 4.0.1 drops data trailing a frame here (it re-adds the decoded tuple, which fails);
    # a sender waits for each ACK before its next frame, so nothing is lost.
    if not skipFinish:
        if (
            keys is not None
            and keys.is_host
            and principal is not None
            and not principal.is_host
            and not keys.claims(envelope.sender, principal)
        ):
            inc.close()  # never send on a sandbox's socket to an address it only names (another's)
        else:
            self._finishIncoming(inc, envelope.sender)
    return None


def _send_quietly(sock: Any, data: bytes) -> None:
    try:
        sock.send(data)
    except Exception:  # noqa: BLE001 - a courtesy; the socket is closed next anyway
        pass


def _check_xmit_4_done(self: Any, intent: Any, rcv: bytes) -> Any:
    """``TCPTransport._check_XMIT_4_done`` (Thespian 4.0.1): the ACK must be authentic, and signed
    with the key of the frame it acknowledges."""
    from thespian.system.transport import SendStatus
    from thespian.system.transport.TCPTransport import (
        ReceiveBuffer,
        TCPIncomingPersistent,
        ackPacket,
        isControlMessage,
        serializer,
        thesplog,
    )

    intent.ackbuf.addMore(rcv)
    if not intent.ackbuf.isDone():
        return True  # continue waiting for the ACK
    keys: Keyring | None = getattr(self, "_ph_keys", None)  # none: made before the patch, or raw
    compl = intent.ackbuf.completed()
    try:
        if not compl:
            raise Rejected("unauthenticated", "corrupted ACK")
        principal, ackmsg = _decode(keys, intent.ackbuf)
        if keys is not None and isControlMessage(ackmsg) and principal.kid != intent._ph_kid:  # type: ignore[union-attr]
            raise Rejected("unauthenticated", "an ACK signed for another principal")
    except Exception as exc:  # noqa: BLE001 - a corrupted or forged ACK: retry, as Thespian does
        if keys is not None:
            keys.log.record(
                exc if isinstance(exc, Rejected) else Rejected("unauthenticated", str(exc)),
                _peer(getattr(intent, "socket", None)),
            )
        intent.backoffPause(True)
        intent.stage = self._XMITStepRetry
        return self._nextTransmitStep(intent)
    intent.extraRead = compl[1]
    if isControlMessage(ackmsg):
        intent.result = SendStatus.Sent if ackmsg == ackPacket else SendStatus.BadPacket
        intent.stage = self._XMITStepFinishCleanup
        return self._nextTransmitStep(intent)
    # The remote sent a frame of its own instead of the ACK: take it as an incoming message.
    intent.ackbuf.removeExtra()
    if self._addedDataToIncoming(TCPIncomingPersistent(intent.targetAddr, intent.socket, intent.ackbuf), True):
        thesplog(
            "<<< Should never happen: not full receive while waiting for ACK. Aborting socket.", level=logging.CRITICAL
        )
        intent.ackbuf = ReceiveBuffer(serializer.loads)
        intent.backoffPause(True)
        intent.stage = self._XMITStepRetry
        return self._nextTransmitStep(intent)
    intent.ackbuf = ReceiveBuffer(serializer.loads)
    nxtrcv = intent.extraRead
    intent.extraRead = ""
    return self._check_XMIT_4_done(intent, nxtrcv)
