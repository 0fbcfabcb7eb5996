"""The harness ``plugin-host bench`` measures in: rows, progress, the raw baseline, sampling helpers.

A :class:`Row` holds the samples of one row (plugin-host and, where one exists, raw Thespian)
and gives its JSON form.  ``_Bench`` carries what every section of
:mod:`plugin_host._bench.sections` needs: the embedded ``Host``, the raw-Thespian system
(``_Raw``), the scratch folders, the sample counts of the mode and the progress display.
The small helpers time, wait for and check what a section does.  Rich (the progress bar)
and the host are imported only when a bench runs.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence, TypeVar

import attrs
import psutil

from .._client.launcher import apply_bind_patch, log_defs
from ..errors import PluginHostError
from . import actors as acts

if TYPE_CHECKING:  # the host loads only when a bench runs: `plugin-host --help` stays fast
    from thespian.actors import ActorAddress

    from ..host import Host

__all__ = ["Row"]

_T = TypeVar("_T")


# -- rows --------------------------------------------------------------------------------------


def _p99(samples: Sequence[float], higher_is_better: bool) -> float:
    ordered = sorted(samples, reverse=higher_is_better)  # the slow tail last, either way
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


@attrs.define
class Row:
    """One measured row: samples of plugin-host and, where one exists, of the raw baseline."""

    name: str
    label: str
    unit: str
    samples: list[float]
    raw: list[float] | None = None
    raw_label: str = ""
    higher_is_better: bool = False
    note: str = ""
    comparable: bool = True
    """False when the workload differs from the target's (a ``--quick`` reduction)."""
    count: int | None = None
    """``n`` when it is not the number of samples (the lost-message row counts calls)."""

    def summary(self) -> dict[str, Any]:
        """The JSON form: median, p99, n, unit, raw baseline and ratio."""
        median = statistics.median(self.samples) if self.samples else None
        raw = None
        ratio = None
        if self.raw:
            raw_median = statistics.median(self.raw)
            raw = {
                "label": self.raw_label,
                "n": len(self.raw),
                "median": raw_median,
                "p99": _p99(self.raw, self.higher_is_better),
            }
            ratio = None if median is None or not raw_median else median / raw_median
        return {
            "name": self.name,
            "label": self.label,
            "unit": self.unit,
            "median": median,
            "p99": _p99(self.samples, self.higher_is_better) if self.samples else None,
            "n": len(self.samples) if self.count is None else self.count,
            "raw": raw,
            "ratio": ratio,
            "higher_is_better": self.higher_is_better,
            "comparable": self.comparable,
            "note": self.note,
        }


# -- the run -----------------------------------------------------------------------------------


class _BenchError(PluginHostError):
    """A bench operation did not behave (a wrong reply, a missing restart); fails its section."""


class _Progress:
    """A rich progress bar on a terminal's stderr, plain lines otherwise; no refresh thread (forks)."""

    def __init__(self, sections: int) -> None:
        self.live: Any = None
        self.started = time.monotonic()
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.live = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                auto_refresh=False,
            )
            self.live.start()
            self.overall = self.live.add_task("bench", total=sections)
            self.task = self.live.add_task("", total=1)
        self.shown = 0.0

    def section(self, label: str) -> None:
        """A section starts."""
        if self.live is None:
            print(f"[{time.monotonic() - self.started:6.1f} s] {label}", file=sys.stderr, flush=True)
            return
        self.live.reset(self.task, total=0, description=f"  {label}")
        self.live.refresh()

    def expect(self, samples: int) -> None:
        """``samples`` more ticks are coming in this section."""
        if self.live is not None:
            self.live.update(self.task, total=(self.live.tasks[self.task].total or 0) + samples)

    def tick(self, done_section: bool = False) -> None:
        """One sample (or, with ``done_section``, one section) done."""
        if self.live is None:
            return
        self.live.advance(self.overall if done_section else self.task)
        if done_section or time.monotonic() - self.shown > 0.1:
            self.shown = time.monotonic()
            self.live.refresh()

    def stop(self) -> None:
        """Remove the bar."""
        if self.live is not None:
            self.live.stop()


class _Raw:
    """The raw-Thespian baseline system, in this process."""

    def __init__(self, folder: Path) -> None:
        from thespian.actors import ActorSystem

        from .._client.system import free_port

        apply_bind_patch("127.0.0.1")  # never expose a pickle port beyond loopback
        saved = {k: os.environ.get(k) for k in ("THESPLOG_FILE", "THESPIAN_BASE_IPADDR")}
        os.environ.update(THESPLOG_FILE=str(folder / "raw-thespian.log"), THESPIAN_BASE_IPADDR="127.0.0.1")
        try:
            self.system = ActorSystem(
                "multiprocTCPBase",
                {"Admin Port": free_port("127.0.0.1")},
                logDefs=log_defs(str(folder / "raw-actors.log")),
                transientUnique=True,
            )
        finally:
            for key, value in saved.items():
                os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
        self.processes = psutil.Process().children(recursive=True)

    def create(self, cls: type) -> Any:
        """Create a top-level actor."""
        return self.system.createActor(cls)

    def ask(self, address: ActorAddress, message: object, timeout: float = 10.0) -> Any:
        """Ask and fail loudly on no reply."""
        reply = self.system.ask(address, message, timeout)
        if reply is None:
            raise _BenchError(f"raw Thespian: no reply to {message!r}")
        return reply

    def tell(self, address: ActorAddress, message: object) -> None:
        """Fire and forget."""
        self.system.tell(address, message)

    def shutdown(self) -> None:
        """Shut the system down; kill any of its processes that outlive that."""
        try:
            self.system.shutdown()
        finally:
            for proc in self.processes:
                try:
                    if proc.is_running():  # checks the create time: never a recycled pid
                        proc.kill()
                except psutil.Error:
                    pass


@attrs.define
class _Bench:
    host: Host
    raw: _Raw
    folder: Path
    """The bench plugin folder (``PLUGIN_SOURCES``)."""
    work: Path
    quick: bool
    progress: _Progress
    fleets: dict[int, tuple[Path, list[list[Any]]]] = attrs.field(factory=dict)

    def n(self, full: int, quick: int) -> int:
        """Samples for this mode."""
        return quick if self.quick else full

    def repeat(self, count: int, fn: Callable[[], _T], warmup: int = 2) -> list[_T]:
        """Run ``fn`` (which returns one sample) ``warmup`` times unrecorded, then ``count`` times."""
        for _ in range(warmup):
            fn()
        self.progress.expect(count)
        samples = []
        for _ in range(count):
            samples.append(fn())
            self.progress.tick()
        return samples

    def timed(self, count: int, fn: Callable[[], Any], warmup: int = 2) -> list[float]:
        """Milliseconds per call of ``fn``."""
        return self.repeat(count, lambda: _ms(fn), warmup)

    @contextmanager
    def sandbox(
        self, sandbox_id: str, supervisor: str, host: Host | None = None, folder: Path | None = None
    ) -> Iterator[str]:
        """A sandbox (of the bench folder unless ``folder``) for the duration of a section."""
        host = host or self.host
        host.create_sandbox(sandbox_id, supervisor, sandbox_path=folder or self.folder)
        try:
            yield sandbox_id
        finally:
            host.destroy_sandbox(sandbox_id)

    def fleet(self, size: int) -> tuple[Path, list[list[Any]]]:
        """The folder of ``size`` counters (variant a) and the ``counter`` artifact of each variant."""
        if size not in self.fleets:
            folders = [_write(self.work / f"fleet-{size}-{v}", acts.fleet_sources(size, v)) for v in acts.VARIANTS]
            code = [[a for a in self.host.compile_sandbox(f).artifacts if a.module == "counter"] for f in folders]
            self.fleets[size] = (folders[0], code)
        return self.fleets[size]


def _ms(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000.0


def _wait(
    condition: Callable[[], Any], timeout: float = 30.0, interval: float = 0.02, what: str = "condition not met"
) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise _BenchError(f"{what} within {timeout} s")
        time.sleep(interval)
    return value


def _gone(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return True


def _expect(value: _T, expected: object) -> _T:
    if value != expected:
        raise _BenchError(f"expected {expected!r}, got {value!r}")
    return value


def _pair(
    b: _Bench, count: int, host_fn: Callable[[], float], raw_fn: Callable[[], float], warmup: int = 2
) -> tuple[list[float], list[float]]:
    """Alternate host and raw samples, so drifting machine load hits both sides alike."""
    both = b.repeat(count, lambda: (host_fn(), raw_fn()), warmup)
    return [h for h, _ in both], [r for _, r in both]


def _write(folder: Path, files: Mapping[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder
