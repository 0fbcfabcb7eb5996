"""What the host keeps on disk, privately: the state folder (:mod:`.statedir`) and the module
version store's SQLite schema and statements (:mod:`.schema`, :mod:`.sql`; the front door is
:mod:`plugin_host.store`).

Kept empty: the launcher (run as a file) imports :mod:`.statedir` and must stay lean.
"""

__all__: list[str] = []
