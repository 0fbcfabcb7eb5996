"""The query front end: answers searches by asking its sibling ``index``.

It shows both ways of talking to a sibling: a blocking ``self.call`` (simple, but this actor
waits for the answer), and request/reply over casts (nobody waits; the answer arrives as a
message and is kept in the state).
"""

from tokenizer import tokenize

from actors import Plugin


class Query(Plugin):
    """Searches the ``index`` actor for a word.

    Call ``("search", word)`` -> how often ``word`` occurs, asked of ``index`` with a blocking
    sibling call.  Cast ``("search", word)`` asks the same without waiting; call
    ``("result", word)`` then answers that count (``None`` until the answer arrived).
    ``"searches"`` answers how many searches were answered so far.
    """

    vsn = 1

    def init(self, args):
        return {"results": {}, "searches": 0}

    def handle_call(self, request, state):
        if request == "searches":
            return state["searches"], state
        if isinstance(request, tuple) and request[0] == "search":
            count = self.call("index", ("count", _first_word(request[1])))
            return count, {**state, "searches": state["searches"] + 1}
        if isinstance(request, tuple) and request[0] == "result":
            return state["results"].get(_first_word(request[1])), state
        raise ValueError(f"unknown request {request!r}")

    def handle_cast(self, message, state):
        kind = message[0] if isinstance(message, tuple) else message
        if kind == "search":
            self.cast("index", ("lookup", _first_word(message[1]), self.name))
        elif kind == "count":  # the index's answer to a lookup
            _, word, count = message
            return {"results": {**state["results"], word: count}, "searches": state["searches"] + 1}
        return state


def _first_word(text):
    words = tokenize(text)
    return words[0] if words else ""
