"""``python -m plugin_host``: the ``plugin-host`` command line."""

import sys

from .cli import main

__all__: list[str] = []

sys.exit(main())
