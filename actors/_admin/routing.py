"""The admin's queries and routing (:class:`Routing`): sandbox info, actor lookups (parked while an actor
restarts), and calls, casts and runs forwarded to where they run.

A lookup for an actor that is restarting waits (``LookupActor.wait``) until it runs again,
so a host's call resumes on the next incarnation instead of failing.
"""

from __future__ import annotations

import time
from typing import Callable, Mapping

import attrs
from thespian.actors import ActorAddress

from plugin_host import lowlevel
from plugin_host.errors import ActorNotFoundError, BadRequestError, PluginHostError
from plugin_host.messages import (
    ActorRef,
    Blob,
    Call,
    Cast,
    GetSandboxCode,
    GetSandboxInfo,
    ListSandboxes,
    LookupActor,
    Run,
)
from plugin_host.states import AdminAction, RecordStatus
from plugin_host.values import SandboxInfo

from .. import _messages as m
from .record import AdminPort, SandboxRecord, find, not_found

__all__ = ["Routing", "SANDBOX_LOOKUPS", "SANDBOX_LOOKUP_WAIT"]

SANDBOX_LOOKUPS = 16
"""Lookups one sandbox may have waiting for an actor to run again."""
SANDBOX_LOOKUP_WAIT = 30.0
"""Longest a sandbox's lookup waits (a host's waits as long as it asks)."""


class Routing:
    """Owns the lookups parked until their actor runs again; answers queries from the records."""

    def __init__(
        self,
        port: AdminPort,
        records: Mapping[str, SandboxRecord],
        info: Callable[[str, SandboxRecord], SandboxInfo],
        tick: Callable[[], None],
    ) -> None:
        self.port = port
        self.records = records
        """Every sandbox's record (read only: the lifecycle component writes it)."""
        self.info = info
        self.tick = tick
        self.parked: list[tuple[LookupActor, ActorAddress, float, lowlevel.Principal]] = []

    def list_sandboxes(self, msg: ListSandboxes, sender: ActorAddress) -> None:
        """Every sandbox, by id."""
        self.port.reply(sender, [self.info(i, r) for i, r in sorted(self.records.items())], msg.corr)

    def sandbox_code(self, msg: GetSandboxCode, sender: ActorAddress) -> None:
        """The sandbox's current sources (for compiling a new version against them)."""
        rec = find(self.records, self.port, msg.sandbox_id, sender, msg.corr)
        if rec is not None:
            self.port.reply(sender, dict(rec.sources), msg.corr)

    def sandbox_info(self, msg: GetSandboxInfo, sender: ActorAddress) -> None:
        """One sandbox."""
        rec = find(self.records, self.port, msg.sandbox_id, sender, msg.corr)
        if rec is not None:
            self.port.reply(sender, self.info(msg.sandbox_id, rec), msg.corr)

    def _lookup(self, sandbox_id: str, rec: SandboxRecord, name: object) -> ActorRef:
        entry = rec.directory.get(name) if isinstance(name, str) else None
        if entry is not None and rec.status == RecordStatus.RUNNING:
            return ActorRef(
                sandbox_id,
                str(name),
                entry[0],
                entry[1],
                rec.deaths.get(str(name), ()),
                rec.limits.max_mailbox,
                rec.principal.kid if rec.principal is not None else b"",
            )
        if rec.status in (RecordStatus.FAILED, RecordStatus.LOST):
            state = "has failed" if rec.status == RecordStatus.FAILED else "is lost"
            raise ActorNotFoundError(f"sandbox {sandbox_id!r} {state}: {rec.reason}", sandbox_id=sandbox_id, name=name)
        known = any(c.name == name for c in rec.children)
        transient = rec.status in (RecordStatus.STARTING, RecordStatus.STOPPING) or known
        raise ActorNotFoundError(
            f"actor {name!r} of sandbox {sandbox_id!r} is {'restarting' if transient else 'unknown'}",
            sandbox_id=sandbox_id,
            name=name,
            stale=transient and rec.action != AdminAction.DESTROY,
        )

    def lookup(self, msg: LookupActor, sender: ActorAddress) -> None:
        """Where a named actor runs now; with ``wait``, answered once it runs again."""
        if isinstance(msg.wait, bool) or not isinstance(msg.wait, (int, float)):
            self.port.reply(sender, BadRequestError(f"LookupActor.wait must be seconds, got {msg.wait!r}"), msg.corr)
            return
        principal = lowlevel.sender_principal()
        wait = msg.wait
        if not principal.is_host:  # a sandbox's lookups wait briefly, and a few at a time
            wait = min(wait, SANDBOX_LOOKUP_WAIT)
            if sum(p == principal for *_, p in self.parked) >= SANDBOX_LOOKUPS:
                wait = 0
        if not self._answer_lookup(msg, sender, final=wait <= 0):
            self.parked.append((msg, sender, time.monotonic() + wait, principal))
            self.tick()

    def _answer_lookup(self, msg: LookupActor, sender: ActorAddress, final: bool) -> bool:
        """Reply to a lookup unless it should wait longer; return whether it was answered."""
        rec = self.records.get(msg.sandbox_id) if isinstance(msg.sandbox_id, str) else None
        if rec is None:
            self.port.reply(sender, not_found(msg.sandbox_id), msg.corr)
            return True
        try:
            ref = self._lookup(msg.sandbox_id, rec, msg.name)
            if ref.incarnation == msg.not_incarnation:
                raise ActorNotFoundError(
                    f"actor {msg.name!r} of sandbox {msg.sandbox_id!r} is restarting",
                    sandbox_id=msg.sandbox_id,
                    name=msg.name,
                    stale=True,
                )
        except PluginHostError as exc:
            if getattr(exc, "stale", False) and not final:
                return False
            self.port.reply(sender, exc, msg.corr)
            return True
        self.port.reply(sender, ref, msg.corr)
        return True

    def retry_parked(self, now: float) -> None:
        """Answer the parked lookups whose actor runs again, or whose wait is over."""
        parked, self.parked = self.parked, []
        for msg, sender, deadline, principal in parked:
            with lowlevel.signing_for(sender, principal):  # a sandbox asked: its answer is signed for it
                answered = self._answer_lookup(msg, sender, final=now >= deadline)
            if not answered:
                self.parked.append((msg, sender, deadline, principal))

    def call(self, msg: Call, sender: ActorAddress) -> None:
        """Route a call to its actor; the actor answers the caller directly."""
        rec = find(self.records, self.port, msg.sandbox_id, sender, msg.corr)
        if rec is None:
            return
        try:
            ref = self._lookup(msg.sandbox_id, rec, msg.name)
        except PluginHostError as exc:
            self.port.reply(msg.reply_to or sender, exc, msg.corr)
            return
        self.to_actor(rec, ref.address, attrs.evolve(msg, reply_to=msg.reply_to or sender, incarnation=ref.incarnation))

    def to_actor(self, rec: SandboxRecord, address: ActorAddress, message: object) -> None:
        """Send to an actor of a sandbox's tree: signed with its incarnation's key, the only one it holds."""
        if rec.principal is None:
            self.port.send(address, message)
            return
        with lowlevel.signing_for(address, rec.principal):
            self.port.send(address, message)

    def cast(self, msg: Cast) -> None:
        """Route a cast; unknown sandboxes and actors drop it (casts are never answered)."""
        rec = self.records.get(msg.sandbox_id) if isinstance(msg.sandbox_id, str) else None
        entry = rec.directory.get(msg.name) if rec is not None and isinstance(msg.name, str) else None
        if rec is not None and entry is not None:
            self.to_actor(rec, entry[0], attrs.evolve(msg, incarnation=entry[1]))
        elif rec is not None and isinstance(msg.name, str):
            self.port.send(rec.root, m.Route(msg.name, msg))

    def run(self, msg: Run, sender: ActorAddress) -> None:
        """Run a function in a fresh process of the sandbox."""
        rec = find(self.records, self.port, msg.sandbox_id, sender, msg.corr)
        if rec is None:
            return
        if isinstance(msg.timeout, bool) or not isinstance(msg.timeout, (int, float)) or not msg.timeout > 0:
            self.port.reply(
                sender, BadRequestError(f"Run.timeout must be positive seconds, got {msg.timeout!r}"), msg.corr
            )
            return
        if (
            rec.root is None
            or rec.status not in (RecordStatus.RUNNING, RecordStatus.FAILED)
            or not isinstance(msg.fn, Blob)
        ):
            self.port.reply(
                sender, BadRequestError(f"cannot run in sandbox {msg.sandbox_id!r} now ({rec.status})"), msg.corr
            )
            return
        self.port.send(rec.root, attrs.evolve(msg, reply_to=msg.reply_to or sender))
