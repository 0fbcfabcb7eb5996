"""What every actor process sets up for itself: hardening, resource limits, the runtime audit, the
in-flight page a worker leaves for its supervisor, sibling calls, and the orphan watch."""

__all__: list[str] = []
