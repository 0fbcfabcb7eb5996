"""``plugin-host bench``: the quick run completes and loses nothing; the targets check is right."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, processes_naming

from plugin_host.bench import ROWS, TARGETS, Target, evaluate_targets


def _run_bench(tmp_path, *args: str, timeout: float) -> tuple[int, str, dict]:
    """Run ``plugin-host bench --json`` with ``args``; its exit code, output and report."""
    report_file, out = tmp_path / "bench.json", tmp_path / "bench.txt"
    # TMPDIR and the state folder under tmp_path: the leak guard sees every process the bench started.
    env = {**os.environ, "PLUGIN_HOST_STATE_DIR": str(tmp_path / "state"), "TMPDIR": str(tmp_path)}
    with open(out, "wb") as sink:  # a file, never a pipe: a stray actor process would hold a pipe open
        code = subprocess.run(
            [sys.executable, "-m", "plugin_host.cli", "bench", *args, "--json", str(report_file)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            timeout=timeout,
        ).returncode
    text = out.read_text(errors="replace")
    return code, text, json.loads(report_file.read_text()) if report_file.exists() else {}


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_bench_quick_reports_every_row_and_no_lost_message(tmp_path) -> None:
    """``bench --quick --json`` exits 0, reports every row with samples, and 0 lost or reordered messages."""
    code, text, report = _run_bench(tmp_path, "--quick", timeout=180)
    assert code == 0, text
    assert sorted(report["rows"]) == sorted(ROWS), text
    assert all(row["n"] > 0 for row in report["rows"].values()), text
    assert report["rows"]["lost"]["median"] == 0, text
    assert report["rows"]["remote"]["raw"] and report["rows"]["remote"]["ratio"], text  # quick mode measures it too
    assert {t["row"] for t in report["targets"]} <= set(ROWS)
    assert report["machine"]["cores"] and report["machine"]["thespian"]
    assert not list((tmp_path / "state").glob("bench-*")), "the scratch folder was not removed"


@pytest.mark.timeout(90)
def test_bench_only_remote_measures_both_sides_across_systems_and_leaves_no_process(tmp_path) -> None:
    """``--only remote``: a node joins the bench host and two raw systems form a convention; both sides are
    measured, and the node, the raw systems and every actor process are gone when the bench returns."""
    code, text, report = _run_bench(tmp_path, "--only", "remote", timeout=60)
    assert code == 0, text
    assert list(report["rows"]) == ["remote"] and not report["errors"], text
    row = report["rows"]["remote"]
    assert row["n"] >= 100 and row["unit"] == "ms" and row["median"] > 0, text
    assert row["raw"]["n"] == row["n"] and row["raw"]["median"] > 0 and row["ratio"] > 0, text
    assert "remote" not in {t["row"] for t in report["targets"]}  # no anchored target: shown, never judged
    assert processes_naming(str(tmp_path)) == [], "a process of the bench outlived it"


def _row(median: float | None = None, ratio: float | None = None, n: int = 5, comparable: bool = True) -> dict:
    return {"median": median, "ratio": ratio, "n": n, "comparable": comparable}


def test_targets_pass_at_the_bound_and_fail_beyond_it() -> None:
    """``<=`` and ``>=`` targets include their bound; a value past it fails."""
    at_most = Target("t", "x", "median", "<=", 10.0)
    at_least = Target("t", "y", "ratio", ">=", 1.0)
    assert at_most.check(_row(median=10.0)) == ("pass", 10.0)
    assert at_most.check(_row(median=10.5)) == ("fail", 10.5)
    assert at_least.check(_row(ratio=1.0)) == ("pass", 1.0)
    assert at_least.check(_row(ratio=0.9)) == ("fail", 0.9)


def test_targets_are_not_applicable_when_the_row_is_missing_empty_or_not_comparable() -> None:
    """A row that did not run, has no samples, no baseline, or a reduced workload is n/a, never pass."""
    target = Target("t", "x", "ratio", "<=", 1.15)
    assert target.check(None)[0] == "n/a"
    assert target.check(_row(ratio=1.0, n=0))[0] == "n/a"
    assert target.check(_row(median=1.0))[0] == "n/a"
    assert target.check(_row(ratio=1.0, comparable=False))[0] == "n/a"


def test_evaluate_targets_checks_every_target_of_the_anchors_on_a_known_row() -> None:
    """Every anchored target names a bench row, and evaluation reports one result per target."""
    assert {t.row for t in TARGETS} <= set(ROWS)
    rows = {"call": _row(median=0.5, ratio=1.1), "lost": _row(median=0.0), "reload_1": _row(median=3.0)}
    results = {r["row"]: r["result"] for r in evaluate_targets(rows)}
    assert len(results) == len({t.row for t in TARGETS})
    assert (results["call"], results["lost"], results["reload_1"]) == ("pass", "pass", "fail")
    assert results["sibling"] == "n/a"
