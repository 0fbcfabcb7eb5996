"""The admin actor's components (:mod:`actors.admin` is their only front door: it holds every handler)."""

__all__: list[str] = []
