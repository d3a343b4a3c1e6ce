"""Atomic file writes: a temporary file beside the target, then one rename; and clearing what killed writers left.

Every writer names its temporary file ``.NAME.PID.tmp`` (:func:`temp_path`), so one pattern finds the
leftovers of any kind (images, manifests, cache entries) after a crash. A write that fails (a full disk, a
read-only folder) removes its temporary file and is one ``UserError`` naming the file.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import UserError

TEMP_NAME = re.compile(r"^\..+\.\d+\.tmp$")


def temp_path(path: Path) -> Path:
    """The temporary file to write before renaming it to ``path`` (hidden, named for this process)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def remove_stale_temps(folder: Path, older_than_s: float = 0.0) -> list[Path]:
    """Delete the temporary files in ``folder`` last written over ``older_than_s`` seconds ago (0: all of them,
    for a folder this process holds alone); returns what was removed. Unreadable entries are left alone."""
    removed: list[Path] = []
    cutoff = time.time() - older_than_s
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        try:
            if TEMP_NAME.match(entry.name) and entry.is_file(follow_symlinks=False) and (
                not older_than_s or entry.stat(follow_symlinks=False).st_mtime < cutoff
            ):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


def writable_folder(folder: str | Path, label: str, made: str = "cannot create it") -> Path:
    """``folder`` (``~`` expanded) made if missing and writable by us, else a one-line ``UserError`` naming ``label``
    (``made``: how a folder that cannot be made is said), checked before any work whose results would go there."""
    path = Path(folder).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{label}: is a file")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{label}: {made} ({err.strerror})") from None
    if not os.access(path, os.W_OK):
        raise UserError(f"{label}: not writable")
    return path


def cannot_write(path: str | Path, err: OSError) -> UserError:
    """The one line for a file that could not be written (``No space left on device``, ``Permission denied``...)."""
    return UserError(f"{path}: cannot write ({err.strerror or type(err).__name__})")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` when the block ends without an
    error, removed otherwise (an ``OSError`` becomes a ``UserError`` naming ``path``). Readers see the old file
    or the whole new one, never a part."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        raise cannot_write(path, err) from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # the folder became unreadable; the next run's remove_stale_temps clears it


def save_png_atomically(image: Any, path: str | Path, texts: dict[str, str]) -> Path:
    """Write a PNG with text chunks (``key: text``) atomically; returns ``path``."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, text in texts.items():
        info.add_text(key, text)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
    return Path(path)


def write_text_atomically(path: str | Path, text: str) -> Path:
    """Write a UTF-8 text file atomically (a table, a script, a presets file); returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
