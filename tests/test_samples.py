"""Every sample folder loads through ``Host`` and does what its docstrings promise."""

from __future__ import annotations

import time
from typing import Callable

import pytest
from conftest import SAMPLES, sample

from plugin_host import Host
from plugin_host.errors import PluginError

SAMPLE_NAMES = sorted(p.name for p in SAMPLES.iterdir() if (p / "root.py").is_file())


def wait_until(condition: Callable[[], object], timeout: float = 15.0) -> None:
    """Poll ``condition`` (each poll is one round trip to the host) until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def child(host: Host, sandbox_id: str, name: str):
    """The ``ChildInfo`` of one actor of a sandbox."""
    return next(c for c in host.get_sandbox_info(sandbox_id).children if c.name == name)


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_every_sample_folder_loads_through_the_host_with_every_actor_running(host: Host, name: str) -> None:
    """Each ``samples/<name>`` folder starts as ``root:Root`` and every actor of its tree runs."""
    info = host.create_sandbox(name, "root:Root", sandbox_path=sample(name))
    assert info.status == "running"
    assert info.children and all(c.status == "running" and c.pid for c in info.children)


def test_crashy_answers_ping_and_counts_its_calls(host: Host) -> None:
    """The crashy plugin answers ``ping`` and keeps a call count in its state."""
    host.create_sandbox("c", "root:Root", sandbox_path=sample("crashy"))
    assert host.call("c", "crashy", "ping") == "pong"
    assert host.call("c", "crashy", "count") == 2
    assert host.call("c", "steady", "inc") == 1


def test_crashy_is_restarted_with_fresh_state_while_its_sibling_keeps_running(host: Host) -> None:
    """``raise`` crashes only ``crashy``: it comes back in a new process, ``steady`` is untouched."""
    host.create_sandbox("c", "root:Root", sandbox_path=sample("crashy"))
    old_pid, steady_pid = host.call("c", "crashy", "pid"), host.call("c", "steady", "pid")
    with pytest.raises(PluginError, match="asked to raise"):
        host.call("c", "crashy", "raise")
    wait_until(lambda: child(host, "c", "crashy").restarts == 1 and child(host, "c", "crashy").status == "running")
    assert host.call("c", "crashy", "pid") != old_pid
    assert host.call("c", "crashy", "count") == 2  # init ran again: only pid and count were counted
    assert host.call("c", "steady", "pid") == steady_pid


def test_tree_nests_backend_workers_under_their_supervisor_and_every_worker_answers(host: Host) -> None:
    """Every worker of the nested tree answers ``ping``; db, cache and api sit under ``backend``."""
    info = host.create_sandbox("t", "root:Root", sandbox_path=sample("tree"))
    by_name = {c.name: c for c in info.children}
    assert {n: by_name[n].supervisor for n in ("frontend", "backend", "db", "cache", "api")} == {
        "frontend": "",
        "backend": "",
        "db": "backend",
        "cache": "backend",
        "api": "backend",
    }
    assert by_name["backend"].kind == "supervisor"
    for name in ("frontend", "db", "cache", "api"):
        assert host.call("t", name, "ping") == f"pong from {name}"
    assert len({host.call("t", n, "pid") for n in ("frontend", "db", "cache", "api")}) == 4


def test_wordcount_index_counts_words_and_ranks_the_top_ones(host: Host) -> None:
    """Documents cast to ``index`` are tokenized; ``count``, ``top`` and ``docs`` answer from them."""
    host.create_sandbox("w", "root:Root", sandbox_path=sample("wordcount"))
    host.cast("w", "index", ("add", "d1", "The cat sat on the mat."))
    host.cast("w", "index", ("add", "d2", "The dog chased the cat!"))
    wait_until(lambda: host.call("w", "index", "docs") == 2)  # casts travel via the admin
    assert host.call("w", "index", ("count", "the")) == 4
    assert host.call("w", "index", ("count", "CAT")) == 2
    assert host.call("w", "index", ("count", "zebra")) == 0
    assert host.call("w", "index", ("top", 3)) == [("the", 4), ("cat", 2), ("chased", 1)]


def test_wordcount_readding_a_document_replaces_its_words(host: Host) -> None:
    """Adding a document id again replaces the old text's counts instead of adding to them."""
    host.create_sandbox("w", "root:Root", sandbox_path=sample("wordcount"))
    host.cast("w", "index", ("add", "d1", "apple apple"))
    wait_until(lambda: host.call("w", "index", ("count", "apple")) == 2)
    host.cast("w", "index", ("add", "d1", "pear"))
    wait_until(lambda: host.call("w", "index", ("count", "pear")) == 1)
    assert host.call("w", "index", ("count", "apple")) == 0
    assert host.call("w", "index", "docs") == 1


def test_wordcount_query_answers_a_search_by_calling_its_sibling_index(host: Host) -> None:
    """``("search", word)`` called on ``query`` is answered through a blocking call to ``index``."""
    host.create_sandbox("w", "root:Root", sandbox_path=sample("wordcount"))
    host.cast("w", "index", ("add", "d1", "to be or not to be"))
    wait_until(lambda: host.call("w", "index", "docs") == 1)
    assert host.call("w", "query", ("search", "Be")) == 2
    assert host.call("w", "query", ("search", "question")) == 0
    assert host.call("w", "query", "searches") == 2


def test_wordcount_query_gets_an_answer_cast_back_by_the_sibling_index(host: Host) -> None:
    """A search cast to ``query`` is answered by ``index`` through sibling casts, without waiting."""
    host.create_sandbox("w", "root:Root", sandbox_path=sample("wordcount"))
    host.cast("w", "index", ("add", "d1", "to be or not to be"))
    wait_until(lambda: host.call("w", "index", "docs") == 1)
    assert host.call("w", "query", ("result", "be")) is None
    host.cast("w", "query", ("search", "Be"))
    wait_until(lambda: host.call("w", "query", ("result", "be")) is not None)
    assert host.call("w", "query", ("result", "be")) == 2
    assert host.call("w", "query", "searches") == 1
