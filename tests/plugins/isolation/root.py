"""A tree with a nested supervisor: a root, a supervisor and two workers (tests/test_isolation_user.py)."""

from probe import Probe

from actors import ChildSpec, Supervisor


class Inner(Supervisor):
    children = [ChildSpec("inner", Probe)]


class Root(Supervisor):
    children = [ChildSpec("probe", Probe), ChildSpec("group", Inner)]
