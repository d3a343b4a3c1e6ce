"""Stable Diffusion XL: the family InstantStyle was made for (paper, sec. 4)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from . import Family, unet


def matches(class_name: str, config: Mapping[str, Any]) -> bool:
    """SDXL's UNet takes text+time added conditioning (pooled text embedding and size ids)."""
    return unet.is_unet(class_name) and config.get("addition_embed_type") == "text_time"


def matches_checkpoint(keys: Sequence[str]) -> bool:
    """SDXL checkpoints hold a second text embedder (OpenCLIP bigG)."""
    return any(k.startswith("conditioner.embedders.1.") for k in keys)


FAMILY = Family(
    name="sdxl",
    matches=matches,
    matches_checkpoint=matches_checkpoint,
    text_pipeline="StableDiffusionXLPipeline",
    presets={
        "style": ("up_blocks.0.attentions.1",),
        "layout": ("down_blocks.2.attentions.1",),
        "style+layout": ("up_blocks.0.attentions.1", "down_blocks.2.attentions.1"),
        "all": ("down_blocks", "mid_block", "up_blocks"),
    },
    # text_encoder_2 is OpenCLIP ViT-bigG's text tower: the space of the ViT-bigG image encoder (ip-adapter_sdxl).
    content_towers=(("tokenizer_2", "text_encoder_2"),),
    default_controlnets={
        "canny": "diffusers/controlnet-canny-sdxl-1.0",
        "depth": "diffusers/controlnet-depth-sdxl-1.0",
    },
    **unet.DENOISER,
    **unet.FUNCTIONS,
)
