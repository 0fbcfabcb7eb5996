"""The ``plugin-host`` command: a guided demo, serving (and watching) a sandbox, and operator commands.

Output goes through ``rich`` (colour and tables on a terminal, plain text otherwise), which
is imported only when a command runs, so importing ``plugin_host`` never pulls it in.
Errors from :mod:`plugin_host.errors` print as one ``error: ...`` line and exit with 1;
a usage error exits with 2.  What ``status`` shows, and the tables of the other commands, are
rendered by :mod:`plugin_host._cli.status`.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ._cli.status import artifacts_table, history_for, run_status, table_for
from .config import SECURITY_PROFILES
from .errors import PluginHostError
from .states import EventKind

if TYPE_CHECKING:
    from rich.console import Console

    from ._cli.watch import ReloadReport
    from .host import Host
    from .values import Event, ReloadResult, VersionHistory

__all__ = ["main"]


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
        _console(stderr=True).print(f"error: {exc}", style="red", markup=False, highlight=False, soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="plugin-host", description="Isolated, supervised plugin sandboxes.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser("demo", help="a guided tour: create, crash and restart, hot reload, roll back, fail")
    demo.set_defaults(handler=_demo)
    run = commands.add_parser("run", help="serve one sandbox until SIGINT or SIGTERM")
    run.add_argument("path", metavar="PATH", help="folder of the sandbox's Python source")
    run.add_argument("--supervisor", required=True, metavar="MOD:CLASS", help="root supervisor, e.g. root:Root")
    run.add_argument("--id", dest="sandbox_id", metavar="ID", help="sandbox id (default: the folder's name)")
    run.add_argument("--admin-port", type=int, metavar="N", help="admin port (default: a free one)")
    run.add_argument("--watch", action="store_true", help="hot-reload the sandbox whenever a file of PATH is saved")
    run.set_defaults(handler=_run)
    _operator_parsers(commands)
    _bench_parser(commands)
    _deps_parser(commands)
    _node_parser(commands)
    return parser


def _deps_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    deps = commands.add_parser("deps", help="install a sandbox folder's requirements ahead of time (offline use)")
    deps.add_argument("path", metavar="PATH", help="the sandbox folder (requirements.txt or pyproject.toml)")
    deps.add_argument(
        "--find-links",
        action="append",
        metavar="DIR",
        help="a folder or URL of wheels; repeatable (default: the configured find_links)",
    )
    deps.add_argument("--no-index", action="store_true", help="install from --find-links only")
    deps.set_defaults(handler=_deps)


def _node_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from ._cli.node import add_arguments  # light: Thespian is imported only when the node runs

    node = commands.add_parser("node", help="join a convention and offer capacity (no sandboxes of its own)")
    add_arguments(node)
    node.set_defaults(handler=_node)


def _node(args: argparse.Namespace) -> int:
    from ._cli.node import run_node

    return run_node(args)


def _bench_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .bench import SECTIONS  # light: the bench imports rich and Thespian only when it runs

    bench = commands.add_parser("bench", help="measure plugin-host against raw Thespian, in one run")
    bench.add_argument("--quick", action="store_true", help="fewer samples and actors (CI smoke use, under a minute)")
    bench.add_argument("--json", dest="json_path", metavar="FILE", help="also write the report as JSON to FILE")
    bench.add_argument(
        "--only", nargs="+", choices=SECTIONS, metavar="NAME", help=f"run only these sections: {', '.join(SECTIONS)}"
    )
    bench.set_defaults(handler=_bench)


def _operator_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The commands that talk to a running host through its admin port (and ``compile``, which needs none)."""
    status = _with_port(commands.add_parser("status", help="actors, memory and CPU of a running host, live"))
    status.add_argument("--json", action="store_true", help="print one snapshot as JSON and exit")
    status.add_argument("--once", action="store_true", help="print one table and exit (the default off a terminal)")
    status.add_argument("--interval", type=_seconds, default=1.0, metavar="S", help="seconds between refreshes")
    status.add_argument("--audit", action="store_true", help="print the audit log instead, newest last")
    status.add_argument("--sandbox", metavar="ID", help="only this sandbox")
    status.set_defaults(handler=_status)
    destroy = commands.add_parser("destroy", help="destroy a sandbox of a running host")
    destroy.add_argument("sandbox_id", metavar="ID")
    _with_port(destroy).set_defaults(handler=_destroy)
    compile_ = commands.add_parser("compile", help="compile a sandbox folder or module locally and report")
    compile_.add_argument("path", metavar="PATH", help="a sandbox folder, or one module file of it")
    compile_.add_argument("--security-profile", choices=SECURITY_PROFILES, help="default: the configured one")
    compile_.set_defaults(handler=_compile)
    reload = commands.add_parser("reload", help="compile PATH locally and hot-reload it into a running sandbox")
    reload.add_argument("sandbox_id", metavar="ID")
    reload.add_argument("path", metavar="PATH", help="the sandbox folder, or one module file of it")
    _with_port(reload).set_defaults(handler=_reload)
    rollback = commands.add_parser("rollback", help="hot-reload a stored version of a module of a running sandbox")
    rollback.add_argument("sandbox_id", metavar="ID")
    rollback.add_argument("module", metavar="MODULE")
    rollback.add_argument("version", type=int, metavar="VERSION")
    _with_port(rollback).set_defaults(handler=_rollback)
    history = commands.add_parser("history", help="the stored versions of a module, newest first")
    history.add_argument("sandbox_id", metavar="ID")
    history.add_argument("module", metavar="MODULE")
    history.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _with_port(history).set_defaults(handler=_history)


def _with_port(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--port",
        type=int,
        metavar="N",
        help="the host's admin port (default: the one host running with the state folder)",
    )
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        help="the host's state folder, where its runtime file and "
        "credential are (default: PLUGIN_HOST_STATE_DIR, else "
        "the XDG state folder)",
    )
    parser.add_argument("--cookie-file", metavar="PATH", help="the host's credential (default: STATE_DIR/cookie)")
    return parser


def _client(args: argparse.Namespace) -> Any:
    """An :class:`AdminClient` for the host the operator command names (``--port``, ``--state-dir``)."""
    from ._client.operator import AdminClient

    return AdminClient(args.port, _operator_config(args))


def _operator_config(args: argparse.Namespace) -> Any:
    from .config import HostConfig

    fields = {
        name: value
        for name, value in (("state_dir", args.state_dir), ("cookie_file", args.cookie_file))
        if value is not None
    }
    return HostConfig(**fields)


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    console = Console(stderr=stderr)
    if not console.is_terminal:  # a pipe or a file: tables must not wrap (scripts read them by column)
        console = Console(stderr=stderr, width=1000)
    return console


def _reload_line(result: ReloadResult, verb: str = "reloaded") -> str:
    """One line for a ``ReloadResult``: which module moved from which version to which, and where."""
    if result.old_version == result.new_version and not result.actors_updated:
        return f"no change: {result.sandbox_id}/{result.module} already runs version {result.new_version}"
    actors = ", ".join(result.actors_updated) or "none"
    return (
        f"{verb} {result.sandbox_id}/{result.module}: version {result.old_version} -> {result.new_version}; "
        f"actors updated: {actors}"
    )


# -- commands ------------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    from ._cli.demo import run_demo, samples_folder, scratch_state_dir
    from .host import Host

    console = _console()
    console.print("[bold]plugin-host demo[/]: isolated, supervised plugin sandboxes", highlight=False)
    with samples_folder() as samples, scratch_state_dir() as state_dir, Host(state_dir=state_dir) as host:
        run_demo(host, samples, console, table_for(console), history_for(console))
    console.print("\n[green]Done.[/]")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    return run_bench(quick=args.quick, json_path=args.json_path, only=args.only)


def _run(args: argparse.Namespace) -> int:
    from .host import Host

    console = _console()
    overrides = {} if args.admin_port is None else {"admin_port": args.admin_port}
    stop = threading.Event()
    previous = _on_signals(lambda *_: stop.set())
    try:
        with Host(**overrides) as host:
            _serve(host, args, console, stop)
            console.print("stopping", highlight=False)
    finally:
        _restore_signals(previous)
    return 0


def _serve(host: Host, args: argparse.Namespace, console: Console, stop: threading.Event) -> None:
    """Create the sandbox and wait for ``stop``; with ``--watch``, hot-reload on every save meanwhile."""
    from ._cli.watch import Watcher

    sandbox_id = args.sandbox_id or Path(args.path).resolve().name
    # Made before the sandbox, so an edit saved while it starts is not missed.
    watcher = Watcher(host, sandbox_id, args.path, _reporter(console)) if args.watch else None
    host.subscribe(_event_printer(console))
    info = host.create_sandbox(sandbox_id, args.supervisor, sandbox_path=args.path)
    console.print(table_for(console)([info]))
    console.print(f"admin port: {host.admin_port}", highlight=False)
    if watcher is not None:
        watcher.start()
        console.print(f"watching {str(watcher.snapshot.root)!r}: a save hot-reloads the sandbox", highlight=False)
    console.print(f"serving {sandbox_id!r}; Ctrl-C or SIGTERM stops", highlight=False)
    try:
        # A timed wait, so the signal handler gets to run promptly; a watcher that died ends it too.
        while not stop.wait(0.5) and (watcher is None or watcher.alive):
            pass
    finally:
        if watcher is not None:
            watcher.stop()  # before the host closes: a reload under way finishes first


_EVENT_STYLES: dict[str, str] = {
    EventKind.CRASHED: "red",
    EventKind.FAILED: "bold red",
    EventKind.LIMIT_BREACHED: "magenta",
    EventKind.RESTARTED: "yellow",
    EventKind.RELOADED: "green",
    EventKind.ROLLED_BACK: "yellow",
    EventKind.STARTED: "green",
    EventKind.STOPPED: "dim",
}


def _event_printer(console: Console) -> Callable[[Event], None]:
    """Print each sandbox event as one line (crashes, restarts, limits, reloads...)."""
    from rich.text import Text

    def show(event: Event) -> None:
        actor = f" {event.actor}" if event.actor else ""
        reason = f": {event.reason}" if event.reason else ""
        console.print(
            Text.assemble((event.kind, _EVENT_STYLES.get(event.kind, "")), f" {event.sandbox_id}{actor}{reason}"),
            highlight=False,
        )

    return show


def _reporter(console: Console) -> Callable[[ReloadReport], None]:
    return lambda report: _print_report(console, report)


def _print_report(console: Console, report: ReloadReport) -> None:
    """Print one watch-mode reload: the versions that changed, or the error and what still runs."""
    from rich.text import Text

    head = f"[{time.strftime('%H:%M:%S')}] {', '.join(report.files)} changed: "
    if report.error is not None:
        running = ", ".join(f"{module} v{version}" for module, version in report.running.items()) or "nothing"
        console.print(Text(f"{head}reload failed, the running version stays ({running})", style="red"), soft_wrap=True)
        console.print(Text(f"  {type(report.error).__name__}: {report.error}", style="red"), soft_wrap=True)
    elif not report.versions:
        console.print(Text(f"{head}no change to the running code"), soft_wrap=True)
    else:
        moved = ", ".join(
            f"{module} {'(new)' if old is None else f'v{old}'} -> v{new}"
            for module, (old, new) in report.versions.items()
        )
        actors = ", ".join(report.actors_updated) or "none"
        console.print(Text(f"{head}reloaded {moved}; actors updated: {actors}", style="green"), soft_wrap=True)


def _on_signals(handler: Callable[..., None]) -> dict[int, Any]:
    previous: dict[int, Any] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, handler)
    return previous


def _restore_signals(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def _status(args: argparse.Namespace) -> int:
    return run_status(
        _console(),
        args.port,
        sandbox_id=args.sandbox,
        audit=args.audit,
        as_json=args.json,
        once=args.once,
        interval=args.interval,
        config=_operator_config(args),
    )


def _deps(args: argparse.Namespace) -> int:
    """Prepare the environment of PATH's requirements; its folder alone goes to stdout, progress to stderr."""
    from .config import HostConfig
    from .deps import prepare_environment, read_requirements

    config = HostConfig()  # state_dir, find_links and no_index as the host would see them
    requirements = read_requirements(args.path)
    console = _console(stderr=True)
    if not requirements:
        console.print(f"{args.path} declares no requirements: nothing to prepare", markup=False, highlight=False)
        return 0
    with console.status("preparing the environment (pip runs only the first time)"):
        environment = prepare_environment(
            requirements,
            config.state_dir,
            find_links=args.find_links or config.find_links,
            no_index=args.no_index or config.no_index,
            progress=lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True),
        )
    print(environment)
    return 0


def _destroy(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.destroy_sandbox(args.sandbox_id)
    _console().print(f"destroyed {args.sandbox_id!r}", highlight=False)
    return 0


def _compile(args: argparse.Namespace) -> int:
    from ._client.operator import compile_path

    info = compile_path(args.path, security_profile=args.security_profile)
    console = _console()
    root = Path(args.path).resolve()
    console.print(artifacts_table(info, root if root.is_dir() else root.parent, plain=not console.is_terminal))
    if info.output.strip():
        console.print(info.output.rstrip(), markup=False, highlight=False, soft_wrap=True)
    cached = " (from the cache)" if info.cached else ""
    console.print(
        f"compiled {len(info.artifacts)} module(s) in {info.compilation_time:.0f} ms{cached}", highlight=False
    )
    return 0


def _reload(args: argparse.Namespace) -> int:
    from ._client.operator import compile_path

    config = _operator_config(args)
    with _client(args) as client:
        profile = client.get_sandbox_info(args.sandbox_id).security_profile
        # Locally and first, under the sandbox's own profile: broken or refused code never reaches the host.
        info = compile_path(args.path, config, security_profile=profile)
        result = client.hot_reload(args.sandbox_id, info.artifacts)
    _console().print(_reload_line(result), markup=False, highlight=False, soft_wrap=True)
    return 0


def _rollback(args: argparse.Namespace) -> int:
    with _client(args) as client:
        result = client.rollback_module(args.sandbox_id, args.module, args.version)
    _console().print(_reload_line(result, "rolled back"), markup=False, highlight=False, soft_wrap=True)
    return 0


def _history(args: argparse.Namespace) -> int:
    with _client(args) as client:
        history = client.get_version_history(args.sandbox_id, args.module)
    if args.json:
        print(json.dumps(_history_json(args.sandbox_id, args.module, history), indent=2))
        return 0
    console = _console()
    console.print(
        f"{args.sandbox_id}/{args.module}: current version {history.current_version}, {history.total_versions} stored",
        highlight=False,
    )
    console.print(history_for(console)(history))
    return 0


def _history_json(sandbox_id: str, module: str, history: VersionHistory) -> dict[str, Any]:
    """The history as plain data; sources are left out (``Host.get_version_history`` has them)."""
    versions = [
        {"version": v.version, "status": v.status, "loaded_at": v.loaded_at, "checksum": v.checksum}
        for v in history.versions
    ]
    return {
        "sandbox_id": sandbox_id,
        "module": module,
        "current_version": history.current_version,
        "total_versions": history.total_versions,
        "versions": versions,
    }


if __name__ == "__main__":
    sys.exit(main())
