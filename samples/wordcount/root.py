"""The word-count sandbox: an index and a query front end, side by side."""

from index import Index
from query import Query

from actors import ChildSpec, Supervisor


class Root(Supervisor):
    strategy = "one_for_one"
    max_restarts, max_seconds = 3, 5
    children = [ChildSpec("index", Index), ChildSpec("query", Query)]
