"""What the operator commands show: the ``status`` command and the tables of the other commands.

``status`` prints one snapshot of a running host (a table, or JSON), its audit log, or, on a
terminal, a live view that redraws like ``top``.  The other commands print sandboxes, the
stored versions of a module and compiled modules with the tables here.  Like the rest of the
command line, this module imports ``rich`` only when something is rendered, and the admin
client (and with it Thespian) only when ``status`` runs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import attrs

from ..errors import SandboxNotFoundError
from ..states import SandboxStatus, VersionStatus

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from .._client.operator import AdminClient
    from ..config import HostConfig
    from ..values import AuditRecord, CompileInfo, ResourceUsage, SandboxInfo, VersionHistory

    Snapshot = list[tuple[SandboxInfo, ResourceUsage | None]]
    """Every sandbox with its resource usage (``None`` when it is not running)."""

__all__ = ["artifacts_table", "history_for", "run_status", "table_for"]

_STATUS_STYLES: dict[str, str] = {
    SandboxStatus.RUNNING: "green",
    SandboxStatus.STARTING: "yellow",
    SandboxStatus.FAILED: "bold red",
    SandboxStatus.LOST: "red",
    SandboxStatus.STOPPED: "dim",
    VersionStatus.CURRENT: "green",
    VersionStatus.PREVIOUS: "dim",
}
_MIB = 1024 * 1024
_USAGE_COLUMNS = ("sandbox", "status", "actor", "pid", "rss MiB", "cpu s", "messages", "restarts", "version", "node")
_pause = time.sleep  # between live refreshes; a seam, so tests need not sleep


def table_for(console: Console) -> Callable[[list[SandboxInfo]], RenderableType]:
    """A renderer of sandbox tables for ``console``: boxed on a terminal, plain otherwise.

    Args:
        console: where the tables will be printed.

    Returns:
        A function from a list of sandboxes to their table (id, status, restarts, children,
        root pid, node), followed by the first line of why any of them failed.
    """
    return lambda infos: _info_table(infos, plain=not console.is_terminal)


def history_for(console: Console) -> Callable[[VersionHistory], RenderableType]:
    """A renderer of version-history tables for ``console``: boxed on a terminal, plain otherwise.

    Args:
        console: where the tables will be printed.

    Returns:
        A function from a module's history to its table, newest version first (version,
        status, when loaded, checksum prefix).
    """
    return lambda history: _history_table(history, plain=not console.is_terminal)


def artifacts_table(info: CompileInfo, root: Path, *, plain: bool = False) -> RenderableType:
    """A table of compiled modules: name, file (relative to ``root`` where it can be), checksum prefix, lines.

    Args:
        info: the result of a compilation.
        root: the folder that file paths are shown relative to.
        plain: leave out the box (for output that is not a terminal).

    Returns:
        The table, ready for ``Console.print``.
    """
    from rich import box
    from rich.table import Table

    table = Table(box=None if plain else box.ROUNDED, header_style="bold")
    for column in ("module", "path", "checksum", "lines"):
        table.add_column(column, justify="right" if column == "lines" else "left")
    for artifact in info.artifacts:
        path = Path(artifact.path)
        shown = path.relative_to(root) if path.is_relative_to(root) else path
        table.add_row(artifact.module, str(shown), artifact.checksum[:12], str(len(artifact.source.splitlines())))
    return table


def run_status(
    console: Console,
    port: int | None,
    *,
    sandbox_id: str | None,
    audit: bool,
    as_json: bool,
    once: bool,
    interval: float,
    config: HostConfig | None = None,
) -> int:
    """Run the ``status`` command against the host whose admin port is ``port``.

    Args:
        console: where tables and the live view go (JSON goes to standard output).
        port: the host's admin port (``None``: the one host running with ``config.state_dir``).
        config: the host's ``state_dir`` and credential (default ``HostConfig()``).
        sandbox_id: show only this sandbox (``None``: every one).
        audit: print the audit log, oldest record first, instead of the status.
        as_json: print JSON instead of a table.
        once: print one table instead of the live view (also the case when ``console`` is
            not a terminal).
        interval: seconds between two frames of the live view, which runs until Ctrl-C.

    Returns:
        The exit code, 0.

    Raises:
        SandboxNotFoundError: ``sandbox_id`` names no sandbox of the host.
        PluginHostError: the host cannot be reached, or went away during the live view.
    """
    from .._client.operator import AdminClient

    with AdminClient(port, config) as client:
        if audit:
            return _print_audit(console, _audit_records(client, sandbox_id), as_json=as_json)
        if as_json or once or not console.is_terminal:
            return _print_status(
                console, _snapshot(client, sandbox_id), as_json=as_json, security=_security_line(client)
            )
        try:
            _live_status(client, console, sandbox_id, interval)
        except KeyboardInterrupt:  # Ctrl-C is how a live view ends, as with ``top``
            pass
    return 0


def _info_table(infos: list[SandboxInfo], *, plain: bool = False) -> RenderableType:
    """A table of sandboxes (id, status, restarts, children, root pid), then why any of them failed."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None if plain else box.ROUNDED, header_style="bold")
    for column in ("id", "status", "restarts", "children", "pid", "node"):
        table.add_column(column, justify="right" if column in ("restarts", "pid") else "left")
    for info in infos:
        table.add_row(
            info.id,
            Text(info.status, style=_STATUS_STYLES.get(info.status, "")),
            str(info.restart_count),
            ", ".join(c.name for c in info.children),
            "-" if info.pid is None else str(info.pid),
            info.node or "-",
        )
    # One line per reason: the full text (often a traceback) stays in the sandbox's info.
    reasons = [Text(f"{info.id}: {info.reason.splitlines()[0]}", style="red") for info in infos if info.reason]
    return Group(table, *reasons)


def _history_table(history: VersionHistory, *, plain: bool = False) -> RenderableType:
    """A table of a module's versions, newest first: version, status, when loaded, checksum prefix."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None if plain else box.ROUNDED, header_style="bold")
    for column in ("version", "status", "loaded_at", "checksum"):
        table.add_column(column, justify="right" if column == "version" else "left")
    for version in history.versions:
        table.add_row(
            str(version.version),
            Text(version.status, style=_STATUS_STYLES.get(version.status, "")),
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(version.loaded_at)),
            version.checksum[:12],
        )
    return table


def _snapshot(client: AdminClient, sandbox_id: str | None = None) -> Snapshot:
    """Every sandbox (or only ``sandbox_id``) with the resource usage of those running."""
    infos = client.list_sandboxes()
    if sandbox_id is not None:
        infos = [info for info in infos if info.id == sandbox_id]
        if not infos:
            raise SandboxNotFoundError(f"no sandbox {sandbox_id!r}", sandbox_id=sandbox_id)
    return [(info, _usage_of(client, info)) for info in infos]


def _usage_of(client: AdminClient, info: SandboxInfo) -> ResourceUsage | None:
    if info.status != SandboxStatus.RUNNING:
        return None
    try:
        return client.resource_usage(info.id)
    except SandboxNotFoundError:  # destroyed since the listing
        return None


def _security_line(client: AdminClient) -> str:
    """What the host's own system refused since it started: frames that failed authentication or that a
    sandbox may not send, and requests the admin denied to sandboxes."""
    local = next(node for node in client.nodes() if node.local)
    return (
        f"security: {local.rejected_frames or 0} frame(s) rejected, {local.denied_requests or 0} "
        "request(s) denied (see the frame_rejected and denied events)"
    )


def _print_status(console: Console, snapshot: Snapshot, *, as_json: bool, security: str = "") -> int:
    if as_json:  # the sandboxes as before, each with its usage (or null)
        print(
            json.dumps(
                [
                    {**attrs.asdict(info), "usage": None if usage is None else attrs.asdict(usage)}
                    for info, usage in snapshot
                ],
                indent=2,
                default=str,
            )
        )
    elif snapshot:
        console.print(_usage_table(snapshot, plain=not console.is_terminal))
    else:
        console.print("no sandboxes", highlight=False)
    if security and not as_json:
        console.print(
            security,
            highlight=False,
            style="red" if not security.startswith("security: 0 frame(s) rejected, 0 ") else "",
        )
    return 0


def _live_status(client: AdminClient, console: Console, sandbox_id: str | None, interval: float) -> None:
    """Redraw the status every ``interval`` seconds until Ctrl-C (or a host error, which propagates)."""
    from rich.live import Live

    with Live(console=console, auto_refresh=False) as live:
        while True:
            live.update(_live_frame(_snapshot(client, sandbox_id), client.port, _security_line(client)), refresh=True)
            _pause(interval)


def _live_frame(snapshot: Snapshot, port: int, security: str = "") -> RenderableType:
    """One frame of the live view: a summary line, the status table, then what the host refused."""
    from rich.console import Group
    from rich.text import Text

    usages = [usage for _, usage in snapshot if usage is not None]
    rss, cpu = sum(u.total_rss_bytes for u in usages) / _MIB, sum(u.total_cpu_seconds for u in usages)
    head = Text(
        f"plugin host on port {port}: {len(snapshot)} sandbox(es), {rss:.1f} MiB, {cpu:.2f} s CPU"
        f"  [{time.strftime('%H:%M:%S')}, Ctrl-C quits]",
        style="bold",
    )
    return Group(head, _usage_table(snapshot) if snapshot else Text("no sandboxes"), Text(security))


def _usage_table(snapshot: Snapshot, *, plain: bool = False) -> RenderableType:
    """One row per actor of every sandbox (one of dashes for a sandbox not running), then failure reasons."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None if plain else box.SIMPLE_HEAD, header_style="bold")
    for column in _USAGE_COLUMNS:
        table.add_column(column, justify="left" if column in ("sandbox", "status", "actor") else "right")
    for info, usage in snapshot:
        status = Text(info.status, style=_STATUS_STYLES.get(info.status, ""))
        if usage is None or not usage.actors:
            table.add_row(info.id, status, *["-"] * (len(_USAGE_COLUMNS) - 3), info.node or "-")
        for actor in usage.actors if usage is not None else ():
            version = _version_of(info, actor.name)
            table.add_row(
                info.id,
                status,
                actor.name,
                "-" if actor.pid is None else str(actor.pid),
                f"{actor.rss_bytes / _MIB:.1f}",
                f"{actor.cpu_seconds:.2f}",
                str(actor.messages),
                str(actor.restarts),
                "-" if version is None else str(version),
                info.node or "-",
            )
    reasons = [Text(f"{info.id}: {info.reason.splitlines()[0]}", style="red") for info, _ in snapshot if info.reason]
    return Group(table, *reasons)


def _version_of(info: SandboxInfo, actor: str) -> int | None:
    """The module version an actor runs; the root supervisor's is its module's."""
    for child in info.children:
        if child.name == actor:
            return child.version
    return info.modules.get(info.supervisor.partition(":")[0]) if actor == "(root)" else None


def _audit_records(client: AdminClient, sandbox_id: str | None) -> list[AuditRecord]:
    """The audit records of one sandbox or of every one, oldest first."""
    ids = [sandbox_id] if sandbox_id is not None else [info.id for info in client.list_sandboxes()]
    records: list[AuditRecord] = []
    for each in ids:
        try:
            records.extend(client.audit_log(each))
        except SandboxNotFoundError:
            if sandbox_id is not None:
                raise  # asked for by name; otherwise it was destroyed since the listing
    return sorted(records, key=lambda record: record.time)


def _print_audit(console: Console, records: list[AuditRecord], *, as_json: bool) -> int:
    if as_json:
        print(json.dumps([attrs.asdict(record) for record in records], indent=2))
    elif records:
        console.print(_audit_table(records, plain=not console.is_terminal))
    else:
        console.print("no audit records", highlight=False)
    return 0


def _audit_table(records: list[AuditRecord], *, plain: bool = False) -> RenderableType:
    """time, sandbox, actor, event, detail; a blocked operation is a red row."""
    from rich import box
    from rich.table import Table

    table = Table(box=None if plain else box.SIMPLE_HEAD, header_style="bold")
    for column in ("time", "sandbox", "actor", "event", "detail", "blocked"):
        table.add_column(column, overflow="fold", no_wrap=column != "detail")
    for record in records:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.time)) + f".{int(record.time % 1 * 1000):03d}"
        table.add_row(
            stamp,
            record.sandbox_id,
            record.actor,
            record.event,
            record.detail,
            "blocked" if record.blocked else "",
            style="red" if record.blocked else None,
        )
    return table
