"""The one error type users see: a bad input, reported as one line, never a traceback."""

from __future__ import annotations

import reprlib
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
