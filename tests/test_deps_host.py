"""Per-sandbox dependencies through the Host: two versions side by side, shared environments."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import attrs
import pytest
from test_deps import _write_wheel

from plugin_host import Host, HostConfig
from plugin_host.errors import DependencyError


def plugin_folder(path: Path, requirement: str) -> str:
    path.mkdir(parents=True)
    (path / "requirements.txt").write_text(requirement + "\n")
    (path / "uses.py").write_text(
        textwrap.dedent("""
        from actors import ChildSpec, Plugin, Supervisor
        import tinylib

        class Uses(Plugin):
            def handle_call(self, request, state):
                return tinylib.VERSION, state

        class Root(Supervisor):
            children = [ChildSpec("uses", Uses)]
    """)
    )
    return str(path)


@pytest.fixture
def offline(config: HostConfig, tmp_path: Path) -> HostConfig:
    """The test configuration, installing only from two local tinylib wheels (1.0 and 2.0)."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for version in ("1.0", "2.0"):
        _write_wheel(wheels, version)
    return attrs.evolve(config, find_links=(str(wheels),), no_index=True)


def test_two_sandboxes_use_two_versions_of_a_library_and_the_host_sees_neither(
    offline: HostConfig, tmp_path: Path
) -> None:
    """Each sandbox imports its own tinylib; the host process never imports it."""
    with Host(offline) as host:
        host.create_sandbox("one", "uses:Root", sandbox_path=plugin_folder(tmp_path / "one", "tinylib==1.0"))
        host.create_sandbox("two", "uses:Root", sandbox_path=plugin_folder(tmp_path / "two", "tinylib==2.0"))
        assert host.call("one", "uses", "v") == "1.0"
        assert host.call("two", "uses", "v") == "2.0"
        assert "tinylib" not in sys.modules


def test_a_second_sandbox_with_the_same_requirements_installs_nothing(offline: HostConfig, tmp_path: Path) -> None:
    """Identical requirement sets share one environment: the second create runs no pip."""
    with Host(offline) as host:
        first = host.prepare_dependencies(plugin_folder(tmp_path / "a", "tinylib==1.0"))
        assert first is not None
        marker_time = max(p.stat().st_mtime_ns for p in first.iterdir())
        host.create_sandbox("a", "uses:Root", sandbox_path=str(tmp_path / "a"))
        host.create_sandbox("b", "uses:Root", sandbox_path=plugin_folder(tmp_path / "b", "tinylib==1.0"))
        assert host.prepare_dependencies(str(tmp_path / "b")) == first
        assert max(p.stat().st_mtime_ns for p in first.iterdir()) == marker_time
        assert host.call("b", "uses", "v") == "1.0"


def test_an_unresolvable_or_conflicting_requirement_is_refused_before_anything_starts(
    offline: HostConfig, tmp_path: Path
) -> None:
    """pip failing, or a clash with what the host runs, raises DependencyError; no sandbox exists."""
    with Host(offline) as host:
        with pytest.raises(DependencyError, match="tinylib"):
            host.create_sandbox("x", "uses:Root", sandbox_path=plugin_folder(tmp_path / "x", "tinylib==9.9"))
        with pytest.raises(DependencyError, match="psutil"):
            host.create_sandbox("y", "uses:Root", sandbox_path=plugin_folder(tmp_path / "y", "psutil<1"))
        assert host.list_sandboxes() == []


def test_a_reload_with_changed_requirements_installs_them_first(offline: HostConfig, tmp_path: Path) -> None:
    """New requirements are installed outside the sandbox, then the reload switches to them; a set that
    does not install changes nothing."""
    folder = Path(plugin_folder(tmp_path / "s", "tinylib==1.0"))
    with Host(offline) as host:
        host.create_sandbox("s", "uses:Root", sandbox_path=str(folder))
        assert host.call("s", "uses", "v") == "1.0"
        (folder / "requirements.txt").write_text("tinylib==9.9\n")
        with pytest.raises(DependencyError):
            host.hot_reload("s", host.compile_sandbox(str(folder)))
        assert host.call("s", "uses", "v") == "1.0"
        (folder / "requirements.txt").write_text("tinylib==2.0\n")
        host.hot_reload("s", host.compile_sandbox(str(folder)))
        assert host.call("s", "uses", "v") == "2.0"
        host.restart_sandbox("s")
        assert host.call("s", "uses", "v") == "2.0"
