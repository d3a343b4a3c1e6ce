"""The one error type users see: a bad input, reported as one line, never a traceback."""

from __future__ import annotations

from collections.abc import Iterable


class UserError(ValueError):
    """An input the user can fix (missing file, unknown block, wrong adapter...)."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the choice closest to a mistyped ``word`` (difflib); ``""`` if none is close."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
