"""A tiny random LoRA for a tiny model, written in the key formats real LoRA files use.

``peft``: diffusers/peft keys (``unet.down_blocks.1....attn1.to_q.lora_A.weight``), as written by
``save_lora_weights`` and shipped by e.g. Hyper-SD's diffusers files. ``kohya``: ``lora_unet_..._to_q
.lora_down.weight`` / ``lora_up.weight`` / ``alpha`` with diffusers module names, the format of
LCM-LoRA and most community LoRAs. Both are read back by diffusers' ``load_lora_weights``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

_TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
            "attn2.to_out.0")


def lora_targets(model: Path) -> dict[str, tuple[int, int]]:
    """The UNet's attention linear layers a typical LoRA adapts: name -> (out, in) features."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(model), subfolder="unet")
    return {
        name: (module.out_features, module.in_features)
        for name, module in unet.named_modules()
        if isinstance(module, torch.nn.Linear) and name.endswith(_TARGETS)
    }


def write_tiny_lora(
    model: Path, path: Path, key_format: Literal["peft", "kohya"] = "peft", rank: int = 4, seed: int = 0
) -> Path:
    """Write a random rank-``rank`` LoRA over every attention projection of ``model``'s UNet; strong
    enough (B not zero, as in a trained LoRA) that it visibly changes the image."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name, (out_features, in_features) in sorted(lora_targets(model).items()):
        down = torch.randn(rank, in_features, generator=generator) / in_features**0.5
        up = torch.randn(out_features, rank, generator=generator) / rank**0.5
        if key_format == "peft":
            tensors[f"unet.{name}.lora_A.weight"] = down
            tensors[f"unet.{name}.lora_B.weight"] = up
        else:
            key = "lora_unet_" + name.replace(".", "_")
            tensors[f"{key}.lora_down.weight"] = down
            tensors[f"{key}.lora_up.weight"] = up
            tensors[f"{key}.alpha"] = torch.tensor(float(rank))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path
