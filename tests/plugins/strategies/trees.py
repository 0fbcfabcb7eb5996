"""Supervision trees used by the tests, one per strategy."""

from workers import Worker

from actors import ChildSpec, Supervisor


def three(restart="permanent"):
    return [ChildSpec(n, Worker, restart=restart) for n in ("a", "b", "c")]


class OneForOne(Supervisor):
    strategy = "one_for_one"
    max_restarts, max_seconds = 5, 10
    children = three()


class OneForAll(Supervisor):
    strategy = "one_for_all"
    max_restarts, max_seconds = 5, 10
    children = three()


class RestForOne(Supervisor):
    strategy = "rest_for_one"
    max_restarts, max_seconds = 5, 10
    children = three()


class Fragile(Supervisor):
    strategy = "one_for_one"
    max_restarts, max_seconds = 2, 30
    children = [ChildSpec("a", Worker)]


class Forgetful(Supervisor):
    """Fragile's intensity in a short window: restarts spread wider than 0.3 s never add up."""

    strategy = "one_for_one"
    max_restarts, max_seconds = 2, 0.3
    children = [ChildSpec("a", Worker)]


class Kinds(Supervisor):
    strategy = "one_for_one"
    max_restarts, max_seconds = 5, 10
    children = [
        ChildSpec("perm", Worker),
        ChildSpec("trans", Worker, restart="transient"),
        ChildSpec("temp", Worker, restart="temporary"),
    ]


class Inner(Supervisor):
    strategy = "one_for_one"
    max_restarts, max_seconds = 1, 30
    children = [ChildSpec("inner1", Worker), ChildSpec("inner2", Worker)]


class Nested(Supervisor):
    strategy = "one_for_one"
    max_restarts, max_seconds = 5, 30
    children = [ChildSpec("outer", Worker), ChildSpec("inner", Inner)]


class BadInit(Supervisor):
    children = [ChildSpec("ok", Worker), ChildSpec("bad", Worker, args={"fail_init": True})]
