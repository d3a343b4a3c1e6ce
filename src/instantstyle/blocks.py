"""Where image features go: block presets per architecture and block specs resolved to layers.

InstantStyle's first idea is to inject the image only into the attention blocks that carry style
(SDXL: ``up_blocks.0.attentions.1``) and, optionally, layout (``down_blocks.2.attentions.1``).
Everything here is pure string work on the UNet's attention-processor names, so it is tested
without models.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .errors import UserError
from .request import MAX_SCALE

#: Block presets per architecture. ``all`` (the original IP-Adapter) is every cross-attention layer.
PRESETS: dict[str, dict[str, tuple[str, ...]]] = {
    "sdxl": {
        "style": ("up_blocks.0.attentions.1",),
        "layout": ("down_blocks.2.attentions.1",),
        "style+layout": ("up_blocks.0.attentions.1", "down_blocks.2.attentions.1"),
        "all": ("down_blocks", "mid_block", "up_blocks"),
    },
    # SD1.5 is experimental in the paper: style is weaker, so whole blocks are targeted.
    "sd15": {
        "style": ("up_blocks.1",),
        "layout": ("down_blocks.2", "mid_block"),
        "style+layout": ("down_blocks.2", "mid_block", "up_blocks.1"),
        "all": ("down_blocks", "mid_block", "up_blocks"),
    },
}


def cross_attention_layers(processor_names: Iterable[str]) -> list[str]:
    """The cross-attention layers (``...attn2``) of a UNet, in ``unet.attn_processors`` order."""
    return [n.removesuffix(".processor") for n in processor_names if n.endswith("attn2.processor")]


def attention_block(layer: str) -> str:
    """The attention block a layer belongs to: ``up_blocks.0.attentions.1`` for its transformer layers."""
    return layer.split(".transformer_blocks.")[0]


def _matches(layer: str, name: str) -> bool:
    return layer == name or layer.startswith(name + ".")


def valid_block_names(layers: Sequence[str]) -> list[str]:
    """Every name a block spec may use: whole blocks (``up_blocks.1``) and attention blocks."""
    names: dict[str, None] = {}
    for layer in layers:
        block = attention_block(layer)
        parts = block.split(".")
        top = parts[0] if parts[0] == "mid_block" else ".".join(parts[:2])
        names[top] = None
        names[block] = None
    return list(names)


def parse_spec(spec: str) -> list[tuple[str, float]]:
    """Parse ``style`` or ``up_blocks.0.attentions.1=1.0,layout=0.4`` into (name, scale) pairs."""
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


def resolve_blocks(spec: str, layers: Sequence[str], arch: str, scale: float = 1.0) -> dict[str, float]:
    """Resolve a blocks spec against a UNet's cross-attention layers into ``{layer: scale}``.

    A preset name expands to its blocks; a block name selects every layer under it. The global
    ``scale`` multiplies every selected block. Layers not named are absent (no image features).
    """
    presets = PRESETS.get(arch, {})
    resolved: dict[str, float] = {}
    for name, block_scale in parse_spec(spec):
        targets = presets.get(name, (name,))
        hit = [layer for layer in layers if any(_matches(layer, t) for t in targets)]
        if not hit:
            raise UserError(
                f"block {name!r} matches no attention layer of this {arch} model; valid names: "
                + ", ".join(list(presets) + valid_block_names(layers))
            )
        for layer in hit:
            resolved[layer] = block_scale * scale
    return resolved


@dataclass(frozen=True)
class BlockInfo:
    """One attention block of a model, for ``instantstyle blocks``."""

    name: str
    layers: int
    presets: tuple[str, ...]


def list_blocks(layers: Sequence[str], arch: str) -> list[BlockInfo]:
    """The model's attention blocks with their layer count and the presets that include them."""
    rows = []
    for block in dict.fromkeys(attention_block(layer) for layer in layers):
        members = [layer for layer in layers if attention_block(layer) == block]
        presets = tuple(
            p for p, targets in PRESETS.get(arch, {}).items() if any(_matches(block, t) for t in targets)
        )
        rows.append(BlockInfo(block, len(members), presets))
    return rows
