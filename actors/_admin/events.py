"""The admin's events, monitoring and audit log (:class:`Events`).

Events (started, crashed, restarted, failed, limit_breached, reloaded, rolled_back,
stopped, lost, denied, frame_rejected) are kept in a bounded log and pushed as ``EventNotice`` to
every subscriber.  The monitor actor of the system a sandbox runs on is told which processes it has
there; usage queries go to that monitor.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from typing import Any, Callable, Mapping

from thespian.actors import ActorAddress

from plugin_host import lowlevel
from plugin_host.config import HostConfig
from plugin_host.errors import AccessDeniedError, SandboxNotFoundError
from plugin_host.messages import EventNotice, GetAuditLog, GetResourceUsage, HostBreach, Subscribe, Unsubscribe
from plugin_host.states import EventKind, RecordStatus
from plugin_host.values import AuditRecord, Event

from .. import _messages as m
from .._base import log
from .record import AUDIT_LOG, AdminPort, SandboxRecord, find

__all__ = ["Events", "EVENT_LOG", "SANDBOX_SUBSCRIPTIONS"]

EVENT_LOG = 1000
"""Events the admin keeps (host-wide)."""
SANDBOX_SUBSCRIPTIONS = 8
"""Event subscriptions one sandbox incarnation may hold (each costs a send per event)."""
COUNT_DEADLINE = 2.0
"""Seconds a usage query waits for the root's fresh message counts (it answers within ``COUNT_WAIT``)."""

_count_ids = itertools.count(1)


class Events:
    """Owns the event log, the subscribers, the usage queries waiting for counts and the rejection log."""

    def __init__(
        self,
        port: AdminPort,
        records: Mapping[str, SandboxRecord],
        config: Callable[[], HostConfig],
        monitor_of: Callable[[str], ActorAddress | None],
        from_root: Callable[[SandboxRecord, ActorAddress], bool],
    ) -> None:
        self.port = port
        self.records = records
        """Every sandbox's record (read only: the lifecycle component writes it)."""
        self.config = config
        self.monitor_of = monitor_of
        self.from_root = from_root
        self.log: deque[Event] = deque(maxlen=EVENT_LOG)
        self.subscribers: list[tuple[ActorAddress, lowlevel.Principal]] = []
        self.counting: dict[str, tuple[GetResourceUsage, ActorAddress, float]] = {}
        """Usage queries waiting for a root's message counts (corr -> query, asker, deadline)."""
        self.denied = 0
        """Requests refused to sandboxes since the host started."""
        self._rejections: lowlevel.RejectionTail | None = None

    def emit(self, kind: EventKind, sandbox_id: str, actor: str = "", reason: str = "", **details: object) -> None:
        """Record an event and push it to every subscriber (a sandbox's subscribers get its own events only)."""
        event = Event(EventKind(kind), sandbox_id, actor, reason, time.time(), details)
        self.log.append(event)
        for subscriber, principal in self.subscribers:
            if principal.is_host:
                self.port.send(subscriber, EventNotice(event))
            elif principal.sandbox_id == sandbox_id:
                with lowlevel.signing_for(subscriber, principal):
                    self.port.send(subscriber, EventNotice(event))

    def refused(self, message: object, principal: lowlevel.Principal, error: AccessDeniedError) -> None:
        """Count a request refused to a sandbox, and record a ``denied`` event for it."""
        self.denied += 1
        about = getattr(message, "sandbox_id", None)
        self.emit(
            EventKind.DENIED,
            principal.sandbox_id or "",
            reason=str(error),
            request=type(message).__name__,
            target=about if isinstance(about, str) else None,
        )

    # -- subscriptions ---------------------------------------------------------------------

    def subscribe(self, msg: Subscribe, sender: ActorAddress) -> None:
        """Push every event to the sender from now on (a sandbox: its own events only, a few subscriptions)."""
        principal = lowlevel.sender_principal()
        if not principal.is_host and sum(p == principal for _, p in self.subscribers) >= SANDBOX_SUBSCRIPTIONS:
            error = AccessDeniedError(
                f"sandbox {principal.sandbox_id!r} already has {SANDBOX_SUBSCRIPTIONS} subscriptions",
                request="Subscribe",
                sandbox_id=principal.sandbox_id,
            )
            self.emit(EventKind.DENIED, principal.sandbox_id or "", reason=str(error), request="Subscribe", target=None)
            self.port.reply(sender, error, msg.corr)
            return
        if not any(s == sender and p == principal for s, p in self.subscribers):
            self.subscribers.append((sender, principal))
        self.port.reply(sender, None, msg.corr)

    def forget_subscribers(self, sandbox_id: str) -> None:
        """A sandbox's processes are gone: so are its subscriptions (a new incarnation subscribes anew)."""
        self.subscribers = [(s, p) for s, p in self.subscribers if p.sandbox_id != sandbox_id]

    def unsubscribe(self, msg: Unsubscribe, sender: ActorAddress) -> None:
        """Stop pushing events to the sender."""
        principal = lowlevel.sender_principal()
        self.subscribers = [(s, p) for s, p in self.subscribers if not (s == sender and p == principal)]
        self.port.reply(sender, None, msg.corr)

    # -- what roots, monitors and hosts report ------------------------------------------------

    def tree_event(self, msg: m.TreeEvent, sender: ActorAddress) -> None:
        """Crashes, restarts and limit breaches reported by a sandbox root."""
        rec = self.records.get(msg.sandbox_id)
        if rec is not None and self.from_root(rec, sender):
            self.emit(EventKind(msg.kind), msg.sandbox_id, msg.actor, msg.reason, **msg.details)

    def sample(self, msg: m.Sample) -> None:
        """The monitor killed a process over a limit."""
        self.emit(
            EventKind.LIMIT_BREACHED,
            msg.sandbox_id,
            msg.actor,
            msg.reason or f"{msg.limit}: {msg.value} over {msg.maximum}",
            limit=msg.limit,
            value=msg.value,
            maximum=msg.maximum,
        )

    def host_breach(self, msg: HostBreach) -> None:
        """A host refused a call past ``max_mailbox``."""
        self.emit(
            EventKind.LIMIT_BREACHED,
            msg.sandbox_id,
            msg.actor,
            f"{msg.limit}: {msg.value} calls waiting",
            limit=msg.limit,
            value=msg.value,
            maximum=msg.maximum,
        )

    # -- monitoring and usage ----------------------------------------------------------------

    def watch(self, sandbox_id: str, rec: SandboxRecord) -> None:
        """Tell the monitor which processes the sandbox has now."""
        pids: dict[str, int] = {}
        registered = sandbox_id in self.records and self.records[sandbox_id] is rec
        if registered and rec.root is not None:
            pids = {child.name: child.pid for child in rec.children if child.pid}
            if rec.pid:
                pids["(root)"] = rec.pid
        monitor = self.monitor_of(rec.node)
        if monitor is not None:  # none while its system is lost
            group = rec.group.paths() if rec.group is not None else None
            self.port.send(monitor, m.Watch(sandbox_id, pids, rec.limits, self.config().monitor_interval, group))

    def usage(self, msg: m.Usage, sender: ActorAddress) -> None:
        """Message counts from a sandbox root: after a heartbeat, or asked for by a usage query."""
        rec = self.records.get(msg.sandbox_id)
        if rec is None or not self.from_root(rec, sender):
            return
        rec.messages = dict(msg.messages)
        query = self.counting.get(msg.corr)
        if query is not None and query[0].sandbox_id == msg.sandbox_id:
            del self.counting[msg.corr]
            self._ask_monitor(rec, *query[:2])

    def resource_usage(self, msg: GetResourceUsage, sender: ActorAddress) -> None:
        """Memory, CPU, messages and restarts per actor: counts asked of the root now, figures sampled now."""
        rec = find(self.records, self.port, msg.sandbox_id, sender, msg.corr)
        if rec is None:
            return
        if rec.root is None or rec.status != RecordStatus.RUNNING:
            self._ask_monitor(rec, msg, sender)
            return
        corr = f"u{next(_count_ids)}"
        self.counting[corr] = (msg, sender, time.monotonic() + COUNT_DEADLINE)
        self.port.send(rec.root, m.CountMessages(corr))

    def count_deadlines(self, now: float) -> None:
        """Answer usage queries whose root never sent its counts (it died meanwhile), with the last ones."""
        for corr, (msg, sender, deadline) in list(self.counting.items()):
            if now > deadline:
                del self.counting[corr]
                rec = find(self.records, self.port, msg.sandbox_id, sender, msg.corr)
                if rec is not None:
                    self._ask_monitor(rec, msg, sender)

    def _ask_monitor(self, rec: SandboxRecord, msg: GetResourceUsage, sender: ActorAddress) -> None:
        restarts = {child.name: child.restarts for child in rec.children}
        monitor = self.monitor_of(rec.node)
        if monitor is None:
            self.port.reply(
                sender,
                SandboxNotFoundError(
                    f"sandbox {msg.sandbox_id!r} is {rec.status}: {rec.reason}", sandbox_id=msg.sandbox_id
                ),
                msg.corr,
            )
            return
        self.port.send(
            monitor,
            m.UsageQuery(
                sandbox_id=msg.sandbox_id,
                messages=dict(rec.messages),
                restarts=restarts,
                reply_to=sender,
                corr=msg.corr,
            ),
        )

    # -- audit records ------------------------------------------------------------------------

    def audit_records(self, msg: m.AuditRecords, sender: ActorAddress) -> None:
        """Audit records of a sandbox, from its root."""
        rec = self.records.get(msg.sandbox_id)
        if rec is not None and self.from_root(rec, sender) and isinstance(msg.records, (tuple, list)):
            # A sandbox writes these: kept as audit records of its own, each of a bounded size.
            rec.audit.extend(
                _bounded_record(record, msg.sandbox_id)
                for record in msg.records[-AUDIT_LOG:]
                if isinstance(record, AuditRecord)
            )

    def audit_log(self, msg: GetAuditLog, sender: ActorAddress) -> None:
        """The sandbox's recent audit records, oldest first."""
        rec = find(self.records, self.port, msg.sandbox_id, sender, msg.corr)
        if rec is not None:
            self.port.reply(sender, list(rec.audit), msg.corr)

    # -- frames this system's processes dropped ------------------------------------------------

    def open_rejections(self, path: str) -> None:
        """Read the log of frames this system's processes drop from now on (once, at boot)."""
        if self._rejections is None:
            self._rejections = lowlevel.RejectionTail(path)

    def rejected_frames(self) -> int:
        """Frames this system's processes dropped since the host started."""
        self.report_rejections()
        return self._rejections.total if self._rejections is not None else 0

    def report_rejections(self) -> None:
        """Turn what this system's processes dropped since the last tick into ``frame_rejected`` events."""
        if self._rejections is None:
            return
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for record in self._rejections.read():
            groups.setdefault((str(record.get("reason")), str(record.get("sandbox", ""))), []).append(record)
        for (reason, sandbox_id), records in groups.items():
            count = sum(int(r.get("count", 1)) for r in records)
            peers = sorted({str(r.get("peer")) for r in records})
            detail = str(records[-1].get("detail", ""))
            text = f"{count} {reason} frame(s) dropped, from {', '.join(peers[:5])}: {detail}"
            log.warning("%s%s", f"sandbox {sandbox_id}: " if sandbox_id else "", text)
            self.emit(EventKind.FRAME_REJECTED, sandbox_id, reason=text, count=count, rejected_as=reason, peers=peers)


_AUDIT_TEXT = 1000
"""Characters kept of an audit record's text fields (the sandbox's root sends them)."""


def _bounded_record(record: AuditRecord, sandbox_id: str) -> AuditRecord:
    """``record`` with its sandbox's id and its text cut to :data:`_AUDIT_TEXT` characters."""

    def cut(text: object) -> str:
        return str(text)[:_AUDIT_TEXT] if isinstance(text, str) else repr(text)[:_AUDIT_TEXT]

    moment = (
        record.time
        if isinstance(record.time, (int, float)) and not isinstance(record.time, bool) and abs(record.time) < 1e13
        else 0.0
    )
    return AuditRecord(
        sandbox_id, cut(record.actor), cut(record.event), cut(record.detail), float(moment), record.blocked is True
    )
