"""The one error type users see: a bad input, reported as one line, never a traceback."""

from __future__ import annotations

import reprlib
from collections.abc import Iterable
from typing import Any


class UserError(ValueError):
    """An input the user can fix (missing file, unknown block, wrong adapter...)."""


_SHOWN = reprlib.Repr()
_SHOWN.maxstring, _SHOWN.maxother, _SHOWN.maxlong, _SHOWN.maxlist, _SHOWN.maxdict = 60, 60, 40, 4, 4


def shown(value: Any) -> str:
    """``repr`` cut short, for messages: a crafted value (a 4,000-digit number, a long list) stays one short line."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"a number of {value.bit_length():,} bits"  # repr() of one past 4,300 digits raises ValueError
    return _SHOWN.repr(value)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the choice closest to a mistyped ``word`` (difflib); ``""`` if none is close."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
