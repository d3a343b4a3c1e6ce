"""Writing block presets files: named blocks specs a probe found (or a user wrote), used as ``--blocks @FILE:NAME``.

The file is a JSON object mapping a preset name to a blocks spec, e.g.
``{"style": "up_blocks.0.attentions.1", "style+layout": "up_blocks.0.attentions.1,down_blocks.2.attentions.1"}``.
Reading them (and ``@FILE:NAME``) is part of the spec parser (``blocks``); whether a spec's blocks exist in a
model is checked where blocks are resolved, as for any spec.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from ..core.blocks import check_presets, read_presets
from ..files.atomic import write_text_atomically
from ..files.textfiles import check_regular_target


def write_presets(path: str | Path, presets: Mapping[str, str], merge: bool = True) -> Path:
    """Write presets (atomically: a temporary file, then a rename). With ``merge``, presets already in the
    file that are not being written stay; a same-named one is replaced."""
    path = Path(path).expanduser()
    check_regular_target(path, f"presets file {path}")
    new = check_presets(dict(presets), f"presets for {path}")
    old = read_presets(path) if merge and path.exists() else {}
    data = {**old, **new}
    return write_text_atomically(path, json.dumps(data, indent=2) + "\n")
