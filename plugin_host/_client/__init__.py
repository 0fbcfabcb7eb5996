"""The application process's side of a host: its link to the actor system and the admin actor.

Private: ``plugin_host.Host`` and the operator commands are the front doors.  Kept empty, so that
importing one module of it (the launcher runs as a file) loads nothing else.
"""

__all__: list[str] = []
