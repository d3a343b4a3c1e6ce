"""Small text files users name (presets files, login files): read whole, up to a size cap, or a one-line error.

A path can name anything: a folder, ``/dev/zero``, a multi-gigabyte file, binary data. At most ``limit + 1``
bytes are read, so none of these costs more than the cap in memory or hangs on an endless device.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError


def read_small_text(path: str | Path, what: str, limit: int, holds: str = "") -> str:
    """The UTF-8 text of the file at ``path`` (at most ``limit`` bytes), or a ``UserError`` that names it as
    ``what PATH``: missing, a folder, unreadable, too large (``holds`` says what it should hold) or not UTF-8."""
    name = f"{what} {path}"
    try:
        with Path(path).expanduser().open("rb") as file:
            data = file.read(limit + 1)
    except FileNotFoundError:
        raise UserError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{name}: is a folder") from None
    except OSError as err:
        raise UserError(f"{name}: cannot be read ({err.strerror or type(err).__name__})") from None
    if len(data) > limit:
        size = next((f"{limit // unit:,} {word}" for unit, word in ((2**20, "MB"), (2**10, "KB"))
                     if limit % unit == 0), f"{limit:,} bytes")
        raise UserError(f"{name}: over {size}" + (f"; it holds {holds}" if holds else ""))
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{name}: not UTF-8 text" + (f" ({holds})" if holds else "")) from None
