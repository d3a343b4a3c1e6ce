"""Atomic file writes: a temporary file beside the target, then one rename; a crash never leaves a partial file.

Every writer names its temporary file ``.NAME.PID.tmp`` (``temp_path``), so one pattern finds the leftovers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def temp_path(path: Path) -> Path:
    """The temporary file to write before renaming it to ``path`` (hidden, named for this process)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` when the block ends without an
    error, removed otherwise. Readers see the old file or the whole new one, never a part."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_png_atomically(image: Any, path: str | Path, texts: dict[str, str]) -> Path:
    """Write a PNG with text chunks (``key: text``) atomically; returns ``path``."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, text in texts.items():
        info.add_text(key, text)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
    return Path(path)
