"""A nested supervision tree::

root (one_for_one)
├── frontend
└── backend (rest_for_one)
    ├── db
    ├── cache   (restarted when db restarts)
    └── api     (restarted when db or cache restarts)
"""

from workers import Worker

from actors import ChildSpec, Supervisor


class Backend(Supervisor):
    # rest_for_one: cache and api depend on db, api depends on cache.
    strategy = "rest_for_one"
    max_restarts, max_seconds = 5, 10
    children = [
        ChildSpec("db", Worker, args={"role": "db"}),
        ChildSpec("cache", Worker, args={"role": "cache"}),
        ChildSpec("api", Worker, args={"role": "api"}),
    ]


class Root(Supervisor):
    strategy = "one_for_one"
    max_restarts, max_seconds = 5, 10
    children = [
        ChildSpec("frontend", Worker, args={"role": "frontend"}),
        ChildSpec("backend", Backend),
    ]
