"""Isolated compilation's private parts (the public front door is :mod:`plugin_host.compiler`).

Kept empty: the validator program (:mod:`plugin_host._compile.worker`) imports this package in
every compile child, which must stay lean.
"""

__all__: list[str] = []
