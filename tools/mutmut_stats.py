"""pytest plugin for ``tools/mutation.sh``: keep mutmut's stats run inside the test process.

mutmut first runs the tests once with ``MUTANT_UNDER_TEST=stats`` to learn which tests reach
which function.  A subprocess a test starts (the compile validator, whose working folder is a
scratch folder) inherits that variable, and mutmut there fails to find its ``setup.cfg``.
mutmut also keeps the value inside the process, so dropping it from the environment keeps this
process's stats and lets children run the original code.  Mutant runs are left alone: there the
children must run the mutant too.
"""

from __future__ import annotations

import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Drop ``MUTANT_UNDER_TEST=stats`` from the environment children inherit."""
    if os.environ.get("MUTANT_UNDER_TEST") == "stats":
        del os.environ["MUTANT_UNDER_TEST"]
