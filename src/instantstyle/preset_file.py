"""Block presets in a file: named blocks specs a probe found (or a user wrote), used as ``--blocks @FILE:NAME``.

The file is a JSON object mapping a preset name to a blocks spec, e.g.
``{"style": "up_blocks.0.attentions.1", "style+layout": "up_blocks.0.attentions.1,down_blocks.2.attentions.1"}``.
A spec is checked for form when read (``blocks.parse_spec``); whether its blocks exist in a model is
checked where blocks are resolved, as for any spec.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from . import safe_json
from .atomic import temp_path
from .blocks import parse_spec
from .errors import UserError

PRESET_REF_PREFIX = "@"


def check_presets(presets: object, where: str) -> dict[str, str]:
    """A ``{name: spec}`` mapping with well-formed names and specs, or a one-line ``UserError``."""
    if not isinstance(presets, dict) or not presets:
        raise UserError(f"{where}: a presets file is a non-empty JSON object of name -> blocks spec")
    for name, spec in presets.items():
        if not isinstance(name, str) or not name.strip() or ":" in name or name != name.strip():
            raise UserError(f"{where}: preset name {name!r} must be text without ':' or outer spaces")
        if not isinstance(spec, str):
            raise UserError(f"{where}: preset {name!r} must be a blocks spec (text), got {spec!r}")
        if spec.strip().startswith(PRESET_REF_PREFIX):
            raise UserError(f"{where}: preset {name!r} refers to another presets file; give the blocks")
        try:
            parse_spec(spec)
        except UserError as err:
            raise UserError(f"{where}: preset {name!r}: {err}") from None
    return dict(presets)


def read_presets(path: str | Path) -> dict[str, str]:
    """Read a presets file; a missing, unreadable or malformed file is a one-line ``UserError``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"presets file {path}: no such file")
    try:
        data = safe_json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"presets file {path}: not readable ({type(err).__name__})") from None
    except UserError as err:
        raise UserError(f"presets file {path}: {err}") from None
    return check_presets(data, f"presets file {path}")


def write_presets(path: str | Path, presets: Mapping[str, str], merge: bool = True) -> Path:
    """Write presets (atomically: a temporary file, then a rename). With ``merge``, presets already in the
    file that are not being written stay; a same-named one is replaced."""
    path = Path(path).expanduser()
    new = check_presets(dict(presets), f"presets for {path}")
    old = read_presets(path) if merge and path.exists() else {}
    data = {**old, **new}
    tmp = temp_path(path)
    try:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as err:
        raise UserError(f"presets file {path}: cannot write ({err.strerror or type(err).__name__})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def is_preset_ref(spec: str) -> bool:
    """Whether a blocks spec is a reference into a presets file (``@FILE:NAME``)."""
    return spec.strip().startswith(PRESET_REF_PREFIX)


def expand_preset_ref(spec: str, base: str | Path | None = None) -> str:
    """``@FILE:NAME`` -> the blocks spec saved under NAME in FILE (relative to ``base`` if given, e.g. a
    job file's folder); any other spec is returned as it is. The name follows the last colon."""
    text = spec.strip()
    if not is_preset_ref(text):
        return spec
    file, sep, name = text[len(PRESET_REF_PREFIX):].rpartition(":")
    if not sep or not file or not name:
        raise UserError(f"blocks {spec!r}: a presets reference is @FILE:NAME (e.g. @presets.json:style)")
    path = Path(file).expanduser()
    if base is not None and not path.is_absolute():
        path = Path(base) / path
    presets = read_presets(path)
    if name not in presets:
        raise UserError(f"presets file {path} has no preset {name!r}; it has: {', '.join(presets)}")
    return presets[name]
