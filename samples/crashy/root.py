"""The crashy sandbox's root: a misbehaving child next to a steady one."""

from crashy import Crashy
from steady import Steady

from actors import ChildSpec, Supervisor


class Root(Supervisor):
    # Tolerant on purpose: tests and the demo crash "crashy" several times in a row.
    strategy = "one_for_one"
    max_restarts, max_seconds = 10, 10
    children = [ChildSpec("crashy", Crashy), ChildSpec("steady", Steady)]


class Fragile(Supervisor):
    """The same tree with a strict restart intensity: two crashes within 10 s fail the sandbox."""

    strategy = "one_for_one"
    max_restarts, max_seconds = 1, 10
    children = [ChildSpec("crashy", Crashy), ChildSpec("steady", Steady)]
