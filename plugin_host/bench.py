"""``plugin-host bench``: every performance promise measured against raw Thespian, in one run.

One process runs the embedded default (a ``Host`` whose ``state_dir`` is a scratch folder,
removed afterwards, so a bench never touches the user's registry) and, next to it, raw
Thespian ``multiprocTCPBase`` doing the same operations with the bare actors of
:mod:`plugin_host._bench.actors`.  Each row reports the median, the p99 and ``n`` (warm-ups not
counted) and the ratio to the raw baseline where one exists; the targets of the project's
anchors are checked per row.  The ``remote`` section (last) also starts a ``plugin-host node``
that joins the host's convention, and a raw leader and member of their own, all on loopback;
every process of theirs is gone before it returns.  For rates (msg/s) the "p99" column is the
slow tail: the 1st percentile of the per-burst rates.  Sampling order is fixed and no
randomness is used.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import attrs
import psutil

from ._bench import actors as acts
from ._bench.harness import Row, _Bench, _Progress, _Raw, _write
from ._bench.sections import (
    _CRASHES,
    THREADS,
    _auth,
    _call,
    _cast,
    _compile,
    _crash,
    _hang,
    _lost,
    _memory,
    _reload,
    _reload_source,
    _remote,
    _rollback,
    _sandbox,
    _sibling,
    _threads,
)

__all__ = ["ROWS", "Row", "SECTIONS", "TARGETS", "Target", "evaluate_targets", "machine", "run_bench"]


# -- targets ---------------------------------------------------------------------------------


@attrs.frozen
class Target:
    """One row of the targets table in the project's anchors, as data."""

    metric: str
    """The anchors' wording."""
    row: str
    """The bench row it is checked on."""
    stat: str
    """``median`` or ``ratio`` (to the raw-Thespian baseline)."""
    op: str
    """``<=`` or ``>=``."""
    bound: float

    def check(self, row: Mapping[str, Any] | None) -> tuple[str, float | None]:
        """``("pass" | "fail" | "n/a", value)``: n/a when the row did not run or its workload differs."""
        value = None if row is None else row.get(self.stat)
        if row is None or value is None or not row.get("comparable", True) or not row.get("n"):
            return "n/a", value
        ok = value <= self.bound if self.op == "<=" else value >= self.bound
        return ("pass" if ok else "fail"), value


_CRASH = "crash → restarted actor answers ≤ 10 ms median"
TARGETS: tuple[Target, ...] = (
    Target("Host.call round trip ≤ 1.15 × raw ask", "call", "ratio", "<=", 1.15),
    Target(f"{_CRASH} (exception)", "crash_exception", "median", "<=", 10.0),
    Target(f"{_CRASH} (os._exit)", "crash_exit", "median", "<=", 10.0),
    Target(f"{_CRASH} (SIGKILL)", "crash_sigkill", "median", "<=", 10.0),
    Target(f"{_CRASH} (segfault)", "crash_segfault", "median", "<=", 10.0),
    Target("hot reload of a compiled artifact, 1 actor, state kept ≤ 2 ms", "reload_1", "median", "<=", 2.0),
    Target("hot reload, 100 actors of one module ≤ 60 ms", "reload_100", "median", "<=", 60.0),
    Target("hot_reload_source end to end ≤ 50 ms", "reload_source", "median", "<=", 50.0),
    Target("create a sandbox (root + 3 workers) ≤ 30 ms", "sandbox_create", "median", "<=", 30.0),
    Target("private memory per plugin actor ≤ 5 MiB", "memory_actor_uss", "median", "<=", 5.0),
    Target("sibling → sibling throughput ≥ 1.0 × raw actor → actor", "sibling", "ratio", ">=", 1.0),
    Target("messages lost or reordered across 100 reloads = 0", "lost", "median", "<=", 0.0),
)
"""The targets table of ANCHORS.md (same machine, same run, raw Thespian as the baseline)."""


def evaluate_targets(
    rows: Mapping[str, Mapping[str, Any]], targets: Sequence[Target] = TARGETS
) -> list[dict[str, Any]]:
    """Check each target against the JSON form of the rows (name to ``median``, ``ratio``, ``n``...).

    Returns:
        One dict per target: its fields, the measured ``value`` and ``result`` (pass/fail/n/a).
    """
    results = []
    for target in targets:
        result, value = target.check(rows.get(target.row))
        results.append({**attrs.asdict(target), "value": value, "result": result})
    return results


# -- sections ----------------------------------------------------------------------------------


@attrs.frozen
class _Section:
    name: str
    label: str
    run: Callable[[_Bench], list[Row]]
    rows: tuple[str, ...]


_SECTIONS = (
    _Section("call", "call round trip", _call, ("call",)),
    _Section("cast", "cast throughput", _cast, ("cast",)),
    _Section("threads", "call throughput against calling threads", _threads, tuple(f"threads_{n}" for n in THREADS)),
    _Section("sibling", "sibling → sibling throughput", _sibling, ("sibling",)),
    _Section("sandbox", "sandbox create + destroy", _sandbox, ("sandbox_create", "sandbox_destroy")),
    _Section("crash", "crash → restarted", _crash, tuple(f"crash_{kind}" for kind, _, _ in _CRASHES)),
    _Section("hang", "hang → restarted", _hang, ("hang",)),
    _Section("reload", "hot reload (1, 10, 100 actors)", _reload, ("reload_1", "reload_10", "reload_100")),
    _Section("reload_source", "hot_reload_source", _reload_source, ("reload_source",)),
    _Section("rollback", "rollback", _rollback, ("rollback",)),
    _Section("compile", "compile 50 modules", _compile, ("compile_cold", "compile_cached")),
    _Section(
        "memory",
        "memory",
        _memory,
        ("memory_actor_uss", "memory_actor_pss", "memory_sandbox_uss", "memory_sandbox_pss"),
    ),
    _Section("lost", "lost / reordered across reloads", _lost, ("lost",)),
    _Section("remote", "call to a sandbox on another actor system", _remote, ("remote",)),
    _Section("auth", "frame authentication", _auth, ("auth",)),
)

SECTIONS: tuple[str, ...] = tuple(s.name for s in _SECTIONS)
"""What ``--only`` accepts."""

ROWS: tuple[str, ...] = tuple(row for s in _SECTIONS for row in s.rows)
"""Every row a full run reports, in order."""


# -- running and reporting ---------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """The machine and versions a run measured."""
    from importlib import metadata

    cpu = ""
    try:
        cpu = next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            "",
        )
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "thespian": metadata.version("thespian"),
        "cloudpickle": metadata.version("cloudpickle"),
        "plugin_host": metadata.version("plugin-host"),
        "platform": platform.platform(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average": os.getloadavg(),
    }


def _run_sections(b: _Bench, sections: Sequence[_Section]) -> tuple[list[Row], dict[str, str]]:
    rows: list[Row] = []
    errors: dict[str, str] = {}
    for section in sections:
        b.progress.section(section.label)
        try:
            rows += section.run(b)
        except Exception as exc:  # noqa: BLE001 - one broken section must not hide the others
            errors[section.name] = f"{type(exc).__name__}: {exc}"
            print(f"bench: {section.name} failed: {errors[section.name]}", file=sys.stderr, flush=True)
        b.progress.tick(done_section=True)
    return rows, errors


def run_bench(
    *, quick: bool = False, json_path: str | os.PathLike[str] | None = None, only: Sequence[str] | None = None
) -> int:
    """Run the bench, print the table on stdout and optionally write the JSON report.

    Args:
        quick: fewer samples and a 20-actor instead of a 100-actor reload (about 30 s).
        json_path: where to write the JSON report.
        only: section names (:data:`SECTIONS`) to run; default all.

    Returns:
        0; 1 when a section failed or a message was lost or reordered.
    """
    from .host import Host

    started, load = time.monotonic(), os.getloadavg()[0]
    sections = [s for s in _SECTIONS if not only or s.name in only]
    progress = _Progress(len(sections))
    from ._cli.demo import scratch_state_dir

    with scratch_state_dir(prefix="bench-") as work:
        raw = _Raw(work)  # first: its admin forks from this process, which has no thread yet
        try:
            with Host(state_dir=str(work / "state")) as host:
                bench = _Bench(host, raw, _write(work / "plugins", acts.PLUGIN_SOURCES), work, quick, progress)
                rows, errors = _run_sections(bench, sections)
        finally:
            raw.shutdown()
            progress.stop()
    report = _report(rows, errors, quick, only, time.monotonic() - started, json_path)
    report["machine"]["load_average_start"] = load
    _print_report(report)
    if json_path is not None:
        Path(json_path).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    lost = report["rows"].get("lost")
    return 1 if errors or (lost is not None and lost["median"] != 0) else 0


def _report(
    rows: list[Row],
    errors: dict[str, str],
    quick: bool,
    only: Sequence[str] | None,
    duration: float,
    json_path: str | os.PathLike[str] | None,
) -> dict[str, Any]:
    command = (
        "plugin-host bench"
        + (" --quick" if quick else "")
        + (f" --json {json_path}" if json_path else "")
        + (f" --only {' '.join(only)}" if only else "")
    )
    summaries = {row.name: row.summary() for row in rows}
    return {
        "command": command,
        "mode": "quick" if quick else "full",
        "duration_s": round(duration, 1),
        "machine": machine(),
        "rows": summaries,
        "targets": evaluate_targets(summaries),
        "errors": errors,
        "notes": [
            "p99 of a rate (msg/s) is its slow tail: the 1st percentile of the per-burst rates",
            "ratio = plugin-host median / raw Thespian median (same machine, same run, interleaved)",
        ],
    }


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit in ("msg/s", "msgs"):
        return f"{value:,.0f}"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def _target_text(target: Mapping[str, Any], unit: str) -> str:
    bound = f"{target['bound']:g}" + ("×" if target["stat"] == "ratio" else f" {unit}")
    return f"{target['op'].replace('<=', '≤').replace('>=', '≥')} {bound}"


def _table(report: Mapping[str, Any], plain: bool) -> Any:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    targets = {t["row"]: t for t in report["targets"]}
    table = Table(box=box.SIMPLE_HEAD if plain else box.ROUNDED, header_style="bold")
    for column in ("row", "n", "median", "p99", "unit", "raw Thespian", "ratio", "target", ""):
        table.add_column(
            column, justify="left" if column in ("row", "unit", "target", "") else "right", no_wrap=column != "row"
        )
    styles = {"pass": "green", "fail": "bold red", "n/a": "dim"}
    for row in report["rows"].values():
        raw, target = row["raw"], targets.get(row["name"])
        table.add_row(
            row["label"],
            str(row["n"]),
            _fmt(row["median"], row["unit"]),
            _fmt(row["p99"], row["unit"]),
            row["unit"],
            "" if raw is None else _fmt(raw["median"], row["unit"]),
            "" if row["ratio"] is None else f"{row['ratio']:.2f}×",
            "" if target is None else _target_text(target, row["unit"]),
            Text("" if target is None else target["result"], style=styles.get(target["result"], "")) if target else "",
        )
    return table


def _print_report(report: Mapping[str, Any]) -> None:
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    plain = not console.is_terminal
    m = report["machine"]
    console.print(f"$ {report['command']}", markup=False, highlight=False)
    console.print(
        f"{report['mode']} mode, {report['duration_s']:.0f} s; {m['cores']} cores ({m['cpu']}), "
        f"Python {m['python']}, Thespian {m['thespian']}, cloudpickle {m['cloudpickle']}, {m['platform']}; "
        f"load average {m['load_average_start']:.2f} at the start, {m['load_average'][0]:.2f} at the end",
        markup=False,
        highlight=False,
    )
    console.print(_table(report, plain))
    for row in report["rows"].values():
        extra = [f"raw: {row['raw']['label']}"] if row["raw"] else []
        if row["note"]:
            extra.append(row["note"])
        if extra:
            console.print(f"  {row['name']}: {'; '.join(extra)}", markup=False, highlight=False)
    for note in report["notes"]:
        console.print(f"  {note}", markup=False, highlight=False)
    counts = {r: sum(1 for t in report["targets"] if t["result"] == r) for r in ("pass", "fail", "n/a")}
    console.print(f"targets: {counts['pass']} pass, {counts['fail']} fail, {counts['n/a']} n/a", highlight=False)
    for section, error in report["errors"].items():
        console.print(f"error in {section}: {error}", style="red", markup=False, highlight=False)
