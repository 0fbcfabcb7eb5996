"""The command line's private parts (the front door is :mod:`plugin_host.cli`): the demo, the
status screens, the folder watcher and the ``plugin-host node`` command.
"""

__all__: list[str] = []
