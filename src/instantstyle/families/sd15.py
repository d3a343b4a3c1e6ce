"""Stable Diffusion 1.5 (and UNets like it): experimental in the paper; style is weaker, so whole blocks are
targeted."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..modes.hidiffusion_settings import FEATURE, HiDiffusionSettings, Phases
from . import unet

if TYPE_CHECKING:
    import torch

#: HiDiffusion (see ``hidiffusion``) on SD1.5: its first level. Up to a 2048 px side (latent 256) RAD with
#: T1 = 0.4; above it RAD until 0.7 and the pooled phase (second level) until 0.3.
HIDIFFUSION = HiDiffusionSettings(
    dilated_conv="down_blocks.0.downsamplers.0.conv",
    pooled_block="down_blocks.1",
    restored_block="up_blocks.2",
    window_blocks=("down_blocks.0.attentions", "up_blocks.3.attentions"),
    large_latent=256,
    normal=Phases(pool=0.0, dilate=0.4),
    large=Phases(pool=0.3, dilate=0.7),
)


def matches(class_name: str, config: Mapping[str, Any]) -> bool:
    """A UNet without SDXL's text+time added conditioning."""
    return unet.is_unet(class_name) and config.get("addition_embed_type") != "text_time"


def matches_checkpoint(keys: Sequence[str]) -> bool:
    """SD1.5 checkpoints hold one text embedder (``cond_stage_model``) and no second one."""
    return any(k.startswith("cond_stage_model.") for k in keys) and not any(
        k.startswith("conditioner.embedders.1.") for k in keys)


def encode_prompts(
    pipe: Any, prompts: list[str], negatives: list[str] | None, device: torch.device, cfg: bool
) -> dict[str, Any]:
    """The text tower's embeddings (and the negative ones under CFG) by the pipeline's own ``encode_prompt`` with
    the arguments its call uses (one image per prompt: the call repeats them per image)."""
    embeds, negative = pipe.encode_prompt(prompts, device, 1, cfg, negative_prompt=negatives)
    return {"prompt_embeds": embeds, "negative_prompt_embeds": negative}


FAMILY = replace(
    unet.BASE,
    name="sd15",
    matches=matches,
    matches_checkpoint=matches_checkpoint,
    text_pipeline="StableDiffusionPipeline",
    presets={
        "style": ("up_blocks.1",),
        "layout": ("down_blocks.2", "mid_block"),
        "style+layout": ("down_blocks.2", "mid_block", "up_blocks.1"),
        **unet.BASE.presets,
    },
    # No content_towers: CLIP ViT-L text is not the ViT-H image encoder's space, the user names a text tower.
    default_controlnets={
        "canny": "lllyasviel/control_v11p_sd15_canny",
        "depth": "lllyasviel/control_v11f1p_sd15_depth",
        "tile": "lllyasviel/control_v11f1e_sd15_tile",
    },
    encode_prompts=encode_prompts,
    features={FEATURE: HIDIFFUSION, "restyle": True},  # restyle: InstantStyle-Plus (modes.restyle)
    default_adapter="h94/IP-Adapter/models/ip-adapter_sd15.safetensors",
    known_models=("stable-diffusion-v1-5/stable-diffusion-v1-5", "runwayml/stable-diffusion-v1-5"),
)
