"""The word-count index: documents in, word counts out."""

from tokenizer import tokenize

from actors import Plugin


class Index(Plugin):
    """Keeps how often each word occurs across the documents added so far.

    Casts: ``("add", doc_id, text)`` adds (or replaces) a document; ``("lookup", word,
    reply_to)`` casts ``("count", word, n)`` back to the actor ``reply_to``.
    Calls: ``("count", word)`` -> int; ``("top", n)`` -> ``[(word, count), ...]`` by count
    descending, then word; ``"docs"`` -> the number of documents.
    """

    vsn = 1

    def init(self, args):
        # Plain data only: {"docs": {doc_id: [word, ...]}, "counts": {word: n}}.
        return {"docs": {}, "counts": {}}

    def handle_cast(self, message, state):
        if isinstance(message, tuple) and message[0] == "add":
            _, doc_id, text = message
            return _add(state, doc_id, tokenize(text))
        if isinstance(message, tuple) and message[0] == "lookup":
            _, word, reply_to = message
            self.cast(reply_to, ("count", word, state["counts"].get(word, 0)))
        return state

    def handle_call(self, request, state):
        if request == "docs":
            return len(state["docs"]), state
        if isinstance(request, tuple) and request[0] == "count":
            return state["counts"].get(request[1].lower(), 0), state
        if isinstance(request, tuple) and request[0] == "top":
            ranked = sorted(state["counts"].items(), key=lambda item: (-item[1], item[0]))
            return ranked[: request[1]], state
        raise ValueError(f"unknown request {request!r}")


def _add(state, doc_id, words):
    counts = dict(state["counts"])
    for word in state["docs"].get(doc_id, ()):  # re-adding a document replaces it
        counts[word] -= 1
        if not counts[word]:
            del counts[word]
    for word in words:
        counts[word] = counts.get(word, 0) + 1
    return {"docs": {**state["docs"], doc_id: words}, "counts": counts}
