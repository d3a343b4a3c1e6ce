"""Small text files users name (presets files, login files): read whole, up to a size cap, or a one-line error.

A path can name anything: a folder, ``/dev/zero``, a FIFO, a multi-gigabyte file, binary data. Only a regular
file is read, opened without blocking (opening a FIFO for reading waits for a writer, forever) and checked on the
open descriptor, so nothing can be swapped in between; at most ``limit + 1`` bytes are read, so none of these
costs more than the cap in memory or hangs.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

from ..errors import UserError

NOT_REGULAR = "not a regular file (a FIFO, device or socket)"


def open_regular(path: str | Path, name: str) -> BinaryIO:
    """Open a regular file for reading, or raise a ``UserError`` that starts with ``name``: missing, a folder,
    unreadable, or a FIFO, device or socket (refused without waiting on it)."""
    try:
        fd = os.open(Path(path).expanduser(), os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UserError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{name}: is a folder") from None
    except OSError as err:  # a socket: ENXIO
        reason = NOT_REGULAR if err.errno == errno.ENXIO else f"cannot be read ({err.strerror or type(err).__name__})"
        raise UserError(f"{name}: {reason}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise UserError(f"{name}: {'is a folder' if stat.S_ISDIR(mode) else NOT_REGULAR}")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def check_regular_target(path: str | Path, name: str) -> None:
    """A file about to be written (replaced atomically) may be missing or a regular file, never a FIFO or a device:
    renaming over ``/dev/null`` as root would replace the device."""
    try:
        mode = os.stat(Path(path).expanduser()).st_mode
    except OSError:
        return
    if stat.S_ISDIR(mode):
        raise UserError(f"{name}: is a folder")
    if not stat.S_ISREG(mode):
        raise UserError(f"{name}: {NOT_REGULAR}")


def read_small_text(path: str | Path, what: str, limit: int, holds: str = "", name: str | None = None) -> str:
    """The UTF-8 text of the regular file at ``path`` (at most ``limit`` bytes), or a ``UserError`` that names it as
    ``what PATH`` (or ``name``): missing, a folder, not a regular file, unreadable, too large (``holds`` says what
    it should hold) or not UTF-8."""
    name = name or f"{what} {path}"
    with open_regular(path, name) as file:
        try:
            data = file.read(limit + 1)
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
