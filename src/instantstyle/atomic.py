"""Atomic file writes: a temporary file beside the target, then one rename; and clearing what killed writers left.

Every writer names its temporary file ``.NAME.PID.tmp`` (:func:`temp_path`), so one pattern finds the
leftovers of any kind (images, manifests, cache entries) after a crash or a full disk.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

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
