"""Soak: 10,000+ calls across 20 counter sandboxes from 4 threads, with the host's memory sampled.

The host's memory must not grow without bound: the growth of this (the host) process's RSS and
of its Python allocations between a warm-up and the end is reported per 1,000 calls (printed, and
written to ``tmp_path/soak.txt``) and must stay near what was measured.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import psutil
import pytest
from conftest import sample

from plugin_host import Host

SANDBOXES = [f"soak-{i:02d}" for i in range(20)]
THREADS = 4
WARMUP_CALLS = 1_000
MEASURED_CALLS = 10_000
MAX_GROWTH_PER_1000 = 512 * 1024
"""Bytes of host RSS growth allowed per 1,000 calls: about 11x the 46 KiB measured (2 cores, 2026-12),
so a leak of 0.5 KiB per call fails."""
MAX_BLOCKS_PER_1000 = 1200
"""Python allocations (``sys.getallocatedblocks``) the host may keep per 1,000 calls: twice the ~600
measured, so keeping one object per call, of any size, fails (RSS alone misses small leaks)."""

pytestmark = pytest.mark.slow


def run_calls(host: Host, total: int, offset: int, replies: dict[str, list[int]], errors: list[BaseException]) -> None:
    """Send ``total`` ``"inc"`` calls from ``THREADS`` threads, spread round-robin over the sandboxes."""
    lock = threading.Lock()

    def worker(thread: int) -> None:
        mine: dict[str, list[int]] = defaultdict(list)
        try:
            for i in range(thread, total, THREADS):
                sandbox_id = SANDBOXES[(offset + i) % len(SANDBOXES)]
                mine[sandbox_id].append(host.call(sandbox_id, "counter", "inc", timeout=10))
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)
        with lock:
            for sandbox_id, values in mine.items():
                replies[sandbox_id].extend(values)

    threads = [threading.Thread(target=worker, args=(t,), name=f"soak-{t}") for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)  # a guard against a hang (each call has its own 10 s timeout), not a timing
    assert not any(thread.is_alive() for thread in threads), "a caller thread hung"


def host_rss() -> int:
    """This (the host) process's resident memory, after a collection."""
    gc.collect()
    return int(psutil.Process().memory_info().rss)


def test_host_memory_stays_bounded_over_ten_thousand_calls_to_twenty_sandboxes(host: Host, tmp_path: Path) -> None:
    """Every reply is right (each counter ends at the calls it got) and host RSS growth per 1,000 calls is small."""
    results = host.batch_create(
        [{"sandbox_id": s, "supervisor": "root:Root", "sandbox_path": sample("counter")} for s in SANDBOXES]
    )
    assert all(not isinstance(r, Exception) for r in results), results
    replies: dict[str, list[int]] = defaultdict(list)
    errors: list[BaseException] = []
    run_calls(host, WARMUP_CALLS, 0, replies, errors)
    start_rss, start_blocks = host_rss(), sys.getallocatedblocks()
    started = time.monotonic()
    run_calls(host, MEASURED_CALLS, WARMUP_CALLS, replies, errors)
    elapsed = time.monotonic() - started
    end_rss, end_blocks = host_rss(), sys.getallocatedblocks()
    assert errors == []
    for sandbox_id in SANDBOXES:
        sent = len(replies[sandbox_id])
        assert sorted(replies[sandbox_id]) == list(range(1, sent + 1)), sandbox_id
        assert host.call(sandbox_id, "counter", "get") == sent
    assert sum(len(v) for v in replies.values()) == WARMUP_CALLS + MEASURED_CALLS
    growth = (end_rss - start_rss) / (MEASURED_CALLS / 1000)
    blocks = (end_blocks - start_blocks) / (MEASURED_CALLS / 1000)
    report = (
        f"soak: {MEASURED_CALLS} calls (after {WARMUP_CALLS} warm-up) over {len(SANDBOXES)} sandboxes "
        f"from {THREADS} threads in {elapsed:.1f} s; host RSS {start_rss / 2**20:.1f} -> "
        f"{end_rss / 2**20:.1f} MiB; growth {growth / 1024:.1f} KiB and {blocks:.0f} allocated blocks per 1,000 calls"
    )
    print(report)
    (tmp_path / "soak.txt").write_text(report + "\n")
    assert growth < MAX_GROWTH_PER_1000, report
    assert blocks < MAX_BLOCKS_PER_1000, report
