"""JSON and JSON Lines from users (job files, PNG metadata, manifests, style files), read without surprises.

``json.loads`` recurses once per level of nesting: a line of 100k ``[`` raises ``RecursionError``, and a
value nested just under Python's limit makes later code (``repr``, ``dataclasses.asdict``) recurse too
deep. :func:`loads` turns bad JSON, integers past Python's 4,300 digits and any nesting past ``MAX_DEPTH``
into one-line ``UserError``s; no request (5 levels) or manifest entry (6) comes near it. JSON Lines split on
``"\\n"`` only, the one character JSON never holds raw (``str.splitlines`` also splits on U+2028, U+0085,
``\\x0b``...), and each line is decoded alone, so one bad byte rejects its line, not the file.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from typing import Any

from ..errors import UserError

MAX_DEPTH = 32
_NOT_UTF8 = re.compile("[\udc80-\udcff]")  # what ``surrogateescape`` makes of bytes that are not UTF-8


def loads(text: str) -> Any:
    """Parse JSON text (control characters inside strings allowed), or raise a one-line ``UserError``."""
    try:
        value = json.loads(text, strict=False)
    except json.JSONDecodeError as err:
        where = f"line {err.lineno} column {err.colno}" if "\n" in text else f"column {err.colno}"
        raise UserError(f"invalid JSON ({err.msg} at {where})") from None
    except RecursionError:
        raise UserError(f"JSON nested more than {MAX_DEPTH} levels deep") from None
    except ValueError:  # Python refuses to convert an integer of more digits than sys.get_int_max_str_digits()
        raise UserError(f"invalid JSON (a number of more than {sys.get_int_max_str_digits()} digits)") from None
    if _deeper_than(value, MAX_DEPTH):
        raise UserError(f"JSON nested more than {MAX_DEPTH} levels deep")
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether lists/objects nest more than ``limit`` levels (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


def decode(data: bytes) -> str:
    """File bytes as text (a UTF-8 byte-order mark dropped); bytes that are not UTF-8 are kept as
    ``surrogateescape`` code points, for :func:`lines` to reject only the lines holding them."""
    return data.decode("utf-8-sig", "surrogateescape")


def lines(text: str) -> Iterator[tuple[int, str | None]]:
    """``(number from 1, line)`` split on ``"\\n"`` only; the line is ``None`` if it held bytes that are not UTF-8."""
    for number, line in enumerate(text.split("\n"), 1):
        yield number, None if _NOT_UTF8.search(line) else line


def is_utf8(text: str) -> bool:
    """Whether text from :func:`decode` came from valid UTF-8 throughout."""
    return _NOT_UTF8.search(text) is None
