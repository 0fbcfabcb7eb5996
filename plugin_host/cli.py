"""The ``plugin-host`` command: a guided demo, serving a sandbox, and operator commands.

Output goes through ``rich`` (colour and tables on a terminal, plain text otherwise), which
is imported only when a command runs, so importing ``plugin_host`` never pulls it in.
Errors from :mod:`plugin_host.errors` print as one ``error: ...`` line and exit with 1;
a usage error exits with 2.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import attrs

from .errors import PluginHostError

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from .values import SandboxInfo

__all__ = ["main"]

_STATUS_STYLES = {"running": "green", "starting": "yellow", "failed": "bold red", "lost": "red", "stopped": "dim"}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``plugin-host`` command line.

    Args:
        argv: the arguments after the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit code: 0 on success, 1 for an error of the host, 2 for a usage error.
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help (0) and on usage errors (2)
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.handler(args))
    except PluginHostError as exc:
        _console(stderr=True).print(f"error: {exc}", style="red", markup=False, highlight=False)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="plugin-host", description="Isolated, supervised plugin sandboxes.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser("demo", help="a guided tour: create, call, crash and restart, fail, clean up")
    demo.set_defaults(handler=_demo)
    run = commands.add_parser("run", help="serve one sandbox until SIGINT or SIGTERM")
    run.add_argument("path", metavar="PATH", help="folder of the sandbox's Python source")
    run.add_argument("--supervisor", required=True, metavar="MOD:CLASS", help="root supervisor, e.g. root:Root")
    run.add_argument("--id", dest="sandbox_id", metavar="ID", help="sandbox id (default: the folder's name)")
    run.add_argument("--admin-port", type=int, metavar="N", help="admin port (default: a free one)")
    run.set_defaults(handler=_run)
    status = commands.add_parser("status", help="list the sandboxes of a running host")
    status.add_argument("--port", type=int, required=True, metavar="N", help="the host's admin port")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.set_defaults(handler=_status)
    destroy = commands.add_parser("destroy", help="destroy a sandbox of a running host")
    destroy.add_argument("sandbox_id", metavar="ID")
    destroy.add_argument("--port", type=int, required=True, metavar="N", help="the host's admin port")
    destroy.set_defaults(handler=_destroy)
    return parser


def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr)


def _info_table(infos: list[SandboxInfo], *, plain: bool = False) -> RenderableType:
    """A table of sandboxes (id, status, restarts, children, root pid), then why any of them failed."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None if plain else box.ROUNDED, header_style="bold")
    for column in ("id", "status", "restarts", "children", "pid"):
        table.add_column(column, justify="right" if column in ("restarts", "pid") else "left")
    for info in infos:
        table.add_row(info.id, Text(info.status, style=_STATUS_STYLES.get(info.status, "")), str(info.restart_count),
                      ", ".join(c.name for c in info.children), "-" if info.pid is None else str(info.pid))
    # One line per reason: the full text (often a traceback) stays in the sandbox's info.
    reasons = [Text(f"{info.id}: {info.reason.splitlines()[0]}", style="red") for info in infos if info.reason]
    return Group(table, *reasons)


def _table_for(console: Console) -> Callable[[list[SandboxInfo]], RenderableType]:
    return lambda infos: _info_table(infos, plain=not console.is_terminal)


# -- commands ------------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo, samples_folder
    from .host import Host

    console = _console()
    console.print("[bold]plugin-host demo[/]: isolated, supervised plugin sandboxes", highlight=False)
    with samples_folder() as samples, Host() as host:
        run_demo(host, samples, console, _table_for(console))
    console.print("\n[green]Done.[/]")
    return 0


def _run(args: argparse.Namespace) -> int:
    from .host import Host

    console = _console()
    sandbox_id = args.sandbox_id or Path(args.path).resolve().name
    overrides = {} if args.admin_port is None else {"admin_port": args.admin_port}
    stop = threading.Event()
    previous = _on_signals(lambda *_: stop.set())
    try:
        with Host(**overrides) as host:
            info = host.create_sandbox(sandbox_id, args.supervisor, sandbox_path=args.path)
            console.print(_table_for(console)([info]))
            console.print(f"admin port: {host.admin_port}", highlight=False)
            console.print(f"serving {sandbox_id!r}; Ctrl-C or SIGTERM stops", highlight=False)
            while not stop.wait(0.5):  # a timed wait, so the signal handler gets to run promptly
                pass
            console.print("stopping", highlight=False)
    finally:
        _restore_signals(previous)
    return 0


def _on_signals(handler: Callable[..., None]) -> dict[int, Any]:
    previous: dict[int, Any] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, handler)
    return previous


def _restore_signals(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def _status(args: argparse.Namespace) -> int:
    from ._operator import AdminClient

    with AdminClient(args.port) as client:
        infos = client.list_sandboxes()
    if args.json:
        print(json.dumps([attrs.asdict(info) for info in infos], indent=2, default=str))
        return 0
    console = _console()
    if infos:
        console.print(_table_for(console)(infos))
    else:
        console.print("no sandboxes", highlight=False)
    return 0


def _destroy(args: argparse.Namespace) -> int:
    from ._operator import AdminClient

    with AdminClient(args.port) as client:
        client.destroy_sandbox(args.sandbox_id)
    _console().print(f"destroyed {args.sandbox_id!r}", highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
