"""Adapter weight files as read from disk: their tensors grouped by part, and what an adapter file is.

One reader for every adapter format (h94's IP-Adapters, CSGO's checkpoints, the DiT families' files): a flat
``.safetensors`` file's ``group.key`` names become ``{group: {key: tensor}}``; a ``torch.save`` ``.bin`` is read with
``weights_only`` (tensors only, no code), memory-mapped where its format allows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from ..errors import UserError

AdapterKind = Literal["global", "plus", "csgo"]


@dataclass(frozen=True)
class AdapterWeights:
    """An IP-Adapter file read into memory, with what it is and what it fits."""

    path: str
    kind: AdapterKind
    image_embed_dim: int  # global: CLIP projection dim; plus and CSGO: CLIP hidden size
    cross_attention_dim: int
    num_layers: int
    state_dict: dict[str, dict[str, torch.Tensor]]
    tokens: tuple[int, ...] = ()  # CSGO: (content, style) token counts, read from its resamplers


def read_weights(path: Path) -> tuple[Any, dict[str, torch.Tensor]]:
    """(the file's tensors grouped by part, its flat tensors by name: safetensors only, else empty); an unreadable
    file is a one-line ``UserError``."""
    flat: dict[str, torch.Tensor] = {}
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            flat = load_file(str(path))
            state: dict[str, dict[str, torch.Tensor]] = {}
            for key, tensor in flat.items():
                group, _, rest = key.partition(".")
                state.setdefault(group, {})[rest] = tensor
            return state, flat
        return load_bin(path), flat
    except Exception as err:  # any unreadable file is a user error, whatever the library raised
        raise UserError(f"adapter {path}: not a readable weights file ({type(err).__name__})") from None


def load_bin(path: Path) -> Any:
    """A ``torch.save`` file's contents (tensors only), memory-mapped where the file allows (zip format): a 4 GB
    CSGO checkpoint is then read only where it is used."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # the legacy (pre-zip) format cannot be mapped
        return torch.load(str(path), map_location="cpu", weights_only=True)
