"""What plugin authors import: the ``Plugin`` behaviour and the supervision specs.

from actors import Plugin, Supervisor, ChildSpec
"""

from __future__ import annotations

from ._spec import ChildSpec, Supervisor
from .plugin import Plugin

__all__ = ["ChildSpec", "Plugin", "Supervisor"]
