"""The admin's side of events, monitoring and the audit log.

Events (started, crashed, restarted, failed, limit_breached, reloaded, rolled_back,
stopped) are kept in a bounded log and pushed as ``EventNotice`` to every subscriber.  The
monitor actor of the system a sandbox runs on is told which processes it has there; usage
queries go to that monitor.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from typing import Any, Callable

from plugin_host import lowlevel
from plugin_host.errors import AccessDeniedError, SandboxNotFoundError
from plugin_host.messages import EventNotice, GetAuditLog, GetResourceUsage, HostBreach, Subscribe, Unsubscribe
from plugin_host.states import EventKind
from plugin_host.values import AuditRecord, Event

from . import _messages as m
from ._admin.record import AUDIT_LOG, SandboxRecord

__all__ = ["EventsAdmin", "EVENT_LOG", "AUDIT_LOG", "SANDBOX_SUBSCRIPTIONS"]

EVENT_LOG = 1000
"""Events the admin keeps (host-wide)."""
SANDBOX_SUBSCRIPTIONS = 8
"""Event subscriptions one sandbox incarnation may hold (each costs a send per event)."""
COUNT_DEADLINE = 2.0
"""Seconds a usage query waits for the root's fresh message counts (it answers within ``COUNT_WAIT``)."""

_count_ids = itertools.count(1)


class EventsAdmin:
    """Mixed into the admin actor (needs ``sandboxes``, ``config``, ``monitor``, ``send``...)."""

    sandboxes: dict[str, SandboxRecord]
    config: Any
    monitor: Any
    subscribers: list[tuple[Any, lowlevel.Principal]]
    events: deque[Event]
    send: Callable[[Any, Any], None]
    reply: Callable[[Any, Any, str], None]
    _get: Callable[[object, Any, str], SandboxRecord | None]
    monitor_of: Callable[[str], Any]
    from_root: Callable[[Any, Any], bool]
    counting: dict[str, tuple[GetResourceUsage, Any, float]]

    def emit(self, kind: str, sandbox_id: str, actor: str = "", reason: str = "", **details: Any) -> None:
        """Record an event and push it to every subscriber (a sandbox's subscribers get its own events only)."""
        event = Event(EventKind(kind), sandbox_id, actor, reason, time.time(), details)
        self.events.append(event)
        for subscriber, principal in self.subscribers:
            if principal.is_host:
                self.send(subscriber, EventNotice(event))
            elif principal.sandbox_id == sandbox_id:
                with lowlevel.signing_for(subscriber, principal):
                    self.send(subscriber, EventNotice(event))

    def receiveMsg_Subscribe(self, msg: Subscribe, sender: Any) -> None:
        """Push every event to the sender from now on (a sandbox: its own events only, a few subscriptions)."""
        principal = lowlevel.sender_principal()
        if not principal.is_host and sum(p == principal for _, p in self.subscribers) >= SANDBOX_SUBSCRIPTIONS:
            error = AccessDeniedError(
                f"sandbox {principal.sandbox_id!r} already has {SANDBOX_SUBSCRIPTIONS} subscriptions",
                request="Subscribe",
                sandbox_id=principal.sandbox_id,
            )
            self.emit("denied", principal.sandbox_id or "", reason=str(error), request="Subscribe", target=None)
            self.reply(sender, error, msg.corr)
            return
        if not any(s == sender and p == principal for s, p in self.subscribers):
            self.subscribers.append((sender, principal))
        self.reply(sender, None, msg.corr)

    def forget_subscribers(self, sandbox_id: str) -> None:
        """A sandbox's processes are gone: so are its subscriptions (a new incarnation subscribes anew)."""
        self.subscribers = [(s, p) for s, p in self.subscribers if p.sandbox_id != sandbox_id]

    def receiveMsg_Unsubscribe(self, msg: Unsubscribe, sender: Any) -> None:
        """Stop pushing events to the sender."""
        principal = lowlevel.sender_principal()
        self.subscribers = [(s, p) for s, p in self.subscribers if not (s == sender and p == principal)]
        self.reply(sender, None, msg.corr)

    def receiveMsg_TreeEvent(self, msg: m.TreeEvent, sender: Any) -> None:
        """Crashes, restarts and limit breaches reported by a sandbox root."""
        rec = self.sandboxes.get(msg.sandbox_id)
        if rec is not None and self.from_root(rec, sender):
            self.emit(msg.kind, msg.sandbox_id, msg.actor, msg.reason, **msg.details)

    def receiveMsg_Sample(self, msg: m.Sample, sender: Any) -> None:
        """The monitor killed a process over a limit."""
        self.emit(
            "limit_breached",
            msg.sandbox_id,
            msg.actor,
            f"{msg.limit}: {msg.value} over {msg.maximum}",
            limit=msg.limit,
            value=msg.value,
            maximum=msg.maximum,
        )

    def receiveMsg_HostBreach(self, msg: HostBreach, sender: Any) -> None:
        """A host refused a call past ``max_mailbox``."""
        self.emit(
            "limit_breached",
            msg.sandbox_id,
            msg.actor,
            f"{msg.limit}: {msg.value} calls waiting",
            limit=msg.limit,
            value=msg.value,
            maximum=msg.maximum,
        )

    def receiveMsg_Usage(self, msg: m.Usage, sender: Any) -> None:
        """Message counts from a sandbox root: after a heartbeat, or asked for by a usage query."""
        rec = self.sandboxes.get(msg.sandbox_id)
        if rec is None or not self.from_root(rec, sender):
            return
        rec.messages = dict(msg.messages)
        query = self.counting.get(msg.corr)
        if query is not None and query[0].sandbox_id == msg.sandbox_id:
            del self.counting[msg.corr]
            self._ask_monitor(rec, *query[:2])

    def watch(self, sandbox_id: str, rec: SandboxRecord) -> None:
        """Tell the monitor which processes the sandbox has now."""
        pids: dict[str, int] = {}
        registered = sandbox_id in self.sandboxes and self.sandboxes[sandbox_id] is rec
        if registered and rec.root is not None:
            pids = {child.name: child.pid for child in rec.children if child.pid}
            if rec.pid:
                pids["(root)"] = rec.pid
        monitor = self.monitor_of(rec.node)
        if monitor is not None:  # none while its system is lost
            self.send(monitor, m.Watch(sandbox_id, pids, rec.limits, self.config.monitor_interval))

    def receiveMsg_GetResourceUsage(self, msg: GetResourceUsage, sender: Any) -> None:
        """Memory, CPU, messages and restarts per actor: counts asked of the root now, figures sampled now."""
        rec = self._get(msg.sandbox_id, sender, msg.corr)
        if rec is None:
            return
        if rec.root is None or rec.status != "running":
            self._ask_monitor(rec, msg, sender)
            return
        corr = f"u{next(_count_ids)}"
        self.counting[corr] = (msg, sender, time.monotonic() + COUNT_DEADLINE)
        self.send(rec.root, m.CountMessages(corr))

    def count_deadlines(self, now: float) -> None:
        """Answer usage queries whose root never sent its counts (it died meanwhile), with the last ones."""
        for corr, (msg, sender, deadline) in list(self.counting.items()):
            if now > deadline:
                del self.counting[corr]
                rec = self._get(msg.sandbox_id, sender, msg.corr)
                if rec is not None:
                    self._ask_monitor(rec, msg, sender)

    def _ask_monitor(self, rec: SandboxRecord, msg: GetResourceUsage, sender: Any) -> None:
        restarts = {child.name: child.restarts for child in rec.children}
        monitor = self.monitor_of(rec.node)
        if monitor is None:
            self.reply(
                sender,
                SandboxNotFoundError(
                    f"sandbox {msg.sandbox_id!r} is {rec.status}: {rec.reason}", sandbox_id=msg.sandbox_id
                ),
                msg.corr,
            )
            return
        self.send(
            monitor,
            m.UsageQuery(
                sandbox_id=msg.sandbox_id,
                messages=dict(rec.messages),
                restarts=restarts,
                reply_to=sender,
                corr=msg.corr,
            ),
        )

    def receiveMsg_AuditRecords(self, msg: m.AuditRecords, sender: Any) -> None:
        """Audit records of a sandbox, from its root."""
        rec = self.sandboxes.get(msg.sandbox_id)
        if rec is not None and self.from_root(rec, sender) and isinstance(msg.records, (tuple, list)):
            # A sandbox writes these: kept as audit records of its own, each of a bounded size.
            rec.audit.extend(
                _bounded_record(record, msg.sandbox_id)
                for record in msg.records[-AUDIT_LOG:]
                if isinstance(record, AuditRecord)
            )

    def receiveMsg_GetAuditLog(self, msg: GetAuditLog, sender: Any) -> None:
        """The sandbox's recent audit records, oldest first."""
        rec = self._get(msg.sandbox_id, sender, msg.corr)
        if rec is not None:
            self.reply(sender, list(rec.audit), msg.corr)


_AUDIT_TEXT = 1000
"""Characters kept of an audit record's text fields (the sandbox's root sends them)."""


def _bounded_record(record: AuditRecord, sandbox_id: str) -> AuditRecord:
    """``record`` with its sandbox's id and its text cut to :data:`_AUDIT_TEXT` characters."""

    def cut(text: Any) -> str:
        return str(text)[:_AUDIT_TEXT] if isinstance(text, str) else repr(text)[:_AUDIT_TEXT]

    moment = (
        record.time
        if isinstance(record.time, (int, float)) and not isinstance(record.time, bool) and abs(record.time) < 1e13
        else 0.0
    )
    return AuditRecord(
        sandbox_id, cut(record.actor), cut(record.event), cut(record.detail), float(moment), record.blocked is True
    )
