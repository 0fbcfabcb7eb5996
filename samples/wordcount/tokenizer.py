"""Splits text into lower-case words; a helper module the plugins import by plain name."""

import re

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")


def tokenize(text):
    """Return the words of ``text``, lower-cased, in order (apostrophes kept inside words)."""
    return _WORD.findall(text.lower())
