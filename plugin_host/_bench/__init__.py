"""The bench's private parts (the front door is :mod:`plugin_host.bench`): the raw-Thespian
actors it compares against (:mod:`.actors`), the run's harness, the remote section's other actor
systems and the sections themselves.
"""

__all__: list[str] = []
