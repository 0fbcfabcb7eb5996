"""The counter sandbox's root supervisor."""

from counter import Counter

from actors import ChildSpec, Supervisor


class Root(Supervisor):
    strategy = "one_for_one"
    max_restarts, max_seconds = 3, 5
    children = [ChildSpec("counter", Counter, args={"start": 0})]
