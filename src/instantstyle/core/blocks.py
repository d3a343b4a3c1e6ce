"""Where image features go: block specs resolved against a model's injectable attention layers.

InstantStyle's first idea is to inject the image only into the attention blocks that carry style
(SDXL: ``up_blocks.0.attentions.1``) and, optionally, layout (``down_blocks.2.attentions.1``). A spec
names presets, blocks, ranges of numbered blocks and scales (``style``, ``up_blocks.0.attentions.1=1.0,layout=0.4``,
``transformer_blocks.4-9=0.8``); no spec (``None``) is the family's default; presets and how layer names group
into blocks come from the model family (``families``). A spec may also be ``@FILE:NAME``, a named spec saved in
a presets file (``instantstyle probe-blocks --save-presets``): the parser reads it, so it works everywhere a spec
does. Apart from reading such a file, everything here is string work on layer names, tested without models.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError, did_you_mean, shown
from ..families import Family, all_families, family_named
from ..files import safe_json
from ..files.textfiles import read_small_text
from .request import MAX_SCALE


def _matches(layer: str, name: str) -> bool:
    return layer == name or layer.startswith(name + ".")


def valid_block_names(layers: Sequence[str], family: Family | str) -> list[str]:
    """Every name a block spec may use: top-level blocks (``up_blocks.1``) and attention blocks."""
    family = family_named(family)
    names: dict[str, None] = {}
    for layer in layers:
        block = family.attention_block(layer)
        names[family.top_block(block)] = None
        names[block] = None
    return list(names)


def parse_spec(spec: str, base: str | Path | None = None) -> list[tuple[str, float]]:
    """Parse ``style`` or ``up_blocks.0.attentions.1=1.0,layout=0.4`` into (name, scale) pairs; ``@FILE:NAME``
    is first replaced by the spec saved under NAME in FILE (relative to ``base``, else the current folder)."""
    return _parse_items(expand_preset_ref(spec, base))


def _parse_items(spec: str) -> list[tuple[str, float]]:
    if not isinstance(spec, str):
        raise UserError(f"blocks must be a spec (text), got {spec!r}")
    items = []
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            raise UserError(f"empty entry in blocks spec {spec!r}")
        name, sep, value = item.partition("=")
        name = name.strip()
        if not name:
            raise UserError(f"missing block name in blocks spec {spec!r}")
        scale = 1.0
        if sep:
            try:
                scale = float(value)
            except ValueError:
                raise UserError(f"block scale {value.strip()!r} for {name!r} is not a number") from None
            if not 0 <= scale <= MAX_SCALE:  # NaN fails too
                raise UserError(f"block scale for {name!r} must be between 0 and {MAX_SCALE:g}, got {value.strip()}")
        items.append((name, scale))
    return items


# --- presets files: named specs, referred to as @FILE:NAME --------------------------------------------------

PRESET_REF_PREFIX = "@"
#: The largest presets file read (one holds a few named specs; ``/dev/zero`` or a huge file is refused).
MAX_PRESETS_FILE = 1024 * 1024


def is_preset_ref(spec: str) -> bool:
    """Whether a blocks spec is a reference into a presets file (``@FILE:NAME``)."""
    return isinstance(spec, str) and spec.strip().startswith(PRESET_REF_PREFIX)


def split_preset_ref(spec: str) -> tuple[str, str]:
    """``@FILE:NAME`` -> (FILE, NAME); the name follows the last colon."""
    file, sep, name = spec.strip()[len(PRESET_REF_PREFIX):].rpartition(":")
    if not sep or not file or not name:
        raise UserError(f"blocks {spec!r}: a presets reference is @FILE:NAME (e.g. @presets.json:style)")
    return file, name


def expand_preset_ref(spec: str, base: str | Path | None = None, layers: Sequence[str] | None = None,
                      family: Family | str | None = None) -> str:
    """``@FILE:NAME`` -> the blocks spec saved under NAME in FILE (relative to ``base`` if given, e.g. a
    job file's folder); any other spec is returned as it is. With a model's ``layers`` and ``family``, the
    preset's blocks must be the model's: an error names the preset, never its text (a file read for a web
    page's visitor may hold anything; ``check_presets`` never quotes values either)."""
    if not is_preset_ref(spec):
        return spec
    file, name = split_preset_ref(spec)
    path = Path(file).expanduser()
    if base is not None and not path.is_absolute():
        path = Path(base) / path
    presets = read_presets(path)
    if name not in presets:
        raise UserError(f"presets file {path} has no preset {name!r}{did_you_mean(name, presets)}; it has: "
                        f"{', '.join(presets)}")
    if layers is not None and family is not None:
        try:
            resolve_blocks(presets[name], layers, family)
        except UserError:
            family = family_named(family)
            raise UserError(f"presets file {path}: preset {name!r} names a block this {family.name} model does not "
                            f"have; valid names: {', '.join(_valid_names(layers, family))}") from None
    return presets[name]


def check_presets(presets: object, where: str) -> dict[str, str]:
    """A ``{name: spec}`` mapping with well-formed names and specs, or a one-line ``UserError`` that names a preset
    but never quotes its value (the file may not be a presets file at all, and hold secrets)."""
    if not isinstance(presets, dict) or not presets:
        raise UserError(f"{where}: a presets file is a non-empty JSON object of name -> blocks spec")
    for name, spec in presets.items():
        if not isinstance(name, str) or not name.strip() or ":" in name or name != name.strip():
            raise UserError(f"{where}: preset name {shown(name)} must be text without ':' or outer spaces")
        if not isinstance(spec, str):
            raise UserError(f"{where}: preset {name!r} must be a blocks spec (text), not {_json_kind(spec)}")
        if is_preset_ref(spec):
            raise UserError(f"{where}: preset {name!r} refers to another presets file; give the blocks")
        try:
            _parse_items(spec)
        except UserError:
            raise UserError(f"{where}: preset {name!r} is not a blocks spec (NAME or NAME=SCALE, comma-separated, "
                            f"scales 0 to {MAX_SCALE:g})") from None
    return dict(presets)


def _json_kind(value: object) -> str:
    return {dict: "an object", list: "a list", bool: "true or false", type(None): "null"}.get(type(value), "a number")


def read_presets(path: str | Path) -> dict[str, str]:
    """Read a presets file (a JSON object of name -> blocks spec); a missing, unreadable or malformed file is a
    one-line ``UserError``."""
    path = Path(path).expanduser()
    text = read_small_text(path, "presets file", MAX_PRESETS_FILE, "a few named blocks specs as a JSON object")
    try:
        data = safe_json.loads(text)
    except UserError as err:
        raise UserError(f"presets file {path}: {err}") from None
    return check_presets(data, f"presets file {path}")


_RANGE = re.compile(r"^(?P<prefix>.+\.)(?P<first>\d+)-(?P<last>\d+)$")
MAX_RANGE = 1000  # far more blocks than any model has


def expand_range(name: str) -> list[str]:
    """``transformer_blocks.4-9`` -> ``transformer_blocks.4`` ... ``transformer_blocks.9`` (both ends included);
    any other name as it is."""
    found = _RANGE.match(name)
    if found is None:
        return [name]
    first, last = int(found["first"]), int(found["last"])
    if first > last:
        raise UserError(f"block range {name!r} runs backwards (write {found['prefix']}{last}-{first})")
    if last - first >= MAX_RANGE:
        raise UserError(f"block range {name!r} spans more than {MAX_RANGE} blocks")
    return [f"{found['prefix']}{i}" for i in range(first, last + 1)]


def resolve_blocks(
    spec: str | None, layers: Sequence[str], family: Family | str, scale: float = 1.0
) -> dict[str, float]:
    """Resolve a blocks spec against a model's injectable layers into ``{layer: scale}``.

    ``None`` is the family's default spec. A preset name (of the model's ``family``, or a family name) expands
    to its blocks; a block name selects every layer under it; a range ``prefix.A-B`` every block ``prefix.A`` to
    ``prefix.B``, each of which must exist. The global ``scale`` multiplies every selected block. Layers not
    named are absent (no image features).
    """
    family = family_named(family)
    presets = family.presets
    resolved: dict[str, float] = {}
    for name, block_scale in parse_spec(family.default_blocks if spec is None else spec):
        groups = [presets[name]] if name in presets else [(block,) for block in expand_range(name)]
        if name not in presets and name in {p for f in all_families() for p in f.presets}:
            raise UserError(unmeasured_preset(name, family, layers))
        for targets in groups:
            hit = [layer for layer in layers if any(_matches(layer, t) for t in targets)]
            if not hit:
                what = f"block {name!r}" if targets == (name,) or name in presets else (
                    f"block {targets[0]!r} (of range {name!r})")
                valid = _valid_names(layers, family)
                raise UserError(f"{what} matches no attention layer of this {family.name} model"
                                f"{did_you_mean(name, valid)}; valid names: {', '.join(valid)}")
            for layer in hit:
                resolved[layer] = block_scale * scale
    return resolved


def _valid_names(layers: Sequence[str], family: Family) -> list[str]:
    return list(family.presets) + valid_block_names(layers, family)


def unmeasured_preset(name: str, family: Family, layers: Sequence[str]) -> str:
    """Why a preset another family has (``style``, ``layout``) is missing here, and how to find its blocks."""
    blocks = valid_block_names(layers, family)
    span = f"{blocks[0]} ... {blocks[-1]}" if len(blocks) > 2 else ", ".join(blocks)
    return (f"no {name!r} preset for {family.name} models: nobody has measured which of their blocks carry "
            f"{name.split('+')[0]}; find them with `instantstyle probe-blocks --model M --style REF --prompt TEXT "
            f"--save-presets presets.json -o probe/`, then use --blocks @presets.json:{name} (here: "
            f"{', '.join(family.presets)}, or blocks {span})")


@dataclass(frozen=True)
class Slot:
    """One entry of the call's image embeddings: the loaded adapter whose weights it uses (0: the main one), its
    scale per layer (a layer it does not name: 0, and diffusers then skips it) and, with regions, one weight per
    image of the slot (each image's scale inside its region is the layer's scale times its weight)."""

    adapter: int
    scales: Mapping[str, float]
    weights: tuple[float, ...] | None = None

    def at(self, layer: str, on: bool = True) -> float | list[float]:
        """The scale at ``layer`` as diffusers' processors take it: a float, or one per image with regions."""
        value = float(self.scales.get(layer, 0.0)) if on else 0.0
        return [value * w for w in self.weights] if self.weights is not None else value


@dataclass(frozen=True)
class BlockInfo:
    """One attention block of a model, for ``instantstyle blocks``."""

    name: str
    layers: int
    presets: tuple[str, ...]


def list_blocks(layers: Sequence[str], family: Family | str) -> list[BlockInfo]:
    """The model's attention blocks with their layer count and the presets that include them."""
    family = family_named(family)
    rows = []
    for block in dict.fromkeys(family.attention_block(layer) for layer in layers):
        members = [layer for layer in layers if family.attention_block(layer) == block]
        presets = tuple(p for p, targets in family.presets.items() if any(_matches(block, t) for t in targets))
        rows.append(BlockInfo(block, len(members), presets))
    return rows
