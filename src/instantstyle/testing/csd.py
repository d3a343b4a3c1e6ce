"""A random-weight CSD checkpoint in the authors' real key layout, with tiny widths.

The real file (``checkpoint.pth`` of learn2phoenix/CSD) is a training checkpoint:
``{"model_state_dict": {"module.backbone.conv1.weight": ..., "module.last_layer_style": ...}, "opt_bb",
"opt_proj", "iter", "args": argparse.Namespace, "fp16_scaler"}`` with OpenAI CLIP ViT-L/14's visual keys
(width 1024, 24 blocks, patch 14, 224 px) and 297 tensors. This builds the same structure at width 128
and 2 blocks, as that training file, a plain state dict, or ``.safetensors``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

CSD_FORMATS = ("training", "state_dict", "safetensors")


def csd_state_dict(width: int = 128, layers: int = 2, patch: int = 14, image_size: int = 224,
                   embed_dim: int = 48, seed: int = 0) -> dict[str, torch.Tensor]:
    """CSD_CLIP's ``state_dict()`` keys and shapes (real: width 1024, 24 layers, 768-d heads), random values."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * std

    def norm(prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": 1.0 + randn(width, std=0.05), f"{prefix}.bias": randn(width, std=0.05)}

    scale = width**-0.5
    state = {
        "backbone.class_embedding": randn(width, std=scale),
        "backbone.positional_embedding": randn((image_size // patch) ** 2 + 1, width, std=scale),
        "backbone.conv1.weight": randn(width, 3, patch, patch, std=(3 * patch * patch) ** -0.5),
        **norm("backbone.ln_pre"),
    }
    for i in range(layers):
        block = f"backbone.transformer.resblocks.{i}"
        state.update({
            f"{block}.attn.in_proj_weight": randn(3 * width, width, std=scale),
            f"{block}.attn.in_proj_bias": randn(3 * width, std=0.02),
            f"{block}.attn.out_proj.weight": randn(width, width, std=scale),
            f"{block}.attn.out_proj.bias": randn(width, std=0.02),
            **norm(f"{block}.ln_1"),
            f"{block}.mlp.c_fc.weight": randn(4 * width, width, std=scale),
            f"{block}.mlp.c_fc.bias": randn(4 * width, std=0.02),
            f"{block}.mlp.c_proj.weight": randn(width, 4 * width, std=(4 * width) ** -0.5),
            f"{block}.mlp.c_proj.bias": randn(width, std=0.02),
            **norm(f"{block}.ln_2"),
        })
    state.update(norm("backbone.ln_post"))
    state["last_layer_style"] = randn(width, embed_dim, std=scale)
    state["last_layer_content"] = randn(width, embed_dim, std=scale)
    return state


def build_csd_checkpoint(path: str | Path, fmt: str = "training", seed: int = 0, **dims: int) -> Path:
    """Write a tiny CSD checkpoint: ``training`` (the authors' ``checkpoint.pth`` structure: DDP-prefixed
    state, optimiser states, an argparse ``args`` holding numpy scalars), ``state_dict`` or ``safetensors``."""
    if fmt not in CSD_FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {CSD_FORMATS}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = csd_state_dict(seed=seed, **dims)
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif fmt == "state_dict":
        torch.save(state, path)
    else:
        args = argparse.Namespace(arch="vit_large", lr=np.float64(3e-4), content_proj_head="default", eval_k=[1, 10])
        torch.save({
            "model_state_dict": {f"module.{k}": v for k, v in state.items()},
            "opt_bb": {"state": {}, "param_groups": [{"lr": 3e-4, "params": [0, 1]}]},
            "opt_proj": {"state": {}, "param_groups": [{"lr": 3e-4, "params": [2]}]},
            "iter": 1000,
            "args": args,
            "fp16_scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 0},
        }, path)
    return path
