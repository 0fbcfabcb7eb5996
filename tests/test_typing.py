"""The code type-checks under the strict mypy settings of setup.cfg (STYLE rule 12)."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def test_the_package_type_checks_with_mypy(tmp_path) -> None:
    """mypy finds no error in plugin_host and actors."""
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "mypy-cache"), "plugin_host", "actors"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
